"""The full-weight fine-tuning engine of the training-based methods (ESD, TRuST): `FineTuner`.

Why one engine: every fine-tuning method trains a named subset of U-Net parameters with Adam,
predicts with the trained and with the original weights, and must hand back an `Edit` while
leaving the caller's pipeline exactly as it was. A method module then only holds its loss and its
schedule of what to train (a `Trainer`). The pieces it is built from live in
`erasurelab.methods.training` and are re-exported here.

Design choices:
- **Frozen predictions without a frozen copy.** The U-Net is trained in place and the original
  values of the *trainable* tensors are kept; frozen predictions run the same module through
  `torch.func.functional_call` with those originals swapped in. That is bit-identical to a frozen
  copy (same code, same weights) and costs memory only for the trained subset instead of a second
  U-Net. On exit (also on error or Ctrl-C) the originals are copied back and requires_grad flags,
  `.grad` and train/eval mode are restored, so the pipeline is left unmodified.
- **Masked full-weight updates** (`training.updates`): entries outside the mask keep their value
  and their Adam moments, so stale moments never move a weight outside it (TRuST's confinement).
- **Determinism and resume** (`training.streams`, `training.checkpoints`): every random draw of
  step s comes from a generator seeded by (seed, stream, s), so a checkpoint resumes to the same
  final weights as an uninterrupted run.
- **Training latents (ESD).** The paper recipe samples x_t per step by partially denoising noise
  with the *current* model (`sample_with="trained"`), on average N/2 extra CFG U-Net calls per step.
  The default, `sample_with="pool"`, caches once a pool of full DDIM trajectories of the forget
  prompts from the frozen model (every intermediate latent kept) and draws a (trajectory, step)
  pair per training step: sampling with the frozen base, as the official code later does, from a
  finite pool of start noises. TRuST trains on x_0 latents its forget prompts generate under the
  original model (its D_f), generated once the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from erasurelab.edits import Dense, Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.training.checkpoints import (
    LATEST,
    Checkpointer,
    load_optimizer_tensors,
    optimizer_tensors,
    run_key,
)
from erasurelab.methods.training.diagnostics import alignment, guidance_direction
from erasurelab.methods.training.diffusion import (
    Cond,
    ModelFn,
    ddim_scheduler,
    denoise,
    encode_empty,
    encode_prompts,
    latent_size,
    start_noise,
    unet_output,
)
from erasurelab.methods.training.loop import CheckpointedLoop, Trainer
from erasurelab.methods.training.losses import negative_guidance, noise_mse, retain_conditioning, retain_term
from erasurelab.methods.training.prompts import anchor_prompt, forget_pairs
from erasurelab.methods.training.streams import (
    STREAM_DATA,
    STREAM_POOL,
    STREAM_PROBE,
    STREAM_RETAIN,
    STREAM_SALIENCY,
    STREAM_TRAIN,
    sample_timesteps,
    step_generator,
)
from erasurelab.methods.training.subsets import ESD_U_EXCLUDED, SUBSETS, select_parameters
from erasurelab.methods.training.updates import apply_masked_update, exact_delta

__all__ = [
    "ESD_U_EXCLUDED", "LATEST", "STREAM_DATA", "STREAM_POOL", "STREAM_PROBE", "STREAM_RETAIN", "STREAM_SALIENCY",
    "STREAM_TRAIN", "SUBSETS", "CheckpointedLoop", "Checkpointer", "Cond", "FineTuner", "ModelFn", "Trainer",
    "alignment", "anchor_prompt", "apply_masked_update", "ddim_scheduler", "denoise", "encode_empty",
    "encode_prompts", "exact_delta", "forget_pairs", "guidance_direction", "latent_size", "load_optimizer_tensors",
    "negative_guidance", "noise_mse", "optimizer_tensors", "retain_conditioning", "retain_term", "run_key",
    "sample_timesteps", "select_parameters", "start_noise", "step_generator", "tuner_for", "unet_output",
]


class FineTuner(CheckpointedLoop):
    """Trains a named subset of `pipe.unet` in place with Adam and restores the pipeline on exit.

    Use as a context manager: `with FineTuner(pipe, names, lr) as tuner: tuner.run(trainer, steps)`,
    then `tuner.edit(meta)` (inside the block) for the trained − original deltas.
    """

    def __init__(self, pipe: Any, names: Sequence[str], lr: float, seed: int = 0, quiet: bool = True,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50,
                 key: Mapping[str, Any] | None = None) -> None:
        self.pipe, self.unet = pipe, pipe.unet
        self.names = list(names)
        self.lr, self.seed, self.quiet = float(lr), int(seed), quiet
        all_params = dict(self.unet.named_parameters())
        missing = [n for n in self.names if n not in all_params]
        if missing:
            raise ErasureLabError(f"the U-Net has no parameter {missing[0]}")
        self.params = {n: all_params[n] for n in self.names}
        not_fp32 = [n for n, p in self.params.items() if p.dtype != torch.float32]
        if not_fp32:
            raise ErasureLabError(f"fine-tuning needs float32 weights but {not_fp32[0]} is "
                                  f"{self.params[not_fp32[0]].dtype}; load the pipeline in float32")
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}
        self.checkpointer = None
        if checkpoint_dir is not None:
            self.checkpointer = Checkpointer(checkpoint_dir, checkpoint_every,
                                             run_key(key or {}, self.unet, self.names))
        self.logs: list[dict[str, float]] = []
        self.resumed_from = 0
        self._saved: dict[str, Any] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FineTuner:
        every = list(self.unet.named_parameters())
        self._saved = {"flags": {n: p.requires_grad for n, p in every}, "grads": {n: p.grad for n, p in every},
                       "training": self.unet.training}
        for _, p in every:
            p.requires_grad_(False)
            p.grad = None
        for p in self.params.values():
            p.requires_grad_(True)
        self.unet.eval()
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr)
        return self

    def restore(self) -> None:
        """Put back the original weights, flags, gradients and mode (idempotent)."""
        if not self._saved:
            return
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.originals[name])
        for name, param in self.unet.named_parameters():
            param.requires_grad_(self._saved["flags"].get(name, param.requires_grad))
            param.grad = self._saved["grads"].get(name)
        self.unet.train(self._saved["training"])
        self._saved = {}

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_θ with the weights being trained (gradients reach the trainable tensors)."""
        return unet_output(self.unet, x, t, cond)

    @torch.no_grad()
    def frozen(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_* with the original weights: bit-identical to an untouched copy of the U-Net."""
        return unet_output(self.unet, x, t, cond, self.originals)

    def perturbed(self, overrides: Mapping[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor | int,
                  cond: Cond) -> torch.Tensor:
        """ε at weights `overrides` (e.g. θ + δ·v); gradients flow through the override tensors."""
        return unet_output(self.unet, x, t, cond, overrides)

    # -- updates ----------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Backward and one Adam step, confined to `masks` when given."""
        assert self.optimizer is not None, "use FineTuner as a context manager"
        if not torch.isfinite(loss):
            raise ErasureLabError(f"the training loss became {float(loss)}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        apply_masked_update(self.optimizer, self.params, masks)

    # -- the result -------------------------------------------------------------------------------
    def deltas(self) -> dict[str, Dense]:
        """Dense trained − original for every trainable tensor that changed."""
        out = {}
        for name, param in self.params.items():
            if not torch.equal(param.detach(), self.originals[name]):
                out[name] = Dense(exact_delta(param, self.originals[name]))
        return out

    def edit(self, meta: Mapping[str, Any] | None = None) -> Edit:
        """The trained − original deltas as an Edit, with the run's size and losses in its meta."""
        losses = [entry["loss"] for entry in self.logs if "loss" in entry]
        info = {"trainable_tensors": len(self.names),
                "trainable_parameters": int(sum(p.numel() for p in self.params.values())),
                "steps_run": len(self.logs), "resumed_from_step": self.resumed_from,
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "loss": losses}
        return Edit(self.deltas(), {**info, **dict(meta or {})})


#: Settings that do not change what a run computes, so they stay out of its checkpoint identity.
_NOT_IN_RUN_KEY: tuple[str, ...] = ("steps", "checkpoint_dir", "checkpoint_every")


def tuner_for(pipe: Any, method: str, names: Sequence[str], settings: Mapping[str, Any], config: Any,
              quiet: bool, **prompts: Any) -> FineTuner:
    """A FineTuner whose checkpoints are tied to this method, its settings and its prompts.

    Why the steps are left out of the key: a run extended to more steps may resume from the
    checkpoints of a shorter one.
    """
    key = {"method": method, **{k: v for k, v in settings.items() if k not in _NOT_IN_RUN_KEY}, **prompts}
    return FineTuner(pipe, names, settings["lr"], settings["seed"], quiet, config.checkpoint_dir,
                     config.checkpoint_every, key)
