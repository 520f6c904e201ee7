"""Fine-tuning speed to a forget level (issues 5, 18): ESD vs TRuST per concept, on the embedded model.

Why step sweeps: every draw of both trainers is a function of (seed, step) and the learning rate
is constant, so a run with `steps=N` is exactly the first N steps of a longer run and its wall time is the
time to reach step N. For each method and step count it erases the concept in a fresh process (so peak memory
is the run's own), then measures the target rate on the anchor prompts (5 seeds) and retention (1 seed); a row
records whether its trajectory pool (ESD's x_t pool, TRuST's D_f) was loaded from the disk cache, so run it
twice on one ERASURELAB_CACHE for warm times. The table names, per method, the first step count whose anchor
rate is at most --level, with its wall time; the speed-up is ESD's time over TRuST's, per concept. The default
concepts are test concepts, one per kind (colour, object, style, character): defaults are chosen on dev
concepts and reported here. Prints a table and writes bench/results/finetune_speed.json.

    python bench/bench_finetune_speed.py --concepts green,triangle,dotted,kiki --esd-steps 50,100,200,300 \
        --trust-steps 25,50,100
    python bench/bench_finetune_speed.py --esd-steps 50,75,100,150 --trust-steps 10,20,40 --output finetune_speed_fast \
        --trust-options '{"variant": "cip", "batch_size": 2, "lr": 1.5e-2, "refresh": 10, "saliency_prompts": 1,
                          "n_forget": 8, "sample_steps": 6}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, run_worker, table, write_json


def pool_from_cache(edit) -> bool | None:
    """Whether the run loaded its trajectory pool from the disk cache (ESD: `pool_from_cache`, TRuST:
    `forget_set_from_cache`); None for a method without one."""
    return edit.meta.get("pool_from_cache", edit.meta.get("forget_set_from_cache"))


def erase_and_measure(pipe, judge, method: str, label: str, steps: int, options: dict) -> dict:
    """Erase `label` with `method` (options as given), time it, then measure the edited model and revert it.

    The one measurement of this bench and of bench_trust_sweep.py: anchor target rate (5 seeds) and
    object+colour retention (1 seed); peak memory is read right after the erase, before any render.
    """
    import time

    from bench_closed_form import anchor_items, retain_items, retention, target_rate
    from erasurelab.api import erase
    from erasurelab.runinfo import peak_rss_mb

    start = time.perf_counter()
    edit = erase(pipe, [label], method, steps=steps, **options)
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    with edit.applied(pipe):
        return {"method": method, "options": options, "concept": label, "steps": steps, "wall_s": wall,
                "peak_rss_mb": peak,
                "anchor": target_rate(pipe, judge, label, anchor_items(label), 5),
                "retention": retention(pipe, judge, retain_items((label,)), 1),
                "touched_fraction": edit.meta.get("touched_fraction", 1.0),
                "pool_from_cache": pool_from_cache(edit)}


def worker(method: str, label: str, steps: int, options: dict) -> dict:
    """One erase + measurement in this process (so peak memory is the run's own); returns the row."""
    import torch

    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline

    torch.set_num_threads(2)
    return erase_and_measure(load_pipeline("builtin:shapes"), load_judge("shapes"), method, label, steps, options)


def first_at_level(rows: list[dict], level: float) -> dict | None:
    reached = [r for r in sorted(rows, key=lambda r: r["steps"]) if r["anchor"] <= level]
    return reached[0] if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="green,triangle,dotted,kiki", help="comma-separated concepts")
    parser.add_argument("--esd-steps", default="50,100,200,300", help='step counts ("" runs no ESD)')
    parser.add_argument("--trust-steps", default="25,50,100", help='step counts ("" runs no TRuST)')
    parser.add_argument("--level", type=float, default=0.10, help="forget level: anchor target rate at most this")
    parser.add_argument("--esd-options", default="{}", help="ESD options as JSON, e.g. '{\"lr\": 2e-3}'")
    parser.add_argument("--trust-options", default="{}", help="TRuST options as JSON, e.g. '{\"refresh\": 10}'")
    parser.add_argument("--reuse", default=None,
                        help="bench/results/NAME.json whose rows stand in for a method not run here (its steps \"\")")
    parser.add_argument("--output", default="finetune_speed")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "CONCEPT", "STEPS", "OPTIONS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, label, steps, options = args.worker
        print(json.dumps(worker(method, label, int(steps), json.loads(options))))
        return

    sweeps = {"esd": [int(s) for s in args.esd_steps.split(",") if s],
              "trust": [int(s) for s in args.trust_steps.split(",") if s]}
    options = {"esd": json.loads(args.esd_options), "trust": json.loads(args.trust_options)}
    concepts = args.concepts.split(",")
    rows, per_concept = [], {}
    if args.reuse:  # rows measured earlier (fresh processes, same bench) for the methods not swept now
        earlier = json.loads((RESULTS / f"{args.reuse}.json").read_text())["rows"]
        rows = [r for r in earlier if not sweeps[r["method"]] and r["concept"] in concepts]
    for label in concepts:
        for method, steps_list in sweeps.items():
            for steps in steps_list:
                row = run_worker(__file__, "--worker", method, label, str(steps), json.dumps(options[method]))
                print(f"{label} {method} {steps} steps: anchor {row['anchor']:.3f}, retention {row['retention']:.3f}, "
                      f"{row['wall_s']:.1f} s", flush=True)
                rows.append(row)
        mine = [r for r in rows if r["concept"] == label]
        reached = {m: first_at_level([r for r in mine if r["method"] == m], args.level) for m in sweeps}
        speedup = (reached["esd"]["wall_s"] / reached["trust"]["wall_s"]
                   if reached["esd"] and reached["trust"] else None)
        per_concept[label] = {"reached": reached, "speedup": speedup}
    print(table(rows, ["method", "concept", "steps", "wall_s", "peak_rss_mb", "anchor", "retention",
                       "touched_fraction"]))
    for label, result in per_concept.items():
        for method, row in result["reached"].items():
            print(f"{label} {method}: " + (f"{row['steps']} steps, {row['wall_s']:.1f} s to anchor <= {args.level}, "
                                           f"retention {row['retention']:.3f}" if row
                                           else f"never reached anchor <= {args.level}"))
        speedup = result["speedup"]
        print(f"{label} speed-up (ESD time / TRuST time to the level): "
              f"{speedup if speedup is None else round(speedup, 2)}")
    settings = {"concepts": concepts, "level": args.level, "options": options, "sweeps": sweeps, "reuse": args.reuse}
    payload = {"rows": rows, "per_concept": per_concept}
    print(f"wrote {write_json(args.output, payload, judge='shapes', settings=settings)}")


if __name__ == "__main__":
    main()
