"""Where a pipeline came from and which Edits are applied to it, kept by erasurelab, never on the pipeline.

Why a registry instead of attributes: a pipeline is the user's diffusers object, and patching
attributes onto it makes erasurelab's behaviour depend on who set them (a plain pipeline that
had an edit applied would not count as edited). Here `Edit.apply` / `Edit.revert` record
themselves, `load_pipeline` records the source, and `evaluate` reads both.

Why keyed weakly by the U-Net: edits change the U-Net, so pipelines sharing one U-Net (e.g. a
copy with another text encoder) share its history, and an entry disappears with its U-Net.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from erasurelab.errors import ErasureLabError

if TYPE_CHECKING:
    from erasurelab.edits import Edit

#: What reports say for a pipeline whose source erasurelab never saw (built by the caller).
UNKNOWN_SOURCE = "unknown"


@dataclass
class _Record:
    """The provenance of one U-Net: its model spec, the spec of the weights under a run, applied edits."""

    source: str | None = None
    base_source: str | None = None
    edits: list[Edit] = field(default_factory=list)


_RECORDS: weakref.WeakKeyDictionary[torch.nn.Module, _Record] = weakref.WeakKeyDictionary()


def _unet(target: Any) -> torch.nn.Module:
    """The U-Net that keys a pipeline's record (the module itself when given a U-Net)."""
    unet = getattr(target, "unet", target)
    if not isinstance(unet, torch.nn.Module):
        raise ErasureLabError(f"expected a diffusers pipeline or a U-Net module, got {type(target).__name__}")
    return unet


def _record(target: Any) -> _Record:
    unet = _unet(target)
    record = _RECORDS.get(unet)
    if record is None:
        record = _RECORDS[unet] = _Record()
    return record


def _peek(target: Any) -> _Record:
    """The record of `target` for reading: empty for anything without a U-Net (nothing was recorded)."""
    unet = getattr(target, "unet", target)
    return (_RECORDS.get(unet) if isinstance(unet, torch.nn.Module) else None) or _Record()


def record_source(pipe: Any, source: str | None, base_source: str | None = None) -> Any:
    """Remember the spec `pipe` was loaded from and, for a run, the spec of its base model; returns `pipe`."""
    record = _record(pipe)
    record.source = None if source is None else str(source)
    record.base_source = None if base_source is None else str(base_source)
    return pipe


def source_of(pipe: Any) -> str | None:
    """The spec `pipe` was loaded from (a run folder for a loaded run); None when erasurelab did not load it."""
    return _peek(pipe).source


def base_source_of(pipe: Any) -> str | None:
    """The spec of the weights under every applied edit: a run's base model, else the pipeline's own source."""
    record = _peek(pipe)
    return record.base_source or record.source


def describe_source(pipe: Any) -> str:
    """`source_of(pipe)` for reports: "unknown" for a pipeline erasurelab did not load."""
    return source_of(pipe) or UNKNOWN_SOURCE


def applied_edits(pipe: Any) -> list[Edit]:
    """The Edits applied to `pipe`'s U-Net, oldest first (a copy: changing it changes nothing)."""
    return list(_peek(pipe).edits)


def current_edit(pipe: Any) -> Edit | None:
    """The most recently applied Edit still in place, or None."""
    edits = _peek(pipe).edits
    return edits[-1] if edits else None


def record_applied(pipe: Any, edit: Edit) -> None:
    """Called by `Edit.apply`: push `edit` onto the U-Net's stack."""
    _record(pipe).edits.append(edit)


def record_reverted(pipe: Any, edit: Edit) -> None:
    """Called by `Edit.revert`: take `edit` off the U-Net's stack (wherever it is; matched by identity)."""
    record = _RECORDS.get(_unet(pipe))
    if record is not None:
        record.edits = [e for e in record.edits if e is not edit]
