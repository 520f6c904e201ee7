"""Does erasing a combination keep its parts alone? Both judges, every style (issue 18).

Erases a combination (default red+circle, a dev concept) with one method at its defaults (or --options),
then renders each part with the other part swapped out ("a solid red square", "a striped blue circle", ...:
the colour on --swap-object, the object in --swap-color), plus the combination itself, in the solid, striped
and outlined styles, backgrounds cycled per seed, at --seeds seeds, on the unedited and the edited model. A part is
kept in an image when the judge reads both its colour and its object; each judge (the CNN and the pixel rules)
gives a rate per group, and the ratio edited / unedited is the part's retention. The target: every ratio
≥ .8 with both judges.

    python bench/bench_compound_parts.py [--concept red+circle] [--method trust] [--options '{"eta": 0.5}']
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STYLES = ("solid", "striped", "outlined")


def groups(concept: str, swaps: dict[str, str]) -> list[dict]:
    """(colour, object, style) groups: each part of a colour+object combination with the other part swapped,
    then the combination itself (solid), which the edit should no longer draw."""
    from erasurelab.world import vocab

    parts = concept.split("+")
    colour = next(p for p in parts if p in vocab.classes("color"))
    obj = next(p for p in parts if p in vocab.classes("object"))
    kept = [{"part": part, "color": c, "object": o, "style": style}
            for part, c, o in ((colour, colour, swaps["object"]), (obj, swaps["color"], obj)) for style in STYLES]
    return [*kept, {"part": concept, "color": colour, "object": obj, "style": "solid"}]


def render_groups(pipe, spec: list[dict], seeds: int, batch: int):
    """Images of every group: its canonical prompt on each background in turn, seeds 9000.."""
    from erasurelab.models import generate
    from erasurelab.world import vocab
    from erasurelab.world.captions import canonical_prompt

    backgrounds = vocab.classes("background")
    prompts = [canonical_prompt(g["object"], g["color"], g["style"], backgrounds[k % len(backgrounds)])
               for g in spec for k in range(seeds)]
    return generate(pipe, prompts, [9000 + k for _ in spec for k in range(seeds)], batch_size=batch)


def _rate(labels: list[dict[str, str]], i: int, group: dict, attributes: tuple[str, ...], seeds: int) -> float:
    """Fraction of group i's images whose labels equal the group's on every attribute given."""
    return sum(all(labels[i * seeds + k][a] == group[a] for a in attributes) for k in range(seeds)) / seeds


def kept_rates(judges: dict, images, spec: list[dict], seeds: int) -> dict[str, dict[str, list[float]]]:
    """Per judge, per group: the fraction of its images read as the group's colour and object ("both"), and as
    each alone (so a lost part shows which attribute went)."""
    out = {}
    for name, judge in judges.items():
        labels = judge.predict(images)
        out[name] = {key: [_rate(labels, i, g, attributes, seeds) for i, g in enumerate(spec)]
                     for key, attributes in (("both", ("color", "object")), ("color", ("color",)),
                                             ("object", ("object",)))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="red+circle")
    parser.add_argument("--method", default="trust")
    parser.add_argument("--options", default="{}", help="Method options as JSON (default: the method's defaults).")
    parser.add_argument("--swap-object", default="square", help="The object the colour part is drawn on.")
    parser.add_argument("--swap-color", default="blue", help="The colour the object part is drawn in.")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", default=None, help="bench/results/NAME.json (default compound_parts_<method>).")
    args = parser.parse_args()

    import torch

    import erasurelab as el
    from erasurelab.judges import load_judge

    from _common import table, write_json

    torch.set_num_threads(2)
    options = json.loads(args.options)
    pipe = el.load_pipeline("builtin:shapes")
    judges = {"cnn": load_judge("shapes"), "pixels": load_judge("pixels")}
    spec = groups(args.concept, {"object": args.swap_object, "color": args.swap_color})
    base = kept_rates(judges, render_groups(pipe, spec, args.seeds, args.batch_size), spec, args.seeds)
    start = time.perf_counter()
    edit = el.erase(pipe, args.concept, method=args.method, **options)
    erase_s = time.perf_counter() - start
    with edit.applied(pipe):
        edited = kept_rates(judges, render_groups(pipe, spec, args.seeds, args.batch_size), spec, args.seeds)
    combination = {name: {"base": base[name]["both"][-1], "edited": edited[name]["both"][-1]} for name in judges}
    spec = spec[:-1]
    rows = []
    for i, g in enumerate(spec):
        row = {**g}
        for name in judges:
            b, e = base[name]["both"][i], edited[name]["both"][i]
            row[f"{name}_base"], row[f"{name}_edited"] = b, e
            row[f"{name}_ratio"] = min(1.0, e / b) if b else float("nan")
            row[f"{name}_edited_color_only"] = edited[name]["color"][i]
            row[f"{name}_edited_object_only"] = edited[name]["object"][i]
        rows.append(row)
    worst = {name: min(r[f"{name}_ratio"] for r in rows) for name in judges}
    print(table(rows, ["part", "color", "object", "style", "cnn_base", "cnn_edited", "cnn_ratio", "pixels_base",
                       "pixels_edited", "pixels_ratio", "pixels_edited_color_only", "pixels_edited_object_only"]))
    print(f"the combination itself (solid, both parts read), base -> edited: {combination}; worst part ratio {worst}; "
          f"erase {erase_s:.1f} s")
    name = args.output or f"compound_parts_{args.method}"
    path = write_json(name, {"concept": args.concept, "method": args.method, "options": options, "rows": rows,
                             "worst_ratio": worst, "meets_0.8_both_judges": all(v >= 0.8 for v in worst.values()),
                             "combination": combination, "erase_s": erase_s,
                             "pixel_judge": judges["pixels"].id},
                      judge=judges["cnn"], settings={"seeds": args.seeds, "first_seed": 9000, "styles": list(STYLES),
                                                     "backgrounds": "cycled per seed", "batch_size": args.batch_size})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
