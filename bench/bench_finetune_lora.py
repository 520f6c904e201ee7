"""Wall time and peak memory of `erasurelab finetune` for 1,000 steps on the embedded model (issue 19).

A benign dataset of the world (`world dataset`, 256 images for the erased concept) is written once;
then each variant runs as a user types it, in a fresh process, with its peak RSS from the OS:
- lora: the LoRA fine-tuning of the base (the unerased control; Modular LoRA trains exactly this);
- full: full-rank fine-tuning of the same attention projections through a UCE erasure run (baseline (a)).
Writes bench/results/finetune_lora.json.

    python bench/bench_finetune_lora.py [--steps 1000] [--variants lora,full]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json


def timed(args: list[str]) -> dict:
    """One CLI call in a fresh process: wall seconds, CPU seconds and that child's peak RSS (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "erasurelab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"erasurelab {' '.join(args)} failed: {output.strip().splitlines()[-1:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "last_line": output.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="green")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--variants", default="lora,full")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        timed(["world", "dataset", "--concept", args.concept, "--out", str(data), "--n", str(args.images)])
        common = ["--data", str(data), "--steps", str(args.steps), "--checkpoint-every", str(args.steps), "-q"]
        for variant in [v for v in args.variants.split(",") if v]:
            if variant == "lora":
                cli = ["finetune", "--model", "builtin:shapes", "--out", str(Path(tmp) / "lora"), *common]
            elif variant == "full":
                if not run.exists():
                    timed(["erase", "--concept", args.concept, "--method", "uce", "--out", str(run), "-q"])
                cli = ["finetune", "--model", str(run), "--full", "--out", str(Path(tmp) / "full"), *common]
            else:
                raise SystemExit(f"unknown variant {variant!r}: lora or full")
            row = {"variant": variant, "steps": args.steps, **timed(cli)}
            row["ms_per_step"] = 1000 * row["wall_s"] / args.steps
            rows.append(row)
            print(table([row], ["variant", "steps", "wall_s", "cpu_s", "peak_rss_mb", "ms_per_step"]), flush=True)
    path = write_json("finetune_lora", {"rows": rows}, settings=vars(args),
                      command=" ".join(["python", "bench/bench_finetune_lora.py", *sys.argv[1:]]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
