"""Anchor templates: the default single-concept forms, the compound train/eval sets, and filling them.

Why a module of its own: every method builds anchors from these templates (through
`ConceptSpec.from_words` and the compound builders), the attacks reuse them, and the world
catalog fills the compound ones; none of that needs the ConceptSpec record itself. The default
single-concept forms are PURE's templates, but they are the framework's default for every
method (UCE rebuilds anchors with its own), so they live with the concepts, not with PURE.
Compound templates come in disjoint *training* (anchor) and *evaluation* sets, so no evaluation
prompt is ever an anchor.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence

from erasurelab.errors import ErasureLabError

#: PURE's six forget templates (the PURE paper's). "{c}" is one training word of the concept.
FORGET_TEMPLATES: tuple[str, ...] = (
    "a photo of {c}", "a picture of {c}", "an image of {c}", "{c}", "a painting of {c}", "a drawing of {c}",
)
#: The "in the style of" forms PURE uses for style concepts.
STYLE_FORGET_TEMPLATES: tuple[str, ...] = (
    "{c}", "in the style of {c}", "a photo in the style of {c}", "a picture in the style of {c}",
    "a painting in the style of {c}", "a drawing in the style of {c}",
)
#: Retain anchors use at most this many neighbours (6 templates x 9 = 54 anchors, where PURE's sweep levels off).
MAX_NEIGHBOURS = 9

#: What a spec describes: one concept, several parts harmful only together, or a concept in a context.
KINDS: tuple[str, ...] = ("single", "combination", "conditional")
#: Slot names of the parts of a combination in templates: {A} = parts[0], {B} = parts[1], ...
PART_SLOTS = "ABCDEFGH"

# Compound templates. Slots: {x} the whole combination phrase ("red circle"), {A}/{B}
# its modifier/head (world) or parts (elsewhere), {bg} a world background ("a black background"),
# {ctx} the condition phrase ("on a white background"). Train (anchor) and eval sets are disjoint.
COMBINATION_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {x}", "a photo of a {x}", "an image of a {x}", "a picture of a {x}", "a {x} on {bg}", "a drawing of a {x}",
    "one {x}", "a {x}, centered",
)
COMBINATION_EVAL_TEMPLATES: tuple[str, ...] = (
    "a {B} coloured {A}", "a {B} that is {A}", "there is a {x} here", "a small {x} on {bg}",
    "a large {x} in the middle", "{x}", "a rendering of a {x}", "a close-up of a {x}",
)
CONDITIONAL_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {A} {ctx}", "a photo of a {A} {ctx}", "an image of a {A} {ctx}", "a picture of a {A} {ctx}",
    "a drawing of a {A} {ctx}", "one {A} {ctx}",
)
CONDITIONAL_EVAL_TEMPLATES: tuple[str, ...] = (
    "there is a {A} {ctx}", "a small {A} {ctx}", "a large {A} {ctx}", "a rendering of a {A} {ctx}",
    "a close-up of a {A} {ctx}", "{A} {ctx}",
)
#: The conditioned concept alone: retain anchors (train) and the R_A evaluation prompts (eval).
ALONE_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {A}", "an image of a {A}", "a picture of a {A}", "a drawing of a {A}", "one {A}",
)
ALONE_EVAL_TEMPLATES: tuple[str, ...] = ("a {A}", "a small {A}", "a rendering of a {A}")


def default_templates(category: str) -> tuple[str, ...]:
    """The PURE anchor templates for a category (style concepts get the 'in the style of' forms)."""
    return STYLE_FORGET_TEMPLATES if category == "style" else FORGET_TEMPLATES


def expand(templates: Sequence[str], words: Iterable[str]) -> tuple[str, ...]:
    """templates x words in word-major order, duplicates removed (order kept, so hashes are stable)."""
    out: dict[str, None] = {}
    for word in words:
        for template in templates:
            out[template.format(c=word).strip()] = None
    return tuple(out)


def template_slots(template: str) -> set[str]:
    """The {slot} names a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fill(template: str, slots: Mapping[str, str]) -> str:
    """A template with its slots filled, single-spaced, with "a" -> "an" before a vowel ("an orange circle")."""
    text = re.sub(r"\s+", " ", template.format(**slots)).strip()
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def part_slots(parts: Sequence[str]) -> dict[str, str]:
    """Generic slots of a combination: {A}, {B}, ... per part and {x} = the parts joined by spaces."""
    return {**dict(zip(PART_SLOTS, parts, strict=False)), "x": " ".join(parts)}


def check_compound_templates(kind: str, templates: Sequence[str], n_parts: int, extra: Sequence[str] = ()) -> None:
    """Every compound template must name the whole target, and only known slots.

    A combination template names all parts ({x}, or every part slot); a conditional template names
    the concept and the context ({A}, {ctx}). Otherwise an "anchor" of the target would not contain
    the target, and the edit would erase a part or the concept everywhere. extra: more allowed slots.
    """
    if kind == "combination":
        letters = set(PART_SLOTS[:n_parts])
        allowed, needed = letters | {"x", *extra}, "{x} or " + "".join(f"{{{c}}}" for c in sorted(letters))
    else:
        allowed, needed = {"A", "ctx", *extra}, "{A} and {ctx}"
    for template in templates:
        try:
            slots = template_slots(template)
        except ValueError as exc:
            raise ErasureLabError(f"bad {kind} template {template!r} ({exc})") from exc
        unknown = sorted(slots - allowed)
        if unknown:
            raise ErasureLabError(f"{kind} template {template!r} has unknown slot {{{unknown[0]}}}; "
                                  f"valid: {', '.join('{' + s + '}' for s in sorted(allowed))}")
        complete = ("x" in slots or letters <= slots) if kind == "combination" else {"A", "ctx"} <= slots
        if not complete:
            raise ErasureLabError(f"{kind} template {template!r} must name the whole target: use {needed}")
