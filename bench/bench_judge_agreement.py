"""Agreement of the CNN judge and the pixel-rule judge on the unedited model's evaluation renders, per concept.

What `evaluate` reports as "reference agreement", without an edit: for each concept, the unedited built-in
model renders every suite the evaluation would (anchor, paraphrase, selective, neighbours, unrelated; the
render cache on disk makes a second run free), both judges label every image, and the bench counts per
attribute (object, colour) the images on which they name the same class, plus which label pairs disagree.

Why a bench of its own: the pixel rules are hand-set, and changing them must be judged on concepts nobody
looked at. `--set dev` is where the rules may be inspected and changed; `--set test` is only reported.
`--grids DIR` writes a PNG per concept and attribute with the disagreeing images (CNN label / pixel label),
for the eye.

    python bench/bench_judge_agreement.py --set test [--grids /tmp/grids] [--output judge_agreement_test]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ATTRIBUTES = ("object", "color")


def concept_images(name: str, pipe, judge, cache, settings):
    """The unedited model's renders of every evaluation suite of built-in concept `name`, concatenated,
    and the prompt of each image."""
    import torch

    from erasurelab.api import resolve_concepts
    from erasurelab.evaluation.facets import render_suite, suites_for
    from erasurelab.evaluation.rendering import model_hash
    from erasurelab.evaluation.suites import method_anchors

    (spec,) = resolve_concepts([name])
    suites = suites_for(spec, pipe, judge, set(judge.concepts()), settings, method_anchors(spec))
    key = model_hash(pipe)
    images = torch.cat([render_suite(cache, pipe, key, s, s.indices()).images for s in suites.all()])
    return images, [s.prompts[p] for s in suites.all() for p, _ in s.indices()]


def prompt_label(prompt: str, attribute: str) -> str | None:
    """The one class of `attribute` the prompt names as whole words (None if it names none or several).

    Why: the prompt is what the model was asked to draw; where the judges disagree, the judge that
    names the prompt's class more often is the likelier one to be right (a weak truth: the model can
    draw something else, and paraphrases that use synonyms name no class).
    """
    from erasurelab.concepts.mentions import mentions
    from erasurelab.world import vocab

    named = [c for c in vocab.classes(attribute) if mentions(prompt, c)]
    return named[0] if len(named) == 1 else None


def prompt_accuracy(labels: list[dict[str, str]], prompts: list[str], attribute: str,
                    only: set[int] | None = None) -> dict[str, float | int]:
    """How often a judge's labels equal the prompt's class, over images whose prompt names one."""
    scored = [(i, prompt_label(p, attribute)) for i, p in enumerate(prompts) if only is None or i in only]
    scored = [(i, want) for i, want in scored if want is not None]
    hits = sum(labels[i][attribute] == want for i, want in scored)
    return {"images": len(scored), "rate": hits / len(scored) if scored else float("nan")}


def save_grid(images, labels: list[tuple[str, str]], path: Path) -> None:
    """Disagreeing images in a grid, each titled 'cnn / pixels'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 12
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, (a, b) in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{a}/{b}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("dev", "test"), default="test", help="The built-in concept set.")
    parser.add_argument("--concepts", default=None, help="Comma-separated concepts instead of a whole set.")
    parser.add_argument("--grids", type=Path, default=None, help="Folder for PNG grids of the disagreements.")
    parser.add_argument("--output", default=None, help="bench/results/NAME.json (default judge_agreement_<set>).")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from erasurelab.evaluation.agreement import disagreements
    from erasurelab.evaluation.rendering import RenderCache
    from erasurelab.evaluation.types import EvaluationSettings
    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline
    from erasurelab.world.catalog import DEV_CONCEPTS, TEST_CONCEPTS

    from _common import table, write_json

    torch.set_num_threads(2)
    names = args.concepts.split(",") if args.concepts else list(DEV_CONCEPTS if args.set == "dev" else TEST_CONCEPTS)
    pipe, cnn, pixels = load_pipeline("builtin:shapes"), load_judge("shapes"), load_judge("pixels")
    settings = EvaluationSettings(batch_size=args.batch_size)
    cache = RenderCache(settings.steps, settings.guidance, settings.batch_size)
    rows, pooled = [], {a: [0, 0] for a in ATTRIBUTES}
    for name in names:
        images, prompts = concept_images(name, pipe, cnn, cache, settings)
        row = {"concept": name, "images": len(images)}
        labels = {"cnn": cnn.predict(images), "pixels": pixels.predict(images)}
        for attribute in ATTRIBUTES:
            pairs = disagreements(cnn, pixels, images, attribute)
            row[attribute] = 1 - len(pairs) / len(images)
            row[f"{attribute}_disagreements"] = dict(Counter(f"{a}->{b}" for _, a, b in pairs).most_common())
            differ = {i for i, _, _ in pairs}
            for judge_name, judge_labels in labels.items():
                row[f"{attribute}_prompt_accuracy_{judge_name}"] = prompt_accuracy(judge_labels, prompts, attribute)
                row[f"{attribute}_prompt_accuracy_{judge_name}_where_they_differ"] = prompt_accuracy(
                    judge_labels, prompts, attribute, differ)
            pooled[attribute][0] += len(images) - len(pairs)
            pooled[attribute][1] += len(images)
            if args.grids is not None and pairs:
                args.grids.mkdir(parents=True, exist_ok=True)
                save_grid(images[[i for i, _, _ in pairs]], [(a, b) for _, a, b in pairs],
                          args.grids / f"{name}_{attribute}.png")
        rows.append(row)
        differ = ", ".join(f"{a} {row[f'{a}_prompt_accuracy_cnn_where_they_differ']['rate']:.2f} / "
                           f"{row[f'{a}_prompt_accuracy_pixels_where_they_differ']['rate']:.2f}" for a in ATTRIBUTES)
        print(f"{name}: object {row['object']:.3f} colour {row['color']:.3f} ({len(images)} images); where they "
              f"differ, the prompt's class is named by cnn / pixels: {differ}", flush=True)
    print(table(rows, ["concept", "images", "object", "color"]))
    summary = {a: {"agree": k, "images": n, "rate": k / n} for a, (k, n) in pooled.items()}
    summary["concepts_at_or_above_0.95"] = {a: sum(r[a] >= 0.95 for r in rows) for a in ATTRIBUTES}
    print(summary)
    name = args.output or f"judge_agreement_{args.set if not args.concepts else 'custom'}"
    path = write_json(name, {"rows": rows, "pooled": summary, "pixel_judge": pixels.id, "concept_set": args.set,
                             "concepts": names}, judge=cnn,
                      settings={"set": args.set, "batch_size": args.batch_size, "steps": settings.steps,
                                "guidance": settings.guidance, "images": "every evaluation suite, unedited model"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
