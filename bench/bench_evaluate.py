"""Time a full evaluation (every suite, both models, the judge; no attacks) of one erased concept, cold and warm.

On the embedded model: erase the concept (default: red with PURE), save the run folder, then
`evaluate(run_folder, concept)` with the default reference (the base, edit reverted) and the shapes
judge. Each measurement runs in a fresh process:

- cold (the headline): an empty on-disk cache (`ERASURELAB_CACHE` pointed at a new folder), so every
  reference and edited image is rendered;
- warm (reference reused): the same cache folder with the edited model's renders removed, i.e. what a
  second method (or a second evaluation of another edit) against the same reference pays;
- `--warm-all`: also the same evaluation again with everything cached.
- `--ab-kv-reuse N`: instead, N interleaved pairs of cold rows with cross-attention key/value reuse on and
  off (`ERASURELAB_KV_REUSE`), each in a fresh process with its own empty cache: the A/B of that speed path
  under the same machine load.

Prints a table and writes bench/results/evaluate.json (with a time breakdown per phase).

    python bench/bench_evaluate.py [--concept red] [--method pure] [--threads 2] [--warm-all] [--ab-kv-reuse 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, run_worker, table, write_json


def run(concept: str, method: str, threads: int) -> dict:
    import torch

    import erasurelab as el
    from erasurelab.evaluation import evaluate
    from erasurelab.models.sampling import sampler_info

    torch.set_num_threads(threads)
    c0 = time.process_time()
    t0 = time.perf_counter()
    pipe = el.load_pipeline("builtin:shapes")
    load_s = time.perf_counter() - t0
    precision = sampler_info(pipe)
    t0 = time.perf_counter()
    edit = el.erase(pipe, concept, method=method)
    erase_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = edit.save(Path(tmp) / "run", format="lora", base=pipe)
        del pipe
        t0, e0 = time.perf_counter(), time.process_time()
        result = evaluate(str(run_dir), concept, out=Path(tmp) / "report", quiet=True)
        evaluate_s, evaluate_cpu_s = time.perf_counter() - t0, time.process_time() - e0
    c = result.concept(concept)
    t = result.timings
    phases = {k: t[k] for k in ("render_reference_s", "render_edited_s", "judge_s") if k in t}
    phases["other_s"] = evaluate_s - sum(phases.values())  # loading, reverting, suites, report writing
    images = int(t["images_rendered"])
    return {
        "concept": concept, "method": method, "threads": threads, "load_s": load_s, "erase_s": erase_s,
        "evaluate_s": evaluate_s, "evaluate_cpu_s": evaluate_cpu_s, "images_rendered": images,
        "cache_hits": int(t.get("cache_hits", 0)), "rendered_images_per_s":
            images / (phases.get("render_reference_s", 0) + phases.get("render_edited_s", 0) or 1.0),
        **phases, "peak_rss_mb": peak_rss_mb(), "process_cpu_s": time.process_time() - c0,
        "load_average_1min": os.getloadavg()[0], "autocast": precision["autocast"],
        "H": c.h, "H_no_edit": c.h_reference, "terms": c.terms,
        "tp_paraphrase_edited": c.target["paraphrase"]["edited"].value,
        "tp_paraphrase_reference": c.target["paraphrase"]["reference"].value, "judge_id": result.judge["id"],
        "model_hash": result.model_hash, "reference_hash": result.reference_hash,
        "suites": {name: info["sha256"] for name, info in c.suites.items()},
    }


def _worker(args: argparse.Namespace, cache: Path, env: dict[str, str] | None = None) -> dict:
    return run_worker(__file__, "--worker", "--concept", args.concept, "--method", args.method,
                      "--threads", str(args.threads), env={**(env or {}), "ERASURELAB_CACHE": str(cache)})


def _cold(args: argparse.Namespace, env: dict[str, str] | None = None) -> dict:
    """One cold row: a fresh process on a fresh, empty cache folder (removed after)."""
    cache = Path(tempfile.mkdtemp(prefix="erasurelab-bench-cache-"))
    try:
        return _worker(args, cache, env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def ab_kv_reuse(args: argparse.Namespace) -> None:
    """N interleaved (on, off) pairs of cold rows; the headline is the median of each side."""
    from statistics import median

    from erasurelab.models.kv_reuse import KV_REUSE_ENV

    rows = [{"kv_reuse": mode, **_cold(args, {KV_REUSE_ENV: mode})}
            for _ in range(args.ab_kv_reuse) for mode in ("on", "off")]
    print(table(rows, ["kv_reuse", "evaluate_s", "render_reference_s", "render_edited_s", "judge_s",
                       "evaluate_cpu_s", "H", "load_average_1min"]))
    side = {mode: median(r["evaluate_s"] for r in rows if r["kv_reuse"] == mode) for mode in ("on", "off")}
    same = len({(r["H"], json.dumps(r["terms"], sort_keys=True)) for r in rows}) == 1
    settings = {"concept": args.concept, "method": args.method, "threads": args.threads, "pairs": args.ab_kv_reuse,
                "cache": "cold (empty cache) per row", "attacks": []}
    payload = {"headline": {"evaluate_s_cold_kv_reuse_on_median": side["on"],
                            "evaluate_s_cold_kv_reuse_off_median": side["off"],
                            "same_verdicts_every_row": same}, "results": rows}
    print(f"median cold evaluate: reuse on {side['on']:.1f} s, off {side['off']:.1f} s; same H and terms: {same}")
    print(f"wrote {write_json(args.output, payload, settings=settings, judge=rows[0]['judge_id'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--concept", default="red")
    parser.add_argument("--method", default="pure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="evaluate", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--ab-kv-reuse", type=int, default=0, metavar="N",
                        help="N interleaved cold pairs with key/value reuse on and off, instead of cold and warm")
    parser.add_argument("--warm-all", action="store_true", help="Also time a re-run with every render cached.")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run(args.concept, args.method, args.threads)))
        return
    if args.ab_kv_reuse > 0:
        ab_kv_reuse(args)
        return
    cache = Path(tempfile.mkdtemp(prefix="erasurelab-bench-cache-"))
    try:
        rows = [{"cache": "cold (empty cache)", **_worker(args, cache)}]
        from erasurelab.evaluation.rendering import RENDER_NAMESPACE

        edited = cache / RENDER_NAMESPACE / rows[0]["model_hash"][:16]
        if args.warm_all:
            rows.append({"cache": "warm (all renders cached)", **_worker(args, cache)})
        shutil.rmtree(edited, ignore_errors=True)
        rows.append({"cache": "warm (reference renders reused)", **_worker(args, cache)})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(table(rows, ["cache", "evaluate_s", "images_rendered", "cache_hits", "render_reference_s",
                       "render_edited_s", "judge_s", "other_s", "evaluate_cpu_s", "peak_rss_mb", "H",
                       "load_average_1min"]))
    settings = {"concept": args.concept, "method": args.method, "threads": args.threads,
                "autocast": rows[0]["autocast"], "attacks": [], "reference": "run base (edit reverted)",
                "warm_all": args.warm_all}
    payload = {"headline": {"evaluate_s_cold": rows[0]["evaluate_s"],
                            "evaluate_s_warm_reference": rows[-1]["evaluate_s"]}, "results": rows}
    print(f"wrote {write_json(args.output, payload, settings=settings, judge=rows[0]['judge_id'])}")


if __name__ == "__main__":
    main()
