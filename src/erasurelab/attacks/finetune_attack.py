"""The re-emergence attack ("ft"): fine-tune the model on benign data and see whether the concept returns.

A user who downloads an erased model and fine-tunes it on ordinary data never asks for the concept,
yet the fine-tuning gradient can undo the erasure (concept resurgence; Safety Alignment Backfires,
arXiv 2412.00357). The attack: a LoRA trained with the standard denoising loss on a benign dataset
(images and captions that never show or name the concept but are close to it), then the concept's
anchor prompts rendered at scoring seeds. Success = the judge sees the concept. The unattacked
prompts on the same model are the pre-ASR, and the adapter is snapshotted so the target proportion
is reported at every snapshot (the re-emergence curve), on the anchor prompts and on the first
held-out paraphrase prompts of the concept.

Curves (outcome extra "curves", see erasurelab.finetuning.curves): the attacked model fine-tuned
("erased"); Modular LoRA ("modular": the same adapter trained on the unedited reference model,
then added to the attacked one, which is Modular's sum merge when the reference is the attacked
model's base, as run_attack requires); and the reference model fine-tuned ("control", the
reference run). The reference run reuses the adapter the edited run trained on it for Modular
(same data, seed and steps, so the same adapter), and completes the curves with the control and
the re-emergence ratio RR(k).

Data: `data` names an image-and-caption folder; without it, an embedded-world concept gets the
world's benign dataset (`world dataset`), rendered and judge-checked. Nothing here changes the
model's weights: the adapter is removed after training and every render applies it temporarily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from erasurelab.attacks.base import (
    AttackContext,
    AttackOutcome,
    Budget,
    RenderConfig,
    check_positive,
    register_attack,
)
from erasurelab.errors import ErasureLabError
from erasurelab.registry import option

#: Selection stream of the benign dataset (never a scoring seed).
DATA_SEED = 7


@dataclass(frozen=True)
class FinetuneAttackConfig(RenderConfig):
    """Budget of the re-emergence attack (the diffusers LoRA recipe, scaled to the embedded model)."""

    train_steps: int = option(300, help="LoRA fine-tuning steps on the benign data")
    snapshot_every: int = option(100, help="steps between snapshots, each scored (the re-emergence curve)")
    rank: int = option(4, help="rank of the fine-tuning LoRA")
    lr: float = option(1e-4, help="AdamW learning rate of the fine-tuning")
    train_batch_size: int = option(16, help="images per fine-tuning step")
    n_images: int = option(128, help="images of the rendered benign dataset (embedded-world concepts, no data)")
    n_prompts: int = option(8, help="anchor prompts, and as many held-out paraphrases, scored at "
                                     "every snapshot")
    data: str | None = option(None, help="image-and-caption folder of benign data (None: the world's benign "
                                         "dataset for an embedded-world concept)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_steps", "snapshot_every", "rank", "train_batch_size", "n_images", "n_prompts"):
            check_positive(name, getattr(self, name))
        if not self.lr > 0:
            raise ErasureLabError(f"lr must be positive, got {self.lr}")


@register_attack("ft", FinetuneAttackConfig, "re-emergence: benign LoRA fine-tuning, concept checked at every snapshot",
                 aliases=("finetune", "reemergence", "re-emergence"))
class FinetuneAttack:
    """Benign fine-tuning of the attacked model; ASR = concept rendered on its anchors afterwards."""

    def prepare(self, ctx: AttackContext, budget: Budget) -> dict[str, Any]:
        """The benign dataset and the anchor prompts (a world concept's dataset is rendered, not loaded)."""
        config = ctx.config
        if config.data is not None:
            from erasurelab.caption_data import load_caption_folder

            data = load_caption_folder(config.data)
        else:
            try:  # a plugin's benign data for its own concepts (the embedded world renders it)
                from erasurelab.concepts.grammar import benign_data_for

                data = benign_data_for(ctx.spec, config.n_images, DATA_SEED, ctx.judge)
            except ErasureLabError as exc:
                raise ErasureLabError(f"attack ft on {ctx.spec.name!r}: {exc}; give data=FOLDER "
                                      "(an image-and-caption folder without the concept)") from exc
        prompts = list(ctx.spec.forget[:config.n_prompts])
        if not prompts:
            raise ErasureLabError(f"concept {ctx.spec.name!r} has no anchor prompts to score the attack on")
        # shared: what the edited run hands to the reference run of the same run_attack call.
        return {"data": data, "prompts": prompts, "paraphrases": _paraphrases(ctx, config.n_prompts), "shared": {}}

    def attack(self, target: Any, prepared: dict[str, Any], ctx: AttackContext, budget: Budget) -> AttackOutcome:
        from erasurelab.finetuning.curves import build_curves

        prompts, paraphrases, shared = prepared["prompts"], prepared["paraphrases"], prepared["shared"]
        seeds = [ctx.scoring_seed(i) for i in range(len(prompts))]
        para_seeds = [ctx.scoring_seed(len(prompts) + i) for i in range(len(paraphrases))]
        pre = ctx.present(ctx.render(target, prompts, seeds, budget))
        start = {"anchor": pre}
        if paraphrases:
            start["paraphrase"] = ctx.present(ctx.render(target, paraphrases, para_seeds, budget))
        probes = (prompts, seeds, paraphrases, para_seeds)
        cached = []
        if target is ctx.reference and "control" in shared:  # trained on this model by the edited run
            run = shared["control"]
            cached.append("fine-tuning (trained by the edited run for its Modular curve)")
        else:
            run = self._finetune(target, prepared, ctx, budget)
        tp, flags, images = _curve(ctx, target, run.snapshots, start, probes, budget)
        success = flags if flags is not None else pre
        series = {"erased" if target is not ctx.reference else "control": tp}
        if target is not ctx.reference:  # Modular: the adapter trained on the unedited model, added here
            if "control" not in shared:
                shared["control"] = self._finetune(ctx.reference, prepared, ctx, budget)
            series["modular"] = _curve(ctx, target, shared["control"].snapshots, start, probes, budget)[0]
            shared["edited"] = series
        else:
            series = {**shared.get("edited", {}), **series}
        steps = [0, *run.snapshots]
        counts = {"anchor": len(prompts), **({"paraphrase": len(paraphrases)} if paraphrases else {})}
        curve = [{"step": step, "tp": value} for step, value in zip(steps, tp["anchor"], strict=True)]
        records = [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds, strict=True)]
        extra = {"curve": curve, "curves": build_curves(steps, series, counts), "paraphrases": list(paraphrases),
                 "seed_sets": {"selection": [DATA_SEED], "scoring": seeds + para_seeds},
                 "final_loss": run.logs[-1]["loss"], "train_seconds": run.wall_time_s, "cached": cached}
        return AttackOutcome(success=success, prompts=list(prompts), images=images, pre_success=pre,
                             records=records, extra=extra)

    @staticmethod
    def _finetune(pipe: Any, prepared: dict[str, Any], ctx: AttackContext, budget: Budget) -> Any:
        """The benign LoRA fine-tuning of `pipe` (left unchanged) with the attack's budget and seed."""
        from erasurelab.finetuning import FinetuneConfig, finetune

        config = ctx.config
        ft_config = FinetuneConfig(steps=config.train_steps, rank=config.rank, lr=config.lr,
                                   batch_size=config.train_batch_size, seed=ctx.seed,
                                   snapshot_every=config.snapshot_every)
        run = finetune(pipe, prepared["data"], "control", None, ft_config, quiet=ctx.quiet)
        budget.add("optimisation_steps", config.train_steps)
        return run


