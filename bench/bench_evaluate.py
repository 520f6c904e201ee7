"""Time a full evaluation (every suite, both models, the judge; no attacks) of one erased concept.

On the embedded model: erase the concept (default: red with PURE), save the run folder, then
`evaluate(run_folder, concept)` with the default reference (the base, edit reverted) and the shapes
judge, writing the HTML report. Prints a table and writes bench/results/evaluate.json.

    python bench/bench_evaluate.py [--concept red] [--method pure] [--threads 2] [--report DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, peak_rss_mb, table, write_json


def run(concept: str, method: str, threads: int, report: Path | None) -> dict:
    import torch

    import erasurelab as el
    from erasurelab.evaluation import evaluate

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = el.load_pipeline("builtin:shapes")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    edit = el.erase(pipe, concept, method=method)
    erase_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = edit.save(Path(tmp) / "run", format="lora", base=pipe)
        del pipe
        out = report or Path(tmp) / "report"
        t0 = time.perf_counter()
        result = evaluate(str(run_dir), concept, out=out, overwrite=report is not None, quiet=False)
        evaluate_s = time.perf_counter() - t0
    c = result.concept(concept)
    images = int(result.timings["images_rendered"])
    return {
        "concept": concept, "method": method, "threads": threads, "load_s": load_s, "erase_s": erase_s,
        "evaluate_s": evaluate_s, "images_rendered": images, "images_per_s": images / evaluate_s,
        "render_reference_s": result.timings["render_reference_s"],
        "render_edited_s": result.timings["render_edited_s"], "judge_s": result.timings["judge_s"],
        "peak_rss_mb": peak_rss_mb(), "H": c.h, "H_no_edit": c.h_reference,
        "terms": c.terms, "tp_paraphrase_edited": c.target["paraphrase"]["edited"].value,
        "tp_paraphrase_reference": c.target["paraphrase"]["reference"].value, "judge_id": result.judge["id"],
        "suites": {name: info["sha256"] for name, info in c.suites.items()},
        "report": str(report) if report else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concept", default="red")
    parser.add_argument("--method", default="pure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="Keep the HTML report in this folder.")
    args = parser.parse_args()
    row = run(args.concept, args.method, args.threads, args.report)
    print(table([row], ["concept", "method", "erase_s", "evaluate_s", "images_rendered", "images_per_s",
                        "peak_rss_mb", "H", "H_no_edit"]))
    print(f"wrote {write_json('evaluate', {'environment': environment(), 'results': [row]})}")


if __name__ == "__main__":
    main()
