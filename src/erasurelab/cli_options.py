"""The `erasurelab` command line's one vocabulary: option types and parsing helpers every command shares.

Why one module: the same thing (a seed, a concept, an attack list, a device) must have the same flag,
default and help on every command; the command modules import these instead of spelling them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from erasurelab.errors import ErasureLabError

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Device = Annotated[str, typer.Option(help="Where the model runs: cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str | None, typer.Option(help="Weights dtype: float32, bfloat16 or float16 (CUDA); default as "
                                                "stored.")]
Seed = Annotated[int, typer.Option(help="Base seed every random draw derives from (image k of a batch uses "
                                        "seed+k).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output.")]
Model = Annotated[str, typer.Option(help="builtin:shapes, a run folder, a diffusers folder or a .safetensors file.")]
Steps = Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")]
Guidance = Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")]
Methods = Annotated[list[str] | None, typer.Option("--method", help="A registered method; repeatable "
                                                                    "(default: pure, uce).")]
Options = Annotated[list[str] | None, typer.Option("--option", "-o", help="Option key=value, e.g. tau_forget=0.9; "
                                                                          "repeatable.")]

_CONCEPT_HELP = "Built-in concept name (e.g. red, red+circle) or a concept .yaml"
#: One concept (commands whose output is about a single concept).
Concept = Annotated[str, typer.Option(help=f"{_CONCEPT_HELP}.")]
#: Several concepts, required (repeat the flag).
Concepts = Annotated[list[str], typer.Option("--concept", help=f"{_CONCEPT_HELP}; repeat for several.")]
#: Several concepts with a command-specific default when absent.
OptionalConcepts = Annotated[list[str] | None, typer.Option("--concept", help=f"{_CONCEPT_HELP}; repeat for "
                                                                              "several (default: the test "
                                                                              "concepts).")]
_ATTACK_HELP = ("A registered attack (see `erasurelab attacks`); repeat or comma-separate for several, "
                "'default' for textual inversion and Ring-A-Bell, 'none' for no attack")
#: Attacks with the default set when absent (demo, bench).
Attacks = Annotated[list[str] | None, typer.Option("--attack", help=f"{_ATTACK_HELP} (default: default).")]
#: Attacks with none when absent (evaluate).
OptionalAttacks = Annotated[list[str] | None, typer.Option("--attack", help=f"{_ATTACK_HELP} (default: none).")]
#: Exactly one attack (the `attack` command writes one result folder).
OneAttack = Annotated[str, typer.Option("--attack", help="A registered attack; see `erasurelab attacks`.")]
OutFolder = Annotated[Path, typer.Option(help="Output folder.")]


def attack_names(values: Sequence[str] | None, default: str = "none") -> tuple[str, ...]:
    """Registered attack names from --attack values: repeatable, comma-separated, 'default' or 'none'.

    Why one parser: every command reads the attack list the same way, and a misspelled name fails
    here, before any model loads. `default` is what an absent flag means.
    """
    from erasurelab.attacks import get_attack

    items = [part.strip().lower() for value in (values or [default]) for part in value.split(",") if part.strip()]
    if "none" in items:
        if len(items) > 1:
            raise ErasureLabError(f"--attack none cannot be combined with other attacks, got {', '.join(items)}")
        return ()
    names: list[str] = []
    for item in items:
        if item == "default":
            from erasurelab.demo import DEMO_ATTACKS

            names.extend(DEMO_ATTACKS)
        else:
            names.append(item)
    return tuple(dict.fromkeys(get_attack(name).name for name in names))


def one_attack(value: str) -> str:
    """The one registered attack name the `attack` command runs (same parsing as every --attack)."""
    names = attack_names([value])
    if len(names) != 1:
        raise ErasureLabError(f"--attack takes exactly one attack here, got {value!r}")
    return names[0]


def placement(device: str, dtype: str | None) -> tuple[object, object]:
    """(torch.device, torch.dtype | None) from --device/--dtype; one-line errors before any model loads."""
    from erasurelab.devices import resolve_device, resolve_dtype

    where = resolve_device(device)
    return where, resolve_dtype(dtype, where)


def peak(device: object) -> str:
    """The peak-memory note printed after a command that ran a model."""
    from erasurelab.devices import peak_memory_mb

    return f"peak memory {peak_memory_mb(device):.0f} MiB ({device})"
