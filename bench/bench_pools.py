"""What the disk cache of trajectory pools saves (issue 18): ESD's x_t pool and TRuST's D_f, built vs loaded.

For each concept it times, in this process and on the built-in model at each method's defaults, setting up
the trainer (which builds or loads the pool) twice on one empty cache folder: the first time builds and
stores the pool, the second loads it. Setup does the same other work both times (encoding the prompts), so
the difference is the pool. Run it alone: it is a timing. Writes bench/results/<output>.json.

    OMP_NUM_THREADS=2 python bench/bench_pools.py --concepts green,triangle,dotted,kiki
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json


def setup_seconds(pipe, method: str, label: str) -> tuple[float, bool]:
    """Wall seconds to set up `method`'s trainer for `label` at its defaults, and whether the pool was loaded."""
    from erasurelab.concepts import concept
    from erasurelab.methods import esd, trust
    from erasurelab.methods.esd import EsdConfig
    from erasurelab.methods.trust import TrustConfig

    spec = concept(label)
    start = time.perf_counter()
    if method == "esd":
        tuner, settings, forget, retain = esd.setup(pipe, [spec], EsdConfig())
        with tuner:
            hit = esd.make_trainer(tuner, settings, forget, retain).pool_from_cache
    else:
        tuner, settings, pairs, retain = trust.setup(pipe, [spec], TrustConfig())
        with tuner:
            hit = trust.make_trainer(tuner, settings, pairs, retain).data_from_cache
    return time.perf_counter() - start, hit


def main() -> None:
    import torch

    from erasurelab.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="green,triangle,dotted,kiki")
    parser.add_argument("--output", default="pools")
    args = parser.parse_args()
    os.environ["ERASURELAB_CACHE"] = tempfile.mkdtemp(prefix="erasurelab-pools-")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    pipe = load_pipeline("builtin:shapes")
    rows = []
    for label in args.concepts.split(","):
        for method in ("esd", "trust"):
            built, hit_first = setup_seconds(pipe, method, label)
            loaded, hit_second = setup_seconds(pipe, method, label)
            rows.append({"concept": label, "method": method, "setup_built_s": built, "setup_loaded_s": loaded,
                         "saved_s": built - loaded, "first_pool": "loaded" if hit_first else "built",
                         "second_pool": "loaded" if hit_second else "built"})
    print(table(rows, ["concept", "method", "setup_built_s", "setup_loaded_s", "saved_s", "first_pool",
                       "second_pool"]))
    write_json(args.output, {"rows": rows}, settings={"concepts": args.concepts, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
