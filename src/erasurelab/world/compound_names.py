"""Compound names of the shapes world: parsing "red+circle" / "circle|white" and checking their labels.

Why apart from the catalog: the syntax and the label rules (one part per attribute, a
conditional's context is a background) are read by the benign dataset and the compound suites
too, and none of them needs a ConceptSpec. Every check raises a one-line error naming the
valid choices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.world import vocab

#: Attributes a combination may join, in noun-phrase order ("striped red circle").
COMBINABLE: tuple[str, ...] = ("style", "color", "object")
#: Attributes a conditional may erase (its context is always a background).
CONDITIONABLE: tuple[str, ...] = ("object", "color", "style", "character")

def parse_compound(text: str) -> tuple[str, tuple[str, ...], str] | None:
    """(kind, parts, context) of a compound name, or None for a single concept name.

    "A|B" and "A on [a] B[ background]" are conditionals; "A+B" and "A B" (space-separated labels)
    are combinations. Only the syntax is read here; the labels are checked when the spec is built.
    """
    key = " ".join(text.strip().lower().split())
    if "|" in key or " on " in f" {key} ":
        concept_text, _, context = key.partition("|") if "|" in key else f" {key} ".partition(" on ")
        return "conditional", (concept_text.strip(),), _context_label(context)
    if "+" in key or " " in key:
        return "combination", tuple(p.strip() for p in re.split(r"[+ ]+", key) if p.strip()) or ("",), ""
    return None


def _context_label(text: str) -> str:
    """'on a white background', 'white-background', 'white' -> 'white'."""
    text = re.sub(r"^(on\s+)?(an?\s+)?", "", text.strip())
    return re.sub(r"[\s-]*(background|backdrop)$", "", text).strip()


def _lookup_label(label: str, role: str, allowed: Sequence[str]) -> str:
    """The attribute of a world label, checked against the attributes this role accepts; one-line errors."""
    try:
        attribute = vocab.lookup(label)[0]
    except KeyError:
        labels = [lab for a in allowed for lab in vocab.classes(a) if lab != vocab.NO_CHARACTER]  # type: ignore[arg-type]
        raise ErasureLabError(f"unknown {role} {label!r}{did_you_mean(label, labels)}; "
                              f"valid: {', '.join(labels)}") from None
    if attribute not in allowed:
        hint = {"background": " (a background is a condition: use the conditional syntax, e.g. circle|white)",
                "character": " (a character is already a fixed design: use a conditional, e.g. bobo|white)"}
        valid = ", ".join(vocab.classes(allowed[0])) if len(allowed) == 1 else " or ".join(allowed)  # type: ignore[arg-type]
        raise ErasureLabError(f"{label!r} is a {attribute}, which cannot be a {role}{hint.get(attribute, '')}; "
                              f"valid: {valid}")
    return attribute


def combination_labels(parts: Sequence[str]) -> dict[str, str]:
    """attribute -> label of a world combination, in noun-phrase order; one-line errors on bad parts.

    Why one part per attribute: the judge has one head per attribute, so an image cannot show
    "red" and "blue" as one object's color; such a combination could never be detected.
    """
    parts = [p.strip().lower() for p in parts]
    if len([p for p in parts if p]) < 2 or not all(parts):
        raise ErasureLabError(f"a combination needs at least two non-empty parts, got {'+'.join(parts)!r} "
                              "(e.g. red+circle)")
    labels: dict[str, str] = {}
    for part in parts:
        attribute = _lookup_label(part, "combination part", COMBINABLE)
        if labels.get(attribute) == part:
            raise ErasureLabError(f"combination {'+'.join(parts)!r} repeats the part {part!r}; give each part once")
        if attribute in labels:
            raise ErasureLabError(f"combination parts {labels[attribute]!r} and {part!r} are both {attribute}s: "
                                  f"one image shows one {attribute}, so combine different attributes "
                                  f"({', '.join(COMBINABLE)})")
        labels[attribute] = part
    return {a: labels[a] for a in COMBINABLE if a in labels}


def combination_name(labels: Mapping[str, str]) -> str:
    """Canonical name: the parts in noun-phrase order joined by '+'."""
    return "+".join(labels[a] for a in COMBINABLE if a in labels)


def conditional_labels(part: str, context: str) -> tuple[str, str]:
    """(attribute of the concept, background label) of a world conditional; one-line errors."""
    part, context = part.strip().lower(), context.strip().lower()
    if not part:
        raise ErasureLabError(f"conditional {part}|{context} names no concept; write e.g. circle|white")
    if not context:
        raise ErasureLabError(f"conditional {part!r} has an empty context; give a background: "
                              f"{', '.join(vocab.classes('background'))} (e.g. {part}|white)")
    attribute = _lookup_label(part, "conditioned concept", CONDITIONABLE)
    _lookup_label(context, "context (background)", ("background",))
    return attribute, context
