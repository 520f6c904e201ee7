"""The shapes world's prompt grammar: how attacks, `generate` and fine-tuning phrase world prompts.

Why the world's own grammar: the embedded model learned its captions ("a dotted crimson circle on
a gray background"), so an attack or a request phrased that way asks the model in its own
language, and a generic "a photo of red" leaves shape, style and background to chance. Registered
as the prompt grammar "shapes" (`erasurelab.concepts.grammar`); a concept belongs to it when its
name is a world label and its category is that label's attribute.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from erasurelab.concepts.grammar import round_robin
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.world import captions, vocab

#: The judge that reads the world's labels.
JUDGE = "shapes"
#: Model specs trained on this grammar.
MODELS: tuple[str, ...] = ("builtin:shapes",)


def world_attribute(spec: ConceptSpec) -> str | None:
    """The world attribute of a built-in concept (its category), or None for other specs."""
    try:
        attribute, _ = vocab.lookup(spec.name)
    except KeyError:
        return None
    return attribute if attribute == spec.category else None


def paraphrase_prompts(spec: ConceptSpec) -> list[str]:
    """`captions.paraphrase_prompts` of the concept, interleaved over its held-out phrases."""
    by_phrase: dict[str, list[str]] = {}
    for k, item in enumerate(captions.paraphrase_prompts(spec.name)):
        phrase = next((p for p in spec.paraphrases if p in item.prompt), str(k))
        by_phrase.setdefault(phrase, []).append(item.prompt)
    return round_robin(list(by_phrase.values()))


def described_prompts(spec: ConceptSpec) -> list[str]:
    """World prompts that name the concept and every other attribute of the image.

    Contexts are every combination of the other attributes in a fixed shuffled order, so any
    prefix varies all of them; the training words rotate. Characters: the design on each background.
    """
    attribute = world_attribute(spec)
    if attribute is None:
        return []
    words = itertools.cycle(spec.synonyms or (spec.name,))
    if attribute == "character":
        return [f"{next(words)} on a {bg} background" for bg in vocab.classes("background")]
    slots = ("object", "color", "style", "background")
    others = [vocab.classes(a) for a in slots if a != attribute]
    contexts = list(itertools.product(*others))
    random.Random(0).shuffle(contexts)
    out = []
    for context in contexts:
        values = dict(zip((a for a in slots if a != attribute), context, strict=True))
        values[attribute] = next(words)
        out.append(captions.canonical_prompt(values["object"], values["color"], values["style"], values["background"]))
    return out


def template_pairs(spec: ConceptSpec) -> list[tuple[str, str]]:
    """(with concept, without concept) canonical world prompts over many contexts.

    The "without" side drops the concept phrase, except objects (replaced by "shape", the world's
    generic object word) and characters (replaced by their plain body, e.g. "a yellow circle", so
    the vector isolates the design).
    """
    attribute = world_attribute(spec)
    if attribute is None:
        return []
    words = list(spec.synonyms or (spec.name,))
    objects, colors = vocab.classes("object"), vocab.classes("color")
    backgrounds: list[str | None] = [None, *vocab.classes("background")]
    pairs: list[tuple[str, str]] = []
    k = 0

    def word() -> str:
        nonlocal k
        k += 1
        return words[(k - 1) % len(words)]

    if attribute == "color":
        for bg in backgrounds:
            for obj in objects:
                pairs.append((captions.canonical_prompt(obj, word(), None, bg),
                              captions.canonical_prompt(obj, None, None, bg)))
    elif attribute == "object":
        for bg in backgrounds:
            for color in colors:
                pairs.append((captions.canonical_prompt(word(), color, None, bg),
                              captions.canonical_prompt("shape", color, None, bg)))
    elif attribute == "style":
        for obj, color in _diagonal(objects, colors):
            pairs.append((captions.canonical_prompt(obj, color, word()), captions.canonical_prompt(obj, color)))
    elif attribute == "background":
        for obj, color in _diagonal(objects, colors):
            pairs.append((captions.canonical_prompt(obj, color, None, word()),
                          captions.canonical_prompt(obj, color)))
    else:  # character
        design = vocab.character(spec.name)
        body = f"a {design.body_color} {design.body_object}"
        forms = (("{x}", "{y}"), ("a picture of {x}", "a picture of {y}"), ("an image of {x}", "an image of {y}"),
                 ("the character {x}", "{y}"))
        for bg in backgrounds:
            suffix = f" on a {bg} background" if bg else ""
            for positive, negative in forms:
                pairs.append((positive.format(x=word()) + suffix, negative.format(y=body) + suffix))
    return _dedupe(pairs)


def _diagonal(first: Sequence[str], second: Sequence[str]) -> list[tuple[str, str]]:
    """All (a, b) pairs ordered so that any prefix varies both a and b (a0 b0, a1 b1, ..., a0 b1, ...)."""
    return [(first[i % len(first)], second[(i + shift) % len(second)])
            for shift in range(len(second)) for i in range(len(first))]


def _dedupe(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))


def describe(predicted: Mapping[str, str]) -> str:
    """'red striped circle/white', with the character first when the judge sees one."""
    text = f"{predicted['color']} {predicted['style']} {predicted['object']}/{predicted['background']}"
    if predicted.get("character", vocab.NO_CHARACTER) != vocab.NO_CHARACTER:
        text = f"{predicted['character']} ({text})"
    return text


def caption_without(predicted: Mapping[str, str], attribute: str) -> str | None:
    """The canonical prompt of a judge's labels without `attribute` ("a striped circle on a black background"
    for a striped red circle without colour); a character image is named by its character and background.
    None when what is left cannot be phrased (no object and no colour)."""
    labels = {k: v for k, v in predicted.items() if k != attribute and v != vocab.NO_CHARACTER}
    if "character" in labels:
        labels = {k: labels[k] for k in ("character", "background") if k in labels}
    try:
        return captions.parse_request(",".join(f"{k}={v}" for k, v in labels.items())).prompt
    except ErasureLabError:
        return None


class WorldGrammar:
    """The PromptGrammar of the shapes world (see `erasurelab.concepts.grammar.PromptGrammar`)."""

    judge = JUDGE

    def knows(self, spec: ConceptSpec) -> bool:
        return world_attribute(spec) is not None

    def paraphrase_prompts(self, spec: ConceptSpec) -> list[str]:
        return paraphrase_prompts(spec)

    def described_prompts(self, spec: ConceptSpec) -> list[str]:
        return described_prompts(spec)

    def template_pairs(self, spec: ConceptSpec) -> list[tuple[str, str]]:
        return template_pairs(spec)

    def scoring_templates(self, spec: ConceptSpec) -> list[str]:
        """The world's held-out slot prompts (`captions.slot_prompts`, "a photograph of a {} red circle")."""
        return captions.slot_prompts(spec.name) if world_attribute(spec) is not None else []

    def parse_request(self, text: str) -> tuple[str, dict[str, str]]:
        item = captions.parse_request(text)
        return item.prompt, dict(item.labels)

    def describe(self, predicted: Mapping[str, str]) -> str:
        return describe(predicted)

    def caption_without(self, predicted: Mapping[str, str], attribute: str) -> str | None:
        return caption_without(predicted, attribute)

    def owns_model(self, source: str) -> bool:
        return source in MODELS

    def benign_data(self, spec: ConceptSpec, n: int, seed: int, judge: Any) -> Any | None:
        """`world.benign.benign_data` for a world concept or combination; None for any other concept."""
        from erasurelab.world.catalog import world_spec

        try:
            if world_spec(spec.name) is None:
                return None
        except ErasureLabError:
            return None
        from erasurelab.world.benign import benign_data

        return benign_data(spec.name, n, seed, judge)
