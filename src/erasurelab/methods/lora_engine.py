"""The LoRA fine-tuning engine: train a peft adapter on `pipe.unet` and hand back its exact low-rank Edit.

Why a second engine beside `finetune.FineTuner`: methods that train an adapter (DUO) need the
reference model to be the same network with the adapter switched off, the optimiser to see only the
adapter's tensors, and the result to be the adapter itself (a LoRA, exact, summable per concept),
not dense weight differences. Built as diffusers' training examples do it: `LoraConfig` →
`unet.add_adapter` → train → read the factors (`Edit.from_peft`).

Guarantees:
- **Reference pass.** `reference()` runs the U-Net under no_grad with every adapter disabled; in
  eval mode with LoRA dropout 0 that is bit-identical to the base U-Net (tested).
- **Determinism and resume.** The adapter's initial A is drawn from a generator seeded by `seed`
  (the global RNG is forked, not consumed); every draw of step s comes from `seeded(seed, stream, s)`.
  A checkpoint (adapter tensors, AdamW state, logs) therefore resumes to the same final adapter
  as an uninterrupted run. Checkpoints reuse the full-weight engine's `Checkpointer`.
- **The pipeline is left as it was.** On exit — also on an error or Ctrl-C — the adapter is
  unloaded (the original Linear modules are put back), and requires_grad flags, `.grad` and
  train/eval mode are restored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods.training.checkpoints import Checkpointer, run_key
from erasurelab.methods.training.diffusion import Cond, unet_output
from erasurelab.methods.training.loop import CheckpointedLoop

ADAPTER = "erasurelab"
#: The projections of an attention block a LoRA trains (`{to_q,to_k,to_v,to_out.0}`).
ATTENTION_PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


#: Attention blocks a LoRA can train, by name: self-attention (DUO's official choice), cross-attention, both.
ATTENTION_BLOCKS: dict[str, tuple[str, ...]] = {"self": ("attn1",), "cross": ("attn2",),
                                                "attention": ("attn1", "attn2")}


def attention_targets(unet: torch.nn.Module, blocks: Sequence[str] = ("attn1",),
                      projections: Sequence[str] = ATTENTION_PROJECTIONS) -> list[str]:
    """Full module names of every q/k/v/out projection Linear of the given attention blocks, in module order."""
    suffixes = tuple(f"{b}.{p}" for b in blocks for p in projections)
    names = [n for n, m in unet.named_modules() if n.endswith(suffixes) and isinstance(m, torch.nn.Linear)]
    if not names:
        raise ErasureLabError(f"the U-Net has no {'/'.join(blocks)} projections to train a LoRA on")
    return names


def check_rank(unet: torch.nn.Module, targets: Sequence[str], rank: int) -> None:
    """One-line error when the rank exceeds a targeted layer's min(in, out) (the factors would be rank-deficient)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ErasureLabError(f"LoRA rank must be a positive integer, got {rank!r}")
    for name in targets:
        module = unet.get_submodule(name)
        width = min(int(module.in_features), int(module.out_features))
        if rank > width:
            raise ErasureLabError(f"LoRA rank {rank} is larger than layer {name} allows (min(in, out) = {width}); "
                                  f"use rank <= {width}")


def clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor,
                 grad_clip: float | None) -> float:
    """Backward, clip the gradient norm (when grad_clip is set), one optimizer step; returns the pre-clip norm.

    A non-finite loss is a one-line error before any weight moves.
    """
    if not torch.isfinite(loss):
        raise ErasureLabError(f"the training loss became {float(loss)}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(params, float(grad_clip)))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    optimizer.step()
    return norm


class LoraTuner(CheckpointedLoop):
    """Trains a fresh LoRA adapter on `pipe.unet` with AdamW; use as a context manager.

    `with LoraTuner(pipe, targets, rank, lr) as tuner: tuner.run(trainer, steps); edit = tuner.edit()`.
    `predict` is the adapted U-Net (gradients reach only the adapter), `reference` the base one.
    """

    default_desc = "LoRA"

    def __init__(self, pipe: Any, targets: Sequence[str], rank: int, lr: float, alpha: float | None = None,
                 weight_decay: float = 1e-2, grad_clip: float | None = 1.0, seed: int = 0, quiet: bool = True,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50,
                 key: Mapping[str, Any] | None = None) -> None:
        self.pipe, self.unet = pipe, pipe.unet
        self.targets = list(targets)
        check_rank(self.unet, self.targets, rank)
        if getattr(self.unet, "peft_config", None):
            raise ErasureLabError("the U-Net already carries a LoRA adapter: fuse or unload it first "
                                  "(pipe.fuse_lora(); pipe.unload_lora_weights())")
        if self.unet.dtype != torch.float32:
            raise ErasureLabError(f"LoRA training needs a float32 U-Net, got {self.unet.dtype}; load it in float32")
        self.rank, self.alpha = int(rank), float(rank if alpha is None else alpha)
        self.lr, self.weight_decay, self.grad_clip = float(lr), float(weight_decay), grad_clip
        self.seed, self.quiet = int(seed), quiet
        self.checkpointer = None
        if checkpoint_dir is not None:
            identity = {**dict(key or {}), "rank": self.rank, "alpha": self.alpha, "targets": self.targets}
            self.checkpointer = Checkpointer(checkpoint_dir, checkpoint_every,
                                             run_key(identity, self.unet, [f"{t}.weight" for t in self.targets]))
        self.params: dict[str, torch.nn.Parameter] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.logs: list[dict[str, float]] = []
        self.resumed_from = 0
        self._saved: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> LoraTuner:
        from peft import LoraConfig

        every = list(self.unet.named_parameters())
        self._saved = {"flags": {n: p.requires_grad for n, p in every}, "grads": {n: p.grad for n, p in every},
                       "training": self.unet.training}
        try:
            config = LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                                target_modules=self.targets, lora_dropout=0.0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.unet.add_adapter(config, adapter_name=ADAPTER)
            for _, p in self.unet.named_parameters():
                p.requires_grad_(False)
                p.grad = None
            self.params = {n: p for n, p in self.unet.named_parameters() if ".lora_" in n}
            for p in self.params.values():
                p.requires_grad_(True)
            self.unet.eval()
            self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=self.lr, betas=(0.9, 0.999),
                                               eps=1e-8, weight_decay=self.weight_decay)
        except BaseException:
            self.restore()
            raise
        return self

    def restore(self) -> None:
        """Unload the adapter and put back flags, gradients and mode (idempotent)."""
        if not self._saved:
            return
        if getattr(self.unet, "peft_config", None):
            self.unet.unload_lora()
        for name, param in self.unet.named_parameters():
            param.requires_grad_(self._saved["flags"].get(name, param.requires_grad))
            param.grad = self._saved["grads"].get(name)
        self.unet.train(self._saved["training"])
        self.params, self.optimizer, self._saved = {}, None, {}

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_θ: the U-Net with the adapter on (gradients reach only the adapter's tensors)."""
        return unet_output(self.unet, x, t, cond)

    @torch.no_grad()
    def reference(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_ref: the same network with every adapter disabled (the base U-Net, bit for bit)."""
        self.unet.disable_adapters()
        try:
            return unet_output(self.unet, x, t, cond)
        finally:
            self.unet.enable_adapters()

    # -- updates ----------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip the adapter's gradient norm, one AdamW step; returns the pre-clip norm."""
        if self.optimizer is None:
            raise RuntimeError("use LoraTuner as a context manager")
        return clipped_step(self.optimizer, list(self.params.values()), loss, self.grad_clip)

    # -- the result -------------------------------------------------------------------------------
    def edit(self, meta: Mapping[str, Any] | None = None) -> Edit:
        """The trained adapter as exact low-rank deltas (call inside the `with` block)."""
        losses = [entry["loss"] for entry in self.logs if "loss" in entry]
        info = {"lora_rank": self.rank, "lora_alpha": self.alpha, "lora_targets": self.targets,
                "trainable_parameters": int(sum(p.numel() for p in self.params.values())),
                "steps_run": len(self.logs), "resumed_from_step": self.resumed_from,
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
        return Edit.from_peft(self.unet, ADAPTER, {**info, **dict(meta or {})})
