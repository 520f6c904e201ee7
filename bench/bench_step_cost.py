"""Where a fine-tuning run's time goes (issue 18): ESD and TRuST at their defaults, per component.

bench_finetune_speed.py measures time to a forget level; this bench explains it. In one process,
per concept and method, it erases at a fixed step count with the trainers' component calls wrapped
in timers, and splits the wall time into: setup (trajectory pool or D_f, built or loaded), frozen
U-Net calls (targets), trained forward calls, TRuST's curvature probe (`perturbed`), the optimiser
step (backward plus update) and TRuST's saliency refreshes (a rollout of the current model plus one
backward, counted whole). Time inside a wrapped call is charged to the outermost one, so nothing is
counted twice; "other" is the rest (Python, batching, masks). Run it on a warm ERASURELAB_CACHE
(once before) so setup is the cached load, as in finetune_speed_test_retain3_warm.json.

    python bench/bench_step_cost.py --concepts green,triangle,dotted,kiki --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json

#: (module path, class name, method name, component label) of the calls that are timed.
TIMED = (
    ("erasurelab.methods.finetune", "FineTuner", "frozen", "frozen"),
    ("erasurelab.methods.finetune", "FineTuner", "predict", "trained forward"),
    ("erasurelab.methods.finetune", "FineTuner", "perturbed", "curvature probe"),
    ("erasurelab.methods.finetune", "FineTuner", "step", "backward + update"),
    ("erasurelab.methods.trust_trainer", "TrustTrainer", "refresh", "saliency refresh"),
    ("erasurelab.methods.trust_trainer", "TrustTrainer", "build_forget_set", "setup"),
    ("erasurelab.methods.esd", "EsdTrainer", "build_pool", "setup"),
)
COMPONENTS = tuple(dict.fromkeys(label for *_, label in TIMED))


@contextlib.contextmanager
def component_timers() -> Iterator[dict[str, float]]:
    """Wrap every TIMED method; yields {label: seconds}, each call charged to the outermost wrapped one."""
    import importlib

    seconds: dict[str, float] = defaultdict(float)
    depth = [0]
    originals = []

    def wrap(function: Any, label: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                depth[0] -= 1
        return timed

    for module, cls_name, name, label in TIMED:
        cls = getattr(importlib.import_module(module), cls_name)
        originals.append((cls, name, cls.__dict__[name]))
        setattr(cls, name, wrap(cls.__dict__[name], label))
    try:
        yield seconds
    finally:
        for cls, name, function in originals:
            setattr(cls, name, function)


def measure(pipe: Any, method: str, concept: str, steps: int) -> dict[str, Any]:
    """One erase at `steps` steps, its wall time split by component (seconds and ms per step)."""
    from bench_finetune_speed import pool_from_cache
    from erasurelab.api import erase

    with component_timers() as seconds:
        start = time.perf_counter()
        edit = erase(pipe, [concept], method, steps=steps)
        wall = time.perf_counter() - start
    row: dict[str, Any] = {"method": method, "concept": concept, "steps": steps, "wall_s": wall,
                           "pool_from_cache": pool_from_cache(edit)}
    row.update({label: seconds.get(label, 0.0) for label in COMPONENTS})
    row["other"] = wall - sum(seconds.values())
    row["ms_per_step"] = 1000 * (wall - seconds.get("setup", 0.0)) / steps
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="green,triangle,dotted,kiki")
    parser.add_argument("--methods", default="esd,trust")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", default="step_cost")
    args = parser.parse_args()

    import torch

    from erasurelab.models import load_pipeline

    pipe = load_pipeline("builtin:shapes")
    rows = [measure(pipe, method, concept, args.steps) for concept in args.concepts.split(",")
            for method in args.methods.split(",")]
    columns = ["method", "concept", "steps", "wall_s", *COMPONENTS, "other", "ms_per_step", "pool_from_cache"]
    print(table(rows, columns))
    write_json(args.output, {"rows": rows}, pipe=pipe,
               settings={"concepts": args.concepts, "methods": args.methods, "steps": args.steps,
                         "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
