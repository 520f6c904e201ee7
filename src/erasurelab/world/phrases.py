"""World phrases: compound templates filled with the shapes world's words, with the labels the judge should see.

Why apart from the catalog: the same (prompt, judge labels) items build a compound spec's
anchors (training templates) and its evaluation suite (evaluation templates, world/compound.py);
both must render a label the same way ("Bobo" takes no article, a color alone needs "shape").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from erasurelab.concepts.templates import fill, template_slots
from erasurelab.world import vocab

#: Templates that read naturally only when the modifier {A} is a single color ("a circle coloured red").
COLOR_ONLY_TEMPLATES: frozenset[str] = frozenset({"a {B} coloured {A}"})
_GENERIC_OBJECT = "shape"


def world_fill(template: str, slots: Mapping[str, str]) -> str:
    """fill() plus the world's names: characters take no article.

    A leading "a Bobo" becomes "the character Bobo" (a training-caption form) and any other
    "a Bobo" becomes "Bobo", so "a {A} ..." (train) and "{A} ..." (eval) stay different prompts.
    """
    text = re.sub(r"^[Aa]n? (?=[A-Z])", "the character ", fill(template, slots))
    return re.sub(r"\b[Aa]n? (?=[A-Z])", "", text)


def _display(attribute: str, label: str) -> str:
    """The prompt word of a world label (its first training word: "Bobo" for bobo)."""
    return vocab.lookup(label)[1].train_words[0] if attribute == "character" else label


def background_phrase(background: str) -> str:
    return f"a {background} background"


def combination_slots(labels: Mapping[str, str], background: str | None = None) -> dict[str, str]:
    """World slots of a combination: {A} modifiers, {B} object (or "shape"), {x} both, {bg}."""
    modifiers = " ".join(labels[a] for a in ("style", "color") if a in labels)
    head = labels.get("object", _GENERIC_OBJECT)
    slots = {"A": modifiers, "B": head, "x": f"{modifiers} {head}".strip()}
    if background is not None:
        slots["bg"] = background_phrase(background)
    return slots


def combination_items(templates: Sequence[str], labels: Mapping[str, str],
                      backgrounds: Sequence[str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """(prompt, judge labels) of a world combination in each template; {bg} templates once per background.

    Templates in COLOR_ONLY_TEMPLATES are skipped unless the only modifier is a color.
    """
    backgrounds = vocab.classes("background") if backgrounds is None else tuple(backgrounds)
    color_only = set(labels) - {"object"} == {"color"}
    items = []
    for template in templates:
        if template in COLOR_ONLY_TEMPLATES and not color_only:
            continue
        for background in (backgrounds if "bg" in template_slots(template) else (None,)):
            shown = {**labels, "background": background} if background else dict(labels)
            items.append((world_fill(template, combination_slots(labels, background)), shown))
    return items


def conditional_slots(attribute: str, label: str, background: str | None = None) -> dict[str, str]:
    """World slots of a conditional: {A} the concept phrase ("circle", "red shape", "Bobo"), {ctx}."""
    phrase = _display(attribute, label)
    if attribute in ("color", "style"):
        phrase = f"{phrase} {_GENERIC_OBJECT}"
    slots = {"A": phrase}
    if background is not None:
        slots["ctx"] = f"on {background_phrase(background)}"
    return slots


def conditional_items(templates: Sequence[str], attribute: str, label: str,
                      background: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(prompt, judge labels) of a world concept in each template, on `background` when the template has {ctx}."""
    items = []
    for template in templates:
        bg = background if "ctx" in template_slots(template) else None
        shown = {attribute: label, "background": bg} if bg else {attribute: label}
        items.append((world_fill(template, conditional_slots(attribute, label, bg)), shown))
    return items


def alternatives(attribute: str, label: str) -> tuple[str, ...]:
    """The other labels of an attribute, in vocabulary order (the character head's 'none' excluded)."""
    return tuple(c for c in vocab.classes(attribute) if c not in (label, vocab.NO_CHARACTER))  # type: ignore[arg-type]


def swapped_labels(labels: Mapping[str, str], keep: Sequence[str]) -> list[dict[str, str]]:
    """Variants of a combination that keep the `keep` attributes and change every other one.

    Variant j takes the j-th alternative of each changed attribute (cycling the shorter lists),
    so every alternative of every changed attribute appears: "red circle" keeping color gives
    red square, red triangle, ...
    """
    changed = [a for a in labels if a not in keep]
    options = {a: alternatives(a, labels[a]) for a in changed}
    n = max((len(v) for v in options.values()), default=0)
    return [{a: (options[a][j % len(options[a])] if a in options else v) for a, v in labels.items()}
            for j in range(n)]
