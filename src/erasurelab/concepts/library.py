"""The shipped concept library for real models, and generic unrelated prompts.

Why shipped: users of this field erase the same standard targets (nudity, an artist's style, a
character, Imagenette objects), and each needs anchors, held-out paraphrases, neighbours and
retain prompts written with care. The library holds project-written YAML specs for them in the
package (`concepts/library/*.yaml`, the same format as a user's own file), and a list of generic
prompts that name none of them, grouped as people, animals, places and objects, which the
evaluation uses as the unrelated suite on models without the embedded world's labels.
Registered as the parametric concept provider "lib": `concept("lib:snoopy")`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from erasurelab.concepts.providers import register_concept_provider
from erasurelab.concepts.spec import ConceptSpec, mentions
from erasurelab.errors import ErasureLabError, did_you_mean

LIBRARY_PREFIX = "lib:"
UNRELATED_FILE = "unrelated_prompts.txt"


def library_dir() -> Path:
    return Path(str(files("erasurelab.concepts").joinpath("library")))


def library_concepts() -> list[str]:
    """Names of the shipped concept specs (file stems), sorted."""
    return sorted(p.stem for p in library_dir().glob("*.yaml"))


def library_spec(name: str) -> ConceptSpec:
    """The shipped spec `name` (with or without the "lib:" prefix); one-line error for unknown names."""
    name = name.removeprefix(LIBRARY_PREFIX)
    path = library_dir() / f"{name}.yaml"
    if not path.is_file():
        known = library_concepts()
        raise ErasureLabError(f"no shipped concept {name!r}{did_you_mean(name, known)}; shipped: {', '.join(known)}")
    return ConceptSpec.from_yaml(path)


@cache
def generic_unrelated_groups() -> dict[str, tuple[str, ...]]:
    """The shipped unrelated prompts by group ("people", "animals", "places", "objects")."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in (library_dir() / UNRELATED_FILE).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            groups[current] = []
        elif line.strip() and not line.startswith("#") and current is not None:
            groups[current].append(line.strip())
    return {k: tuple(v) for k, v in groups.items()}


def generic_unrelated_prompts(exclude: ConceptSpec | None = None) -> list[str]:
    """Every shipped unrelated prompt, groups interleaved, minus any that mention `exclude`'s words."""
    groups = list(generic_unrelated_groups().values())
    interleaved = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    if exclude is None:
        return interleaved
    words = [exclude.name.replace("_", " "), *exclude.synonyms]
    return [p for p in interleaved if not any(mentions(p, w) for w in words if w)]


register_concept_provider("lib", library_spec, parametric=True, summary="the shipped concept library (lib:NAME)")
