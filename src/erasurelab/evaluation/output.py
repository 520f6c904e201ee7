"""Where an evaluation's report goes: the folder is checked before any work, written after it.

Why check first: an unwritable or existing report folder found after an hour of rendering
wastes the hour. Only the main process writes (several processes may share one evaluation).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.rendering import is_main_process
from erasurelab.evaluation.result import EvaluationResult
from erasurelab.evaluation.suites import Suite


def check_output(out: str | os.PathLike[str] | None, overwrite: bool) -> Path | None:
    """Validate the report folder before any work: its parent must be a writable folder."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not overwrite:
        raise ErasureLabError(f"report folder exists: {path} (choose another --out or pass overwrite)")
    if path.exists() and not path.is_dir():
        raise ErasureLabError(f"report path {path} is a file, not a folder")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ErasureLabError(f"cannot write report to {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ErasureLabError(f"cannot write report to {path}: {ancestor} is not writable")
    return path


def write_output(result: EvaluationResult, out_path: Path | None, overwrite: bool, suites: Sequence[Suite]) -> None:
    """Write the report folder (on the main process only) and record its path in `result.report`."""
    if out_path is not None and is_main_process():
        from erasurelab.evaluation.report import write_report

        result.report = write_report(result, out_path, overwrite=overwrite, suites=suites)
