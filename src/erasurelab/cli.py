"""The `erasurelab` command line. Thin: parse, call the API, print.

Every ErasureLabError becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback. The shared option vocabulary is in cli_options.py; the listing and long-job
commands live in cli_inspect.py and cli_runs.py and are registered here. Plugin command groups
(the embedded world's `erasurelab world ...`) come from the plugin registry, imported only when used.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from erasurelab import __version__
from erasurelab.cli_inspect import attacks, judges, methods
from erasurelab.cli_options import (
    Concept,
    Concepts,
    Device,
    Dtype,
    Guidance,
    Model,
    OneAttack,
    OptionalAttacks,
    Options,
    Overwrite,
    Quiet,
    Seed,
    Steps,
    attack_names,
    one_attack,
    peak,
    placement,
)
from erasurelab.cli_runs import bench, demo, finetune
from erasurelab.errors import ErasureLabError
from erasurelab.plugins import cli_apps, load_cli_app

if TYPE_CHECKING:
    from typer._click import Command  # typer vendors click; only its types are needed here


class PluginCommandGroup(TyperGroup):
    """The root command: built-in commands, then the command groups plugins declare, each imported on first use.

    Why lazy: listing `world` must not import the world (and torch) for `erasurelab --version`.
    """

    def list_commands(self, ctx: typer.Context) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *sorted(name for name in cli_apps() if name not in own)]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in cli_apps():
            plugin_app = load_cli_app(cmd_name)
            if plugin_app is not None:
                found = typer.main.get_group(plugin_app)  # type: ignore[arg-type]
                found.name = cmd_name
                self.add_command(found, cmd_name)
        return found


app = typer.Typer(cls=PluginCommandGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Erase concepts from text-to-image diffusion models, and prove it.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"erasurelab {__version__}")
        raise typer.Exit()


def _verbose(value: bool) -> None:
    """--verbose: the library's INFO log lines (cache hits and misses, plugins loaded) on stderr."""
    if not value:
        return
    logger = logging.getLogger("erasurelab")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_erasurelab_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._erasurelab_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", callback=_verbose, is_eager=True,
                                                help="Log what the library does (caches, plugins) on stderr.")]
          = False) -> None:
    """Erase concepts from text-to-image diffusion models, and prove it."""


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output grid, a .png file.")],
    model: Model = "builtin:shapes",
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt; repeat for several.")] = None,
    request: Annotated[list[str] | None, typer.Option(
        help="Embedded world only: attributes as key=value pairs, e.g. 'object=circle,color=red'; "
             "the prompt is composed and the judge checks each requested attribute.")] = None,
    seed: Seed = 0,
    steps: Steps = None,
    guidance: Guidance = None,
    num_images: Annotated[int, typer.Option(help="Images per prompt.")] = 4,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Render prompts to a labelled grid; on the embedded model, print the judge's verdict per image."""
    from erasurelab.generate_cmd import run_generate

    where, weights = placement(device, dtype)
    run_generate(out=out, model=model, prompts=prompt or [], requests=request or [], seed=seed, steps=steps,
                 guidance=guidance, num_images=num_images, quiet=quiet, device=where, dtype=weights)


