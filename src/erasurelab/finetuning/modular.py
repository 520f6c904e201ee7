"""Benign LoRA fine-tuning of a base or an erased model, and Modular LoRA.

Variants (same data order, noise, seeds and steps; see denoise.py):
- "control": the unerased base is fine-tuned; result = base + ΔW_ft.
- "plain": the erased model (safety edit applied) is fine-tuned, as a user who downloads an erased
  model and fine-tunes it does; result = base + ΔW_safe + ΔW_ft. This is where an erased concept
  can come back: the fine-tuning gradient flows through the safety edit and can undo it.
- "modular": ΔW_ft is trained on the base with the safety edit absent from the forward pass, and the
  two are summed only at inference (Safety Alignment Backfires, arXiv 2412.00357); result =
  base + ΔW_safe + ΔW_ft. The fine-tuning has no gradient that could undo the edit.
- "full": the paper's full fine-tuning baseline: the erased weights W_0 + ΔW_safe themselves are
  trained (full rank, AdamW with the LoRA recipe's weight decay and clipping, at `full_lr`), not an
  adapter; ΔW_ft is the dense difference trained − erased, so the result is again
  base + ΔW_safe + ΔW_ft. Which weights: the projections the adapter trains (our choice), so
  that this baseline differs from "plain" in rank only, and its snapshots stay small enough to
  keep one per checkpoint.

Merging is a sum of Edits: low-rank + low-rank stays an exact LoRA (concatenated factors), dense
deltas (TRuST, ESD) add as dense deltas. `merge="project"` is for projection edits (PURE, whose
safety edit is E·W): on the modules it edits, the fine-tuning delta is projected as well,
W* = E(W_0 + ΔW_ft) = W_0 + ΔW_safe + ΔW_ft + (E − I)ΔW_ft; off by default. It removes the fine-tuning
delta's component along the erased directions only when E is an orthogonal projector (PURE's `projector`
solver); PURE's least-squares E is a fitted map, for which it guarantees nothing (bench/results/reemergence.md
measures both merges).

Threat model: this protects a cooperative user's benign fine-tuning from undoing an erasure;
anyone who holds the weights can drop ΔW_safe.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from erasurelab.caption_data import CaptionData
from erasurelab.edits import Dense, Edit, LowRank
from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.finetuning.denoise import DenoisingObjective, DenoisingTrainer
from erasurelab.methods.finetune import FineTuner
from erasurelab.methods.lora_engine import clipped_step

VARIANTS: tuple[str, ...] = ("control", "plain", "modular", "full")
#: Variants trained through the safety edit (it is applied to the model during training).
THROUGH_SAFETY: tuple[str, ...] = ("plain", "full")
MERGES: tuple[str, ...] = ("sum", "project")
#: Projections the fine-tuning adapter trains: self- and cross-attention q, k, v, out.
FT_PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a benign LoRA fine-tuning run (the diffusers LoRA text-to-image recipe, scaled down)."""

    steps: int = field(default=1000, metadata={"help": "optimisation steps"})
    rank: int = field(default=4, metadata={"help": "LoRA rank of the fine-tuning adapter (alpha = rank)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (constant)"})
    batch_size: int = field(default=16, metadata={"help": "images per step"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise, timesteps and LoRA init"})
    snapshot_every: int = field(default=100, metadata={"help": "steps between adapter snapshots / checkpoints"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip of the adapter"})
    full_lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the full fine-tuning "
                                                           "baseline (variant full)"})

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "batch_size", "snapshot_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ErasureLabError(f"fine-tuning {name} must be a positive integer, got {value!r}")
        for name in ("lr", "full_lr"):
            if not getattr(self, name) > 0:
                raise ErasureLabError(f"fine-tuning {name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """A finished run: the adapter alone, its snapshots (step -> adapter) and the merged edit."""

    variant: str
    ft: Edit
    snapshots: dict[int, Edit]
    merged: Edit
    logs: list[dict[str, float]]
    config: FinetuneConfig
    safety_hash: str | None
    wall_time_s: float


def ft_targets(unet: torch.nn.Module) -> list[str]:
    """Every attn1/attn2 q, k, v, out projection Linear of the U-Net, in module order."""
    suffixes = tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in FT_PROJECTIONS)
    names = [n for n, m in unet.named_modules() if n.endswith(suffixes) and isinstance(m, torch.nn.Linear)]
    if not names:
        raise ErasureLabError("the U-Net has no attention projections to fine-tune")
    return names


def edit_hash(edit: Edit | None) -> str | None:
    """sha256 over an edit's tensors (names, kinds, bytes): proves the safety module is untouched."""
    if edit is None:
        return None
    digest = hashlib.sha256()
    for key in sorted(edit.deltas):
        entry = edit.deltas[key]
        digest.update(f"{key}:{type(entry).__name__}".encode())
        for tensor in (entry.B, entry.A) if isinstance(entry, LowRank) else (entry.delta(),) \
                if isinstance(entry, Dense) else (entry.weight,):  # type: ignore[union-attr]
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_merge_mode(mode: str) -> None:
    """One message for an unknown merge, whether `finetune` checks it up front or `merge` at the end."""
    if mode not in MERGES:
        raise ErasureLabError(f"unknown merge {mode!r}{did_you_mean(mode, MERGES)}; valid: {', '.join(MERGES)}")


def merge(safety: Edit | None, ft: Edit, mode: str = "sum", base: Any = None) -> Edit:
    """ΔW_safe + ΔW_ft (sum), or with ΔW_ft projected by the safety operator on its modules (project)."""
    check_merge_mode(mode)
    if safety is None:
        return ft
    if mode == "sum":
        return safety + ft
    # project: (E − I) ΔW_ft on the modules both edit; E − I = ΔW_safe W_0⁺ for a projection edit E·W_0.
    shared = [key for key in ft.deltas if key in safety.deltas]
    base_weights = projectable_weights(safety, base, shared)
    extra = {key: Dense(safety.deltas[key].delta(w0) @ torch.linalg.pinv(w0) @ ft.deltas[key].delta())
             for key, w0 in base_weights.items()}
    return safety + ft + Edit(extra) if extra else safety + ft


def projectable_weights(safety: Edit, base: Any, keys: list[str]) -> dict[str, torch.Tensor]:
    """The base weights W_0 (float64) of `keys`, checked for merge="project".

    The projection merge recovers the safety operator as E − I = ΔW_safe W_0⁺, which is exact only
    when W_0 has full row rank (out <= in, as cross-attention K/V are on SD and the embedded model);
    any other layer is refused rather than guessed.
    """
    weights = {key: w.double() for key, w in safety._base_weights(base).items() if key in keys} if keys else {}
    for key, w0 in weights.items():
        if w0.shape[0] > w0.shape[1] or int(torch.linalg.matrix_rank(w0)) < w0.shape[0]:
            raise ErasureLabError(f"merge='project' needs {key} to have full row rank (out <= in) to recover the "
                                  f"safety operator from its delta, but it is {tuple(w0.shape)}; use merge='sum'")
    return weights


def check_project_merge(safety: Edit, pipe: Any) -> None:
    """Fail now, before any training, if merge="project" cannot take `safety` on the weights the adapter trains."""
    trained = {f"{name}.weight" for name in ft_targets(pipe.unet)}
    projectable_weights(safety, pipe, [key for key in safety.deltas if key in trained])


class FullTuner(FineTuner):
    """Full-rank training of U-Net weights with the adapter's optimiser (AdamW, weight decay, clipping).

    The full-weight engine (checkpoints, exact resume, the weights restored on exit) with the
    LoRA engine's optimiser and step, so baseline (a) and the LoRA variants share everything but
    the parametrisation and the learning rate.
    """

    def __init__(self, pipe: Any, names: list[str], lr: float, weight_decay: float = 1e-2,
                 grad_clip: float | None = 1.0, **kwargs: Any) -> None:
        super().__init__(pipe, names, lr, **kwargs)
        self.weight_decay, self.grad_clip = float(weight_decay), grad_clip

    def __enter__(self) -> FullTuner:
        super().__enter__()
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=self.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=self.weight_decay)
        return self

    def step(self, loss: torch.Tensor, masks: Any = None) -> float:  # type: ignore[override]
        """Backward, clip the gradient norm, one AdamW step; returns the pre-clip norm."""
        if self.optimizer is None:
            raise RuntimeError("use FullTuner as a context manager")
        return clipped_step(self.optimizer, list(self.params.values()), loss, self.grad_clip)


def finetune(pipe: Any, data: CaptionData, variant: str, safety: Edit | None = None,
             config: FinetuneConfig | None = None, checkpoint_dir: Any = None, quiet: bool = True,
             merge_mode: str = "sum") -> FinetuneResult:
    """Train a fine-tuning delta on `pipe` (the BASE model, no edit applied) in one of VARIANTS.

    A LoRA adapter, except in "full" (dense deltas). The pipeline is left as it was (adapter
    unloaded, trained weights restored, the safety edit reverted in "plain" and "full").
    """
    from erasurelab.methods.lora_engine import ADAPTER, LoraTuner

    config = config or FinetuneConfig()
    if variant not in VARIANTS:
        raise ErasureLabError(f"unknown fine-tuning variant {variant!r}{did_you_mean(variant, VARIANTS)}; "
                              f"valid: {', '.join(VARIANTS)}")
    if variant != "control" and safety is None:
        raise ErasureLabError(f"the {variant} variant needs a safety edit (an erasure run)")
    if safety is not None and safety.is_applied(pipe):
        raise ErasureLabError("pass the base pipeline: the safety edit is already applied to it")
    check_merge_mode(merge_mode)  # a bad merge or a safety edit it cannot take fails before training, not after
    if merge_mode == "project" and safety is not None and variant != "control":
        check_project_merge(safety, pipe)
    started = time.perf_counter()
    before = edit_hash(safety)
    snapshots: dict[int, Edit] = {}
    if variant in THROUGH_SAFETY:
        safety.apply(pipe)  # type: ignore[union-attr]
    try:
        # The run's identity for resuming: everything but the step count (a longer run resumes a shorter
        # one) and, for the adapters, the full baseline's learning rate.
        unused = ("steps",) if variant == "full" else ("steps", "full_lr")
        identity = {k: v for k, v in config.to_dict().items() if k not in unused}
        key = {"kind": "benign-finetune", "variant": variant, "config": identity, "safety": before,
               "data": [data.files, data.captions]}
        targets = ft_targets(pipe.unet)
        if variant == "full":
            if getattr(pipe.unet, "peft_config", None):
                raise ErasureLabError(f"unexpected adapters on the U-Net: {sorted(pipe.unet.peft_config)}")
            tuner_cm = FullTuner(pipe, [f"{t}.weight" for t in targets], config.full_lr,
                                 weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed,
                                 quiet=quiet, checkpoint_dir=checkpoint_dir, checkpoint_every=config.snapshot_every,
                                 key=key)
        else:
            tuner_cm = LoraTuner(pipe, targets, config.rank, config.lr, weight_decay=config.weight_decay,
                                 grad_clip=config.grad_clip, seed=config.seed, quiet=quiet,
                                 checkpoint_dir=checkpoint_dir, checkpoint_every=config.snapshot_every, key=key)
        with tuner_cm as tuner:
            if variant != "full" and set(pipe.unet.peft_config) != {ADAPTER}:  # only the fine-tuning adapter
                raise ErasureLabError(f"unexpected adapters in the fine-tuning graph: {sorted(pipe.unet.peft_config)}")

            def snapshot(step: int) -> None:
                if step % config.snapshot_every == 0 or step == config.steps:
                    snapshots[step] = Edit(tuner.deltas(), {"step": step}) if variant == "full" else \
                        Edit.from_peft(pipe.unet, ADAPTER, {"step": step})

            objective = DenoisingObjective(pipe, data, tuner.predict, config.batch_size, config.seed)
            trainer = DenoisingTrainer(objective, tuner.step, snapshot)
            trainer.extra_state = lambda: _snapshot_state(snapshots)
            trainer.extra_load = lambda state, tensors: snapshots.update(_load_snapshots(state, tensors))
            logs = tuner.run(trainer, config.steps, desc=f"fine-tuning ({variant})")
            ft = tuner.edit({"method": "benign-finetune", "variant": variant, "config": config.to_dict()})
    finally:
        if variant in THROUGH_SAFETY and safety is not None and safety.is_applied(pipe):
            safety.revert(pipe)
    if edit_hash(safety) != before:
        raise ErasureLabError("the safety edit changed during fine-tuning")  # isolation broke: never expected
    merged = merge(safety, ft, merge_mode, base=pipe) if variant != "control" else Edit(ft.deltas, dict(ft.meta))
    merged.meta.update({"method": f"finetune-{variant}", "variant": variant, "merge": merge_mode,
                        "finetune_config": config.to_dict(), "safety_hash": before,
                        "components": ["safety", "ft"] if variant != "control" else ["ft"]})
    return FinetuneResult(variant, ft, dict(sorted(snapshots.items())), merged, logs, config, before,
                          time.perf_counter() - started)


def _snapshot_state(snapshots: Mapping[int, Edit]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Snapshots as checkpoint tensors: "step|key|B" and "|A" for LoRA factors, "|D" for dense deltas."""
    tensors = {}
    for step, edit in snapshots.items():
        for key, entry in edit.deltas.items():
            if isinstance(entry, LowRank):
                tensors[f"{step}|{key}|B"] = entry.B.double()
                tensors[f"{step}|{key}|A"] = entry.A.double()
            else:
                tensors[f"{step}|{key}|D"] = entry.delta()
    return {"snapshot_steps": sorted(snapshots)}, tensors


def _load_snapshots(state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[int, Edit]:
    out: dict[int, dict[str, LowRank | Dense]] = {int(s): {} for s in state.get("snapshot_steps", [])}
    for name in tensors:
        step, key, part = name.split("|")
        if part == "B":
            out[int(step)][key] = LowRank(tensors[name].double(), tensors[f"{step}|{key}|A"].double())
        elif part == "D":
            out[int(step)][key] = Dense(tensors[name].clone())
    return {step: Edit(deltas, {"step": step}) for step, deltas in out.items()}
