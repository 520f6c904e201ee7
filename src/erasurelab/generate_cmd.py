"""What `erasurelab generate` does, kept apart from argument parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import typer

from erasurelab.errors import ErasureLabError
from erasurelab.imaging import grid, save_image_atomic
from erasurelab.models import generate, load_pipeline
from erasurelab.models.sampling import is_embedded
from erasurelab.world import captions, vocab


def judge_rows(images: torch.Tensor, items: list[captions.LabelledPrompt], seeds: list[int]) -> list[dict]:
    """Judge verdict per image: predicted labels, and for each requested label whether it holds."""
    from erasurelab.judges import load_judge

    judge = load_judge("shapes")
    rows = []
    for item, seed, predicted in zip(items, seeds, judge.predict(images), strict=True):
        checks = {a: predicted[a] == want for a, want in item.labels.items()}
        rows.append({"prompt": item.prompt, "seed": seed, "predicted": predicted, "checks": checks,
                     "ok": all(checks.values())})
    return rows


def _verdict(row: dict) -> str:
    p = row["predicted"]
    text = f"{p['color']} {p['style']} {p['object']}/{p['background']}"
    if p["character"] != vocab.NO_CHARACTER:
        text = f"{p['character']} ({text})"
    if row["checks"]:
        text += "  OK" if row["ok"] else "  MISS:" + ",".join(a for a, ok in row["checks"].items() if not ok)
    return text


def render_and_judge(model: str, items: list[captions.LabelledPrompt], num_images: int, seed: int,
                     steps: int | None, guidance: float | None, quiet: bool, device: Any = "cpu",
                     dtype: Any = None) -> tuple[torch.Tensor, list[dict]]:
    """Render each item num_images times (seeds seed, seed+1, ...); judge them on the embedded model."""
    if num_images <= 0:
        raise ErasureLabError(f"--num-images must be positive, got {num_images}")
    if not items:
        raise ErasureLabError("no prompt given: pass --prompt TEXT or --request object=circle,color=red")
    pipe = load_pipeline(model, dtype=dtype, device=device)
    expanded = [item for item in items for _ in range(num_images)]
    seeds = [seed + k for _ in items for k in range(num_images)]
    images = generate(pipe, [i.prompt for i in expanded], seeds, steps=steps, guidance=guidance, quiet=quiet)
    if is_embedded(pipe):
        return images, judge_rows(images, expanded, seeds)
    return images, [{"prompt": i.prompt, "seed": s} for i, s in zip(expanded, seeds, strict=True)]


def run_generate(out: Path, model: str, prompts: list[str], requests: list[str], seed: int, steps: int | None,
                 guidance: float | None, num_images: int, quiet: bool, device: Any = "cpu", dtype: Any = None) -> None:
    items = [captions.LabelledPrompt(p, {}) for p in prompts] + [captions.parse_request(r) for r in requests]
    if Path(out).suffix.lower() != ".png":
        raise ErasureLabError(f"--out must be a .png file, got {out}")
    images, rows = render_and_judge(model, items, num_images, seed, steps, guidance, quiet, device, dtype)
    judged = "predicted" in rows[0]
    labels = [_verdict(r) if judged else f"seed {r['seed']}" for r in rows]
    save_image_atomic(grid(images, labels, columns=num_images), out)
    for row, label in zip(rows, labels, strict=True):
        typer.echo(f"{row['prompt']!r:50} seed {row['seed']:<4} {label if judged else ''}")
    typer.echo(f"wrote {out}")
