"""Cost of an edit (the efficiency facet): from the run manifest, plus optional inference overhead.

Why from the manifest: the edit's wall time and peak memory were measured when it was made; the
evaluator never re-runs a method. Parameter counts and the delta's size on disk come from the Edit
and the run folder.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from erasurelab.edits import MANIFEST, LowRank, is_run_folder, read_manifest
from erasurelab.models.provenance import current_edit, source_of


def run_folder_of(pipe: Any) -> Path | None:
    """The saved run folder a pipeline was loaded from (load_pipeline on a run folder), if any."""
    source = source_of(pipe)
    if source and not str(source).startswith("builtin:") and is_run_folder(source):
        return Path(source)
    return None


def edit_cost(pipe: Any) -> dict[str, Any]:
    """Wall time, peak memory, tensors and parameters changed, delta parameters and bytes on disk.

    Of the edit most recently applied to `pipe` (models.provenance.current_edit), else of its run folder.
    """
    edit = current_edit(pipe)
    folder = run_folder_of(pipe)
    meta: dict[str, Any] = dict(edit.meta) if edit is not None else (read_manifest(folder) if folder else {})
    out: dict[str, Any] = {
        "method": meta.get("method"), "edit_wall_time_s": meta.get("wall_time_s"),
        "edit_peak_rss_mb": meta.get("peak_rss_mb"), "tensors_changed": None, "parameters_changed": None,
        "delta_parameters": None, "delta_bytes_on_disk": None, "run_folder": str(folder) if folder else None,
    }
    if edit is not None:
        out["tensors_changed"] = len(edit)
        out["parameters_changed"] = sum(math.prod(d.shape) for d in edit.deltas.values())
        out["delta_parameters"] = sum(d.rank * (d.shape[0] + d.shape[1]) if isinstance(d, LowRank)
                                      else math.prod(d.shape) for d in edit.deltas.values())
    if folder is not None:
        out["delta_bytes_on_disk"] = sum(p.stat().st_size for p in folder.iterdir()
                                         if p.is_file() and p.name != MANIFEST)
    return out


def median_latency(pipe: Any, steps: int, guidance: float, prompt: str = "a photo", warmup: int = 1,
                   runs: int = 5) -> float:
    """Median seconds to render one image (1 warm-up, 5 timed runs by default)."""
    from erasurelab.models.sampling import generate

    for _ in range(warmup):
        generate(pipe, [prompt], [0], steps=steps, guidance=guidance)
    times = []
    for k in range(runs):
        start = time.perf_counter()
        generate(pipe, [prompt], [k], steps=steps, guidance=guidance)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
