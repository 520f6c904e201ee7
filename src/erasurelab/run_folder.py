"""The saved run folder: its file names, its manifest, and finding a run's base model.

Layout (written to DIR.tmp, then renamed, so no half-written folder ever exists):
  manifest.json                       method, config, concept specs, base-model fingerprint,
                                      library versions, wall time, peak memory, per-layer ranks
  pytorch_lora_weights.safetensors    format="lora": peft keys "unet.<module>.lora_A/B.weight",
                                      loadable by diffusers' `pipe.load_lora_weights(DIR)`
  unet_edited.safetensors             format="full": the edited tensors (only those the edit
                                      changes), keyed like `unet.state_dict()`
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError
from erasurelab.runinfo import file_sha256, library_versions

FORMATS: tuple[str, ...] = ("auto", "lora", "full")
MANIFEST = "manifest.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
FULL_WEIGHTS = "unet_edited.safetensors"
MANIFEST_KIND = "erasurelab-edit"
#: Manifest keys that describe one saved copy, not the edit: dropped when a folder is loaded.
SAVE_KEYS: tuple[str, ...] = ("export", "kind", "manifest_version", "tensors", "saved_at")


def build_manifest(folder: Path, meta: Mapping[str, Any], tensors: Mapping[str, Mapping[str, Any]], format: str,
                   rank: int | None, ranks: dict[str, int], errors: dict[str, float]) -> dict[str, Any]:
    """The manifest of a run folder whose weight files are already in `folder` (their sha256 are recorded).

    meta: the edit's metadata; tensors: {key: {"shape", "rank"}} per edited tensor.
    """
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST and p.is_file()}
    export: dict[str, Any] = {"format": format, "files": files}
    if format == "lora":
        export.update({
            "weight_name": LORA_WEIGHTS, "requested_rank": rank, "ranks": ranks,
            "rank_handling": "per-module rank_pattern/alpha_pattern (alpha = rank, scale 1); no padding",
            "relative_errors": errors, "max_relative_error": max(errors.values(), default=0.0),
            "load_with": "pipe.load_lora_weights(folder) or erasurelab.Edit.load(folder).apply(pipe)",
        })
    else:
        export.update({"weight_name": FULL_WEIGHTS,
                       "load_with": "unet.load_state_dict(safetensors.torch.load_file(f), strict=False) "
                                    "or erasurelab.Edit.load(folder).apply(pipe)"})
    return {"kind": MANIFEST_KIND, "manifest_version": 1, **meta, "export": export, "tensors": dict(tensors),
            "versions": meta.get("versions") or library_versions(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """manifest.json of a run folder; one-line error when missing or corrupt."""
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ErasureLabError(f"no {MANIFEST} in {directory}: not an erasurelab run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureLabError(f"corrupt {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ErasureLabError(f"corrupt {path}: expected a JSON object")
    return data


def is_run_folder(path: str | Path) -> bool:
    """True for a folder written by `Edit.save` (a manifest of kind erasurelab-edit)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def base_model_spec(directory: str | Path) -> str:
    """The model spec to load a run's base model with (builtin name or a path that exists)."""
    base = read_manifest(directory).get("base") or {}
    source, resolved = base.get("source"), base.get("source_resolved")
    if not source:
        raise ErasureLabError(f"run {directory} does not name its base model (it was made from a pipeline not "
                              "loaded by erasurelab.load_pipeline); load the base and apply Edit.load(folder)")
    if str(source).startswith("builtin:") or Path(source).exists():
        return str(source)
    if resolved and Path(resolved).exists():
        return str(resolved)
    raise ErasureLabError(f"base model {source} of run {directory} not found")
