"""Concept providers: who turns a concept name into a ConceptSpec.

Why a registry: `concept("red")`, `concept("van_gogh.yaml")` and `concept("lib:snoopy")` all name
a concept, but only a plugin knows what its names mean. The YAML loader, the shipped library and
the embedded shapes world each register a provider here, exactly as a third-party package would
(`register_concept_provider`, from a module loaded by `erasurelab.plugins`).

Three kinds of provider:
- files (`files=True`): a Path or a name ending in .yaml/.yml goes to the first of them ("yaml");
- parametric, named `prefix:ARGUMENT` ("lib:snoopy"): the provider gets the argument;
- by name: `resolve(name)` returns a ConceptSpec, or None when the name is not one of its own
  (a provider raises a one-line ErasureLabError for a name it owns but cannot build).

A provider may also list its names (`names`, `compound_names`), say which of them are dev or test
concepts (`split`, `sets`): dev concepts may tune defaults, test concepts are only ever reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.plugins import load_plugins
from erasurelab.registry import Entry, Registry

if TYPE_CHECKING:
    from erasurelab.concepts.spec import ConceptSpec

#: Concept providers by name; parametric ones are used as "NAME:ARGUMENT".
CONCEPT_PROVIDERS: Registry[Callable[[str], Any]] = Registry("concept provider", "erasurelab.concept_providers")
SPLITS: tuple[str, ...] = ("dev", "test")


def register_concept_provider(name: str, resolve: Callable[[str], ConceptSpec | None], *, parametric: bool = False,
                              files: bool = False,
                              names: Callable[[], Iterable[str]] | None = None,
                              compound_names: Callable[[], Iterable[str]] | None = None,
                              split: Callable[[str], str | None] | None = None,
                              sets: Mapping[str, Iterable[str]] | None = None, summary: str = "") -> None:
    """Add a concept provider (see the module docstring for what each argument means).

    resolve: NAME -> ConceptSpec | None (by name), ARGUMENT -> ConceptSpec (parametric), or
    PATH -> ConceptSpec (files).
    names / compound_names: the provider's single and compound concept names, for listings.
    split: "dev" / "test" for one of its names, None for names it does not know.
    sets: "dev" / "test" -> the provider's concepts of that split, in order.
    """
    unknown = sorted(set(sets or {}) - set(SPLITS))
    if unknown:
        raise ValueError(f"concept provider {name!r}: unknown split {unknown[0]!r}; valid: {', '.join(SPLITS)}")
    if parametric and files:
        raise ValueError(f"concept provider {name!r}: a file provider is not parametric")
    CONCEPT_PROVIDERS.add(name, resolve, parametric=parametric, summary=summary, files=files, names=names,
                          compound_names=compound_names, split=split,
                          sets={k: tuple(v) for k, v in (sets or {}).items()})


def _by_name() -> list[Entry[Callable[[str], Any]]]:
    load_plugins()
    return [e for e in CONCEPT_PROVIDERS.entries() if not e.parametric and not e.extra.get("files")]


def concept_file(path: str | os.PathLike[str]) -> ConceptSpec:
    """The spec in a concept file, read by the first file provider (the YAML loader)."""
    load_plugins()
    readers = [e for e in CONCEPT_PROVIDERS.entries() if e.extra.get("files")]
    if not readers:
        raise ErasureLabError(f"no concept provider reads files, so {os.fspath(path)} cannot be loaded")
    return readers[0].factory(os.fspath(path))


def _is_file(name_or_path: str | os.PathLike[str]) -> bool:
    return isinstance(name_or_path, os.PathLike) or str(name_or_path).lower().endswith((".yaml", ".yml"))


def concept(name_or_path: str | os.PathLike[str]) -> ConceptSpec:
    """The ConceptSpec a provider makes of a name ("red", "red+circle", "lib:snoopy") or a concept YAML file."""
    load_plugins()
    text = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else str(name_or_path)
    if _is_file(name_or_path):
        return concept_file(text)
    prefix, sep, argument = text.partition(":")
    if sep and prefix.strip().lower() in {e.name for e in CONCEPT_PROVIDERS.entries() if e.parametric}:
        entry, argument = CONCEPT_PROVIDERS.lookup(text)
        return entry.factory(argument)
    for entry in _by_name():
        spec = entry.factory(text)
        if spec is not None:
            return spec
    known = catalog()
    raise ErasureLabError(f"unknown concept {text!r}{did_you_mean(text.strip(), known)}; "
                          f"built-in concepts: {', '.join(known) or 'none'} (or give a concept .yaml file)")


def catalog(compound: bool = False) -> list[str]:
    """Every concept name the providers list (compound=True adds their compound examples)."""
    out: list[str] = []
    for entry in _by_name():
        listed = entry.extra.get("names")
        out += list(listed()) if listed else []
    if compound:
        out += compound_catalog()
    return list(dict.fromkeys(out))


def compound_catalog() -> list[str]:
    """The combination and conditional examples the providers list."""
    out: list[str] = []
    for entry in _by_name():
        listed = entry.extra.get("compound_names")
        out += list(listed()) if listed else []
    return list(dict.fromkeys(out))


def concept_split(name: str | os.PathLike[str]) -> str:
    """"dev", "test" or "other" (no provider splits it, e.g. a YAML file) for a concept name.

    Dev concepts may tune defaults; test concepts are only ever reported.
    """
    if _is_file(name):
        return "other"
    for entry in _by_name():
        split = entry.extra.get("split")
        verdict = split(str(name)) if split else None
        if verdict is not None:
            return verdict
    return "other"


def concept_set(split: str) -> tuple[str, ...]:
    """The providers' concepts of one split ("dev" or "test"), in their order."""
    if split not in SPLITS:
        raise ErasureLabError(f"unknown concept split {split!r}{did_you_mean(split, SPLITS)}; valid: "
                              f"{', '.join(SPLITS)}")
    return tuple(dict.fromkeys(c for e in _by_name() for c in e.extra.get("sets", {}).get(split, ())))
