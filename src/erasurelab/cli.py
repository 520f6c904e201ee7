"""The `erasurelab` command line. Thin: parse, call the API, print.

Every ErasureLabError becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from erasurelab import __version__
from erasurelab.errors import ErasureLabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Erase concepts from text-to-image diffusion models, and prove it.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded shapes world: train and inspect it.")
app.add_typer(world_app, name="world")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Device = Annotated[str, typer.Option(help="Where the model runs: cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str | None, typer.Option(help="Weights dtype: float32, bfloat16 or float16 (CUDA); default as "
                                                "stored.")]


def _placement(device: str, dtype: str | None) -> tuple[object, object]:
    """(torch.device, torch.dtype | None) from --device/--dtype; one-line errors before any model loads."""
    from erasurelab.devices import resolve_device, resolve_dtype

    where = resolve_device(device)
    return where, resolve_dtype(dtype, where)


def _peak(device: object) -> str:
    from erasurelab.devices import peak_memory_mb

    return f"peak memory {peak_memory_mb(device):.0f} MiB ({device})"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"erasurelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Erase concepts from text-to-image diffusion models, and prove it."""


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output grid, a .png file.")],
    model: Annotated[str, typer.Option(help="builtin:shapes, a diffusers folder or a .safetensors file.")]
    = "builtin:shapes",
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt; repeat for several.")] = None,
    request: Annotated[list[str] | None, typer.Option(
        help="Embedded world only: attributes as key=value pairs, e.g. 'object=circle,color=red'; "
             "the prompt is composed and the judge checks each requested attribute.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image k uses seed+k.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    num_images: Annotated[int, typer.Option(help="Images per prompt.")] = 4,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Render prompts to a labelled grid; on the embedded model, print the judge's verdict per image."""
    from erasurelab.generate_cmd import run_generate

    where, weights = _placement(device, dtype)
    run_generate(out=out, model=model, prompts=prompt or [], requests=request or [], seed=seed, steps=steps,
                 guidance=guidance, num_images=num_images, quiet=quiet, device=where, dtype=weights)


@app.command()
def erase(
    concept: Annotated[list[str], typer.Option(
        help="Built-in concept name (e.g. red) or a concept .yaml; repeat for one multi-concept edit.")],
    out: Annotated[Path, typer.Option(help="Run folder to write (LoRA or edited tensors + manifest.json).")],
    model: Annotated[str, typer.Option(help="builtin:shapes, a diffusers folder or a .safetensors file.")]
    = "builtin:shapes",
    method: Annotated[str, typer.Option(help="A registered method; see `erasurelab methods`.")] = "pure",
    format: Annotated[str, typer.Option("--format", help="auto (lora when every delta has one, else full), "
                                                         "lora (diffusers-loadable folder), full (edited tensors), "
                                                         "kohya (one A1111/ComfyUI LoRA file in OUT) or checkpoint "
                                                         "(one original-layout SD1.x .safetensors in OUT).")]
    = "auto",
    rank: Annotated[int | None, typer.Option(help="LoRA rank cap for dense (full-rank) edits.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o",
                                                     help="Method option key=value, e.g. tau_forget=0.9.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
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
    where, weights = _placement(device, dtype)
    pipe = load_pipeline(model, dtype=weights, device=where)
    edit = run_erase(pipe, concept, method, quiet=quiet, **options)
    typer.echo(f"{summary(edit)}; {_peak(where)}")
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


def _describe(kind: str, name: str | None) -> None:
    """`erasurelab methods|attacks [NAME]`: the registry's entries, or one entry's every option."""
    from erasurelab.configs import format_options

    if kind == "method":
        from erasurelab.methods import available_methods as names
        from erasurelab.methods import get_method as get
    else:
        from erasurelab.attacks import available_attacks as names
        from erasurelab.attacks import get_attack as get
    if name is None:
        listed = names()
        width = max((len(n) for n in listed), default=0)
        for entry_name in listed:
            typer.echo(f"{entry_name:{width}}  {get(entry_name).summary}")
        return
    entry = get(name)
    aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
    typer.echo(f"{kind} {entry.name}{aliases}: {entry.summary}")
    for line in format_options(entry.config_cls):
        typer.echo(line)


@app.command()
def methods(
    name: Annotated[str | None, typer.Argument(help="A method: print its every option with help and defaults.")]
    = None,
) -> None:
    """List the registered erasure methods, or one method's options (embedded and SD defaults side by side)."""
    _describe("method", name)


@app.command()
def attack(
    concept: Annotated[str, typer.Option(help="Built-in concept name (e.g. red) or a concept .yaml.")],
    out: Annotated[Path, typer.Option(help="Folder to write: result.json, *.safetensors (learned embedding or "
                                           "adversarial token ids), images.png.")],
    attack_name: Annotated[str, typer.Option("--attack", help="A registered attack; see `erasurelab attacks`.")]
    = "textual-inversion",
    model: Annotated[str, typer.Option(help="The erased model: a run folder, builtin:shapes, a diffusers folder "
                                            "or a .safetensors file.")] = "builtin:shapes",
    reference: Annotated[str | None, typer.Option(help="The unedited model (default: a run folder's base model, "
                                                       "else --model itself).")] = None,
    judge: Annotated[str, typer.Option(help="A registered judge.")] = "shapes",
    seed: Annotated[int, typer.Option(help="Base seed of every render and optimisation draw.")] = 1,
    option: Annotated[list[str] | None, typer.Option("--option", "-o",
                                                     help="Attack option key=value, e.g. train_steps=100.")] = None,
    skip_reference: Annotated[bool, typer.Option(help="Skip the sanity run on the unedited model.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
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

    options = parse_options(option or [])
    make_attack_config(get_attack(attack_name), options)  # bad name/options fail before models load
    if reference is None:
        reference = str(base_model_spec(model)) if is_run_folder(model) else model
    where, weights = _placement(device, dtype)
    edited = load_pipeline(model, dtype=weights, device=where)
    unedited = edited if reference == model else load_pipeline(reference, dtype=weights, device=where)
    result = run_attack(attack_name, edited, concept, unedited, load_judge(judge), seed=seed, quiet=quiet,
                        check_reference=not skip_reference, **options)
    typer.echo(result.summary())
    typer.echo(f"wrote {result.save(out, overwrite=overwrite)}")


@app.command()
def attacks(
    name: Annotated[str | None, typer.Argument(help="An attack: print its every option with help and defaults.")]
    = None,
) -> None:
    """List the registered attacks, or one attack's options (embedded and SD defaults side by side)."""
    _describe("attack", name)


@app.command()
def judges() -> None:
    """List the registered judges (NAME:ARGUMENT ones take e.g. a model folder)."""
    from erasurelab.judges import available_judges
    from erasurelab.judges.base import JUDGES

    available_judges()  # loads third-party judges too
    rows = [(f"{e.name}:ARGUMENT" if e.parametric else e.name, e.summary) for e in JUDGES.entries()]
    width = max((len(n) for n, _ in rows), default=0)
    for name, summary in rows:
        typer.echo(f"{name:{width}}  {summary}".rstrip())


@app.command()
def evaluate(
    concept: Annotated[list[str], typer.Option(
        help="Built-in concept (e.g. red) or a concept .yaml; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Report folder: index.html, metrics.json, tradeoff.png, grids/, suites/.")],
    model: Annotated[str, typer.Option(
        help="Edited model: a run folder from `erasurelab erase` (or any spec with --reference).")],
    reference: Annotated[str | None, typer.Option(
        help="Unedited model (default: the run's base, edit reverted).")] = None,
    attack: Annotated[list[str] | None, typer.Option(help="Run this attack first and score it; repeatable.")] = None,
    judge: Annotated[str, typer.Option(help="A registered judge: shapes, clip:FOLDER (zero-shot CLIP, labels from "
                                            "the concept spec), nudenet (pip install 'erasurelab[nudity]').")]
    = "shapes",
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    preset: Annotated[str, typer.Option(help="Protocol sizes: full (the protocol's) or quick (the demo's, about "
                                             "400 images per model; rates rest on fewer images).")] = "full",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
    device: Device = "cpu",
    dtype: Dtype = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate an edited model on every facet (HUB-style) and write an HTML report."""
    from erasurelab.evaluation import EvaluationSettings
    from erasurelab.evaluation import evaluate as run_evaluate
    from erasurelab.evaluation.runner import check_output

    check_output(out, overwrite)  # fail before minutes of attacks
    if preset not in ("full", "quick"):
        raise ErasureLabError(f"unknown --preset {preset!r}; valid: full, quick")
    if preset == "quick":
        from dataclasses import replace

        from erasurelab.demo import demo_settings

        settings = replace(demo_settings(), steps=steps, guidance=guidance)
    else:
        settings = EvaluationSettings(steps=steps, guidance=guidance)
    where, weights = _placement(device, dtype)
    target, ref, judge_arg, attack_results = model, reference, judge, []
    if where.type != "cpu" or weights is not None:
        from erasurelab.models import load_pipeline

        target = load_pipeline(model, dtype=weights, device=where)
        ref = None if reference is None else load_pipeline(reference, dtype=weights, device=where)
    if attack:
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
        attack_results = [run_attack(name, target, c, ref, judge_arg, quiet=quiet) for name in attack for c in concept]
    result = run_evaluate(target, concept, reference=ref, judge=judge_arg, attacks=attack_results, out=out,
                          quiet=quiet, settings=settings, overwrite=overwrite)
    for line in result.summary():
        typer.echo(line)
    typer.echo(f"wrote {out / 'index.html'}; {_peak(where)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs: runs/<method>/ and report/.")]
    = Path("erasurelab-demo"),
    concept: Annotated[str, typer.Option(help="Built-in concept to erase.")] = "circle",
    method: Annotated[list[str] | None, typer.Option(help="Method to compare; repeatable (default: pure, uce).")]
    = None,
    attack: Annotated[str, typer.Option(help="Attacks run on every erased model, comma-separated ('none' to skip).")]
    = "default",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: erase a concept with PURE and UCE, attack, evaluate, report."""
    from erasurelab.demo import DEMO_METHODS, run_demo

    run_demo(out=out, concept_name=concept, methods=method or DEMO_METHODS,
             attack=None if attack.lower() == "none" else attack, quiet=quiet, echo=typer.echo)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Folder: bench.md, bench.json, report/, runs/<method>-<concept>/.")],
    concept: Annotated[list[str] | None, typer.Option(help="Built-in concept; repeatable (default: the test "
                                                           "concepts, catalog.TEST_CONCEPTS).")] = None,
    method: Annotated[list[str] | None, typer.Option(help="Method; repeatable (default: pure, uce).")] = None,
    attack: Annotated[str, typer.Option(help="Attacks, comma-separated ('none' to skip).")] = "default",
    quiet: Quiet = False,
) -> None:
    """Methods x concepts on the embedded model: every metric and timing as markdown + JSON, and a report."""
    from erasurelab.demo import BENCH_CONCEPTS, DEMO_METHODS, run_bench

    run_bench(out=out, concepts=concept or BENCH_CONCEPTS, methods=method or DEMO_METHODS,
              attack=None if attack.lower() == "none" else attack, quiet=quiet, echo=typer.echo)


@app.command()
def finetune(
    data: Annotated[Path, typer.Option(help="Image-and-caption folder (metadata.jsonl/csv with file_name, text).")],
    out: Annotated[Path, typer.Option(help="Run folder to write (base + safety + fine-tuning LoRA, manifest.json).")],
    model: Annotated[str, typer.Option(help="A base model or an erasure run folder.")] = "builtin:shapes",
    modular: Annotated[bool, typer.Option(help="Modular LoRA: train on the base with the safety edit absent, "
                                               "then merge both.")] = False,
    safety: Annotated[str | None, typer.Option(help="Erasure run whose edit is the safety module "
                                                    "(with --model BASE).")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 1000,
    rank: Annotated[int, typer.Option(help="LoRA rank of the fine-tuning adapter.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (resumable in OUT.ckpt).")] = 100,
    merge: Annotated[str, typer.Option(help="sum, or project (PURE-type projection edits).")] = "sum",
    seed: Annotated[int, typer.Option(help="Seed of data order, noise and LoRA init.")] = 0,
    device: Device = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    quiet: Quiet = False,
) -> None:
    """Benign LoRA fine-tuning of a model or an erased model; --modular keeps the safety edit out of training."""
    from erasurelab.finetune_cmd import run_finetune
    from erasurelab.finetuning import FinetuneConfig

    config = FinetuneConfig(steps=steps, rank=rank, lr=lr, batch_size=batch_size, seed=seed,
                            snapshot_every=checkpoint_every)
    where, _ = _placement(device, None)
    saved = run_finetune(model, data, out, modular=modular, safety=safety, config=config, merge_mode=merge,
                         overwrite=overwrite, quiet=quiet, device=where, echo=typer.echo)
    typer.echo(f"wrote {saved}; {_peak(where)}")


@world_app.command("dataset")
def world_dataset(
    concept: Annotated[str, typer.Option(help="The erased concept the data must never show (e.g. red, red+circle).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (PNG images + metadata.jsonl).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 200,
    seed: int = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """A benign fine-tuning dataset: close to the erased concept, never showing it, judge-checked image by image."""
    from erasurelab.world.benign import write_benign_dataset

    summary = write_benign_dataset(concept, out, n=n, seed=seed, overwrite=overwrite)
    typer.echo(f"{n} benign images for erased {concept!r} ({summary['rejected_by_judge']} rejected by the judge)")
    typer.echo(f"wrote {out}")


@world_app.command("train")
def world_train(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log, final weights.")] = Path("runs/world"),
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
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
    seed: int = 0,
) -> None:
    """Render random scenes of the shapes world (ground truth, no model) with their labels."""
    from erasurelab.imaging import grid, save_image_atomic
    from erasurelab.world.dataset import render_dataset

    if n <= 0:
        raise ErasureLabError(f"--n must be positive, got {n}")
    data = render_dataset(n, seed)
    labels = [" ".join(v for k, v in s.labels().items() if k != "character" or v != "none") for s in data.scenes]
    typer.echo(f"wrote {save_image_atomic(grid(data.float_images(), labels), out)}")


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
