"""What `erasurelab generate` does, kept apart from argument parsing.

Attribute requests ("object=circle,color=red") are composed by a registered prompt grammar (the
embedded world's), and a model trained on a grammar has each image judged by that grammar's
judge; any other model gets plain captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer

from erasurelab.concepts.grammar import PromptGrammar, grammar_for_model, request_grammar
from erasurelab.errors import ErasureLabError
from erasurelab.imaging import grid, save_image_atomic
from erasurelab.models import generate, load_pipeline
from erasurelab.models.provenance import base_source_of


@dataclass(frozen=True)
class Item:
    """A prompt with the labels an image rendered from it should show (empty: unconstrained)."""

    prompt: str
    labels: dict[str, str] = field(default_factory=dict)


def parse_requests(requests: list[str]) -> list[Item]:
    """Each attribute request as a prompt composed by the registered prompt grammar; one-line errors."""
    if not requests:
        return []
    grammar = request_grammar()
    return [Item(*grammar.parse_request(r)) for r in requests]


def judge_rows(images: torch.Tensor, items: list[Item], seeds: list[int], judge_name: str) -> list[dict]:
    """Judge verdict per image: predicted labels, and for each requested label whether it holds."""
    from erasurelab.judges import load_judge

    judge = load_judge(judge_name)
    rows = []
    for item, seed, predicted in zip(items, seeds, judge.predict(images), strict=True):
        checks = {a: predicted.get(a) == want for a, want in item.labels.items()}
        rows.append({"prompt": item.prompt, "seed": seed, "predicted": predicted, "checks": checks,
                     "ok": all(checks.values())})
    return rows


def _verdict(row: dict, grammar: PromptGrammar) -> str:
    text = grammar.describe(row["predicted"])
    if row["checks"]:
        text += "  OK" if row["ok"] else "  MISS:" + ",".join(a for a, ok in row["checks"].items() if not ok)
    return text


def render_and_judge(model: str, items: list[Item], num_images: int, seed: int, steps: int | None,
                     guidance: float | None, quiet: bool, device: Any = "cpu",
                     dtype: Any = None) -> tuple[torch.Tensor, list[dict], PromptGrammar | None]:
    """Render each item num_images times (seeds seed, seed+1, ...); judge them when the model speaks a grammar."""
    if num_images <= 0:
        raise ErasureLabError(f"--num-images must be positive, got {num_images}")
    if not items:
        raise ErasureLabError("no prompt given: pass --prompt TEXT or --request object=circle,color=red")
    pipe = load_pipeline(model, dtype=dtype, device=device)
    expanded = [item for item in items for _ in range(num_images)]
    seeds = [seed + k for _ in items for k in range(num_images)]
    images = generate(pipe, [i.prompt for i in expanded], seeds, steps=steps, guidance=guidance, quiet=quiet)
    grammar = grammar_for_model(base_source_of(pipe))
    if grammar is not None:
        return images, judge_rows(images, expanded, seeds, grammar.judge), grammar
    return images, [{"prompt": i.prompt, "seed": s} for i, s in zip(expanded, seeds, strict=True)], None


def run_generate(out: Path, model: str, prompts: list[str], requests: list[str], seed: int, steps: int | None,
                 guidance: float | None, num_images: int, quiet: bool, device: Any = "cpu", dtype: Any = None) -> None:
    items = [Item(p) for p in prompts] + parse_requests(requests)
    if Path(out).suffix.lower() != ".png":
        raise ErasureLabError(f"--out must be a .png file, got {out}")
    images, rows, grammar = render_and_judge(model, items, num_images, seed, steps, guidance, quiet, device, dtype)
    labels = [_verdict(r, grammar) if grammar is not None else f"seed {r['seed']}" for r in rows]
    save_image_atomic(grid(images, labels, columns=num_images), out)
    for row, label in zip(rows, labels, strict=True):
        typer.echo(f"{row['prompt']!r:50} seed {row['seed']:<4} {label if grammar is not None else ''}")
    typer.echo(f"wrote {out}")
