"""Training checkpoints: trained tensors, optimiser state and a method's own state, resumable exactly.

Why a folder per step and a pointer written last: a crash mid-save leaves the previous checkpoint
intact. Why a run key: a checkpoint folder may only resume the run that wrote it (same method,
settings, prompts and base weights). Tensors go to safetensors, step, logs and scalars to JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from erasurelab.errors import ErasureLabError
from erasurelab.runinfo import write_json_atomic
from erasurelab.unet_weights import fingerprint

LATEST = "latest.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat safetensors-ready tensors {"<index>.<key>"} plus JSON-ready param groups."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().clone()  # never alias the live moments
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any]) -> None:
    """Restore what `optimizer_tensors` wrote into an optimiser over the same parameters."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class Checkpointer:
    """Checkpoints in a folder: `step-NNNNNNN/` (safetensors + state.json) and `latest.json` pointing at it.

    Why a folder per step and a pointer written last: a crash mid-save leaves the previous
    checkpoint intact; only the newest complete checkpoint is kept.
    """

    def __init__(self, directory: str | Path, every: int, run_key: str) -> None:
        self.directory = Path(directory)
        self.every = int(every)
        self.run_key = run_key

    def latest(self) -> Path | None:
        pointer = self.directory / LATEST
        if not pointer.exists():
            return None
        try:
            info = json.loads(pointer.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ErasureLabError(f"corrupt checkpoint pointer {pointer}: {exc}") from exc
        if info.get("run_key") != self.run_key:
            raise ErasureLabError(f"checkpoint in {self.directory} belongs to another run (different method, "
                                  "config, concepts or base weights); use another checkpoint_dir")
        return self.directory / str(info["folder"])

    def save(self, step: int, groups: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> Path:
        from safetensors.torch import save_file

        name = f"step-{step:07d}"
        final, tmp = self.directory / name, self.directory / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for group, tensors in groups.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{group}.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "run_key": self.run_key})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_json_atomic(self.directory / LATEST, {"folder": name, "step": step, "run_key": self.run_key})
        for old in self.directory.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """(step, tensor groups, state) of the latest checkpoint, or None when there is none."""
        from safetensors.torch import load_file

        folder = self.latest()
        if folder is None:
            return None
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            groups = {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}
        except Exception as exc:  # missing or truncated files of a damaged checkpoint
            raise ErasureLabError(f"corrupt checkpoint {folder}: {str(exc).splitlines()[0]}") from exc
        return int(state["step"]), groups, state


def run_key(payload: Mapping[str, Any], unet: torch.nn.Module, names: Sequence[str]) -> str:
    """Identity of a training run: method, config, prompts and the base weights being trained."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256((text + fingerprint(unet, names)).encode()).hexdigest()
