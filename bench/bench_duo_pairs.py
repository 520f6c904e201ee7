"""DUO's SDEdit pairs: how many slots get a pair, and how often an edit keeps the other attributes.

For each concept and each pair setting (safe caption x SDEdit strength) it builds pairs on the
built-in model (`methods.pairs.build_pairs`, its own pair cache in a temporary folder, so every
row is built fresh) and tabulates: pairs kept of requested, edits tried, the rate at which edits
that removed the concept kept every other attribute the judge reads (`attribute_keep_rate`, the
SDEdit's quality before the filter), edits that kept the concept, and the build time. With
`--attempts 1` each slot gets one (render, edit) try, so kept/requested is the per-try success rate.
Choose settings on dev concepts; the default concept set is dev. Writes bench/results/<output>.json.

    OMP_NUM_THREADS=2 python bench/bench_duo_pairs.py --concepts red,circle,striped,bobo \\
        --captions judge,prompt --strengths 0.3,0.4,0.5 --pairs 32 --attempts 1 --output duo_pairs_dev
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

REPORT_KEYS = ("requested", "kept", "slots_with_unsafe", "render_attempts", "edit_attempts", "edits_removing_concept",
               "edits_still_showing_concept", "edits_losing_other_attributes", "attribute_keep_rate",
               "edit_success_rate", "judge_captions")


def main() -> None:
    from erasurelab.concepts import concept
    from erasurelab.demo import DEV_CONCEPTS, TEST_CONCEPTS
    from erasurelab.judges import load_judge
    from erasurelab.methods.pairs import PairSettings, build_pairs
    from erasurelab.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="red,circle,striped,bobo")
    parser.add_argument("--captions", default="judge,prompt", help="safe captions: judge and/or prompt")
    parser.add_argument("--strengths", default="0.3,0.4,0.5")
    parser.add_argument("--negative", default="concept")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--attempts", type=int, default=1)
    parser.add_argument("--output", default="duo_pairs_dev")
    args = parser.parse_args()

    names = args.concepts.split(",")
    which = "dev" if set(names) <= set(DEV_CONCEPTS) else "test" if set(names) <= set(TEST_CONCEPTS) else "mixed"
    os.environ["ERASURELAB_CACHE"] = tempfile.mkdtemp(prefix="erasurelab-pairs-")
    pipe, judge = load_pipeline("builtin:shapes"), load_judge("shapes")
    rows = []
    for name in names:
        for caption in args.captions.split(","):
            for strength in (float(s) for s in args.strengths.split(",")):
                settings = PairSettings(n_pairs=args.pairs, strength=strength, negative=args.negative,
                                        max_attempts=args.attempts, safe_caption=caption)
                start = time.perf_counter()
                report = build_pairs(pipe, concept(name), judge, settings).report
                rows.append({"concept": name, "caption": caption, "strength": strength,
                             **{k: report[k] for k in REPORT_KEYS}, "seconds": time.perf_counter() - start})
                print(table(rows[-1:], ["concept", "caption", "strength", "kept", "requested",
                                        "attribute_keep_rate", "seconds"]).splitlines()[-1], flush=True)
    print(table(rows, ["concept", "caption", "strength", "kept", "requested", "edit_attempts",
                       "attribute_keep_rate", "edit_success_rate", "edits_still_showing_concept", "seconds"]))
    write_json(args.output, {"rows": rows, "concepts": names, "concept_set": which}, judge=judge,
               settings={"negative": args.negative, "pairs": args.pairs, "attempts": args.attempts,
                         "captions": args.captions, "strengths": args.strengths})


if __name__ == "__main__":
    main()
