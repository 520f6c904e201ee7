"""DUO: Direct Unlearning Optimization — Diffusion-DPO on SDEdit pairs with an output-preserving regulariser.

In short: for pairs (x⁻ shows the concept, x⁺ its SDEdit without it; `methods.pairs`), one
noise ε per pair and independent t⁺, t⁻ ∈ [t_min·T, t_max·T) (the spec: [0, 0.75·T)),
    Δ^± = e(θ; x₀^±, t^±, ε) − e(ref; x₀^±, t^±, ε),  e = mean over (C, H, W) of the squared error,
    L = mean softplus(β (Δ⁺ − Δ⁻)) + λ · mean (ε_θ(ε, T−1, c_∅) − ε_ref(ε, T−1, c_∅))²,
with ε_θ the U-Net plus a LoRA on the self-attention projections (`attn1` q/k/v/out; `layers` can
add or choose cross-attention) and ε_ref the same network with the adapter off. lr = lr_base·100/β and
λ = λ_base·β/100 (the official coupling) unless given. Optional, off by default (a departure from the
spec): `retain_weight` w adds λ·w·mean (ε_θ − ε_ref)² at x_t⁻ under the concept's
retain prompts, the same preservation at data timesteps, since the t = T−1 term alone constrains only
the first sampler step; `anchor_weight` μ adds μ·β·mean |Δ⁺|, which holds the adapted model's fit of
the safe member at the reference's: plain DPO on the embedded model widens its margin in large part by
fitting the safe images *better* than the reference (Δ⁺ < 0, bench/results/duo_notes.md), i.e. by learning
those images, SDEdit's look included; with μ > 1 that no longer pays, and the margin has to come from
fitting the unsafe member worse, as in NPO (Zhang et al., 2024), with the safe member as its retain
set. Conditioning on SD-family models is the real embedding of "" (the model forgets the visual
feature whatever the text); `conditioning="prompt"` conditions both pair members on the unsafe prompt
(the spec's ablation), the embedded default: on the tiny U-Net no β trained on "" erased without
breaking other attributes (bench/results/duo_notes.md).
Several concepts: one LoRA per concept, trained separately from the base model and summed (Edit `+`),
each with weight 1.

Embedded defaults differ from SD's where the tiny U-Net needs it (see DEFAULTS and bench/results/duo*.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.base import check_count, check_number, config_dict, register_method, resolve_defaults
from erasurelab.methods.lora_engine import ATTENTION_BLOCKS, LoraTuner, attention_targets, check_rank
from erasurelab.methods.pairs import PairSettings, build_pairs
from erasurelab.methods.training.diffusion import Cond, encode_prompts
from erasurelab.methods.training.losses import retain_conditioning, retain_draw
from erasurelab.models.sampling import noise_scheduler, seeded
from erasurelab.registry import option

CONDITIONINGS: tuple[str, ...] = ("empty", "prompt")
#: Random stream of DUO's per-step draws (pair indices, ε, t⁺, t⁻).
STREAM_DUO = 11
#: (SD-family, embedded) defaults; None in the config means "take these".
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "beta": (500.0, 20.0),
    "steps": (1000, 300),
    "batch_size": (4, 8),
    "rank": (32, 8),
    "pair_strength": (0.75, 0.3),
    "pair_negative": ("unsafe", "concept"),
    "pair_safe_caption": ("prompt", "judge"),
    "conditioning": ("empty", "prompt"),
}


def coupled_lr(beta: float, lr_base: float = 3e-4) -> float:
    """The official learning-rate coupling lr = lr_base · 100 / β (β 500 → 6e-5)."""
    return float(lr_base) * 100.0 / float(beta)


def coupled_lambda(beta: float, lam_base: float = 1e6) -> float:
    """The official regulariser coupling λ = λ_base · β / 100 (β 500 → 5e6)."""
    return float(lam_base) * float(beta) / 100.0


@dataclass(frozen=True)
class DuoConfig:
    """DUO's settings. None means the SD-family or embedded default (DEFAULTS); lr / lam None use the coupling.

    beta: DPO temperature β (> 0). lr_base, lam_base: bases of the coupling. steps, batch_size (pairs per
    step), n_pairs, rank / alpha (LoRA; alpha None = rank, scale 1), t_min / t_max (DPO timesteps in
    [t_min·T, t_max·T)),
    conditioning: empty | prompt. layers: self | cross | attention (the LoRA's blocks). weight_decay, grad_clip:
    AdamW and norm clipping. judge: filters the pairs. safe_prompt / prompts: override the pair prompts.
    pair_*: SDEdit settings (methods.pairs).
    """

    #: (SD-family, embedded) values of the None defaults (`resolve`).
    model_defaults: ClassVar[dict[str, tuple[Any, Any]]] = DEFAULTS

    beta: float | None = option(None, help="DPO temperature β, > 0 (None: the model's default)")
    lr: float | None = option(None, help="AdamW learning rate (None: the coupling lr_base·100/β)")
    lam: float | None = option(None, help="weight λ of the output-preserving term (None: the coupling "
                                          "lam_base·β/100)")
    lr_base: float = option(3e-4, help="base of the learning-rate coupling")
    lam_base: float = option(1e6, help="base of the λ coupling")
    steps: int | None = option(None, help="optimisation steps (None: the model's default)")
    batch_size: int | None = option(None, help="pairs per step (None: the model's default)")
    n_pairs: int = option(64, help="SDEdit pairs built per concept")
    rank: int | None = option(None, help="LoRA rank on the trained projections (None: the model's default)")
    alpha: float | None = option(None, help="LoRA alpha (None: the rank, so the scale is 1)")
    layers: str = option("self", help="attention blocks the LoRA trains: self (attn1, the official choice), cross "
                                      "(attn2) or attention (both)")
    retain_weight: float = option(0.0, help="weight, in units of λ, of the same output-preserving term on the "
                                            "concept's retain prompts at the unsafe members' noisy latents (0: the "
                                            "spec's DUO)")
    anchor_weight: float = option(0.0, help="weight μ of μ·β·|Δ⁺|, which holds the adapted model's fit of the safe "
                                            "member at the reference's (0: plain DPO, the spec)")
    t_min: float = option(0.0, help="DPO timesteps are drawn at or above t_min·T, in [0, t_max) (0: the spec)")
    t_max: float = option(0.75, help="DPO timesteps are drawn below t_max·T, in (0, 1]")
    conditioning: str | None = option(None, help="text both pair members are conditioned on: empty (\"\") or "
                                                 "prompt (the unsafe prompt) (None: the model's default)")
    weight_decay: float = option(1e-2, help="AdamW weight decay")
    grad_clip: float = option(1.0, help="gradient norm clipping")
    seed: int = option(42, help="seed of every random draw")
    judge: str = option("shapes", help="judge that keeps only pairs showing / not showing the concept")
    safe_prompt: str | None = option(None, help="prompt of the safe pair members (None: the concept phrase "
                                                "replaced by its guide)")
    prompts: tuple[str, ...] | None = option(None, help="unsafe pair prompts (None: the concept's own)")
    pair_guidance: float = option(7.5, help="classifier-free guidance of the pair renders")
    pair_strength: float | None = option(None, help="SDEdit strength of the safe members, in (0, 1] (None: the "
                                                    "model's default)")
    pair_steps: int | None = option(None, help="sampler steps of the pair renders (None: the model's default)")
    pair_attempts: int = option(20, help="render attempts per pair before giving up on it")
    pair_negative: str | None = option(None, help="SDEdit negative prompt: unsafe (the whole prompt), concept "
                                                  "(the concept word) or none (None: the model's default)")
    pair_safe_caption: str | None = option(None, help="SDEdit prompt of the safe members: prompt (the unsafe "
                                                      "prompt with the concept replaced) or judge (what the judge "
                                                      "reads in the unsafe image, minus the concept) (None: the "
                                                      "model's default)")
    pair_unsafe_member: str = option("render", help="unsafe pair member: render (the judge-positive render, the "
                                                    "spec) or sdedit (that render SDEdited like its safe member, "
                                                    "towards its full caption)")
    checkpoint_dir: str | None = option(None, help="folder for resumable checkpoints (None: no checkpoints)")
    checkpoint_every: int = option(50, help="steps between checkpoints")

    def __post_init__(self) -> None:
        for name in ("beta", "lr", "lr_base", "grad_clip", "alpha"):
            check_number(self, name)
        for name in ("lam", "lam_base", "weight_decay", "pair_guidance", "retain_weight", "anchor_weight"):
            check_number(self, name, strict=False)
        for name in ("steps", "batch_size", "n_pairs", "rank", "pair_steps", "pair_attempts", "checkpoint_every"):
            check_count(self, name)
        check_number(self, "t_max")
        if self.t_max > 1:
            raise ErasureLabError(f"t_max must be in (0, 1], got {self.t_max!r}")
        check_number(self, "t_min", strict=False)
        if self.t_min >= self.t_max:
            raise ErasureLabError(f"t_min must be below t_max ({self.t_max!r}), got {self.t_min!r}")
        if self.layers not in ATTENTION_BLOCKS:
            raise ErasureLabError(f"unknown LoRA layers {self.layers!r}; valid: {', '.join(ATTENTION_BLOCKS)}")
        if self.conditioning is not None and self.conditioning not in CONDITIONINGS:
            raise ErasureLabError(f"unknown conditioning {self.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        PairSettings(n_pairs=self.n_pairs, strength=self.pair_strength if self.pair_strength is not None else 0.75,
                     negative=self.pair_negative or "unsafe", safe_caption=self.pair_safe_caption or "prompt",
                     max_attempts=self.pair_attempts,
                     unsafe_member=self.pair_unsafe_member)  # validates the pair options before any work

    def resolve(self, pipe: Any) -> dict[str, Any]:
        """Concrete settings: model defaults filled in, the coupled lr and λ computed (raw values kept)."""
        settings = resolve_defaults(self, pipe, DEFAULTS)
        beta = float(settings["beta"])
        settings["lr_effective"] = coupled_lr(beta, self.lr_base) if self.lr is None else float(self.lr)
        settings["lam_effective"] = coupled_lambda(beta, self.lam_base) if self.lam is None else float(self.lam)
        settings["alpha"] = float(settings["rank"] if self.alpha is None else self.alpha)
        return settings

    def pair_settings(self, pipe: Any = None) -> PairSettings:
        """The SDEdit pair settings, the model's defaults (strength, negative, safe caption) filled in for `pipe`."""
        names = ("pair_strength", "pair_negative", "pair_safe_caption")
        resolved = resolve_defaults(self, pipe, {k: DEFAULTS[k] for k in names}) if pipe is not None else \
            {k: getattr(self, k) if getattr(self, k) is not None else DEFAULTS[k][0] for k in names}
        return PairSettings(n_pairs=self.n_pairs, guidance=self.pair_guidance, strength=resolved["pair_strength"],
                            steps=self.pair_steps, max_attempts=self.pair_attempts,
                            negative=resolved["pair_negative"], safe_caption=resolved["pair_safe_caption"],
                            unsafe_member=self.pair_unsafe_member, seed=self.seed)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def timestep_bounds(scheduler: Any, t_max: float = 0.75, t_min: float = 0.0) -> tuple[int, int, int]:
    """(lowest DPO timestep, exclusive upper bound, regulariser timestep): 0, 750 and 999 when T = 1000."""
    T = int(scheduler.config.num_train_timesteps)
    high = max(1, round(t_max * T))
    return min(round(t_min * T), high - 1), high, T - 1


def duo_terms(tuner: Any, scheduler: Any, z_unsafe: torch.Tensor, z_safe: torch.Tensor, eps: torch.Tensor,
              t_unsafe: torch.Tensor, t_safe: torch.Tensor, t_reg: int, cond_unsafe: Cond, cond_safe: Cond,
              empty: Cond, beta: float, retain: Cond | None = None) -> dict[str, torch.Tensor]:
    """DPO loss, regulariser and the per-pair Δ⁻ / Δ⁺ for one batch (one ε shared by both members).

    One batched call of the adapted U-Net on [x_t⁻, x_t⁺, ε] and one of the reference (adapter off).
    With `retain` (one retain prompt per pair) the calls also take x_t⁻ under the retain prompts, and
    "retain" is the squared distance of the two predictions there (0 without it).
    """
    from erasurelab.models.diffusion import prediction_target

    n = z_unsafe.shape[0]
    t_r = torch.full((n,), int(t_reg), dtype=t_unsafe.dtype)
    inputs = torch.cat([scheduler.add_noise(z_unsafe, eps, t_unsafe), scheduler.add_noise(z_safe, eps, t_safe), eps])
    steps = torch.cat([t_unsafe, t_safe, t_r])
    cond = Cond.cat([cond_unsafe, cond_safe, empty.repeat(n)])
    if retain is not None:
        inputs, steps, cond = torch.cat([inputs, inputs[:n]]), torch.cat([steps, t_unsafe]), Cond.cat([cond, retain])
    targets = torch.cat([prediction_target(scheduler, z_unsafe, eps, t_unsafe),
                         prediction_target(scheduler, z_safe, eps, t_safe)]).float()
    policy = tuner.predict(inputs, steps, cond).float()
    reference = tuner.reference(inputs, steps, cond).float()

    def error(x: torch.Tensor) -> torch.Tensor:
        return (x[:2 * n] - targets).pow(2).mean(dim=(1, 2, 3))

    delta = error(policy) - error(reference)
    d_unsafe, d_safe = delta[:n], delta[n:]
    dpo = F.softplus(float(beta) * (d_safe - d_unsafe)).mean()
    reg = (policy[2 * n:3 * n] - reference[2 * n:3 * n]).pow(2).mean()
    keep = (policy[3 * n:] - reference[3 * n:]).pow(2).mean() if retain is not None else torch.zeros(())
    return {"dpo": dpo, "reg": reg, "retain": keep, "anchor": d_safe.abs().mean(), "d_safe": d_safe,
            "d_unsafe": d_unsafe}


def duo_loss(terms: dict[str, torch.Tensor], settings: dict[str, Any]) -> torch.Tensor:
    """L_DPO + μ·β·mean |Δ⁺| + λ (R + w · retain): the objective one step minimises."""
    anchor = float(settings["anchor_weight"]) * float(settings["beta"]) * terms["anchor"]
    keep = terms["reg"] + settings["retain_weight"] * terms["retain"]
    return terms["dpo"] + anchor + settings["lam_effective"] * keep


class DuoTrainer:
    """One DUO step per call; every draw of step s from `seeded(seed, STREAM_DUO, s)`."""

    def __init__(self, tuner: LoraTuner, z_unsafe: torch.Tensor, z_safe: torch.Tensor, cond: Cond | None,
                 empty: Cond, settings: dict[str, Any], retain: Cond | None = None) -> None:
        self.tuner, self.z_unsafe, self.z_safe, self.cond, self.empty = tuner, z_unsafe, z_safe, cond, empty
        self.retain = retain
        self.s = settings
        self.scheduler = noise_scheduler(tuner.pipe)
        self.t_low, self.t_high, self.t_reg = timestep_bounds(self.scheduler, settings["t_max"], settings["t_min"])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pair indices, ε, t⁻, t⁺): pairs without replacement within a step, independent timesteps."""
        generator = seeded(self.s["seed"], STREAM_DUO, step)
        n_pairs, size = self.z_unsafe.shape[0], self.s["batch_size"]
        index = torch.randperm(n_pairs, generator=generator)[:size]
        if size > n_pairs:
            index = torch.cat([index, torch.randint(0, n_pairs, (size - n_pairs,), generator=generator)])
        eps = torch.randn((size, *self.z_unsafe.shape[1:]), generator=generator)
        t_unsafe = torch.randint(self.t_low, self.t_high, (size,), generator=generator)
        t_safe = torch.randint(self.t_low, self.t_high, (size,), generator=generator)
        return index, eps, t_unsafe, t_safe

    def terms(self, step: int) -> dict[str, torch.Tensor]:
        index, eps, t_unsafe, t_safe = self.batch(step)
        n = len(index)
        cond = self.empty.repeat(n) if self.cond is None else self.cond.take(index)
        return duo_terms(self.tuner, self.scheduler, self.z_unsafe[index], self.z_safe[index], eps, t_unsafe, t_safe,
                         self.t_reg, cond, cond, self.empty, self.s["beta"],
                         retain_draw(self.retain, n, step, self.s["seed"]))

    def train_step(self, step: int) -> dict[str, float]:
        terms = self.terms(step)
        loss = duo_loss(terms, self.s)
        norm = self.tuner.step(loss)
        margin = terms["d_safe"] - terms["d_unsafe"]
        return {"loss": loss.item(), "dpo": terms["dpo"].item(), "reg": terms["reg"].item(),
                "retain": terms["retain"].item(), "anchor": terms["anchor"].item(),
                "margin": margin.mean().item(), "accuracy": (margin < 0).float().mean().item(),
                "d_safe": terms["d_safe"].mean().item(), "grad_norm": norm}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}  # every draw is a function of (seed, step)

    def load_state(self, state: Any, tensors: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def erase_one(pipe: Any, spec: ConceptSpec, config: DuoConfig, settings: dict[str, Any], judge: Any,
              targets: list[str], quiet: bool) -> Edit:
    """Pairs, then one LoRA trained for one concept; the pipeline is left unchanged."""
    from erasurelab.models.diffusion import images_to_latents

    pairs = build_pairs(pipe, spec, judge, config.pair_settings(pipe), config.safe_prompt, config.prompts, quiet)
    z_unsafe, z_safe = images_to_latents(pipe, pairs.unsafe), images_to_latents(pipe, pairs.safe)
    empty = encode_prompts(pipe, [""])
    cond = encode_prompts(pipe, pairs.prompts) if settings["conditioning"] == "prompt" else None
    retain = retain_conditioning(pipe, list(spec.retain), settings["retain_weight"])
    checkpoints = None if config.checkpoint_dir is None else Path(config.checkpoint_dir) / spec.name
    key = {"method": "duo", "concept": spec.manifest_entry(), "pairs": pairs.report["cache_key"],
           **{k: v for k, v in settings.items() if k not in ("steps", "checkpoint_dir", "checkpoint_every")}}
    tuner = LoraTuner(pipe, targets, settings["rank"], settings["lr_effective"], settings["alpha"],
                      settings["weight_decay"], settings["grad_clip"], settings["seed"], quiet, checkpoints,
                      settings["checkpoint_every"], key)
    with tuner:
        trainer = DuoTrainer(tuner, z_unsafe, z_safe, cond, empty, settings, retain)
        logs = tuner.run(trainer, settings["steps"], desc=f"DUO {spec.name}")
        tail = logs[-max(1, len(logs) // 10):]
        summary = {k: sum(e[k] for e in tail) / len(tail) for k in ("dpo", "reg", "retain", "anchor", "margin",
                                                                "accuracy", "d_safe")}
        return tuner.edit({"concept": spec.name, "pairs": pairs.report, "final": summary})


@register_method("duo", DuoConfig, "DUO: Diffusion-DPO on SDEdit pairs, one LoRA per concept (Park et al., 2024)")
def erase_duo(pipe: Any, specs: list[ConceptSpec], config: DuoConfig, quiet: bool = True) -> Edit:
    """DUO; returns the summed per-concept LoRAs and leaves `pipe` unmodified.

    The pair judge is resolved for the concepts, so a judge that takes its labels from concept
    specs (`clip:FOLDER`) can see them.
    """
    from erasurelab.evaluation.judging import resolve_judge

    if not specs:
        raise ErasureLabError("nothing to erase: no concept given")
    settings = config.resolve(pipe)
    targets = attention_targets(pipe.unet, ATTENTION_BLOCKS[config.layers])
    check_rank(pipe.unet, targets, settings["rank"])
    judge = resolve_judge(config.judge, specs)
    parts = [erase_one(pipe, spec, config, settings, judge, targets, quiet) for spec in specs]
    edit = sum(parts[1:], parts[0]) if len(parts) > 1 else parts[0]
    edit.meta = {"settings": {**config_dict(config), **settings}, "per_concept": [p.meta for p in parts],
                 "lora_targets": targets}
    return edit
