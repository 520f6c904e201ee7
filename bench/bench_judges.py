"""The two judges of the shapes world side by side: the CNN ("shapes") and the rule-based ("pixels").

(a) accuracy of each on held-out ground-truth renders; (b) how often they agree on colour and object
on images the embedded model generates from the world's canonical prompts, unedited and after
erasures (issue 15: at least 95% on reference images). Prints tables, saves a grid of the
disagreements to /tmp, writes bench/results/judges.json with commit, command and settings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import erasurelab as el
from erasurelab.evaluation.agreement import judge_agreement
from erasurelab.imaging import grid, save_image_atomic
from erasurelab.world import captions
from erasurelab.world.builtin import weights_hash
from erasurelab.world.dataset import render_dataset

from _common import environment, table, write_json

HELDOUT_SEED = 12_345  # never used in training (training renders use seed 0)
ATTRIBUTES = ("object", "color")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_accuracy(judges: dict, n: int) -> dict:
    data = render_dataset(n, HELDOUT_SEED, character_rate=0.15)
    images = data.float_images()
    out: dict = {"n": n, "seed": HELDOUT_SEED, "character_rate": 0.15}
    for name, judge in judges.items():
        predicted = judge.predict(images)
        out[name] = {a: sum(p[a] == s.labels()[a] for p, s in zip(predicted, data.scenes, strict=True)) / n
                     for a in ATTRIBUTES}
    return out


def compare(judges: dict, images: torch.Tensor, items: list, label: str) -> dict:
    """Agreement of the two judges, each judge's accuracy against the prompt, the confusions, a grid."""
    cnn, pixels = judges["shapes"], judges["pixels"]
    agreement = judge_agreement(cnn, pixels, images, ATTRIBUTES)
    p_cnn, p_pix = cnn.predict(images), pixels.predict(images)
    out = {"images": len(images), "agreement": {a: r.to_dict() for a, r in agreement.items()}}
    for name, predicted in (("shapes", p_cnn), ("pixels", p_pix)):
        out[f"{name}_matches_prompt"] = {a: sum(p[a] == i.labels[a] for p, i in zip(predicted, items, strict=True))
                                         / len(items) for a in ATTRIBUTES}
    differ = [k for k in range(len(images)) if any(p_cnn[k][a] != p_pix[k][a] for a in ATTRIBUTES)]
    out["disagreements"] = {a: dict(Counter(f"{p_cnn[k][a]}->{p_pix[k][a]}" for k in differ
                                            if p_cnn[k][a] != p_pix[k][a]).most_common()) for a in ATTRIBUTES}
    if differ:
        shown = differ[:64]
        notes = [f"{items[k].prompt} | cnn {p_cnn[k]['color']} {p_cnn[k]['object']} | "
                 f"pix {p_pix[k]['color']} {p_pix[k]['object']}" for k in shown]
        path = save_image_atomic(grid(images[shown], notes, columns=8, cell=160), f"/tmp/judges_disagree_{label}.png")
        out["disagreement_grid"] = str(path)
    return out


def canonical_images(pipe, seeds_per_prompt: int, first_seed: int, steps: int) -> tuple[torch.Tensor, list]:
    suite = captions.canonical_suite()
    items = [p for p in suite for _ in range(seeds_per_prompt)]
    seeds = [first_seed + k for _ in suite for k in range(seeds_per_prompt)]
    return el.generate(pipe, [i.prompt for i in items], seeds, steps=steps, batch_size=64), items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--render-images", type=int, default=1000)
    parser.add_argument("--seeds-per-prompt", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1001,
                        help="seeds first-seed, first-seed+1, ... per prompt (the rules were set looking at seeds 1-3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--edits", default="red,circle",
                        help="concepts erased with PURE (least-squares solver) whose images are also compared; "
                             "empty for none")
    args = parser.parse_args()
    torch.set_num_threads(2)
    judges = {"shapes": el.load_judge("shapes"), "pixels": el.load_judge("pixels")}

    renders = render_accuracy(judges, args.render_images)
    print(f"\nAccuracy on {args.render_images} held-out ground-truth renders:")
    print(table([{"judge": j, **renders[j]} for j in judges], ["judge", *ATTRIBUTES]))

    pipe = el.load_pipeline("builtin:shapes")
    models: dict[str, dict] = {}
    t0 = time.perf_counter()
    images, items = canonical_images(pipe, args.seeds_per_prompt, args.first_seed, args.steps)
    models["reference"] = compare(judges, images, items, "reference")
    for concept in filter(None, args.edits.split(",")):
        edit = el.erase(pipe, concept, method="pure", solver="least_squares")
        with edit.applied(pipe):
            images, items = canonical_images(pipe, args.seeds_per_prompt, args.first_seed, args.steps)
        models[f"pure-ls:{concept}"] = compare(judges, images, items, f"pure-ls_{concept}")
    seconds = time.perf_counter() - t0

    print(f"\nAgreement of the two judges on canonical-prompt images ({args.seeds_per_prompt} seeds, "
          f"{args.steps} steps), and each judge against the prompt:")
    rows = [{"model": m, "images": r["images"], **{f"agree {a}": r["agreement"][a]["value"] for a in ATTRIBUTES},
             **{f"cnn {a}": r["shapes_matches_prompt"][a] for a in ATTRIBUTES},
             **{f"pixels {a}": r["pixels_matches_prompt"][a] for a in ATTRIBUTES}} for m, r in models.items()]
    print(table(rows, list(rows[0])))
    for m, r in models.items():
        for a in ATTRIBUTES:
            if r["disagreements"][a]:
                print(f"{m} {a} (cnn->pixels): {r['disagreements'][a]}")

    path = write_json("judges", {
        "commit": commit(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {"render_images": args.render_images, "seeds_per_prompt": args.seeds_per_prompt,
                     "first_seed": args.first_seed, "rules_inspected_on": "canonical suite, seeds 1-3, unedited model",
                     "steps": args.steps, "edits": args.edits, "edit_method": "pure, solver=least_squares",
                     "suite": "captions.canonical_suite()"},
        "judge_ids": {n: j.id for n, j in judges.items()}, "model_hash": weights_hash(),
        "environment": environment(), "generation_and_judging_seconds": round(seconds, 1),
        "render_accuracy": renders, "generated": models})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
