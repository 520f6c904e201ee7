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

Layout: the pure math (masks, CSR, shrink) is in trust_masks.py, the stateful trainer in
trust_trainer.py; this module holds the config, the registration and the driver, and re-exports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from erasurelab.concepts.spec import ConceptSpec, combine
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import (
    as_number,
    check_count,
    check_fraction,
    check_number,
    register_method,
    resolve_defaults,
)
from erasurelab.methods.finetune import FineTuner, tuner_for
from erasurelab.methods.training.diffusion import encode_empty, encode_prompts
from erasurelab.methods.training.losses import retain_conditioning
from erasurelab.methods.training.prompts import forget_pairs
from erasurelab.methods.training.subsets import select_parameters
from erasurelab.methods.trust_masks import (  # noqa: F401  (re-exported: the math is tested through this module)
    DELTA_SCALE,
    csr_estimate,
    fraction_mask,
    jaccard,
    proximal_shrink,
    rademacher,
    saliency_index,
    zscore_mask,
)
from erasurelab.methods.trust_trainer import BETA_RATIO, DATA_CHUNK, TrustTrainer  # noqa: F401  (re-exported)
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
#: Defaults of η and the retain weight by concept kind (`concept_kind`). A compound's anchor is a
#: real sibling ("a red square" for red+circle), so the plain target (η 0) already points away
#: from the concept, while η > 0 would also push the shared part ("red") away; its retain set (the
#: parts alone) is what keeps the parts. Combinations take a stronger retain term than
#: conditionals: a combination's parts alone must survive, while a conditional's retain term
#: pulls against erasing the object in its own context. Values chosen on dev concepts:
#: bench/results/compound_parts.md. Retain weights are (SD, embedded) pairs: a single concept on
#: SD has none (the spec's α), while on the embedded model its retain prompts, which name its
#: neighbours, keep them from being erased with it (chosen on dev concepts: methods_notes.md).
ETA = {"single": 2.0, "combination": 0.0, "conditional": 0.0}
RETAIN_WEIGHT = {"single": (0.0, 3.0), "combination": (7.0, 7.0), "conditional": (5.0, 5.0)}


def concept_kind(specs: list[ConceptSpec]) -> str:
    """"single" unless every concept is a compound; then "combination" if all are, else "conditional"."""
    if not specs or not all(s.is_compound for s in specs):
        return "single"
    return "combination" if all(s.kind == "combination" for s in specs) else "conditional"


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
    prompts (None: 0/3 for single concepts, 7 for combinations, 5 for conditionals; see ETA).
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
                                                    f"{RETAIN_WEIGHT['single'][0]:g} SD / "
                                                    f"{RETAIN_WEIGHT['single'][1]:g} embedded for single concepts, "
                                                    f"{RETAIN_WEIGHT['combination'][1]:g} for combinations, "
                                                    f"{RETAIN_WEIGHT['conditional'][1]:g} for conditionals)")
    eta: float | None = option(None, help="negative guidance past the anchor in the target (None: "
                                          f"{ETA['single']:g} for single concepts, {ETA['combination']:g} for "
                                          "compounds)")
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
        kind = concept_kind(list(specs))
        settings = resolve_defaults(self, pipe, {"lr": LR, "refresh": REFRESH, "batch_size": BATCH,
                                                 "steps": STEPS[self.variant], "kappa": KAPPA,
                                                 "n_forget": N_FORGET, "sample_steps": SAMPLE_STEPS,
                                                 "retain_weight": RETAIN_WEIGHT[kind]})
        return {**settings, "eta": ETA[kind] if settings["eta"] is None else settings["eta"]}


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
