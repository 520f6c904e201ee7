"""`erasurelab methods|attacks|judges`: what is registered, and one entry's every option.

Why its own module: listing commands only read the registries; they share one formatter and none
of the model-running commands' options.
"""

from __future__ import annotations

from typing import Annotated

import typer


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


def methods(
    name: Annotated[str | None, typer.Argument(help="A method: print its every option with help and defaults.")]
    = None,
) -> None:
    """List the registered erasure methods, or one method's options (embedded and SD defaults side by side)."""
    _describe("method", name)


def attacks(
    name: Annotated[str | None, typer.Argument(help="An attack: print its every option with help and defaults.")]
    = None,
) -> None:
    """List the registered attacks, or one attack's options (embedded and SD defaults side by side)."""
    _describe("attack", name)


def judges() -> None:
    """List the registered judges (NAME:ARGUMENT ones take e.g. a model folder)."""
    from erasurelab.judges import available_judges
    from erasurelab.judges.base import JUDGES

    available_judges()  # loads third-party judges too
    rows = [(f"{e.name}:ARGUMENT" if e.parametric else e.name, e.summary) for e in JUDGES.entries()]
    width = max((len(n) for n, _ in rows), default=0)
    for name, summary in rows:
        typer.echo(f"{name:{width}}  {summary}".rstrip())
