"""DUO on the embedded model for one dev concept: pair-building time, training wall time, peak memory,
anchor target rate before and after, and retention (issue 18).

Runs in a fresh process with a private, empty pair cache so the pair time is a cold build. Anchor
rate: the concept's forget anchors, --seeds seeds each; retention: canonical prompts not naming the
concept (object and colour read by the judge), 1 seed. Writes bench/results/duo.json (or --output).

    OMP_NUM_THREADS=2 python bench/bench_duo.py --concept red
    OMP_NUM_THREADS=2 python bench/bench_duo.py --concept red --options '{"beta": 2000}' --output duo_beta2000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasurelab.demo import DEV_CONCEPTS

from _common import run_worker, table, write_json


def worker(label: str, options: dict, seeds: int) -> dict:
    """Pairs + training + measurement in this process; returns the row."""
    import os
    import time

    import torch

    os.environ["ERASURELAB_CACHE"] = tempfile.mkdtemp(prefix="bench-duo-")
    torch.set_num_threads(2)
    from bench_closed_form import anchor_items, retain_items, retention, target_rate
    from erasurelab.api import erase
    from erasurelab.concepts import concept
    from erasurelab.judges import load_judge
    from erasurelab.methods.duo import DuoConfig
    from erasurelab.methods.pairs import build_pairs
    from erasurelab.models import load_pipeline
    from erasurelab.runinfo import peak_rss_mb

    pipe, judge = load_pipeline("builtin:shapes"), load_judge("shapes")
    anchors, retain = anchor_items(label), retain_items((label,))
    before = {"anchor": target_rate(pipe, judge, label, anchors, seeds), "retention": retention(pipe, judge, retain, 1)}
    config = DuoConfig(**options)
    start = time.perf_counter()
    pairs = build_pairs(pipe, concept(label), judge, config.pair_settings(pipe), config.safe_prompt, config.prompts)
    pair_time = time.perf_counter() - start
    start = time.perf_counter()
    edit = erase(pipe, label, "duo", **options)  # pairs now come from the cache: this is the training time
    train_time = time.perf_counter() - start
    with edit.applied(pipe):
        after = {"anchor": target_rate(pipe, judge, label, anchors, seeds),
                 "retention": retention(pipe, judge, retain, 1)}
    final = edit.meta["per_concept"][0]["final"]
    return {"concept": label, "pair_seconds": pair_time, "train_seconds": train_time, "peak_rss_mb": peak_rss_mb(),
            "anchor_before": before["anchor"], "anchor_after": after["anchor"],
            "retention_before": before["retention"], "retention_after": after["retention"],
            "pairs": {k: v for k, v in pairs.report.items() if k != "cache_key"}, "final_terms": final,
            "settings": edit.meta["settings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="red", choices=DEV_CONCEPTS)
    parser.add_argument("--options", default="{}", help="DUO options as JSON")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", default="duo")
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    options = json.loads(args.options)
    if args.worker:
        print(json.dumps(worker(args.concept, options, args.seeds)))
        return
    row = run_worker(__file__, "--worker", "--concept", args.concept, "--options", args.options,
                     "--seeds", str(args.seeds))
    print(table([row], ["concept", "pair_seconds", "train_seconds", "peak_rss_mb", "anchor_before", "anchor_after",
                        "retention_before", "retention_after"]))
    write_json(args.output, {"rows": [row]}, judge="shapes", settings={"concept": args.concept, "options": options,
                                                                        "seeds": args.seeds},
               command=" ".join(["python", "bench/bench_duo.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
