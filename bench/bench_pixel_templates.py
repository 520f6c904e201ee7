"""The pixel judge's template blur, chosen on generated canonical prompts and checked on evaluation renders.

Calibration set (where the value is chosen): 512 random canonical prompts of the world (rng 4242),
rendered by the embedded model at seeds 70000.., scored against the labels the prompts ask for (the
CNN judge is not the target, so the pixel judge stays independent of it). Held-out set: every
reference render in an evaluation cache folder (e.g. the test-set bench's), scored as agreement with
the CNN judge, the number evaluations report. Writes bench/results/pixel_templates.json.

    python bench/bench_pixel_templates.py --held-out /tmp/benchcache/renders --calib-cache /tmp/calib.pt
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json

SIGMAS = (0.0, 0.5, 0.8, 1.0, 1.3)


def calibration_set(cache: Path | None) -> dict:
    """512 generated canonical prompts with the labels they ask for (loaded from `cache` when it exists)."""
    if cache is not None and cache.is_file():
        return torch.load(cache, weights_only=False)
    import erasurelab as el
    from erasurelab.models.sampling import generate
    from erasurelab.world import vocab
    from erasurelab.world.captions import canonical_prompt

    rng = np.random.default_rng(4242)
    labels, prompts = [], []
    for _ in range(512):
        row = {a: str(rng.choice(vocab.classes(a))) for a in ("object", "color", "style", "background")}
        labels.append(row)
        prompts.append(canonical_prompt(row["object"], row["color"], row["style"], row["background"]))
    images = generate(el.load_pipeline("builtin:shapes"), prompts, list(range(70000, 70512)), batch_size=64)
    data = {"images": images, "labels": labels, "prompts": prompts}
    if cache is not None:
        torch.save(data, cache)
    return data


def held_out_images(folder: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    batches = [v for f in sorted(folder.rglob("*.safetensors")) for v in load_file(f).values()
               if v.ndim == 4 and v.shape[1] == 3]
    images = torch.cat(batches).float()
    return images / 255.0 if images.max() > 1.5 else images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=Path, required=True, help="folder of cached reference renders")
    parser.add_argument("--calib-cache", type=Path, default=None)
    args = parser.parse_args()

    from erasurelab.judges import load_judge
    from erasurelab.world import pixel_judge

    calib, held = calibration_set(args.calib_cache), held_out_images(args.held_out)
    cnn = load_judge("shapes")
    cnn_calib, cnn_held = cnn.predict(calib["images"]), cnn.predict(held)
    rows = []
    for sigma in SIGMAS:
        judge = pixel_judge.PixelJudge(replace(pixel_judge.PixelRules(), template_blur=sigma))
        mine_calib, mine_held = judge.predict(calib["images"]), judge.predict(held)
        row = {"template_blur": sigma, "judge": judge.id}
        for attribute in ("object", "color"):
            row[f"{attribute}_vs_prompt"] = float(np.mean([m[attribute] == t[attribute]
                                                           for m, t in zip(mine_calib, calib["labels"], strict=True)]))
            row[f"{attribute}_agree_held"] = float(np.mean([m[attribute] == c[attribute]
                                                            for m, c in zip(mine_held, cnn_held, strict=True)]))
        rows.append(row)
    cnn_vs_prompt = {a: float(np.mean([c[a] == t[a] for c, t in zip(cnn_calib, calib["labels"], strict=True)]))
                     for a in ("object", "color")}
    print(table(rows, ["template_blur", "object_vs_prompt", "color_vs_prompt", "object_agree_held",
                       "color_agree_held"]))
    print(f"CNN judge vs prompt labels on the calibration set: {cnn_vs_prompt}")
    write_json("pixel_templates", {"rows": rows, "cnn_vs_prompt": cnn_vs_prompt, "n_calibration": len(calib["labels"]),
                                   "n_held_out": len(held)},
               judge=cnn, settings={"sigmas": list(SIGMAS), "held_out": str(args.held_out), "seeds": "70000-70511",
                                    "prompt_rng": 4242},
               command=" ".join(["python", "bench/bench_pixel_templates.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
