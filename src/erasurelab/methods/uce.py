"""UCE: Unified Concept Editing, the closed-form regularised least-squares edit of K/V (Gandikota et al.).

For each projection W_0 (to_k / to_v of every attn2), with token vectors as rows:
    M  = λ I + s_e C_eᵀ C_e + s_p C_pᵀ C_p
    W* = (λ W_0 + s_e (C_g W_0ᵀ)ᵀ C_e + s_p W_0 C_pᵀ C_p) M⁻¹
erase tokens C_e are sent to what the ORIGINAL W_0 makes of the aligned guide tokens C_g,
preserve tokens C_p keep their outputs, and W stays near W_0.

Why the shared transform: W* − W_0 = W_0 G with G = s_e (C_g − C_e)ᵀ C_e M⁻¹, and G (d_txt ×
d_txt) is the same for every projection because all layers read the same text states. One
solve and one SVD of G serve the whole U-Net; each projection then costs one matmul, the edit
is exactly low rank (rank ≤ min(n_e, d_txt)), and targets can only come from the original
weights, since nothing is edited while computing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasurelab.concepts.spec import ConceptSpec, combine, expand
from erasurelab.edits import Edit, LowRank, compress_low_rank
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import MethodWarning, check_unwrapped, register_method
from erasurelab.models.conditioning import encode, is_clip_encoder, last_word_indices
from erasurelab.models.layers import cross_attention_layers
from erasurelab.registry import option

PROJECTIONS: tuple[str, ...] = ("to_k", "to_v")
TOKEN_MODES: tuple[str, ...] = ("auto", "tail", "last", "all")
#: The official implementation's --expand_prompts template lists.
OBJECT_TEMPLATES: tuple[str, ...] = ("{c}", "image of {c}", "photo of {c}", "portrait of {c}", "picture of {c}",
                                     "painting of {c}")
STYLE_TEMPLATES: tuple[str, ...] = ("{c}", "painting by {c}", "art by {c}", "artwork by {c}", "picture by {c}",
                                    "style of {c}")
COND_WARN = 1e8
#: Beyond this, float64 cannot solve the system meaningfully (1 / machine epsilon).
SINGULAR_COND = 1e15
#: Singular values of G below this fraction of the largest are dropped when factoring: far below
#: float64 round-off of the products, so the factorisation is exact in practice.
FACTOR_RTOL = 1e-12


@dataclass(frozen=True)
class UceConfig:
    """UCE's settings: λ (lam), erase scale s_e, preserve scale s_p; the official defaults.

    preserve_scale None: 0.1 for tail/all, 1.0 for last. template_guide None: True for `all`
    (our mode for bidirectional encoders), False for tail/last (the official code's bare guide).
    """

    #: (SD-family, embedded) values of the "auto"/None defaults (CLIP encoder vs the embedded BERT).
    model_defaults: ClassVar[dict[str, tuple[Any, Any]]] = {"token_mode": ("tail", "all"),
                                                            "template_guide": (False, True)}

    lam: float = option(0.5, help="λ: pull of the edited weights towards the original ones (>= 0)")
    erase_scale: float = option(1.0, help="s_e: weight of sending the concept's tokens to the guide's outputs (> 0)")
    preserve_scale: float | None = option(None, help="s_p: weight of keeping the preserve prompts' outputs "
                                                     "(None: 0.1 for tail/all, 1.0 for last)")
    token_mode: str = option("auto", help="token rows edited: tail (after the start token), last (the concept's "
                                          "last word), all (every position); auto: tail for CLIP, else all")
    guide: str | None = option(None, help="prompt the concept is mapped to (None: each concept's own guide)")
    preserve: tuple[str, ...] | None = option(None, help="prompts whose outputs are kept (None: the concepts' "
                                                         "same-category neighbours plus the empty prompt)")
    projections: tuple[str, ...] = option(PROJECTIONS, help="cross-attention projections to edit: to_k, to_v")
    use_templates: bool = option(True, help="expand each concept's words with UCE's prompt templates "
                                            "('photo of {c}', ...)")
    template_guide: bool | None = option(None, help="give the guide the erased prompt's template (None: "
                                                    "True for all, False for tail/last)")

    def __post_init__(self) -> None:
        if self.token_mode not in TOKEN_MODES:
            raise ErasureLabError(f"unknown token_mode {self.token_mode!r}; valid: {', '.join(TOKEN_MODES)}")
        if not self.lam >= 0.0:
            raise ErasureLabError(f"lam must be >= 0, got {self.lam}")
        if not self.erase_scale > 0.0:
            raise ErasureLabError(f"erase_scale must be > 0, got {self.erase_scale}")
        if self.preserve_scale is not None and not self.preserve_scale >= 0.0:
            raise ErasureLabError(f"preserve_scale must be >= 0, got {self.preserve_scale}")
        projections = (self.projections,) if isinstance(self.projections, str) else tuple(self.projections)
        if not projections or any(p not in PROJECTIONS for p in projections):
            raise ErasureLabError(f"projections must be a non-empty subset of {', '.join(PROJECTIONS)}")
        object.__setattr__(self, "projections", projections)
        if self.preserve is not None:
            object.__setattr__(self, "preserve", (self.preserve,) if isinstance(self.preserve, str)
                               else tuple(self.preserve))


# ---------------------------------------------------------------------------------------------
# The math (pure functions, float64, token vectors as rows)
# ---------------------------------------------------------------------------------------------


def normal_matrix(c_erase: torch.Tensor, c_preserve: torch.Tensor, lam: float, s_e: float,
                  s_p: float) -> torch.Tensor:
    """M = λ I + s_e C_eᵀ C_e + s_p C_pᵀ C_p."""
    d = c_erase.shape[1]
    c_e, c_p = c_erase.double(), c_preserve.double()
    return lam * torch.eye(d, dtype=torch.float64) + s_e * c_e.T @ c_e + s_p * c_p.T @ c_p


def solve_direct(w0: torch.Tensor, c_erase: torch.Tensor, c_guide: torch.Tensor, c_preserve: torch.Tensor,
                 lam: float, s_e: float, s_p: float) -> torch.Tensor:
    """W* by the normal equations exactly as the UCE paper writes them (the reference implementation)."""
    w0, c_e, c_g, c_p = w0.double(), c_erase.double(), c_guide.double(), c_preserve.double()
    m = normal_matrix(c_e, c_p, lam, s_e, s_p)
    v_star = c_g @ w0.T                                      # rows: v*_i = W_0 c*_i
    rhs = lam * w0 + s_e * v_star.T @ c_e + s_p * w0 @ c_p.T @ c_p
    return torch.linalg.solve(m, rhs.T).T                    # M symmetric: (RHS M⁻¹)ᵀ = M⁻¹ RHSᵀ


def edit_transform(c_erase: torch.Tensor, c_guide: torch.Tensor, c_preserve: torch.Tensor, lam: float, s_e: float,
                   s_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, M) with W* = W_0 + W_0 G for every projection reading these text states."""
    c_e, c_g = c_erase.double(), c_guide.double()
    m = normal_matrix(c_e, c_preserve, lam, s_e, s_p)
    cond = float(torch.linalg.cond(m))
    if not cond < SINGULAR_COND:
        raise ErasureLabError(f"UCE system is singular (cond(M) = {cond:.1e}; lam = {lam} with fewer independent "
                              "token vectors than text dimensions); use lam > 0")
    solved = torch.linalg.solve(m, c_e.T)                    # M⁻¹ C_eᵀ, never an explicit inverse
    return s_e * (c_g - c_e).T @ solved.T, m


def factor_transform(g: torch.Tensor, rtol: float = FACTOR_RTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """G = U_r (S_r V_rᵀ) at its numerical rank: (left (d, r), right (r, d))."""
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return u[:, :keep] * s[:keep], vh[:keep]


def layer_factors(w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact LoRA factors of W_0 G = (W_0 U S) Vᵀ, re-compressed when the rank exceeds d_out."""
    b, a = w0.double() @ left, right
    if b.shape[1] > min(b.shape[0], a.shape[1]):
        b, a, _ = compress_low_rank(b, a)
    return b, a


# ---------------------------------------------------------------------------------------------
# Token selection
# ---------------------------------------------------------------------------------------------


def pair_tokens(erase: torch.Tensor, guide: torch.Tensor, k_erase: int, k_guide: int,
                mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned rows (C_e, C_g) from one erase and one guide prompt's (L, d) token states.

    tail: from each last word token to the end, both cut to L − max(k_e, k_g) rows;
    last: the last word token only; all: every one of the L positions.
    """
    if mode == "all":
        return erase, guide
    if mode == "last":
        return erase[k_erase:k_erase + 1], guide[k_guide:k_guide + 1]
    n = erase.shape[0] - max(k_erase, k_guide)
    return erase[k_erase:k_erase + n], guide[k_guide:k_guide + n]


def preserve_tokens(states: torch.Tensor, k_last: int, mode: str) -> torch.Tensor:
    """Preserve rows: all L positions (tail/all) or the last word token (last)."""
    return states[k_last:k_last + 1] if mode == "last" else states


def resolve_mode(pipe: Any, mode: str) -> str:
    if mode != "auto":
        return mode
    return "tail" if is_clip_encoder(pipe) else "all"


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def templates_for(spec: ConceptSpec) -> tuple[str, ...]:
    return STYLE_TEMPLATES if spec.category == "style" else OBJECT_TEMPLATES


def erase_pairs(specs: Sequence[ConceptSpec], config: UceConfig, template_guide: bool) -> list[tuple[str, str]]:
    """(erase prompt, guide prompt) pairs for all concepts, in order, without duplicates.

    Template-built anchors are rebuilt with UCE's templates; with template_guide the guide gets
    the same template ("photo of red" -> "photo of"), so position-by-position pairing (`all`)
    changes only what the concept word contributes. Explicit anchors map to the bare guide.
    """
    pairs: dict[tuple[str, str], None] = {}
    for spec in specs:
        guide = spec.guide if config.guide is None else config.guide
        built: set[str] = set()
        if config.use_templates and spec.templates is not None and spec.synonyms:
            built = set(expand(spec.templates, spec.synonyms))
            for word in spec.synonyms:
                for t in templates_for(spec):
                    pairs[(t.format(c=word).strip(), t.format(c=guide).strip() if template_guide else guide)] = None
        for anchor in spec.forget:
            if anchor not in built:
                pairs[(anchor, guide)] = None
    return list(pairs)


def preserve_prompts(specs: Sequence[ConceptSpec], config: UceConfig) -> list[str]:
    """User list, or same-category neighbours (UCE templates) plus "", minus anything naming a target."""
    if config.preserve is not None:
        return list(config.preserve)
    if config.use_templates:
        specs = [s.with_templates(templates_for(s)) for s in specs]
    _, retain = combine(specs)
    return [*retain, ""] if "" not in retain else retain


def _token_rows(pipe: Any, pairs: list[tuple[str, str]], preserve: list[str],
                mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    erase_prompts = [e for e, _ in pairs]
    guide_prompts = [g for _, g in pairs]
    e_states = encode(pipe, erase_prompts).embeds.detach().cpu().double()
    g_states = encode(pipe, guide_prompts).embeds.detach().cpu().double()
    k_e, k_g = last_word_indices(pipe, erase_prompts), last_word_indices(pipe, guide_prompts)
    pairs_rows = [pair_tokens(e_states[i], g_states[i], k_e[i], k_g[i], mode) for i in range(len(pairs))]
    c_e = torch.cat([p[0] for p in pairs_rows])
    c_g = torch.cat([p[1] for p in pairs_rows])
    d = c_e.shape[1]
    if preserve:
        p_states = encode(pipe, preserve).embeds.detach().cpu().double()
        k_p = last_word_indices(pipe, preserve)
        c_p = torch.cat([preserve_tokens(p_states[i], k_p[i], mode) for i in range(len(preserve))])
    else:
        c_p = torch.zeros(0, d, dtype=torch.float64)
    if not (torch.isfinite(c_e).all() and torch.isfinite(c_g).all() and torch.isfinite(c_p).all()):
        raise ErasureLabError("the text encoder produced NaN/inf token states; check its weights and dtype")
    return c_e, c_g, c_p


@register_method("uce", UceConfig, "UCE: closed-form least-squares remap of cross-attention K/V (Gandikota et al.)")
def erase_uce(pipe: Any, specs: list[ConceptSpec], config: UceConfig, quiet: bool = True) -> Edit:
    """UCE edit of every attn2 to_k/to_v; the pipeline itself is not modified."""
    mode = resolve_mode(pipe, config.token_mode)
    s_p = config.preserve_scale if config.preserve_scale is not None else (1.0 if mode == "last" else 0.1)
    s_e, lam = config.erase_scale, config.lam
    template_guide = config.template_guide if config.template_guide is not None else mode == "all"
    pairs = erase_pairs(specs, config, template_guide)
    preserve = [p for p in preserve_prompts(specs, config) if p not in {e for e, _ in pairs}]
    meta: dict[str, Any] = {"token_mode": mode, "preserve_scale": s_p, "template_guide": template_guide,
                            "pairs": [list(p) for p in pairs],
                            "preserve": preserve, "layers": {}}
    if not pairs:
        warnings.warn("UCE: the erase set is empty; the edit is a no-op", MethodWarning, stacklevel=2)
        return Edit({}, meta)
    layers = cross_attention_layers(pipe.unet)
    check_unwrapped(layers)
    c_e, c_g, c_p = _token_rows(pipe, pairs, preserve, mode)
    if c_e.shape[1] != layers[0].context_dim:
        raise ErasureLabError(f"text states have width {c_e.shape[1]} but the U-Net's cross-attention reads "
                              f"{layers[0].context_dim}: text encoder and U-Net do not belong together")
    g, m = edit_transform(c_e, c_g, c_p, lam, s_e, s_p)
    cond = float(torch.linalg.cond(m))
    if cond > COND_WARN:
        warnings.warn(f"UCE: the system is ill-conditioned (cond(M) = {cond:.2e} > 1e8); increase lam",
                      MethodWarning, stacklevel=2)
    left, right = factor_transform(g)
    meta.update({"cond_M": cond, "n_erase_vectors": int(c_e.shape[0]), "n_preserve_vectors": int(c_p.shape[0]),
                 "erase_weight": s_e * c_e.shape[0], "preserve_weight": s_p * c_p.shape[0],
                 "transform_rank": int(left.shape[1])})
    deltas: dict[str, LowRank] = {}
    for layer in layers:
        info: dict[str, Any] = {}
        for proj in config.projections:
            w0 = getattr(layer.module, proj).weight.detach().cpu()
            if left.shape[1] == 0:
                info[f"rank_{proj}"] = 0
                continue
            b, a = layer_factors(w0, left, right)
            deltas[f"{layer.name}.{proj}.weight"] = LowRank(b, a)
            info[f"rank_{proj}"] = int(b.shape[1])
        meta["layers"][layer.name] = info
    return Edit(deltas, meta)
