"""Which models an evaluation compares: the edited model and its reference (the unedited model).

Why revert-in-place for the default reference: a run loaded from its folder is its base model
with the edit applied; `Edit.revert` restores the base bit for bit, so the reference costs no
second copy of the model. The edit is re-applied afterwards, even on error. Model specs are
checked before loading, so a folder that is not a run fails in seconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.rendering import process_device
from erasurelab.models.provenance import UNKNOWN_SOURCE, applied_edits, base_source_of, source_of

ModelLike = Any  # a diffusers pipeline or a model spec (str / PathLike) for load_pipeline


def provenance() -> dict[str, Any]:
    """Where the numbers come from: git commit (or "unknown"), command line, argv, time.

    erasurelab.runinfo.provenance when it exists; otherwise the commit is "unknown" and the command
    is this process's argv, which is still enough to re-run it.
    """
    try:
        from erasurelab.runinfo import provenance as _provenance  # type: ignore[attr-defined]
    except ImportError:
        return {"commit": "unknown", "command": " ".join(sys.argv)}
    return dict(_provenance())


def is_spec(model: ModelLike) -> bool:
    """True for a model spec (a path or name load_pipeline resolves), False for a loaded pipeline."""
    return isinstance(model, str | os.PathLike)


def check_model_spec(model: ModelLike, need_run: bool) -> None:
    """Fail fast (before loading) when the model must be a run folder but is not."""
    if not (is_spec(model) and need_run):
        return
    from erasurelab.edits import MANIFEST, is_run_folder

    text = os.fspath(model)
    path = Path(text).expanduser()
    if text.startswith("builtin:") or not path.exists():
        if text.startswith("builtin:"):
            raise ErasureLabError(f"model {text} is not an erasure run, so it has no reference; "
                                  "pass --reference (e.g. the base model) or evaluate a run folder")
        return  # load_pipeline reports the missing model
    if path.is_dir() and not is_run_folder(path):
        reason = f"no {MANIFEST}" if not (path / MANIFEST).exists() else f"its {MANIFEST} is not an erasurelab run"
        raise ErasureLabError(f"model folder {text} has {reason}: not an erasure run, so there is no default "
                              "reference; pass --reference or evaluate a run folder written by `erasurelab erase`")
    if path.is_file():
        raise ErasureLabError(f"model {text} is a single checkpoint, not an erasure run; pass --reference")


def load_model(model: ModelLike) -> tuple[Any, str]:
    """(pipeline, label): load a spec on this process's device, or take a pipeline and name its source."""
    if is_spec(model):
        from erasurelab.models import load_pipeline

        return load_pipeline(model, device=process_device()), os.fspath(model)
    if not hasattr(model, "unet"):
        raise ErasureLabError(f"expected a diffusers pipeline or a model spec, got {type(model).__name__}")
    source = source_of(model)
    return model, source if source is not None else f"{type(model).__name__} (source {UNKNOWN_SOURCE})"


class Reference:
    """The unedited model: a given pipeline, or the edited one with its applied edits reverted while in use."""

    def __init__(self, pipe: Any, label: str, revert: Sequence[Any] = ()) -> None:
        self.pipe, self.label, self._revert = pipe, label, list(revert)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        undone = []
        try:
            for edit in reversed(self._revert):  # newest first, so each restores the weights under it
                edit.revert(self.pipe)
                undone.append(edit)
            yield self.pipe
        finally:
            for edit in reversed(undone):
                edit.apply(self.pipe)


def resolve_reference(model_pipe: Any, reference: ModelLike | None) -> Reference:
    """The given reference, else the edited model with its applied edits reverted (labelled with its base)."""
    if reference is not None:
        pipe, label = (model_pipe, "the model itself") if reference is model_pipe else load_model(reference)
        return Reference(pipe, label)
    edits = [e for e in applied_edits(model_pipe) if e.is_applied(model_pipe)]
    if not edits:
        raise ErasureLabError("the model is not an erasure run (no applied edit), so there is no default reference; "
                              "pass reference= (e.g. the base model)")
    from erasurelab.edits import base_model_spec, is_run_folder

    folder, label = source_of(model_pipe), None
    if folder and is_run_folder(folder):
        with contextlib.suppress(ErasureLabError):  # a base that moved: fall back to the recorded spec
            label = base_model_spec(folder)
    label = (label or base_source_of(model_pipe) or (edits[0].meta.get("base") or {}).get("source")
             or UNKNOWN_SOURCE)
    return Reference(model_pipe, f"{label} ({'edit' if len(edits) == 1 else 'edits'} reverted)", edits)
