"""Generation throughput (images/s) and peak memory of the embedded pipeline on this machine.

Each batch size runs in a fresh subprocess so its peak resident memory is its own. Prints a
table and writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, peak_rss_mb, run_worker, table, write_json


def worker(batch: int, repeats: int) -> dict:
    import torch

    from erasurelab.models import generate, load_pipeline

    torch.set_num_threads(2)
    pipe = load_pipeline("builtin:shapes")
    loaded_mb = peak_rss_mb()
    prompts = ["a striped red circle on a white background"] * batch
    generate(pipe, prompts[:1], [0], batch_size=batch)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(pipe, prompts, list(range(r * batch, (r + 1) * batch)), batch_size=batch)
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return {"batch": batch, "steps": 20, "images_per_s": batch / median, "median_batch_seconds": median,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,16,64")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows.append(run_worker(__file__, "--worker", str(batch), "--repeats", str(args.repeats)))
    print(table(rows, ["batch", "images_per_s", "median_batch_seconds", "peak_rss_mb", "rss_after_load_mb"]))
    print(f"wrote {write_json('generation', {'environment': environment(), 'results': rows})}")


if __name__ == "__main__":
    main()
