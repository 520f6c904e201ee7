"""ESD: Erasing Concepts from Diffusion Models by negative-guidance fine-tuning (Gandikota et al.).

The trained U-Net ε_θ, conditioned on a forget anchor c, learns to predict what the original ε_*
predicts under negative classifier-free guidance away from c:
    y = ε_*(x_t, t, e_∅) − η·[ε_*(x_t, t, e_c) − ε_*(x_t, t, e_∅)],   L = mean (ε_θ(x_t, t, e_c) − y)².
η is stored in the paper's convention (the official training script's `negative_guidance` ng is η + 1).

Variants (the paper's parameter subsets): x = every `attn2` parameter (styles), u = everything but
`attn2`, time_embedding, conv_norm_out, conv_out (objects, nudity), x-strict = attn2 to_k/to_v,
all = every parameter. Where x_t comes from (`sample_with`): see the engine's docstring
(`erasurelab.methods.finetune`); the default `pool` caches frozen-model DDIM trajectories once.
Multi-concept and multi-anchor runs cycle the forget anchors across steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasurelab.concepts.spec import ConceptSpec, combine
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import check_count, check_number, register_method, resolve_defaults
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
from erasurelab.methods.training.pools import frozen_pool
from erasurelab.methods.training.prompts import forget_pairs
from erasurelab.methods.training.streams import STREAM_POOL, STREAM_TRAIN, step_generator
from erasurelab.methods.training.subsets import select_parameters
from erasurelab.models.sampling import is_embedded
from erasurelab.registry import option

VARIANTS: tuple[str, ...] = ("x", "u", "x-strict", "all")
SAMPLE_WITH: tuple[str, ...] = ("pool", "trained", "frozen")
#: (SD-1.x, embedded) defaults; the embedded ones are in bench/results/methods_notes.md.
LR = (1e-5, 5e-4)
STEPS = (1000, 300)
SAMPLE_STEPS = (50, 20)
#: Trajectories drawn for the pool per batch of the sampler (memory bound only).
POOL_CHUNK = 32


@dataclass(frozen=True)
class EsdConfig:
    """ESD's settings; None means "this model's default" (the paper's for SD-1.x, or the embedded one's).

    variant: x | u | x-strict | all (also "esd-x", ...); None: x for style concepts, u otherwise
    on SD, x always on the embedded model. eta: negative guidance η (paper convention).
    lr: Adam learning rate (1e-5 SD, 5e-4 embedded: the small U-Net needs larger steps to forget in 300).
    steps: iterations (1000 SD, 300 embedded). batch_size: 1. sample_steps: DDIM steps of the x_t
    sampler (50 SD, 20 embedded). start_guidance: CFG while sampling x_t (3.0).
    sample_with: pool (default, cached frozen trajectories) | trained | frozen (fresh per step).
    pool_size: trajectories in the pool. retain_weight: weight of an optional preservation term on
    the retain anchors (0: plain ESD). seed: every random draw. checkpoint_dir/every: resumable runs.
    """

    #: (SD-1.x, embedded) values of the None defaults (`resolve`).
    model_defaults: ClassVar[dict[str, tuple[Any, Any]]] = {"variant": ("u", "x"), "lr": LR, "steps": STEPS,
                                                            "sample_steps": SAMPLE_STEPS}

    variant: str | None = option(None, help="parameters trained: x (cross-attention), x-strict (its K/V), u "
                                            "(outside cross-attention), all; None: x for styles and on the "
                                            "embedded model, else u")
    eta: float = option(1.0, help="negative guidance η: how far the target is pushed away from the concept")
    lr: float | None = option(None, help="Adam learning rate (None: the model's default)")
    steps: int | None = option(None, help="training iterations (None: the model's default)")
    batch_size: int = option(1, help="x_t samples per iteration")
    sample_steps: int | None = option(None, help="DDIM steps of the x_t sampler (None: the model's default)")
    start_guidance: float = option(3.0, help="classifier-free guidance while sampling x_t")
    sample_with: str = option("pool", help="x_t source: pool (cached frozen trajectories), trained or frozen "
                                           "(fresh per step)")
    pool_size: int = option(32, help="trajectories in the pool")
    retain_weight: float = option(0.0, help="weight of a preservation term on the retain anchors (0: plain ESD)")
    seed: int = option(0, help="seed of every random draw")
    checkpoint_dir: str | None = option(None, help="folder for resumable checkpoints (None: no checkpoints)")
    checkpoint_every: int = option(50, help="iterations between checkpoints")

    def __post_init__(self) -> None:
        if self.variant is not None:
            variant = str(self.variant).strip().lower().removeprefix("esd-")
            if variant not in VARIANTS:
                raise ErasureLabError(f"unknown ESD variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
            object.__setattr__(self, "variant", variant)
        if self.sample_with not in SAMPLE_WITH:
            raise ErasureLabError(f"unknown sample_with {self.sample_with!r}; valid: {', '.join(SAMPLE_WITH)}")
        check_number(self, "lr")
        check_number(self, "eta", strict=False)
        check_number(self, "retain_weight", strict=False)
        check_number(self, "start_guidance", strict=False)
        for name in ("steps", "sample_steps", "batch_size", "pool_size", "checkpoint_every"):
            check_count(self, name)

    def resolve(self, pipe: Any, specs: list[ConceptSpec]) -> dict[str, Any]:
        """Concrete settings for this model: the config with every None replaced by this model's default."""
        # The embedded model reads text only through attn2, so ESD-u (which leaves attn2 out) barely
        # moves it: x is its default for every category.
        styles_only = bool(specs) and all(s.category == "style" for s in specs)
        variant = self.variant or ("x" if styles_only or is_embedded(pipe) else "u")
        return {**resolve_defaults(self, pipe, {"lr": LR, "steps": STEPS, "sample_steps": SAMPLE_STEPS}),
                "variant": variant}


