"""ConceptSpec from YAML, for models outside the embedded world (e.g. a Van Gogh style on SD-1.5).

Format (every key but `name` optional; `words` or `anchors` needed to erase anything):

    name: van_gogh
    category: style                 # color|object|style|background|character|custom (default custom)
    words: [Van Gogh, Vincent van Gogh]   # training words -> forget anchors via templates
    templates: ["a painting by {c}"]      # default: PURE's six templates for the category
    anchors: ["Starry Night by Van Gogh"] # explicit forget anchors (added to the templated ones)
    neighbours: [Monet, Picasso]          # -> retain anchors via the same templates
    retain: ["a painting by Rembrandt"]   # explicit retain anchors (added)
    guide: art                            # default: "art" for styles, "" otherwise
    paraphrases: ["the painter of Sunflowers"]   # held out: evaluation only

Compound concepts (combinations and conditionals) add `kind`, `parts` and `context` (no `words`):

    name: child_beer
    kind: combination                     # harmful only together
    parts: [child, beer]                  # >= 2 parts; slots {A}, {B}, ... and {x} = "child beer"
    templates: ["a {A} drinking {B}"]     # training templates; each names every part
    neighbours: {child: [adult], beer: [juice]}  # alternatives -> "an adult drinking beer", ...

    name: cat_on_table
    kind: conditional                     # erased only in the context
    parts: [cat]                          # exactly one concept, slot {A}
    context: on a table                   # the condition as written in prompts, slot {ctx}
    neighbours: {cat: [dog], context: [on a chair]}  # other concepts in it / the concept elsewhere

Compound retain anchors always include each part (or the concept) alone; `anchors`/`retain`
add explicit prompts as for single concepts. A compound's `guide` defaults to a sibling that keeps
the rest: the last part swapped for its first alternative ("child juice"), or the first other
concept in the context ("dog on a table"); `guide: ''` maps to the empty prompt instead.
Built-in world compounds ("red+circle", "circle|white") need no file.

Registered as the file concept provider ("yaml"): `concept("x.yaml")` and
`ConceptSpec.from_yaml` both read through it.

Why strict: a typo such as `neighbors:` would silently erase without protection, so unknown
keys are refused with a suggestion, and every error is one line naming file and key.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from erasurelab.concepts.providers import register_concept_provider
from erasurelab.concepts.spec import (
    KINDS,
    MAX_NEIGHBOURS,
    ConceptSpec,
    check_compound_templates,
    combination_spec,
    conditional_spec,
)
from erasurelab.errors import ErasureLabError, did_you_mean

KEYS: tuple[str, ...] = ("name", "category", "words", "synonyms", "templates", "anchors", "neighbours",
                         "retain", "guide", "paraphrases", "kind", "parts", "context")


def _strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ErasureLabError(f"{path}: `{key}` must be a list of strings")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _check_templates(path: Path, templates: tuple[str, ...]) -> None:
    for template in templates:
        if "{c}" not in template:
            raise ErasureLabError(f"{path}: template {template!r} has no {{c}} placeholder")
        try:
            template.format(c="x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ErasureLabError(f"{path}: bad template {template!r} ({exc}); use {{c}} for the concept") from exc


def load_yaml_spec(path: str | Path) -> ConceptSpec:
    """Parse and validate one concept YAML file; raises a one-line ErasureLabError on any problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ErasureLabError(f"concept file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ErasureLabError(f"malformed concept YAML {path}: {reason}") from exc
    if not isinstance(data, dict):
        raise ErasureLabError(f"concept YAML {path} must be a mapping with at least `name:` and `words:`")
    for key in data:
        if key not in KEYS:
            raise ErasureLabError(f"{path}: unknown key {key!r}{did_you_mean(str(key), KEYS)}; "
                                  f"valid: {', '.join(KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ErasureLabError(f"{path}: `name` must be a non-empty string")
    kind = str(data.get("kind", "single")).strip()
    if kind not in KINDS:
        raise ErasureLabError(f"{path}: unknown kind {kind!r}{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}")
    if kind != "single":
        return _compound_spec(path, data, name.strip(), kind)
    if data.get("parts") is not None or data.get("context") is not None:
        raise ErasureLabError(f"{path}: `parts`/`context` need `kind: combination` or `kind: conditional`")
    category = str(data.get("category", "custom"))
    words = _strings(path, data, "words") + _strings(path, data, "synonyms")
    anchors = _strings(path, data, "anchors")
    if not words and not anchors:
        raise ErasureLabError(f"{path}: give `words` (templated into anchors) or explicit `anchors`")
    guide = data.get("guide")
    if guide is not None and not isinstance(guide, str):
        raise ErasureLabError(f"{path}: `guide` must be a string")
    templates = _strings(path, data, "templates") or None
    if templates:
        _check_templates(path, templates)
    neighbours = _strings(path, data, "neighbours")[:MAX_NEIGHBOURS]
    base = ConceptSpec.from_words(name.strip(), category, words, neighbours, guide=guide,
                                  paraphrases=_strings(path, data, "paraphrases"), templates=templates)
    extra_forget = tuple(a for a in anchors if a not in base.forget)
    extra_retain = tuple(a for a in _strings(path, data, "retain") if a not in base.retain)
    if not extra_forget and not extra_retain:
        return base
    # With explicit anchors added, with_templates() keeps the set as the user wrote it.
    return replace(base, forget=base.forget + extra_forget, retain=base.retain + extra_retain)


def _alternatives(path: Path, data: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """`neighbours` of a compound: a mapping part (or "context") -> alternatives."""
    value = data.get("neighbours")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ErasureLabError(f"{path}: for a compound concept `neighbours` maps a part to its alternatives, "
                              "e.g. {child: [adult]}")
    return {str(k).strip(): _strings(path, value, k) for k in value}


def _compound_spec(path: Path, data: dict[str, Any], name: str, kind: str) -> ConceptSpec:
    """A combination or conditional from YAML (generic templates; see the module docstring)."""
    for key in ("words", "synonyms"):
        if data.get(key) is not None:
            raise ErasureLabError(f"{path}: a {kind} takes `parts`, not `{key}`")
    parts = _strings(path, data, "parts")
    context = data.get("context")
    if context is not None and not isinstance(context, str | int | float):
        raise ErasureLabError(f"{path}: `context` must be a string")
    context = "" if context is None else str(context).strip()
    guide = data.get("guide")  # None: the spec builder's default (a sibling that keeps the other parts)
    if guide is not None and not isinstance(guide, str):
        raise ErasureLabError(f"{path}: `guide` must be a string")
    templates = _strings(path, data, "templates") or None
    try:
        if templates:
            check_compound_templates(kind, templates, len(parts))
        options = {"name": name, "templates": templates, "alternatives": _alternatives(path, data), "guide": guide,
                   "paraphrases": _strings(path, data, "paraphrases")}
        if kind == "combination":
            if context:
                raise ErasureLabError(f"combination {name!r} takes no `context` (that makes it a conditional)")
            base = combination_spec(parts, **options)
        else:
            if len(parts) != 1:
                raise ErasureLabError(f"conditional {name!r} needs exactly one concept in `parts`, got {len(parts)}")
            base = conditional_spec(parts[0], context, **options)
        anchors = tuple(a for a in _strings(path, data, "anchors") if a not in base.forget)
        retain = tuple(a for a in _strings(path, data, "retain") if a not in base.retain)
        return replace(base, category=str(data.get("category", "custom")), forget=base.forget + anchors,
                       retain=base.retain + retain)
    except ErasureLabError as exc:
        raise ErasureLabError(f"{path}: {exc}") from None


register_concept_provider("yaml", load_yaml_spec, files=True, summary="concept YAML files (any model)")
