"""TRuST settings on dev concepts: anchor rate, retention and erase time per (setting, concept, steps).

Used to choose TRuST's embedded defaults on dev concepts only (the rule of the evaluation issue);
the chosen defaults are then timed against ESD on test concepts by bench_finetune_speed.py, in a
fresh process per run. Here every run shares one process and one loaded pipeline, so the wall
times are comparable with each other (a setting may name "method": "esd" to put ESD on the same
clock) but not with bench_finetune_speed.py's.

Measurement: bench_finetune_speed.erase_and_measure (anchor target rate, 5 seeds per anchor;
object+colour retention on the canonical prompts that do not name the concept, 1 seed).

    python bench/bench_trust_sweep.py --concepts red,circle,striped,bobo --steps 10,20 \
        --settings '{"cip-fast": {"variant": "cip", "batch_size": 2, "lr": 1.5e-2}}' --output trust_sweep_dev
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="red,circle,striped,bobo")
    parser.add_argument("--steps", default="10,20,40", help="step counts run for every setting")
    parser.add_argument("--settings", required=True,
                        help='JSON {name: options}; TRuST unless the options name another "method" (e.g. esd)')
    parser.add_argument("--allow-test", action="store_true", help="allow test concepts (reporting, not tuning)")
    parser.add_argument("--output", default="trust_sweep_dev")
    args = parser.parse_args()

    import torch

    from bench_finetune_speed import erase_and_measure
    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline
    from erasurelab.world.catalog import DEV_CONCEPTS

    concepts = args.concepts.split(",")
    outside = [c for c in concepts if c not in DEV_CONCEPTS]
    if outside and not args.allow_test:
        raise SystemExit(f"not dev concepts: {', '.join(outside)} (tuning runs only on dev concepts; "
                         "--allow-test to report)")
    settings = json.loads(args.settings)
    steps_list = [int(s) for s in args.steps.split(",")]
    torch.set_num_threads(2)
    pipe = load_pipeline("builtin:shapes")
    judge = load_judge("shapes")
    rows = []
    for name, options in settings.items():
        for label in concepts:
            for steps in steps_list:
                method = options.get("method", "trust")
                chosen = {k: v for k, v in options.items() if k != "method"}
                row = {"setting": name, **erase_and_measure(pipe, judge, method, label, steps, chosen)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(table(rows, ["setting", "concept", "steps", "wall_s", "anchor", "retention", "touched_fraction"]))
    knobs = {"settings": settings, "concepts": concepts, "steps": steps_list}
    print(f"wrote {write_json(args.output, {'rows': rows}, judge=judge, settings=knobs)}")


if __name__ == "__main__":
    main()