# ---------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------


#: y = ε_∅ − η (ε_c − ε_∅): the engine's negative guidance with base ∅.
esd_target = negative_guidance


def eta_from_negative_guidance(negative_guidance: float) -> float:
    """The official script's target ε_c − ng (ε_c − ε_∅) equals the paper's with η = ng − 1."""
    return float(negative_guidance) - 1.0


def negative_guidance_from_eta(eta: float) -> float:
    return float(eta) + 1.0


def manifest_eta(meta: dict[str, Any]) -> float | None:
    """η of a saved ESD run: from its settings, else from the official-script value ng it records.

    Older manifests named that value `negative_guidance_2025`; both keys are read.
    """
    if "eta" in meta.get("settings", {}):
        return float(meta["settings"]["eta"])
    for key in ("negative_guidance", "negative_guidance_2025"):
        if key in meta:
            return eta_from_negative_guidance(meta[key])
    return None


def subset_name(variant: str) -> str:
    return f"esd-{variant}"


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class EsdTrainer:
    """One ESD step per call; x_t from the pool or from a fresh partial trajectory."""

    def __init__(self, tuner: FineTuner, forget: Cond, empty: Cond, retain: Cond | None,
                 settings: dict[str, Any]) -> None:
        self.tuner, self.forget, self.empty, self.retain = tuner, forget, empty, retain
        self.settings = settings
        self.scheduler = ddim_scheduler(tuner.pipe, settings["sample_steps"])
        self.pool: torch.Tensor | None = None
        self.pool_from_cache = False
        if settings["sample_with"] == "pool":
            self.pool, self.pool_from_cache = self.build_pool()

    # -- x_t ------------------------------------------------------------------------------------
    def build_pool(self) -> tuple[torch.Tensor, bool]:
        """(pool_size, N, C, H, W): every latent of each frozen-model trajectory; trajectory j uses anchor j mod n.

        Also whether it came from the disk cache (`training.pools`)."""
        s = self.settings
        return frozen_pool("esd_pool", self.tuner, self.scheduler, self.forget, self.empty, s["pool_size"], s["seed"],
                           STREAM_POOL, POOL_CHUNK, s["start_guidance"], record=True)

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(x_t, t per sample, forget-anchor index per sample) for this step, from its own generator."""
        s, n = self.settings, len(self.forget)
        generator = step_generator(s["seed"], STREAM_TRAIN, step)
        timesteps = self.scheduler.timesteps
        if self.pool is not None:
            traj = torch.randint(0, self.pool.shape[0], (s["batch_size"],), generator=generator)
            index = torch.randint(0, self.pool.shape[1], (s["batch_size"],), generator=generator)
            x_t = self.pool[traj, index]
            return x_t, timesteps[index.to(timesteps.device)], [int(j) % n for j in traj]
        i = int(torch.randint(0, len(timesteps), (1,), generator=generator))
        prompts = [(step * s["batch_size"] + b) % n for b in range(s["batch_size"])]
        noise = start_noise(self.tuner.unet, self.scheduler, generator, s["batch_size"])
        model = self.tuner.predict if s["sample_with"] == "trained" else self.tuner.frozen
        with torch.no_grad():
            x_t = denoise(model, self.scheduler, noise, self.forget.take(prompts), self.empty,
                          s["start_guidance"], i, unet=self.tuner.unet)
        return x_t, timesteps[i].expand(s["batch_size"]), prompts

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, x_t: torch.Tensor, t: torch.Tensor, prompts: list[int]) -> torch.Tensor:
        """mean (ε_θ(x_t, t, e_c) − sg[y])² with y from the frozen weights."""
        cond = self.forget.take(prompts)
        n = x_t.shape[0]
        with torch.no_grad():
            both = self.tuner.frozen(torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([cond, self.empty.repeat(n)]))
            eps_c, eps_0 = both.chunk(2)
            target = esd_target(eps_c, eps_0, self.settings["eta"])
        return noise_mse(self.tuner.predict(x_t, t, cond), target)

    def train_step(self, step: int) -> dict[str, float]:
        x_t, t, prompts = self.sample(step)
        erase = self.loss(x_t, t, prompts)
        loss, logs = erase, {"esd": erase.item()}
        if self.settings["retain_weight"] > 0:
            keep = retain_term(self.tuner, x_t, t, self.retain, step, self.settings["seed"])
            if keep is not None:
                loss = loss + self.settings["retain_weight"] * keep
                logs["retain"] = keep.item()
        self.tuner.step(loss)
        return {"loss": loss.item(), **logs}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}  # everything ESD draws is a function of (seed, step); the pool is rebuilt exactly

    def load_state(self, state: Any, tensors: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def setup(pipe: Any, specs: list[ConceptSpec], config: EsdConfig,
          quiet: bool = True) -> tuple[FineTuner, dict[str, Any], list[str], list[str]]:
    """The engine for an ESD run (not yet entered) with resolved settings and the prompts it uses."""
    settings = config.resolve(pipe, specs)
    forget = [anchor for anchor, _ in forget_pairs(specs)]
    _, retain = combine(specs)
    names = select_parameters(pipe.unet, subset_name(settings["variant"]))
    tuner = tuner_for(pipe, "esd", names, settings, config, quiet, forget=forget, retain=retain)
    return tuner, settings, forget, retain


def make_trainer(tuner: FineTuner, settings: dict[str, Any], forget: list[str], retain: list[str]) -> EsdTrainer:
    pipe = tuner.pipe
    retain_cond = retain_conditioning(pipe, retain, settings["retain_weight"])
    return EsdTrainer(tuner, encode_prompts(pipe, forget), encode_empty(pipe), retain_cond, settings)


@register_method("esd", EsdConfig, "ESD: negative-guidance fine-tuning of the U-Net (Gandikota et al., ICCV 2023)")
def erase_esd(pipe: Any, specs: list[ConceptSpec], config: EsdConfig, quiet: bool = True) -> Edit:
    """ESD fine-tuning; returns the trained − original deltas and leaves `pipe` unmodified."""
    tuner, settings, forget, retain = setup(pipe, specs, config, quiet)
    with tuner:
        trainer = make_trainer(tuner, settings, forget, retain)
        tuner.run(trainer, settings["steps"], desc=f"ESD-{settings['variant']}")
        meta = {"settings": settings, "subset": subset_name(settings["variant"]), "forget": forget,
                "retain": retain if settings["retain_weight"] > 0 else [],
                "negative_guidance": negative_guidance_from_eta(settings["eta"]),
                "pool_from_cache": trainer.pool_from_cache}
        return tuner.edit(meta)
