"""The evaluation report: DIR/index.html, DIR/metrics.json, DIR/tradeoff.png, DIR/grids/, DIR/suites/,
and DIR/reemergence.png when a re-emergence attack ("ft") was run.

Why self-contained HTML: a report is mailed, attached to a pull request or opened from an
archive; every image is inline (base64 PNG), so nothing breaks when the folder moves. The PNG
grids are also written as files for reuse. Why atomic (DIR.tmp, then rename): a crash or a
full disk must never leave a half report that looks finished. metrics.json carries the
re-emergence curves as each attack's "curves".

The figures are drawn in figures.py, the page in report_html.py; this module writes the folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.figures import reemergence_figure, tradeoff_figure
from erasurelab.evaluation.report_html import SECTIONS, page, png_bytes, slug
from erasurelab.evaluation.result import EvaluationResult
from erasurelab.evaluation.suites import Suite, save_suite
from erasurelab.runinfo import replace_folder

__all__ = ["SECTIONS", "reemergence_figure", "tradeoff_figure", "write_report"]


def write_report(results: EvaluationResult | Sequence[EvaluationResult], out: str | os.PathLike[str],
                 overwrite: bool = False, suites: Sequence[Suite] = ()) -> Path:
    """Write the report folder atomically and return its path.

    results: one EvaluationResult, or several (e.g. one per method) to compare in one report.
    suites: the suites evaluated, stored as suites/<concept>_<name>.json with their sha256.
    """
    import json

    from erasurelab.imaging import grid

    results = [results] if isinstance(results, EvaluationResult) else list(results)
    if not results:
        raise ErasureLabError("nothing to report: no evaluation results")
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ErasureLabError(f"report folder exists: {out} (choose another --out or pass overwrite)")
    tmp = out.with_name(out.name + ".tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)  # left over from an interrupted write of this same report
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ErasureLabError(f"cannot write report to {out}: {exc.strerror or exc}") from exc
    try:
        grids: dict[tuple[int, str], dict[str, tuple[bytes, bytes]]] = {}
        (tmp / "grids").mkdir()
        for k, result in enumerate(results):
            prefix = f"{k}_" if len(results) > 1 else ""
            for c in result.concepts:
                per_suite = {}
                for suite_name, ex in c.examples.items():
                    if not len(ex.before):
                        continue
                    pair = (png_bytes(grid(ex.before, ex.captions, columns=4)),
                            png_bytes(grid(ex.after, ex.captions, columns=4)))
                    for side, data in zip(("before", "after"), pair, strict=True):
                        (tmp / "grids" / f"{prefix}{slug(c.concept)}_{suite_name}_{side}.png").write_bytes(data)
                    per_suite[suite_name] = pair
                grids[(k, c.concept)] = per_suite
        for suite in suites:
            save_suite(suite, tmp / "suites" / f"{slug(suite.concept)}_{suite.name}.json")
        tradeoff = tradeoff_figure(results)
        (tmp / "tradeoff.png").write_bytes(tradeoff)
        reemergence = reemergence_figure(results)
        if reemergence is not None:
            (tmp / "reemergence.png").write_bytes(reemergence)
        payload = results[0].to_dict() if len(results) == 1 else {
            "kind": "erasurelab-evaluation-set", "results": [r.to_dict() for r in results]}
        (tmp / "metrics.json").write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n",
                                          encoding="utf-8")
        (tmp / "index.html").write_text(page(results, tradeoff, grids, reemergence), encoding="utf-8")
        replace_folder(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ErasureLabError(f"cannot write report to {out}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
