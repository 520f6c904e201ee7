"""PURE: closed-form projection of cross-attention K/V built from U-Net activations.

For every `attn2` layer: capture the pooled `to_out[0]` inputs of the unedited model on forget
anchors (H_F) and retain anchors plus "" (H_R), take energy-rank bases V_F, V_R of their right
singular vectors, and left-multiply to_k and to_v by E = I − P_F (I − P_R). E removes the part of
a layer's output that lies in the forget span unless it is also in the retain span. The delta is
exactly ΔW = B A with B = −V_F and A = V_Fᵀ (I − P_R) W (K and V share B), so it ships as a LoRA.
All linear algebra runs in float64 (fp16 SVD is inaccurate for near-equal singular values).
The least-squares solver keeps the inputs and the form E = I − V_F X but fits X in activation
space instead of imposing E P_R = P_R exactly (PureConfig says when and why).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from erasurelab.concepts.spec import ConceptSpec, combine
from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import MethodWarning, check_fraction, check_number, check_unwrapped, register_method
from erasurelab.models.capture import CaptureConfig, capture_activations, stack_rows
from erasurelab.models.layers import cross_attention_layers
from erasurelab.models.sampling import is_embedded
from erasurelab.registry import option

PROJECTIONS: tuple[str, ...] = ("to_k", "to_v")
SOLVERS: tuple[str, ...] = ("auto", "projector", "least_squares")


@dataclass(frozen=True)
class PureConfig:
    """PURE's settings; the paper's defaults except where stated.

    solver: "projector" is the paper's operator E = I − P_F (I − α P_R). "least_squares" keeps
    the same inputs and the exactly exportable form E = I − V_F X, but fits X instead of
    imposing E P_R = P_R: X minimises mean_f ‖X f − V_Fᵀ(f − m_f)‖² + λ·mean_r ‖X r‖² + ε‖X‖²
    over forget rows f (m_f: the retain mean at f's seed and step, so E f ≈ "an average
    neighbour") and retain rows r (E r ≈ r). A hard span constraint protects every direction a
    neighbour touches, however little; the fit protects what neighbours compute, weighted by how
    much they use it, so it still removes a target that is a near-mixture of its neighbours (the
    embedded model's colours are, and there the projector changes nothing). "auto" (default)
    picks least_squares on the embedded model and the paper's projector on SD-family models,
    or the projector whenever a projector-only option (centre=False, retain_strength) is set.
    retain_weight λ and ridge ε (relative to the Gram trace) apply to least_squares only.

    centre (projector): build the forget basis from forget activations minus the retain mean at
    the same (latent seed, sampler step), so template and timestep components drop out.
    retain_strength α in [0, 1] (projector): α < 1 also removes the part of the forget
    directions that neighbours share.
    projections=("to_v",) is the V-only ablation; latent_size (None: the U-Net's sample_size)
    lets SDXL users collect activations at a lower resolution.
    """

    #: (SD-family, embedded) values of the "auto"/None defaults (`resolved`).
    model_defaults: ClassVar[dict[str, tuple[Any, Any]]] = {"solver": ("projector", "least_squares"),
                                                            "centre": (False, True)}

    tau_forget: float = option(0.95, help="energy kept by the forget basis V_F, in (0, 1]")
    tau_retain: float = option(0.99, help="energy kept by the retain basis V_R, in (0, 1]")
    steps: int = option(10, help="sampler steps of the activation-capture trajectories")
    guidance: float = option(7.5, help="classifier-free guidance of the capture trajectories")
    seeds: tuple[int, ...] = option((0, 1, 2, 3), help="latent seeds of the capture trajectories")
    batch_size: int = option(16, help="prompts per capture batch (memory only)")
    projections: tuple[str, ...] = option(PROJECTIONS, help="cross-attention projections to edit: to_k, to_v "
                                                            "([to_v]: the V-only ablation)")
    retain_empty_prompt: bool = option(True, help="add the empty prompt to the retain anchors")
    latent_size: int | None = option(None, help="latent side of the capture (None: the U-Net's sample_size)")
    centre: bool | None = option(None, help="projector: build V_F from forget rows minus the retain mean at the "
                                            "same seed and step (None: follows the solver)")
    retain_strength: float = option(1.0, help="projector: α in [0, 1]; below 1 also removes forget directions "
                                              "that neighbours share")
    solver: str = option("auto", help="projector (the paper's E = I - P_F(I - αP_R)) or least_squares (fitted "
                                      "X in E = I - V_F X); auto picks per model")
    retain_weight: float = option(30.0, help="least_squares: λ, weight of keeping retain rows unchanged")
    ridge: float = option(1e-3, help="least_squares: ε, ridge relative to the Gram trace")

    def __post_init__(self) -> None:
        if not isinstance(self.retain_strength, int | float) or not 0.0 <= float(self.retain_strength) <= 1.0:
            raise ErasureLabError(f"retain_strength must be in [0, 1], got {self.retain_strength!r}")
        if self.solver not in SOLVERS:
            raise ErasureLabError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        least_squares = self.solver == "least_squares"
        if least_squares and self.centre is False:
            raise ErasureLabError("solver='least_squares' always centres the forget rows; drop centre=False")
        if least_squares and self.retain_strength != 1.0:
            raise ErasureLabError("retain_strength applies to solver='projector' only")
        if self.solver != "auto":
            object.__setattr__(self, "centre", least_squares or bool(self.centre))
        check_number(self, "retain_weight", strict=False)
        check_number(self, "ridge", strict=False)
        check_fraction("tau_forget", self.tau_forget)
        check_fraction("tau_retain", self.tau_retain)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        projections = (self.projections,) if isinstance(self.projections, str) else tuple(self.projections)
        if not projections or any(p not in PROJECTIONS for p in projections):
            raise ErasureLabError(f"projections must be a non-empty subset of {', '.join(PROJECTIONS)}, "
                                  f"got {', '.join(projections) or '(none)'}")
        object.__setattr__(self, "projections", projections)
        self.capture()  # validates the trajectory

    def resolved(self, pipe: Any) -> PureConfig:
        """This config with solver="auto" replaced by the solver used on `pipe` (see the class docstring)."""
        if self.solver != "auto":
            return self
        projector_only = self.centre is False or self.retain_strength != 1.0
        solver = "least_squares" if is_embedded(pipe) and not projector_only else "projector"
        return replace(self, solver=solver)

    def capture(self) -> CaptureConfig:
        return CaptureConfig(steps=self.steps, guidance=self.guidance, seeds=self.seeds, batch_size=self.batch_size,
                             latent_size=self.latent_size)


# ---------------------------------------------------------------------------------------------
# The math (pure functions, float64)
# ---------------------------------------------------------------------------------------------


def energy_rank(singular_values: torch.Tensor, tau: float) -> int:
    """k(τ) = min{k : Σ_{i≤k} σ_i² ≥ τ Σ_i σ_i²}; 0 when there is no energy at all."""
    check_fraction("tau", tau)
    energy = singular_values.double() ** 2
    if energy.numel() == 0 or float(energy.sum()) <= 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0)
    target = tau * cumulative[-1]
    return int(torch.searchsorted(cumulative, target.unsqueeze(0)).item()) + 1


def principal_basis(rows: torch.Tensor, tau: float) -> torch.Tensor:
    """(d, k) orthonormal basis of the top-k(τ) right singular vectors of rows (n, d); no centring."""
    rows = rows.double()
    d = rows.shape[-1]
    if rows.shape[0] == 0:
        return torch.zeros(d, 0, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    return vh[:energy_rank(s, tau)].T.contiguous()


def edit_operator(v_forget: torch.Tensor, v_retain: torch.Tensor, retain_strength: float = 1.0) -> torch.Tensor:
    """E = I − P_F (I − α P_R) for orthonormal bases V_F (d, k_F), V_R (d, k_R); α = 1 is PURE."""
    d = v_forget.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    p_f = v_forget @ v_forget.T
    p_r = v_retain @ v_retain.T
    return eye - p_f @ (eye - retain_strength * p_r)


def lora_factors(v_forget: torch.Tensor, v_retain: torch.Tensor, weight: torch.Tensor,
                 retain_strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact factors of E W − W: B = −V_F (d, k_F), A = V_Fᵀ (I − α P_R) W (k_F, d_in)."""
    w = weight.double()
    a = v_forget.T @ w - retain_strength * (v_forget.T @ v_retain) @ (v_retain.T @ w)
    return -v_forget, a


def least_squares_map(v_forget: torch.Tensor, forget: torch.Tensor, centred: torch.Tensor, retain: torch.Tensor,
                      retain_weight: float, ridge: float) -> torch.Tensor:
    """X (k_F, d) of the least-squares solver (PureConfig): E = I − V_F X.

    forget (n_F, d) and centred (n_F, d) are the same rows before and after subtracting their
    retain mean; retain is (n_R, d). Normal equations: X G = V_Fᵀ Dᵀ F / n_F with
    G = Fᵀ F / n_F + λ Rᵀ R / n_R + ε·tr(·)/d·I (ε relative, so it is scale-free).
    """
    f, dlt, r = forget.double(), centred.double(), retain.double()
    d = f.shape[1]
    gram = f.T @ f / max(f.shape[0], 1)
    if r.shape[0]:
        gram = gram + retain_weight * (r.T @ r) / r.shape[0]
    gram = gram + ridge * float(torch.trace(gram)) / d * torch.eye(d, dtype=torch.float64)
    rhs = v_forget.T @ dlt.T @ f / max(f.shape[0], 1)
    try:
        return torch.linalg.solve(gram, rhs.T).T
    except RuntimeError as err:  # singular gram: only when ridge = 0 and the rows are rank-deficient
        raise ErasureLabError("PURE least_squares: the activation Gram matrix is singular (rank-deficient "
                              "anchors); use ridge > 0") from err


def least_squares_factors(raw_groups: list[torch.Tensor], centred_groups: list[torch.Tensor],
                          retain: torch.Tensor, config: PureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """V_F (d, Σk_c) and X (Σk_c, d) with E = I − Σ_c V_c X_c: one independent fit per concept.

    Why not one joint fit over the stacked rows: with one energy threshold over all concepts the
    loudest concept's directions crowd the others out of the basis. Separate fits reproduce each
    concept's single-call edit; they share the retain set, so each also keeps the other concepts'
    neighbours. The sum stays an exact low-rank delta: B = −[V_1 … V_k], A = [X_1; …; X_k] W.
    """
    bases, maps = [], []
    for raw, centred in zip(raw_groups, centred_groups, strict=True):
        v_c = principal_basis(centred, config.tau_forget)
        bases.append(v_c)
        maps.append(least_squares_map(v_c, raw, centred, retain, config.retain_weight, config.ridge))
    return torch.cat(bases, dim=1), torch.cat(maps, dim=0)


def concept_groups(specs: list[ConceptSpec], forget: list[str], retain: list[str]) -> list[tuple[list[int], list[int]]]:
    """Per concept: (its rows in the forget list, the rows of its own retain anchors and "" in the retain list).

    Why per concept: erasing red and circle together, red must be centred on the other colours and
    circle on the other objects; one pooled mean would mix categories into both directions. A
    concept none of whose retain anchors survived `combine` is centred on the whole retain set.
    """
    f_index = {p: i for i, p in enumerate(forget)}
    r_index = {p: i for i, p in enumerate(retain)}
    everything = list(range(len(retain)))
    empty = [r_index[""]] if "" in r_index else []
    groups = []
    for spec in specs:
        rows_f = [f_index[a] for a in dict.fromkeys(spec.forget) if a in f_index]
        own = [r_index[a] for a in dict.fromkeys(spec.retain) if a in r_index and a != ""]
        if rows_f:
            groups.append((rows_f, own + empty if own else everything))
    return groups


def centred_rows(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Forget rows minus the retain mean at the same (seed, step): (P_F, S, T, d) -> (P_F·S·T, d).

    Why per (seed, step): the pooled activation drifts strongly along the trajectory, so a global
    mean would leave the timestep direction as the top "concept" direction.
    """
    mean = retain.double().mean(dim=0, keepdim=True)
    return (forget.double() - mean).reshape(-1, forget.shape[-1])


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def _check_concepts_active(specs: list[ConceptSpec], forget: list[str], acts: dict[str, torch.Tensor]) -> None:
    """A concept whose anchors produce no activation in any layer cannot define a subspace."""
    index = {p: i for i, p in enumerate(forget)}
    for spec in specs:
        rows = [index[a] for a in spec.forget if a in index]
        if not rows:
            continue
        energy = sum(float(a[rows].pow(2).sum()) for a in acts.values())
        if energy == 0.0:
            raise ErasureLabError(f"concept {spec.name!r}: its anchors give no cross-attention activations "
                                  "(all zero); check the anchors and the model")


@register_method("pure", PureConfig, "PURE: project cross-attention K/V away from the concept's activation subspace")
def erase_pure(pipe: Any, specs: list[ConceptSpec], config: PureConfig, quiet: bool = True) -> Edit:
    """PURE edit of every attn2 to_k/to_v; the pipeline itself is not modified."""
    config = config.resolved(pipe)
    forget, retain = combine(specs)
    if config.retain_empty_prompt and "" not in retain:
        retain.append("")
    layers = cross_attention_layers(pipe.unet)
    check_unwrapped(layers)
    meta: dict[str, Any] = {"solver": config.solver, "centre": config.centre,
                            "anchors": {"forget": forget, "retain": retain}, "layers": {}}
    if not forget:
        warnings.warn("PURE: the forget set is empty; the edit is a no-op", MethodWarning, stacklevel=2)
        return Edit({}, meta)
    if config.centre and not retain:
        raise ErasureLabError("PURE centre=True needs retain anchors (their mean is subtracted)")
    capture = config.capture()
    forget_acts = capture_activations(pipe, forget, capture, layers, quiet)
    _check_concepts_active(specs, forget, forget_acts)
    retain_acts = capture_activations(pipe, retain, capture, layers, quiet) if retain else {}
    if config.centre:
        groups = concept_groups(specs, forget, retain)
        centred = {name: [centred_rows(acts[f], retain_acts[name][r]) for f, r in groups]
                   for name, acts in forget_acts.items()}
        raw = {name: [acts[f].reshape(-1, acts.shape[-1]) for f, _ in groups] for name, acts in forget_acts.items()}
        h_forget = {name: torch.cat(rows) for name, rows in centred.items()}
    else:
        h_forget = stack_rows(forget_acts)
    h_retain = stack_rows(retain_acts)
    deltas: dict[str, LowRank] = {}
    not_editable = []
    for layer in layers:
        rows_r = h_retain.get(layer.name, torch.zeros(0, layer.inner_dim, dtype=torch.float64))
        v_r = principal_basis(rows_r, config.tau_retain)
        x = None
        if config.solver == "least_squares":
            v_f, x = least_squares_factors(raw[layer.name], centred[layer.name], rows_r, config)
        else:
            v_f = principal_basis(h_forget[layer.name], config.tau_forget)
        info: dict[str, Any] = {"k_F": v_f.shape[1], "k_R": v_r.shape[1], "d": layer.inner_dim, "noop": False}
        if x is None and config.retain_strength == 1.0 and v_r.shape[1] >= layer.inner_dim:
            not_editable.append(layer.name)
            info["noop"] = True
        elif v_f.shape[1] > 0:
            for proj in config.projections:
                linear = getattr(layer.module, proj)
                weight = linear.weight.detach().cpu()
                b, a = ((-v_f, x @ weight.double()) if x is not None
                        else lora_factors(v_f, v_r, weight, config.retain_strength))
                deltas[f"{layer.name}.{proj}.weight"] = LowRank(b, a)
                info[f"relative_change_{proj}"] = float((b @ a).norm() / linear.weight.detach().double().norm())
        meta["layers"][layer.name] = info
    if not_editable:
        warnings.warn(f"PURE: {len(not_editable)} of {len(layers)} layers not editable (retain basis spans the "
                      f"whole space, k_R = d), e.g. {not_editable[0]}; lower tau_retain", MethodWarning,
                      stacklevel=2)
    changes = [v for info in meta["layers"].values() for k, v in info.items() if k.startswith("relative_change")]
    if not changes or max(changes) < 1e-12:
        warnings.warn("PURE: the edit changes nothing (the forget subspace lies inside the retain subspace in "
                      "every layer)", MethodWarning, stacklevel=2)
    return Edit(deltas, meta)
