"""`erasurelab demo|bench|finetune`: the long jobs that chain erase, attack, evaluate or train.

Why its own module: these commands call one library function each with many options; keeping them
apart leaves cli.py with the app and the single-step commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from erasurelab.cli_options import (
    Attacks,
    Concept,
    Device,
    Methods,
    OptionalConcepts,
    Overwrite,
    Quiet,
    Seed,
    attack_names,
    peak,
    placement,
)


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs: runs/<method>/ and report/.")]
    = Path("erasurelab-demo"),
    concept: Concept = "circle",
    method: Methods = None,
    attack: Attacks = None,
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: erase a concept with PURE and UCE, attack, evaluate, report."""
    from erasurelab.demo import DEMO_METHODS, run_demo

    run_demo(out=out, concept_name=concept, methods=method or DEMO_METHODS, attack=attack_names(attack, "default"),
             quiet=quiet, echo=typer.echo)


def bench(
    out: Annotated[Path, typer.Option(help="Folder: bench.md, bench.json, report/, runs/<method>-<concept>/.")],
    concept: OptionalConcepts = None,
    method: Methods = None,
    attack: Attacks = None,
    quiet: Quiet = False,
) -> None:
    """Methods x concepts on the embedded model: every metric and timing as markdown + JSON, and a report."""
    from erasurelab.demo import BENCH_CONCEPTS, DEMO_METHODS, run_bench

    run_bench(out=out, concepts=concept or BENCH_CONCEPTS, methods=method or DEMO_METHODS,
              attack=attack_names(attack, "default"), quiet=quiet, echo=typer.echo)


def finetune(
    data: Annotated[Path, typer.Option(help="Image-and-caption folder (metadata.jsonl/csv with file_name, text).")],
    out: Annotated[Path, typer.Option(help="Run folder to write (base + safety + fine-tuning LoRA, manifest.json).")],
    model: Annotated[str, typer.Option(help="A base model or an erasure run folder.")] = "builtin:shapes",
    modular: Annotated[bool, typer.Option(help="Modular LoRA: train on the base with the safety edit absent, "
                                               "then merge both.")] = False,
    full: Annotated[bool, typer.Option(help="Full-rank fine-tuning of the erased model's attention "
                                            "projections (the LoRA's targets, at --full-lr): baseline (a).")] = False,
    safety: Annotated[str | None, typer.Option(help="Erasure run whose edit is the safety module "
                                                    "(with --model BASE).")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 1000,
    rank: Annotated[int, typer.Option(help="LoRA rank of the fine-tuning adapter.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the LoRA.")] = 1e-4,
    full_lr: Annotated[float, typer.Option(help="AdamW learning rate of --full fine-tuning.")] = 1e-5,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (resumable in OUT.ckpt).")] = 100,
    merge: Annotated[str, typer.Option(help="sum, or project (PURE-type projection edits).")] = "sum",
    seed: Seed = 0,
    device: Device = "cpu",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Benign LoRA fine-tuning of a model or an erased model; --modular keeps the safety edit out of training."""
    from erasurelab.finetune_cmd import run_finetune
    from erasurelab.finetuning import FinetuneConfig

    config = FinetuneConfig(steps=steps, rank=rank, lr=lr, batch_size=batch_size, seed=seed,
                            snapshot_every=checkpoint_every, full_lr=full_lr)
    where, _ = placement(device, None)
    saved = run_finetune(model, data, out, modular=modular, full=full, safety=safety, config=config,
                         merge_mode=merge, overwrite=overwrite, quiet=quiet, device=where, echo=typer.echo)
    typer.echo(f"wrote {saved}; {peak(where)}")
