"""Wall time of `erasurelab demo` in fresh processes: one cold run (empty disk cache), then warm runs.

Cold: `ERASURELAB_CACHE` points at a new, empty folder, so every reference-side result (reference
renders, textual inversion's reference images and token, Ring-A-Bell's prompt search) is computed, as
on a user's first run. Warm: the same cache folder again, each in a new process, as on any later run
(or for a second method against the same model). The headline is the median of the warm runs; the
cold run is reported beside it. Each run is `python -m erasurelab demo --out DIR` exactly as a user
types it, timed from process start to exit, with its peak RSS from the OS.

Prints a table and writes bench/results/demo.json.

    python bench/bench_demo.py [--warm 3] [--keep-cache DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json


def one_run(cache: Path, out: Path) -> dict:
    """One `erasurelab demo` in a fresh process: wall seconds, CPU seconds and peak RSS of that child alone.

    Why os.wait4: it returns the resource usage of the one child it reaps, whereas
    RUSAGE_CHILDREN's maxrss is the largest over every child so far.
    """
    import os

    env = {**os.environ, "ERASURELAB_CACHE": str(cache)}
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "erasurelab", "demo", "--out", str(out), "--quiet"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    lines = log.read_text().strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"demo failed ({os.waitstatus_to_exitcode(status)}): {lines[-1:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stdout_tail": lines[-6:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=1, help="cold runs, each with its own empty cache (median)")
    parser.add_argument("--warm", type=int, default=3, help="warm runs after the cold one (the median is reported)")
    parser.add_argument("--output", default="demo", help="results file name under bench/results/")
    parser.add_argument("--keep-cache", type=Path, default=None, help="cache folder to use and keep (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.keep_cache or Path(tmp) / "cache"
        if cache.exists() and any(cache.iterdir()):
            raise SystemExit(f"--keep-cache {cache} is not empty: the cold run needs an empty cache")
        runs = [{"kind": "cold", **one_run(cache, Path(tmp) / "out0")}]
        for i in range(1, args.cold):
            runs.append({"kind": "cold", **one_run(Path(tmp) / f"cold-cache{i}", Path(tmp) / f"cold{i}")})
        for i in range(args.warm):
            runs.append({"kind": "warm", **one_run(cache, Path(tmp) / f"out{i + 1}")})
    warm = [r["wall_s"] for r in runs if r["kind"] == "warm"]
    cold = [r["wall_s"] for r in runs if r["kind"] == "cold"]
    summary = {"cold_wall_s": runs[0]["wall_s"], "cold_median_wall_s": statistics.median(cold), "cold_runs": len(cold),
               "warm_median_wall_s": statistics.median(warm) if warm else None,
               "warm_runs": len(warm), "target_s": 360}
    print(table(runs, ["kind", "wall_s", "cpu_s", "peak_rss_mb"]))
    warm_median = summary["warm_median_wall_s"] or float("nan")
    print(f"cold median of {len(cold)} {summary['cold_median_wall_s']:.0f} s; warm median {warm_median:.0f} s "
          f"(target < 360 s)")
    path = write_json(args.output, {"summary": summary, "runs": runs},
                      settings={"command": "python -m erasurelab demo --out DIR --quiet", "cold": args.cold,
                                "warm": args.warm})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