def _paraphrases(ctx: AttackContext, n: int) -> list[str]:
    """The first n prompts of the concept's held-out paraphrase suite (the evaluation's); none for a compound."""
    if ctx.spec.is_compound:
        return []
    from erasurelab.finetuning.reemergence import target_probes

    probes = target_probes(ctx.spec, ctx.reference, set(ctx.judge.concepts()), anchor_seeds=1, paraphrase_max=n)
    prompts = next((probe.prompts for probe in probes if probe.name == "paraphrase"), ())
    return list(dict.fromkeys(prompts))[:n]


def _curve(ctx: AttackContext, pipe: Any, snapshots: dict[int, Any], start: dict[str, torch.Tensor],
           probes: tuple[list[str], list[int], list[str], list[int]],
           budget: Budget) -> tuple[dict[str, list[float]], torch.Tensor | None, torch.Tensor | None]:
    """TP per probe at step 0 (`start`) and with each adapter snapshot added to `pipe`.

    Returns (TP lists, the last snapshot's anchor verdicts and anchor images; None without snapshots).
    """
    prompts, seeds, paraphrases, para_seeds = probes
    tp = {name: [float(flags.float().mean())] for name, flags in start.items()}
    flags = images = None
    for adapter in snapshots.values():
        with adapter.applied(pipe):
            rendered = _render(ctx, pipe, prompts + paraphrases, seeds + para_seeds, budget)
        images = rendered[:len(prompts)]
        flags = ctx.present(images)
        tp["anchor"].append(float(flags.float().mean()))
        if paraphrases:
            tp["paraphrase"].append(float(ctx.present(rendered[len(prompts):]).float().mean()))
    return tp, flags, images


def _render(ctx: AttackContext, pipe: Any, prompts: list[str], seeds: list[int], budget: Budget) -> torch.Tensor:
    """Render without the per-run memo: the same pipeline object now holds other weights (the adapter)."""
    from erasurelab.models.sampling import generate

    with budget.render_phase():
        images = generate(pipe, prompts, seeds, steps=ctx.config.steps, guidance=ctx.config.guidance,
                          batch_size=ctx.config.batch_size, quiet=True)
    budget.add("renders", len(images))
    return images
