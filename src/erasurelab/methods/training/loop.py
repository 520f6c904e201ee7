"""The training loop both engines share: steps with a progress bar, checkpoints, exact resume.

Why one loop: the full-weight engine (`FineTuner`) and the LoRA engine (`LoraTuner`) differ in
what they train and how they restore the pipeline, not in how steps, logs and checkpoints run.
A method supplies a `Trainer`: one training step, and its own state for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from erasurelab.errors import ErasureLabError
from erasurelab.methods.training.checkpoints import Checkpointer, load_optimizer_tensors, optimizer_tensors


class Trainer(Protocol):
    """What a method supplies: one training step, and its own state for checkpoints."""

    def train_step(self, step: int) -> dict[str, float]: ...

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...

    def load_state(self, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None: ...


class CheckpointedLoop:
    """The training loop both engines share: steps with a progress bar, checkpoints, exact resume.

    Subclasses hold `params` (trained tensors by name), `optimizer`, `checkpointer` (or None),
    `seed`, `quiet`, `logs` and `resumed_from`; a Trainer supplies each step and its own state.
    """

    default_desc = "fine-tuning"
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    checkpointer: Checkpointer | None
    seed: int
    quiet: bool
    logs: list[dict[str, float]]
    resumed_from: int

    def restore(self) -> None:  # pragma: no cover - every engine defines it
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def run(self, trainer: Trainer, steps: int, desc: str | None = None) -> list[dict[str, float]]:
        """Train steps [start, steps), resuming from the checkpoint folder when it holds one."""
        start = self._resume(trainer, steps)
        bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc or self.default_desc,
                   disable=self.quiet)
        for step in bar:
            logs = trainer.train_step(step)
            self.logs.append({k: float(v) for k, v in logs.items()})
            if "loss" in logs:
                bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)
            done = step + 1
            if self.checkpointer is not None and (done % self.checkpointer.every == 0 or done == steps):
                self._save(trainer, done)
        return self.logs

    def _save(self, trainer: Trainer, step: int) -> None:
        assert self.checkpointer is not None and self.optimizer is not None
        opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
        method_state, method_tensors = trainer.state()
        groups = {"weights": {n: p.detach() for n, p in self.params.items()}, "optimizer": opt_tensors,
                  "method": method_tensors}
        self.checkpointer.save(step, groups, {"seed": self.seed, "optimizer": opt_meta, "method": method_state,
                                              "logs": self.logs})

    def _resume(self, trainer: Trainer, steps: int) -> int:
        if self.checkpointer is None:
            return 0
        loaded = self.checkpointer.load()
        if loaded is None:
            return 0
        step, groups, state = loaded
        if step > steps:
            raise ErasureLabError(f"the checkpoint in {self.checkpointer.directory} is at step {step}, "
                                  f"beyond steps={steps}; use another checkpoint_dir")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(groups["weights"][name])
        assert self.optimizer is not None
        load_optimizer_tensors(self.optimizer, groups.get("optimizer", {}), state["optimizer"])
        trainer.load_state(state.get("method", {}), groups.get("method", {}))
        self.logs = [dict(entry) for entry in state.get("logs", [])]
        self.resumed_from = step
        return step
