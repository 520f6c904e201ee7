"""Which prompts an attack starts from, for built-in world concepts and for any ConceptSpec.

Why a module: the attacks need the same few prompt sources — the forget anchors (what the edit
was built from), paraphrase prompts (held-out phrasings that name the concept indirectly) and, for
Ring-A-Bell, template pairs with and without the concept. World concepts get the world's own
caption forms (so prompts look like what the embedded model was trained on); any other spec falls
back to its templates and phrases.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

from erasurelab.concepts.spec import ConceptSpec, default_templates


def world_attribute(spec: ConceptSpec) -> str | None:
    """The world attribute of a built-in concept (its category), or None for other specs."""
    from erasurelab.world import vocab

    try:
        attribute, _ = vocab.lookup(spec.name)
    except KeyError:
        return None
    return attribute if attribute == spec.category else None


def round_robin(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Interleave groups (a0, b0, c0, a1, ...) so any prefix covers every group."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def anchor_prompts(spec: ConceptSpec) -> list[str]:
    """The forget anchors, interleaved over training words ("a photo of red", "a photo of crimson", ...)."""
    if not spec.forget:
        return [spec.name]
    words = spec.synonyms or (spec.name,)
    from erasurelab.concepts.spec import mentions

    groups = [[a for a in spec.forget if mentions(a, w)] for w in words]
    ordered = round_robin(groups)
    rest = [a for a in spec.forget if a not in ordered]
    return list(dict.fromkeys(ordered + rest))


def paraphrase_prompts(spec: ConceptSpec) -> list[str]:
    """Prompts naming the concept only through held-out paraphrases, interleaved over phrases.

    World concepts: `captions.paraphrase_prompts`. Other specs: "a picture of {phrase}" (style
    concepts: "a painting in the style of {phrase}"); without paraphrases, the anchors.
    """
    if world_attribute(spec) is not None:
        from erasurelab.world import captions

        by_phrase: dict[str, list[str]] = {}
        for k, item in enumerate(captions.paraphrase_prompts(spec.name)):
            phrase = next((p for p in spec.paraphrases if p in item.prompt), str(k))
            by_phrase.setdefault(phrase, []).append(item.prompt)
        return round_robin(list(by_phrase.values()))
    if not spec.paraphrases:
        return anchor_prompts(spec)
    form = "a painting in the style of {}" if spec.category == "style" else "a picture of {}"
    return [form.format(p) for p in spec.paraphrases]


def concept_phrases(spec: ConceptSpec) -> list[str]:
    """Every phrase that names the concept (training words, paraphrases, name), longest first."""
    return sorted({p for p in (*spec.synonyms, *spec.paraphrases, spec.name) if p.strip()}, key=len, reverse=True)


def without_concept(spec: ConceptSpec, prompt: str) -> str | None:
    """`prompt` with every whole-word mention of the concept removed ("a photo of red" → "a photo of").

    None when the prompt names none of the concept's phrases ("" when it held nothing else). Why: an attack's
    sanity check on the unedited model must start from a prompt that does not already ask for the
    concept, so that only the attack can bring it back.
    """
    from erasurelab.concepts.spec import replace_mention

    out, changed = prompt, False
    for phrase in concept_phrases(spec):
        while (replaced := replace_mention(out, phrase, "")) is not None:
            out, changed = replaced, True
    out = " ".join(out.split())
    return out if changed else None


def concept_word(spec: ConceptSpec) -> str:
    """The plain word for the concept in prompts (its first training word, else its name)."""
    return spec.synonyms[0] if spec.synonyms else spec.name


def described_prompts(spec: ConceptSpec) -> list[str]:
    """World prompts that name the concept and every other attribute of the image ([] for other specs).

    "a dotted crimson circle on a gray background" for red: a caption that says everything the
    image shows but the concept, so a token trained on it ("a dotted <c*> circle on a gray
    background") has only the concept left to carry. With "a photo of red" the image's shape,
    style and background are M_0's free choice and the token soaks them up. Contexts are every
    combination of the other attributes in a fixed shuffled order, so any prefix varies all of
    them; the training words rotate. Characters: the design on each background.
    """
    attribute = world_attribute(spec)
    if attribute is None:
        return []
    from erasurelab.world import captions, vocab

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
    """(with concept, without concept) prompt pairs sharing a template, for Ring-A-Bell's concept vector.

    World concepts use canonical world prompts over many contexts; the "without" side drops the
    concept phrase, except objects (replaced by "shape", the world's generic object word) and
    characters (replaced by their plain body, e.g. "a yellow circle", so the vector isolates the
    design). Other specs: templates × target words, the guide (or nothing) as replacement.
    """
    attribute = world_attribute(spec)
    words = list(spec.synonyms or (spec.name,))
    if attribute is None:
        templates = spec.templates or default_templates(spec.category)
        pairs = [(t.format(c=w), t.format(c=spec.guide)) for t in templates for w in words]
        return _dedupe((" ".join(a.split()), " ".join(b.split())) for a, b in pairs)
    from erasurelab.world import captions, vocab

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
