"""Acceptance numbers of the embedded world: judge accuracy, model accuracy, paraphrase rates.

Prints tables and writes bench/results/world.json. Fixed seeds and fixed prompt suites, so two
runs on the same machine give the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasurelab.judges import load_judge
from erasurelab.models import generate, load_pipeline
from erasurelab.world import captions, vocab
from erasurelab.world.builtin import weights_hash
from erasurelab.world.dataset import render_dataset

from _common import table, write_json

HELDOUT_SEED = 12_345  # never used in training (training renders use seed 0)


def judge_accuracy(judge, pipe, n: int) -> dict:
    data = render_dataset(n, HELDOUT_SEED, character_rate=0.15)
    clean = data.float_images()
    with torch.no_grad():
        recon = ((pipe.vae.decode(pipe.vae.encode(clean * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    out = {}
    for name, images in (("renders", clean), ("vae_reconstructions", recon)):
        probs = judge.probabilities(images)
        out[name] = {a: float((probs[a].argmax(-1) == data.labels[a]).float().mean()) for a in vocab.ATTRIBUTES}
    out["n"] = n
    return out


def rate(images, judge, items) -> list[dict[str, bool]]:
    predicted = judge.predict(images)
    return [{a: p[a] == want for a, want in item.labels.items()} for p, item in zip(predicted, items, strict=True)]


def model_accuracy(pipe, judge, seeds_per_prompt: int) -> dict:
    suite = captions.canonical_suite()
    suite += [captions.LabelledPrompt(captions.character_prompt(c, b), {"character": c})
              for c in vocab.classes("character")[1:] for b in vocab.classes("background")]
    items = [p for p in suite for _ in range(seeds_per_prompt)]
    seeds = [1 + k for _ in suite for k in range(seeds_per_prompt)]
    t0 = time.perf_counter()
    images = generate(pipe, [i.prompt for i in items], seeds, batch_size=64, quiet=False)
    seconds = time.perf_counter() - t0
    checks = rate(images, judge, items)
    shapes = [c for c, i in zip(checks, items, strict=True) if "object" in i.labels]
    full = [c for c, i in zip(checks, items, strict=True) if "style" in i.labels]
    chars = [c for c in checks if "character" in c]
    return {
        "images": len(shapes), "character_images": len(chars), "wall_seconds": round(seconds, 1),
        "object_accuracy": sum(c["object"] for c in shapes) / len(shapes),
        "color_accuracy": sum(c["color"] for c in shapes) / len(shapes),
        "object_and_color": sum(c["object"] and c["color"] for c in shapes) / len(shapes),
        "style_accuracy_full_prompts": sum(c["style"] for c in full) / len(full),
        "background_accuracy_full_prompts": sum(c["background"] for c in full) / len(full),
        "character_accuracy": sum(c["character"] for c in chars) / len(chars),
    }


def paraphrase_rates(pipe, judge, labels: list[str]) -> dict:
    """Per concept: how often prompts naming it only by held-out paraphrases render it."""
    items, owners = [], []
    for label in labels:
        for item in captions.paraphrase_prompts(label):
            items.append(item)
            owners.append(label)
    seeds = [1000 + i for i in range(len(items))]
    images = generate(pipe, [i.prompt for i in items], seeds, batch_size=64, quiet=False)
    predicted = judge.predict(images)
    hits: dict[str, list[bool]] = defaultdict(list)
    per_phrase: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for label, item, p in zip(owners, items, predicted, strict=True):
        attribute = vocab.lookup(label)[0]
        hit = p[attribute] == label
        hits[label].append(hit)
        phrase = next(ph for ph in vocab.lookup(label)[1].paraphrases if ph in item.prompt)
        per_phrase[label][phrase].append(hit)
    return {label: {"rate": sum(h) / len(h), "n": len(h),
                    "per_phrase": {ph: sum(v) / len(v) for ph, v in per_phrase[label].items()}}
            for label, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge-images", type=int, default=2000)
    parser.add_argument("--seeds-per-prompt", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe, judge = load_pipeline("builtin:shapes"), load_judge("shapes")

    judge_acc = judge_accuracy(judge, pipe, args.judge_images)
    print(f"\nJudge accuracy on {args.judge_images} held-out renders (and their VAE reconstructions):")
    print(table([{"attribute": a, "renders": judge_acc["renders"][a],
                  "vae_reconstructions": judge_acc["vae_reconstructions"][a]} for a in vocab.ATTRIBUTES],
                ["attribute", "renders", "vae_reconstructions"]))

    model = model_accuracy(pipe, judge, args.seeds_per_prompt)
    print(f"\nEmbedded model on {model['images']} canonical-prompt images (+{model['character_images']} character):")
    print(table([{"metric": k, "value": v} for k, v in model.items()], ["metric", "value"]))

    labels = list(vocab.classes("color")) + list(vocab.classes("object")) + list(vocab.classes("style")) \
        + list(vocab.classes("character")[1:])
    para = paraphrase_rates(pipe, judge, labels)
    print("\nHeld-out paraphrases rendering their concept (per concept; phrases never seen in training):")
    print(table([{"concept": k, "rate": v["rate"], "n": v["n"],
                  "best phrase": max(v["per_phrase"], key=v["per_phrase"].get)} for k, v in para.items()],
                ["concept", "rate", "n", "best phrase"]))
    payload = {"judge_id": judge.id, "weights_hash": weights_hash(), "judge_accuracy": judge_acc,
               "model_accuracy": model, "paraphrase_rates": para}
    settings = {"judge_images": args.judge_images, "seeds_per_prompt": args.seeds_per_prompt}
    judge_record = {"id": judge.id, "accuracy": judge_acc, "accuracy_source": "this run"}
    path = write_json("world", payload, pipe=pipe, judge=judge_record, settings=settings)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
