"""`erasurelab world ...`: train and inspect the embedded shapes world.

Why here, inside the world: nothing outside `erasurelab.world` imports it. The command line finds
this group through `erasurelab.plugins.BUILTIN_CLI_APPS` (and the `erasurelab.cli` entry point)
and imports this module only when `erasurelab world ...` runs or its help is shown; the top level
imports nothing heavy, so that stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from erasurelab.cli_options import Concept, Overwrite, Quiet, Seed
from erasurelab.errors import ErasureLabError

world_app = typer.Typer(no_args_is_help=True, help="The embedded shapes world: train and inspect it.")


@world_app.command("dataset")
def world_dataset(
    concept: Concept,
    out: Annotated[Path, typer.Option(help="Dataset folder to write (PNG images + metadata.jsonl).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 200,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """A benign fine-tuning dataset: close to the erased concept, never showing it, judge-checked image by image."""
    from erasurelab.world.benign import write_benign_dataset

    summary = write_benign_dataset(concept, out, n=n, seed=seed, overwrite=overwrite)
    typer.echo(f"{n} benign images for erased {concept!r} ({summary['rejected_by_judge']} rejected by the judge)")
    typer.echo(f"wrote {out}")


@world_app.command("train")
def world_train(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log, final weights.")] = Path("runs/world"),
    seed: Seed = 0,
    stages: Annotated[str, typer.Option(help="Comma-separated subset of vae,judge,unet.")] = "vae,judge,unet",
    unet_steps: Annotated[int | None, typer.Option(help="Override the U-Net's step count.")] = None,
    install: Annotated[bool, typer.Option(help="Copy the final weights into the package assets.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train (or resume) the embedded VAE, judge and U-Net (a long CPU job, checkpointed and resumable)."""
    from dataclasses import replace

    from erasurelab.world.train import STAGES, TrainConfig, install_assets, train_world

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise ErasureLabError(f"unknown stage(s) {', '.join(unknown) or '(none)'}; valid: {', '.join(STAGES)}")
    cfg = TrainConfig(seed=seed)
    if unet_steps is not None:
        if unet_steps <= 0:
            raise ErasureLabError(f"--unet-steps must be positive, got {unet_steps}")
        cfg = replace(cfg, unet_steps=unet_steps)
    final = train_world(out, cfg, chosen, quiet=quiet)
    typer.echo(f"weights in {final}")
    if install:
        typer.echo(f"installed into {install_assets(final)}")


@world_app.command("sample")
def world_sample(
    out: Annotated[Path, typer.Option(help="Output .png of ground-truth renders.")] = Path("world.png"),
    n: Annotated[int, typer.Option(help="How many renders.")] = 32,
    seed: Seed = 0,
) -> None:
    """Render random scenes of the shapes world (ground truth, no model) with their labels."""
    from erasurelab.imaging import grid, save_image_atomic
    from erasurelab.world.dataset import render_dataset

    if n <= 0:
        raise ErasureLabError(f"--n must be positive, got {n}")
    data = render_dataset(n, seed)
    labels = [" ".join(v for k, v in s.labels().items() if k != "character" or v != "none") for s in data.scenes]
    typer.echo(f"wrote {save_image_atomic(grid(data.float_images(), labels), out)}")
