"""TRuST: selective fine-tuning of dynamically re-selected concept neurons (erasurelab reconstruction).

Results of this module must be labelled "TRuST (erasurelab reconstruction)": the paper does not
publish its saliency score, threshold rule, CIP/CSR formulas or step counts, so they are
reconstructed here; where this module departs from that reconstruction it says so below.

Trainable set Θ_A: the weights of every `attn2.to_q`, `to_k`, `to_v` (to_out excluded).
Each step (or every `refresh` steps) the mask M is re-estimated from the *current* weights:
  saliency: z_T ~ N(0, I) per forget prompt (1–4 prompts), DDIM with the current θ and no grad down
  to t* drawn uniformly from a third of the trajectory (`saliency_window`), then one U-Net call
  with grad; g = ∇_{Θ_A} S. Per weight matrix, M = 1[z(|g|) > ξ] or, with `mask_fraction` f, the
  round(f·n) entries of largest |g|.
  S is the model's own concept score S = mean (ε_θ(z, t*, c_f) − sg[ε_θ(z, t*, ∅)])², the strength
  of the concept's guidance direction on its own trajectory, instead of a CLIP-like scorer on the
  decoded x̂_0: it needs no extra network (any SD-family model works offline) and cannot couple to
  the evaluation judge.
Loss: L_prev = ‖ε_θ(x_t, t, c_f) − sg[y]‖², y = ε_θ0(x_t, t, c_a) − η·(ε_θ0(x_t, t, c_f) − ε_θ0(x_t, t, c_a))
  (η > 0 pushes the target past the anchor, ESD's idea with the anchor as base; η = 0 imitates
  the anchor), on x_0 ∈ D_f (latents the original model generates for the forget anchors),
  c_a = the anchor with the concept words replaced by the guide (for a compound: one part swapped
  for a sibling, "a red square" for red+circle), plus
  CSR: β·R̂, R̂ = mean ‖ε_{θ+δ(M⊙v)} − ε_θ‖² / δ², v Rademacher, δ = 1e-3·RMS(θ_M) (a Hutchinson
       estimate of the Gauss–Newton trace ‖J_M‖²_F; the mean over output elements keeps β
       independent of resolution), β auto: β·R̂(θ0) = 0.5·L_prev(θ0);
  CIP: after each step the proximal shrink θ_i ← sign(θ_i) max(|θ_i| − κ_W ĝ_i, 0) on M,
       ĝ = |g| / mean_M |g| per matrix, κ_W = κ·RMS(W_0).
Updates are confined to M (gradient masked, entries outside restored after the Adam step).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasurelab.concepts.spec import ConceptSpec, combine
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import (
    MethodWarning,
    as_number,
    check_count,
    check_fraction,
    check_number,
    register_method,
    resolve_defaults,
)
from erasurelab.methods.finetune import FineTuner, tuner_for
from erasurelab.methods.training.diffusion import (
    Cond,
    ddim_scheduler,
    denoise,
    encode_empty,
    encode_prompts,
    start_noise,
)
from erasurelab.methods.training.losses import negative_guidance, noise_mse, retain_conditioning, retain_term
from erasurelab.methods.training.prompts import forget_pairs
from erasurelab.methods.training.streams import (
    STREAM_DATA,
    STREAM_PROBE,
    STREAM_SALIENCY,
    STREAM_TRAIN,
    sample_timesteps,
    step_generator,
)
from erasurelab.methods.training.subsets import select_parameters
from erasurelab.models.sampling import noise_scheduler
from erasurelab.registry import option

VARIANTS: tuple[str, ...] = ("csr", "cip")
SALIENCY_WINDOWS: tuple[str, ...] = ("late", "early")
#: (SD, embedded) defaults; how the embedded ones were chosen: bench/results/methods_notes.md.
LR = (1e-5, 2e-3)
#: Mask re-estimation period: every step on SD; every 5 on the embedded model (cost).
REFRESH = (1, 5)
BATCH = (2, 8)
STEPS = {"csr": (300, 100), "cip": (1000, 300)}
KAPPA = (1e-3, 3e-3)
N_FORGET = (800, 64)
SAMPLE_STEPS = (25, 10)
#: (single, compound) defaults of η and the retain weight. A compound's anchor is a real sibling
#: ("a red square" for red+circle), so the plain target (η 0) already points away from the
#: concept, while η > 0 would also push the shared part ("red") away; its retain set (the parts
#: alone) is what keeps the parts.
ETA = (2.0, 0.0)
RETAIN_WEIGHT = (0.0, 5.0)
#: β·R̂(θ0) = BETA_RATIO·L_prev(θ0): the CSR term starts at half the erase loss.
BETA_RATIO = 0.5
#: δ = DELTA_SCALE·RMS(θ_M) for the CSR finite difference.
DELTA_SCALE = 1e-3
DATA_CHUNK = 32


@dataclass(frozen=True)
class TrustConfig:
    """TRuST's settings; None means "this model's default" (SD or the embedded one).

    variant: csr (soft: curvature penalty) | cip (hard: proximal shrink). xi: per-matrix z-score
    threshold (2.0). mask_fraction: instead of xi, keep this fraction of each matrix (0 < f <= 1).
    refresh: re-estimate the mask every this many steps (1/5). lr 1e-5/2e-3, batch_size 2/8,
    steps csr 300/100 and cip 1000/300, kappa 1e-3/3e-3, n_forget (size of D_f) 800/64,
    sample_steps (DDIM steps of saliency and D_f) 25/10, guidance 7.5. beta: CSR weight (None: auto).
    saliency_prompts: forget prompts averaged per saliency estimate (4). guide: anchor guide
    override (None: each concept's). retain_weight: preservation term on the concepts' retain
    prompts (None: 0 for single concepts; 5 for combinations and conditionals, see ETA).
    eta (None: 2.0 for single concepts, 0 for compounds): negative guidance past the anchor in
    L_prev's target; eta=0 is the plain reconstruction, which only imitates the anchor.
    saliency_window ("early"): score saliency in the first third of the sampler's trajectory, where
    the object and layout are decided; "late" (the last third, the plain reconstruction) picks
    neurons that shape details.
    Adam moments of entries outside the current mask are frozen, not decayed by zero gradients
    (finetune.apply_masked_update says why this matters).
    """

    #: (SD, embedded) values of the None defaults (`resolve`); steps are csr's (cip: STEPS["cip"]).
    model_defaults: ClassVar[dict[str, tuple[Any, Any]]] = {
        "refresh": REFRESH, "lr": LR, "batch_size": BATCH, "steps": STEPS["csr"], "kappa": KAPPA,
        "n_forget": N_FORGET, "sample_steps": SAMPLE_STEPS}

    variant: str = option("csr", help="csr (soft: curvature penalty) or cip (hard: proximal shrink)")
    xi: float = option(2.0, help="per-matrix z-score threshold of the saliency mask")
    mask_fraction: float | None = option(None, help="instead of xi, keep this fraction of each matrix, in (0, 1]")
    refresh: int | None = option(None, help="re-estimate the mask every this many steps (None: the model's default)")
    lr: float | None = option(None, help="learning rate (None: the model's default)")
    batch_size: int | None = option(None, help="D_f items per step (None: the model's default)")
    steps: int | None = option(None, help="optimisation steps (None: the model's default; cip: "
                                          f"{STEPS['cip'][0]} SD, {STEPS['cip'][1]} embedded)")
    beta: float | None = option(None, help="csr: weight of the curvature term (None: half the erase loss at the "
                                           "start)")
    kappa: float | None = option(None, help="cip: proximal shrink strength (None: the model's default)")
    n_forget: int | None = option(None, help="size of the forget set D_f (None: the model's default)")
    sample_steps: int | None = option(None, help="DDIM steps of the saliency estimate and D_f (None: the model's "
                                                 "default)")
    guidance: float = option(7.5, help="classifier-free guidance of D_f and the saliency trajectories")
    saliency_prompts: int = option(4, help="forget prompts averaged per saliency estimate")
    guide: str | None = option(None, help="anchor guide prompt (None: each concept's own guide)")
    retain_weight: float | None = option(None, help="preservation term on the retain prompts (None: "
                                                    f"{RETAIN_WEIGHT[0]:g} for single concepts, {RETAIN_WEIGHT[1]:g} "
                                                    "for combinations and conditionals)")
    eta: float | None = option(None, help="negative guidance past the anchor in the target (None: "
                                          f"{ETA[0]:g} for single concepts, {ETA[1]:g} for compounds)")
    saliency_window: str = option("early", help="where saliency is scored: early (first third of the trajectory, "
                                                "layout) or late (last third, details)")
    seed: int = option(0, help="seed of every random draw")
    checkpoint_dir: str | None = option(None, help="folder for resumable checkpoints (None: no checkpoints)")
    checkpoint_every: int = option(50, help="steps between checkpoints")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ErasureLabError(f"unknown TRuST variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.saliency_window not in SALIENCY_WINDOWS:
            raise ErasureLabError(f"saliency_window must be one of {', '.join(SALIENCY_WINDOWS)}, "
                                  f"got {self.saliency_window!r}")
        if as_number(self, "mask_fraction") is not None:
            check_fraction("mask_fraction", self.mask_fraction)
        check_number(self, "xi", minimum=-math.inf)
        for name in ("lr", "kappa"):
            check_number(self, name)
        for name in ("beta", "retain_weight", "guidance", "eta"):
            check_number(self, name, strict=False)
        for name in ("refresh", "batch_size", "steps", "n_forget", "sample_steps", "saliency_prompts",
                     "checkpoint_every"):
            check_count(self, name)

    def resolve(self, pipe: Any, specs: list[ConceptSpec] = ()) -> dict[str, Any]:
        """Concrete settings: model defaults (SD or embedded), then η and the retain weight by concept
        kind (compound when every concept is a combination or conditional)."""
        settings = resolve_defaults(self, pipe, {"lr": LR, "refresh": REFRESH, "batch_size": BATCH,
                                                 "steps": STEPS[self.variant], "kappa": KAPPA,
                                                 "n_forget": N_FORGET, "sample_steps": SAMPLE_STEPS})
        k = int(bool(specs) and all(s.is_compound for s in specs))
        return {**settings, **{key: pair[k] for key, pair in (("eta", ETA), ("retain_weight", RETAIN_WEIGHT))
                               if settings[key] is None}}


# ---------------------------------------------------------------------------------------------
# The math (pure functions)
# ---------------------------------------------------------------------------------------------


def zscore_mask(grad: torch.Tensor, xi: float) -> torch.Tensor:
    """M = 1[(|g| − mean) / std > ξ] over one matrix; all False (never NaN) when std is 0."""
    s = grad.detach().abs().double()
    std = s.std(unbiased=False)
    if not std > 0:
        return torch.zeros_like(s, dtype=torch.bool)
    return (s - s.mean()) / std > xi


def fraction_mask(grad: torch.Tensor, fraction: float) -> torch.Tensor:
    """The max(1, round(f·n)) entries of largest |g| (ties broken by position, deterministically)."""
    s = grad.detach().abs().reshape(-1)
    k = min(s.numel(), max(1, round(fraction * s.numel())))
    mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    mask[torch.topk(s, k, sorted=False).indices] = True
    return mask.reshape(grad.shape)


def saliency_index(n_steps: int, window: str, generator: torch.Generator) -> int:
    """Sampler step at which saliency is scored, uniform within a third of the trajectory.

    "late" (the plain reconstruction): the last third, little noise left. "early": the first third,
    where the layout and the object are decided (the step index counts from pure noise).
    """
    third = max(1, math.ceil(n_steps / 3))
    start = n_steps - third if window == "late" else 0
    return start + int(torch.randint(0, third, (1,), generator=generator))


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0


def rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1


def csr_estimate(fn: Any, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], base: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """R̂ = mean (fn(θ + δ M⊙v) − fn(θ))² / δ² with v Rademacher and δ = 1e-3·RMS(θ_M); 0 for an empty mask.

    fn(overrides) evaluates the model with `overrides` in place of the named tensors; `base` is fn(θ).
    For a linear fn(θ) = Jθ, R̂·numel = ‖J (M⊙v)‖² exactly, for any δ.
    """
    masked = [params[n].detach()[masks[n]] for n in params if bool(masks[n].any())]
    if not masked:
        return base.new_zeros(())
    rms = torch.cat(masked).double().pow(2).mean().sqrt().item()
    delta = DELTA_SCALE * rms if rms > 0 else DELTA_SCALE
    overrides = {}
    for name, param in params.items():
        v = rademacher(param.shape, generator).to(param.device, param.dtype)
        overrides[name] = param + delta * (masks[name].to(param.dtype) * v)
    return (fn(overrides).float() - base.float()).pow(2).mean() / (delta * delta)


def proximal_shrink(param: torch.Tensor, mask: torch.Tensor, grad_abs: torch.Tensor, kappa_w: float) -> torch.Tensor:
    """Soft-thresholding on M: θ_i ← sign(θ_i) max(|θ_i| − κ_W ĝ_i, 0), ĝ = |g| / mean_M |g|; outside M unchanged."""
    if not bool(mask.any()):
        return param.clone()
    g_hat = grad_abs / grad_abs[mask].mean().clamp_min(torch.finfo(grad_abs.dtype).tiny)
    shrunk = param.sign() * (param.abs() - kappa_w * g_hat).clamp_min(0)
    return torch.where(mask, shrunk.to(param.dtype), param)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class TrustTrainer:
    """Saliency → mask → masked step (L_prev + CSR, or L_prev then CIP shrink)."""

    def __init__(self, tuner: FineTuner, forget: Cond, anchors: Cond, empty: Cond, retain: Cond | None,
                 settings: dict[str, Any]) -> None:
        self.tuner, self.forget, self.anchors, self.empty, self.retain = tuner, forget, anchors, empty, retain
        self.settings = settings
        self.sampler = ddim_scheduler(tuner.pipe, settings["sample_steps"])
        self.noise = noise_scheduler(tuner.pipe)
        self.rms = {n: float(w.double().pow(2).mean().sqrt()) for n, w in tuner.originals.items()}
        self.mask: dict[str, torch.Tensor] = {}
        self.grad_abs: dict[str, torch.Tensor] = {}
        self.union = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in tuner.params.items()}
        self.sizes: list[int] = []
        self.jaccards: list[float] = []
        self.refresh_steps: list[int] = []
        self.beta: float | None = settings["beta"]
        self.warned = False
        self.data, self.data_prompts = self.build_forget_set()

    # -- D_f ------------------------------------------------------------------------------------
    def build_forget_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """n_forget x_0 latents from the original model; item j uses forget anchor j mod n."""
        s, unet = self.settings, self.tuner.unet
        latents, prompts = [], []
        for start in range(0, s["n_forget"], DATA_CHUNK):
            idx = list(range(start, min(start + DATA_CHUNK, s["n_forget"])))
            noise = torch.cat([start_noise(unet, self.sampler, step_generator(s["seed"], STREAM_DATA, j)) for j in idx])
            which = [j % len(self.forget) for j in idx]
            latents.append(denoise(self.tuner.frozen, self.sampler, noise, self.forget.take(which), self.empty,
                                   s["guidance"], len(self.sampler.timesteps)))
            prompts.extend(which)
        return torch.cat(latents), torch.tensor(prompts, dtype=torch.long)

    # -- saliency and mask ----------------------------------------------------------------------
    def saliency(self, step: int) -> dict[str, torch.Tensor]:
        """g = ∇_{Θ_A} S at a point of the current model's own trajectory for 1–4 forget prompts."""
        s, tuner = self.settings, self.tuner
        generator = step_generator(s["seed"], STREAM_SALIENCY, step)
        k = min(s["saliency_prompts"], len(self.forget))
        prompts = torch.randperm(len(self.forget), generator=generator)[:k]
        i = saliency_index(len(self.sampler.timesteps), s["saliency_window"], generator)
        cond = self.forget.take(prompts)
        z = denoise(tuner.predict, self.sampler, start_noise(tuner.unet, self.sampler, generator, k), cond,
                    self.empty, s["guidance"], i)
        t = self.sampler.timesteps[i]
        with torch.no_grad():
            eps_empty = tuner.predict(z, t, self.empty.repeat(k))
        score = noise_mse(tuner.predict(z, t, cond), eps_empty)
        names = list(tuner.params)
        grads = torch.autograd.grad(score, [tuner.params[n] for n in names], allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(tuner.params[n])).detach() for n, g in zip(names, grads,
                                                                                                       strict=True)}

    def refresh(self, step: int) -> None:
        grads = self.saliency(step)
        fraction = self.settings["mask_fraction"]
        mask = {n: fraction_mask(g, fraction) if fraction is not None else zscore_mask(g, self.settings["xi"])
                for n, g in grads.items()}
        size = sum(int(m.sum()) for m in mask.values())
        if size == 0 and not self.warned:
            warnings.warn(f"TRuST: the saliency mask is empty at step {step} (no entry has z-score > "
                          f"{self.settings['xi']}); nothing is updated until it is refreshed", MethodWarning,
                          stacklevel=2)
            self.warned = True
        if self.mask:
            self.jaccards.append(jaccard(self.mask, mask))
        self.mask, self.grad_abs = mask, {n: g.abs() for n, g in grads.items()}
        for n, m in mask.items():
            self.union[n] |= m
        self.sizes.append(size)
        self.refresh_steps.append(step)

    # -- losses ---------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, forget-prompt index) for this step: D_f items noised at t ~ U{0..T−1}."""
        generator = step_generator(self.settings["seed"], STREAM_TRAIN, step)
        n = self.settings["batch_size"]
        items = torch.randint(0, self.data.shape[0], (n,), generator=generator)
        t = sample_timesteps(generator, n, self.noise.config.num_train_timesteps)
        eps = torch.randn(self.data[items].shape, generator=generator).to(self.data.device, self.data.dtype)
        x_t = self.noise.add_noise(self.data[items], eps, t.to(self.data.device))
        return x_t, t.to(self.data.device), self.data_prompts[items]

    def l_prev(self, x_t: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_prev, ε_θ(x_t, t, c_f)): map the forget prompt to the anchor's frozen prediction.

        With eta > 0 the target is pushed past the anchor, away from the concept:
        y = ε_θ0(c_a) − η·(ε_θ0(c_f) − ε_θ0(c_a)) (ESD's negative guidance with the anchor as base).
        """
        forget = self.forget.take(prompts)
        target = self.tuner.frozen(x_t, t, self.anchors.take(prompts))
        if self.settings["eta"] > 0:  # η = 0 needs no ε_θ0(c_f): skip the extra U-Net call
            target = negative_guidance(self.tuner.frozen(x_t, t, forget), target, self.settings["eta"])
        pred = self.tuner.predict(x_t, t, forget)
        return noise_mse(pred, target), pred

    def csr(self, step: int, x_t: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor,
            pred: torch.Tensor) -> torch.Tensor:
        cond = self.forget.take(prompts)
        generator = step_generator(self.settings["seed"], STREAM_PROBE, step)
        return csr_estimate(lambda over: self.tuner.perturbed(over, x_t, t, cond), self.tuner.params, self.mask,
                            pred, generator)

    def train_step(self, step: int) -> dict[str, float]:
        if step % self.settings["refresh"] == 0 or not self.mask:
            self.refresh(step)
        x_t, t, prompts = self.batch(step)
        l_prev, pred = self.l_prev(x_t, t, prompts)
        loss, logs = l_prev, {"l_prev": l_prev.item(), "mask": float(sum(int(m.sum()) for m in self.mask.values()))}
        if self.settings["variant"] == "csr":
            reg = self.csr(step, x_t, t, prompts, pred)
            if self.beta is None:
                self.beta = BETA_RATIO * l_prev.item() / reg.item() if reg.item() > 0 else 0.0
            loss = loss + self.beta * reg
            logs["csr"] = reg.item()
        if self.settings["retain_weight"] > 0:
            keep = retain_term(self.tuner, x_t, t, self.retain, step, self.settings["seed"])
            if keep is not None:
                loss = loss + self.settings["retain_weight"] * keep
                logs["retain"] = keep.item()
        self.tuner.step(loss, self.mask)
        if self.settings["variant"] == "cip":
            self.shrink()
        return {"loss": loss.item(), **logs}

    @torch.no_grad()
    def shrink(self) -> None:
        for name, param in self.tuner.params.items():
            kappa_w = self.settings["kappa"] * self.rms[name]
            param.copy_(proximal_shrink(param.detach(), self.mask[name], self.grad_abs[name], kappa_w))

    # -- checkpoint state -----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {}
        for name in self.tuner.params:
            tensors[f"union.{name}"] = self.union[name]
            if self.mask:
                tensors[f"mask.{name}"] = self.mask[name]
                tensors[f"gabs.{name}"] = self.grad_abs[name]
        return {"sizes": self.sizes, "jaccards": self.jaccards, "refresh_steps": self.refresh_steps,
                "beta": self.beta, "warned": self.warned}, tensors

    def load_state(self, state: Any, tensors: Any) -> None:
        self.sizes, self.jaccards = list(state["sizes"]), list(state["jaccards"])
        self.refresh_steps, self.beta, self.warned = list(state["refresh_steps"]), state["beta"], state["warned"]
        device = next(iter(self.tuner.params.values())).device
        for name in self.tuner.params:
            self.union[name] = tensors[f"union.{name}"].to(device)
            if f"mask.{name}" in tensors:
                self.mask[name] = tensors[f"mask.{name}"].to(device)
                self.grad_abs[name] = tensors[f"gabs.{name}"].to(device)

    def summary(self) -> dict[str, Any]:
        """What edit.meta records about the masks: union coverage and the history of mask sizes."""
        total = sum(m.numel() for m in self.union.values())
        touched = sum(int(m.sum()) for m in self.union.values())
        return {"touched_fraction": touched / total if total else 0.0, "touched_entries": touched,
                "trainable_entries": total, "mask_sizes": self.sizes,
                "mask_fractions": [size / total for size in self.sizes], "mask_jaccard": self.jaccards,
                "mask_refresh_steps": self.refresh_steps, "beta": self.beta,
                "layers_touched_fraction": {n: float(m.float().mean()) for n, m in self.union.items()}}


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def setup(pipe: Any, specs: list[ConceptSpec], config: TrustConfig,
          quiet: bool = True) -> tuple[FineTuner, dict[str, Any], list[tuple[str, str]], list[str]]:
    """The engine for a TRuST run (not yet entered), resolved settings, (forget, anchor) pairs, retain prompts."""
    settings = config.resolve(pipe, specs)
    pairs = forget_pairs(specs, config.guide)
    _, retain = combine(specs)
    names = select_parameters(pipe.unet, "trust")
    tuner = tuner_for(pipe, "trust", names, settings, config, quiet, pairs=pairs, retain=retain)
    return tuner, settings, pairs, retain


def make_trainer(tuner: FineTuner, settings: dict[str, Any], pairs: list[tuple[str, str]],
                 retain: list[str]) -> TrustTrainer:
    pipe = tuner.pipe
    retain_cond = retain_conditioning(pipe, retain, settings["retain_weight"])
    return TrustTrainer(tuner, encode_prompts(pipe, [f for f, _ in pairs]), encode_prompts(pipe, [a for _, a in pairs]),
                        encode_empty(pipe), retain_cond, settings)


@register_method("trust", TrustConfig,
                 "TRuST (erasurelab reconstruction): masked fine-tuning of re-selected concept neurons (Mansi et al.)")
def erase_trust(pipe: Any, specs: list[ConceptSpec], config: TrustConfig, quiet: bool = True) -> Edit:
    """TRuST fine-tuning; returns the trained − original deltas and leaves `pipe` unmodified."""
    tuner, settings, pairs, retain = setup(pipe, specs, config, quiet)
    with tuner:
        trainer = make_trainer(tuner, settings, pairs, retain)
        tuner.run(trainer, settings["steps"], desc=f"TRuST-{settings['variant']}")
        meta = {"label": "TRuST (erasurelab reconstruction)", "settings": settings, "subset": "trust",
                "pairs": [list(p) for p in pairs], "retain": retain if settings["retain_weight"] > 0 else [],
                "saliency_score": "guidance strength mean (eps(c_f) - sg[eps(empty)])^2 (not a CLIP/scorer net)",
                **trainer.summary()}
        return tuner.edit(meta)