@app.command()
def erase(
    concept: Concepts,
    out: Annotated[Path, typer.Option(help="Run folder to write (LoRA or edited tensors + manifest.json).")],
    model: Model = "builtin:shapes",
    method: Annotated[str, typer.Option(help="A registered method; see `erasurelab methods`.")] = "pure",
    format: Annotated[str, typer.Option("--format", help="auto (lora when every delta has one, else full), "
                                                         "lora (diffusers-loadable folder), full (edited tensors), "
                                                         "kohya (one A1111/ComfyUI LoRA file in OUT) or checkpoint "
                                                         "(one original-layout SD1.x .safetensors in OUT).")]
    = "auto",
    rank: Annotated[int | None, typer.Option(help="LoRA rank cap for dense (full-rank) edits.")] = None,
    option: Options = None,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Erase concepts from a model; writes a LoRA (or full edited weights) plus manifest.json."""
    from erasurelab.api import erase as run_erase
    from erasurelab.api import parse_options, summary
    from erasurelab.models import load_pipeline

    formats = ("auto", "lora", "full", "kohya", "checkpoint")
    if format not in formats:
        raise ErasureLabError(f"unknown --format {format!r}; valid: {', '.join(formats)}")
    options = parse_options(option or [])
    where, weights = placement(device, dtype)
    pipe = load_pipeline(model, dtype=weights, device=where)
    edit = run_erase(pipe, concept, method, quiet=quiet, **options)
    typer.echo(f"{summary(edit)}; {peak(where)}")
    if format in ("auto", "lora", "full"):
        typer.echo(f"wrote {edit.save(out, format=format, rank=rank, overwrite=overwrite)}")
        return
    from erasurelab.export import save_checkpoint, save_kohya_lora

    if out.suffix != ".safetensors":
        raise ErasureLabError(f"--format {format} writes one file: give --out NAME.safetensors, got {out}")
    if format == "kohya":
        typer.echo(f"wrote {save_kohya_lora(edit, out, rank=rank, base=pipe, overwrite=overwrite)}")
        return
    edit.apply(pipe)
    typer.echo(f"wrote {save_checkpoint(pipe, out, overwrite=overwrite)}")


@app.command()
def attack(
    concept: Concept,
    out: Annotated[Path, typer.Option(help="Folder to write: result.json, *.safetensors (learned embedding or "
                                           "adversarial token ids), images.png.")],
    attack_name: OneAttack = "textual-inversion",
    model: Annotated[str, typer.Option(help="The erased model: a run folder, builtin:shapes, a diffusers folder "
                                            "or a .safetensors file.")] = "builtin:shapes",
    reference: Annotated[str | None, typer.Option(help="The unedited model (default: a run folder's base model, "
                                                       "else --model itself).")] = None,
    judge: Annotated[str, typer.Option(help="A registered judge.")] = "shapes",
    seed: Seed = 0,
    option: Options = None,
    skip_reference: Annotated[bool, typer.Option(help="Skip the sanity run on the unedited model.")] = False,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Attack an erased model; writes the adversarial suite, judged images and result.json (ASR, budget)."""
    from erasurelab.api import parse_options
    from erasurelab.attacks import get_attack, make_attack_config, run_attack
    from erasurelab.edits import base_model_spec, is_run_folder
    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline

    attack_name = one_attack(attack_name)
    options = parse_options(option or [])
    make_attack_config(get_attack(attack_name), options)  # bad name/options fail before models load
    if reference is None:
        reference = str(base_model_spec(model)) if is_run_folder(model) else model
    where, weights = placement(device, dtype)
    edited = load_pipeline(model, dtype=weights, device=where)
    unedited = edited if reference == model else load_pipeline(reference, dtype=weights, device=where)
    result = run_attack(attack_name, edited, concept, unedited, load_judge(judge), seed=seed, quiet=quiet,
                        check_reference=not skip_reference, **options)
    typer.echo(result.summary())
    typer.echo(f"wrote {result.save(out, overwrite=overwrite)}")


@app.command()
def evaluate(
    concept: Concepts,
    out: Annotated[Path, typer.Option(help="Report folder: index.html, metrics.json, tradeoff.png, grids/, suites/.")],
    model: Annotated[str, typer.Option(
        help="Edited model: a run folder from `erasurelab erase` (or any spec with --reference).")],
    reference: Annotated[str | None, typer.Option(
        help="Unedited model (default: the run's base, edit reverted).")] = None,
    attack: OptionalAttacks = None,
    judge: Annotated[str, typer.Option(help="A registered judge: shapes, clip:FOLDER (zero-shot CLIP, labels from "
                                            "the concept spec), nudenet (pip install 'erasurelab[nudity]').")]
    = "shapes",
    steps: Steps = None,
    guidance: Guidance = None,
    preset: Annotated[str, typer.Option(help="Protocol sizes: full (the protocol's) or quick (the demo's, about "
                                             "400 images per model; rates rest on fewer images).")] = "full",
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate an edited model on every facet (HUB-style) and write an HTML report."""
    from erasurelab.evaluation import EvaluationSettings
    from erasurelab.evaluation import evaluate as run_evaluate
    from erasurelab.evaluation.runner import check_output

    check_output(out, overwrite)  # fail before minutes of attacks
    attack_list = attack_names(attack, "none")  # a misspelled attack fails before any model loads
    if preset not in ("full", "quick"):
        raise ErasureLabError(f"unknown --preset {preset!r}; valid: full, quick")
    if preset == "quick":
        from dataclasses import replace

        from erasurelab.demo import demo_settings

        settings = replace(demo_settings(), steps=steps, guidance=guidance)
    else:
        settings = EvaluationSettings(steps=steps, guidance=guidance)
    where, weights = placement(device, dtype)
    target, ref, judge_arg, attack_results = model, reference, judge, []
    if where.type != "cpu" or weights is not None:
        from erasurelab.models import load_pipeline

        target = load_pipeline(model, dtype=weights, device=where)
        ref = None if reference is None else load_pipeline(reference, dtype=weights, device=where)
    if attack_list:
        from erasurelab.attacks import run_attack
        from erasurelab.edits import base_model_spec, is_run_folder
        from erasurelab.models import load_pipeline

        if reference is None and not is_run_folder(model):
            raise ErasureLabError("--attack needs --reference when --model is not a run folder")
        target = load_pipeline(model, dtype=weights, device=where)
        ref = load_pipeline(reference if reference is not None else base_model_spec(model), dtype=weights,
                            device=where)
        from erasurelab.api import resolve_concepts
        from erasurelab.evaluation.judging import resolve_judge

        judge_arg = resolve_judge(judge, resolve_concepts(concept))
        attack_results = [run_attack(name, target, c, ref, judge_arg, quiet=quiet) for name in attack_list
                          for c in concept]
    result = run_evaluate(target, concept, reference=ref, judge=judge_arg, attacks=attack_results, out=out,
                          quiet=quiet, settings=settings, overwrite=overwrite)
    for line in result.summary():
        typer.echo(line)
    typer.echo(f"wrote {out / 'index.html'}; {peak(where)}")


app.command()(methods)
app.command()(attacks)
app.command()(judges)
app.command()(demo)
app.command()(bench)
app.command()(finetune)


def _quiet_libraries() -> None:
    """Keep library chatter (optional-backend notices, deprecations) off the user's terminal."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main() -> None:
    """Console entry point: one-line errors with exit code 2 for bad input."""
    _quiet_libraries()
    try:
        app()
    except ErasureLabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
