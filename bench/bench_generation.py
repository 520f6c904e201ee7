"""Generation throughput (images/s), CPU seconds and peak memory of the embedded pipeline, fp32 vs bf16 autocast.

Each (batch, precision) row runs in a fresh subprocess so its peak resident memory is its own.
`--before-src DIR` adds rows run against another source tree (e.g. `git archive <commit> src | tar -x -C DIR`),
so before/after numbers are measured back to back under the same machine load. CPU seconds per batch
(process time) are reported beside wall time because wall time on a shared machine follows the load.

`--verdict-seeds N` (default 4) renders the world's canonical prompts at N seeds each in fp32 and in bf16
autocast at the same seeds and counts, per judge attribute, the images whose shapes-judge verdict
(`predict`) changes: the rule for autocast being the default is under 1% of images. On a CPU without
native bf16 (no AVX512-BF16 or AMX) the bf16 rows and the check are skipped unless --force-bf16.

    python bench/bench_generation.py [--batches 16,64] [--repeats 3] [--before-src /tmp/before] [--verdict-seeds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "a striped red circle on a white background"


def peak_rss_mb() -> float:
    """Peak resident memory in MiB (Linux). Local, so a worker also runs against an older source tree."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(batch: int, repeats: int, threads: int) -> dict:
    import torch

    from erasurelab.models import generate, load_pipeline

    torch.set_num_threads(threads)
    pipe = load_pipeline("builtin:shapes")
    loaded_mb = peak_rss_mb()
    prompts = [PROMPT] * batch
    generate(pipe, prompts[:1], [0], batch_size=batch)  # warm-up
    walls, cpus = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(pipe, prompts, list(range(r * batch, (r + 1) * batch)), batch_size=batch)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    median, cpu = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
    try:
        from erasurelab.models.sampling import cpu_bf16_capable, sampler_info

        precision, capable = sampler_info(pipe)["autocast"], cpu_bf16_capable()
    except ImportError:  # a source tree from before autocast existed samples in float32
        precision, capable = "off", None
    return {"batch": batch, "steps": 20, "autocast": precision, "images_per_s": batch / median,
            "median_batch_seconds": median, "cpu_seconds_per_batch": cpu, "cpu_images_per_s": batch / cpu,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded_mb, "load_average_1min": os.getloadavg()[0],
            "cpu_bf16": capable}


def verdicts(seeds: int, threads: int) -> dict:
    """Judge verdict changes between fp32 and bf16 autocast renders of the canonical prompts at the same seeds."""
    import torch

    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline
    from erasurelab.world import vocab

    # not at the top: a worker may run against an older source tree
    from _common import canonical_requests, judged_render, verdict_difference

    torch.set_num_threads(threads)
    pipe = load_pipeline("builtin:shapes")
    judge = load_judge("shapes")
    prompts, seed_list, n_prompts = canonical_requests(seeds)
    a, pa, ca = judged_render(pipe, judge, prompts, seed_list, autocast=False)
    b, pb, cb = judged_render(pipe, judge, prompts, seed_list, autocast=True)
    return {**verdict_difference(pa, pb, a, b, vocab.ATTRIBUTES), "prompts": n_prompts, "seeds_per_prompt": seeds,
            "first_seed": 1000, "cpu_seconds": {"fp32": ca, "bf16": cb}, "judge_id": judge.id}


def _run(args: list[str], env: dict[str, str]) -> dict:
    from _common import run_worker  # not at the top: a worker may run against an older source tree

    return run_worker(__file__, *args, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--verdict-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="generation", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="A source tree (with src/erasurelab) to measure as 'before', interleaved.")
    parser.add_argument("--verdict-seeds", type=int, default=4, help="0 skips the verdict check.")
    parser.add_argument("--verdict-from", type=Path, default=None,
                        help="Reuse the JSON a previous `--verdict-worker N` run printed instead of rendering again.")
    parser.add_argument("--force-bf16", action="store_true",
                        help="run the bf16 rows and verdict check also on a CPU without native bf16")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.threads)))
        return
    from _common import table, write_json

    if args.verdict_worker:
        print(json.dumps(verdicts(args.verdict_worker, args.threads)))
        return
    common = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    from erasurelab.models.sampling import cpu_bf16_capable

    bf16 = args.force_bf16 or cpu_bf16_capable()
    if not bf16:  # emulated bf16 runs many times slower than float32: rows that take hours and say nothing
        print("this CPU has no native bf16 (AVX512-BF16 or AMX): the bf16 rows and the verdict check are skipped "
              "(--force-bf16 runs them anyway)")
    variants = [("after", "default", {"ERASURELAB_AUTOCAST": "auto"})]
    variants += [("after", "bf16 opt-in", {"ERASURELAB_AUTOCAST": "on"})] if bf16 else []
    if args.before_src is not None:
        before_path = str(args.before_src.resolve() / "src")
        variants.insert(0, ("before", "default", {"PYTHONPATH": before_path}))
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for code, mode, env in variants:  # interleaved, so every variant sees the same machine load
            row = _run(["--worker", str(batch), *common], env)
            rows.append({"code": code, "mode": mode, **row})
    print(table(rows, ["code", "mode", "batch", "autocast", "images_per_s", "cpu_images_per_s", "median_batch_seconds",
                       "peak_rss_mb", "load_average_1min"]))
    if args.verdict_from is not None:
        check = {**json.loads(args.verdict_from.read_text()), "source": f"reused from {args.verdict_from.name}"}
    elif args.verdict_seeds > 0 and bf16:
        check = _run(["--verdict-worker", str(args.verdict_seeds), "--threads", str(args.threads)], {})
    else:
        check = None
    if check is not None:
        print(f"bf16 vs fp32 verdict changes on {check['images']} canonical renders: {check['verdict_changes']} "
              f"(max rate {check['max_rate']:.4f}, passes: {check['passes']})")
    settings = {"batches": args.batches, "repeats": args.repeats, "threads": args.threads, "steps": 20,
                "prompt": PROMPT, "before_src": str(args.before_src) if args.before_src else None,
                "verdict_seeds": args.verdict_seeds, "bf16_rows": bf16,
                "verdict_from": str(args.verdict_from) if args.verdict_from else None}
    payload = {"results": rows, "bf16_verdict_check": check}
    print(f"wrote {write_json(args.output, payload, settings=settings, judge=check['judge_id'] if check else None)}")


if __name__ == "__main__":
    main()
