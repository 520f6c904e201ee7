"""Where the rest of generation's speed could come from on 2 CPU cores: threads vs processes, and channels_last.

A cold evaluation is about 90% rendering (bench/results/evaluate.md), and the U-Net's convolutions
are most of that. Two exploratory levers, each measured before building anything:
- one process with 2 intra-op threads (what `generate` does today) against two 1-thread processes
  each rendering half of the same seeds (what a worker pool or `torchrun --nproc_per_node 2` would do;
  the U-Net's 8x8 latents are too small for two threads to share one convolution well);
- the U-Net and VAE in `torch.channels_last` memory format (oneDNN's preferred layout; images equal
  to float32 rounding, not bit for bit).
Rows are interleaved (every variant once per repeat) and each worker is a fresh process; the render time
excludes loading and one warm-up image. Prints a table and writes bench/results/NAME.json.

    OMP_NUM_THREADS=2 python bench/bench_generation_scaling.py [--images 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = ("a striped red circle on a white background", "a green square on a black background")


def worker(n: int, threads: int, channels_last: bool, offset: int, batch: int) -> float:
    """Seconds to render n images (seeds offset..offset+n) in this process, after load and warm-up."""
    import torch

    from erasurelab.models import generate, load_pipeline

    torch.set_num_threads(threads)
    pipe = load_pipeline("builtin:shapes")
    if channels_last:
        from _common import to_channels_last

        to_channels_last(pipe)
    generate(pipe, PROMPTS[:1], [0], batch_size=batch)
    start = time.perf_counter()
    generate(pipe, [PROMPTS[i % 2] for i in range(n)], list(range(offset, offset + n)), batch_size=batch)
    return time.perf_counter() - start


def _launch(n: int, threads: int, channels_last: bool, offset: int, batch: int) -> subprocess.Popen:
    args = [sys.executable, __file__, "--worker", *map(str, (n, threads, int(channels_last), offset, batch))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


def _seconds(process: subprocess.Popen) -> float:
    from _common import last_json

    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"worker failed with exit code {process.returncode}")
    return float(last_json(out))


def measure(images: int, processes: int, channels_last: bool, batch: int) -> float:
    """Wall seconds until every process has rendered its share (2 threads shared among the processes)."""
    share = images // processes
    workers = [_launch(share, 2 // processes, channels_last, k * share, batch) for k in range(processes)]
    return max(_seconds(w) for w in workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", default="generation_scaling")
    args = parser.parse_args()
    if args.worker:
        n, threads, channels_last, offset, batch = args.worker
        print(json.dumps(worker(n, threads, bool(channels_last), offset, batch)))
        return
    from _common import table, write_json

    variants = [(p, cl) for cl in (False, True) for p in (1, 2)]
    seconds: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for processes, channels_last in variants:
            seconds[(processes, channels_last)].append(measure(args.images, processes, channels_last, args.batch))
    base = statistics.median(seconds[(1, False)])
    rows = [{"processes x threads": f"{p} x {2 // p}", "channels_last": "on" if cl else "off",
             "render_s": seconds[(p, cl)],
             "median_s": statistics.median(seconds[(p, cl)]),
             "images_per_s": args.images / statistics.median(seconds[(p, cl)]),
             "speedup": base / statistics.median(seconds[(p, cl)])} for p, cl in variants]
    print(table(rows, ["processes x threads", "channels_last", "median_s", "images_per_s", "speedup"]))
    payload = {"results": rows, "load_average_1min": os.getloadavg()[0]}
    print(f"wrote {write_json(args.output, payload, settings=vars(args))}")


if __name__ == "__main__":
    main()
