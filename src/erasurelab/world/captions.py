"""Captions of the shapes world: varied training captions and fixed evaluation prompts.

Why the variety: real captions differ in word order, in which attributes they mention and in
synonyms. A model trained on one template learns a lookup table and its cross-attention carries
no general notion of "red"; then erasure results say nothing about real models. Training
captions therefore mix 7 templates, drop attributes at random and use the training synonyms.
Held-out paraphrases (vocab) and held-out templates (below) are reserved for evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from erasurelab.world import vocab
from erasurelab.world.render import Scene

#: Probability that a training caption mentions each attribute.
MENTION_RATE = {"object": 0.92, "color": 0.92, "style": 0.6, "background": 0.5}
#: Probability of an empty caption (classifier-free guidance needs the unconditional model).
EMPTY_CAPTION_RATE = 0.1

_GENERIC_OBJECT = "shape"


@dataclass(frozen=True)
class Phrases:
    """The words a caption uses for each attribute; None where the caption leaves it out."""

    object: str
    color: str | None
    style: str | None
    background: str | None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _np(p: Phrases, with_style: bool = True) -> str:
    """Noun phrase without the article: '[style] [color] object'."""
    words = [p.style if with_style else None, p.color, p.object]
    return " ".join(w for w in words if w)


def _bg_suffix(p: Phrases, form: int) -> str:
    if not p.background:
        return ""
    forms = (f" on a {p.background} background", f", {p.background} background",
             f" against a {p.background} backdrop")
    return forms[form]


def _t_plain(p: Phrases) -> str:
    phrase = _np(p)
    return f"{_article(phrase)} {phrase}{_bg_suffix(p, 0)}"


def _t_that_is(p: Phrases) -> str:
    phrase = _np(p, with_style=False)
    style = f" that is {p.style}" if p.style else ""
    return f"{_article(phrase)} {phrase}{style}{_bg_suffix(p, 1)}"


def _t_in_color(p: Phrases) -> str:
    head = " ".join(w for w in (p.style, p.object) if w)
    color = f" in {p.color}" if p.color else ""
    bg = f"{p.background} background with " if p.background else ""
    return f"{bg}{_article(head)} {head}{color}"


def _t_picture(p: Phrases) -> str:
    phrase = " ".join(w for w in (p.color, p.style, p.object) if w)
    return f"a picture of {_article(phrase)} {phrase}{_bg_suffix(p, 0)}"


def _t_list(p: Phrases) -> str:
    parts = [" ".join(w for w in (p.color, p.object) if w)]
    if p.style:
        parts.append(p.style)
    if p.background:
        parts.append(f"on {p.background}")
    return ", ".join(parts)


def _t_showing(p: Phrases) -> str:
    traits = " and ".join(w for w in (p.color, p.style) if w)
    traits = f", {traits}," if traits else ""
    return f"an image showing {_article(p.object)} {p.object}{traits}{_bg_suffix(p, 2)}"


def _t_colored(p: Phrases) -> str:
    head = " ".join(w for w in (p.style, p.object) if w)
    color = f" colored {p.color}" if p.color else ""
    return f"{_article(head)} {head}{color}{_bg_suffix(p, 1)}"


TRAIN_TEMPLATES: tuple[Callable[[Phrases], str], ...] = (
    _t_plain, _t_that_is, _t_in_color, _t_picture, _t_list, _t_showing, _t_colored,
)

_CHARACTER_TEMPLATES: tuple[str, ...] = (
    "{name}", "a picture of {name}", "{name}{bg}", "the character {name}{bg}", "an image of {name}{bg}",
)

#: Templates never used in training, for the evaluation's paraphrase suite.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a photograph of {x}", "there is {x} here", "look at this {x}", "{x}, digital art", "a close-up of {x}",
)


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+,", ",", text).rstrip(",")


def train_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random training caption for a scene (may be '' for classifier-free guidance)."""
    if rng.random() < EMPTY_CAPTION_RATE:
        return ""
    bg_word = str(rng.choice(vocab.lookup(scene.background)[1].train_words))
    if scene.character != vocab.NO_CHARACTER:
        design = vocab.character(scene.character)
        name = str(rng.choice(design.train_words))
        bg = f" on a {bg_word} background" if rng.random() < MENTION_RATE["background"] else ""
        template = str(rng.choice(_CHARACTER_TEMPLATES))
        return _clean(template.format(name=name, bg=bg))

    def pick(attribute: str, label: str) -> str | None:
        if rng.random() >= MENTION_RATE[attribute]:
            return None
        return str(rng.choice(vocab.lookup(label)[1].train_words))

    obj = pick("object", scene.object)
    color = pick("color", scene.color)
    if obj is None and color is None:  # say at least one of the two main attributes
        obj = str(rng.choice(vocab.lookup(scene.object)[1].train_words))
    phrases = Phrases(obj or _GENERIC_OBJECT, color, pick("style", scene.style),
                      bg_word if rng.random() < MENTION_RATE["background"] else None)
    template = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))]
    return _clean(template(phrases))


def canonical_prompt(obj: str, color: str | None, style: str | None = None, background: str | None = None) -> str:
    """The plain evaluation prompt: 'a [style] color object [on a bg background]'."""
    return _clean(_t_plain(Phrases(obj, color, style, background)))


def character_prompt(name: str, background: str | None = None) -> str:
    display = vocab.character(name).train_words[0]
    return f"{display} on a {background} background" if background else f"a picture of {display}"


@dataclass(frozen=True)
class LabelledPrompt:
    """A prompt with the labels an image rendered from it should show (None: unconstrained)."""

    prompt: str
    labels: dict[str, str]


def canonical_suite() -> list[LabelledPrompt]:
    """Every (color, object) pair as 'a {color} {object}' plus a fixed set of full specifications.

    Fixed and versioned: the numbers in the acceptance bench come from exactly these prompts.
    """
    suite = [LabelledPrompt(canonical_prompt(o, c), {"object": o, "color": c})
             for o in vocab.classes("object") for c in vocab.classes("color")]
    objects, colors = vocab.classes("object"), vocab.classes("color")
    styles, backgrounds = vocab.classes("style"), vocab.classes("background")
    for i, (o, c) in enumerate((o, c) for o in objects for c in colors):
        s, b = styles[i % len(styles)], backgrounds[(i // len(styles)) % len(backgrounds)]
        suite.append(LabelledPrompt(canonical_prompt(o, c, s, b),
                                    {"object": o, "color": c, "style": s, "background": b}))
    return suite


def paraphrase_prompts(label: str) -> Iterator[LabelledPrompt]:
    """Prompts that describe a concept only through held-out paraphrases.

    Colors and styles are paired with every object named plainly (so the object is not the
    thing being paraphrased); objects are paired with a rotating plain color.
    """
    attribute, concept = vocab.lookup(label)
    objects, colors = vocab.classes("object"), vocab.classes("color")
    for k, phrase in enumerate(concept.paraphrases):
        if attribute == "color":
            for obj in objects:
                descriptive = phrase.startswith("the color")
                text = f"a {obj} that is {phrase}" if descriptive else f"{_article(phrase)} {phrase} {obj}"
                yield LabelledPrompt(text, {"object": obj, "color": label})
        elif attribute == "object":
            for j, color in enumerate(colors):
                text = f"{_article(color)} {color} {phrase}"
                if j % 2:
                    text = f"{_article(phrase)} {phrase} in {color}"
                yield LabelledPrompt(text, {"object": label, "color": color})
        elif attribute == "style":
            for j, obj in enumerate(objects):
                color = colors[(j + k) % len(colors)]
                yield LabelledPrompt(f"{_article(phrase)} {phrase} {color} {obj}",
                                     {"object": obj, "color": color, "style": label})
        elif attribute == "character":
            for template in HELDOUT_TEMPLATES:
                yield LabelledPrompt(template.format(x=phrase), {"character": label})
        else:
            for obj in objects:
                yield LabelledPrompt(f"a {obj} on a {phrase} background", {"object": obj, "background": label})


def slot_prompts(label: str, n: int = 10) -> list[str]:
    """n held-out prompts with a "{}" slot where the concept's word goes, the rest named plainly.

    "a photograph of a {} red circle" for a style, "there is a {} square here" for a color,
    "a photograph of {}" for a character: the world's own grammar in HELDOUT_TEMPLATES, which
    training never used. Why: a concept the world only ever names as an adjective of a shape is
    carried poorly by generic templates ("an image in the style of striped" renders striped about
    half the time), so a placeholder token scored there cannot show whether it carries the concept.
    """
    attribute, _ = vocab.lookup(label)
    objects, colors = vocab.classes("object"), vocab.classes("color")
    backgrounds = vocab.classes("background")
    out = []
    for k in range(n):
        obj, color = objects[k % len(objects)], colors[(3 * k) % len(colors)]
        if attribute == "character":
            x = "{}" if k % 2 == 0 else f"{{}} on a {backgrounds[k % len(backgrounds)]} background"
        elif attribute == "color":
            x = canonical_prompt(obj, "{}")
        elif attribute == "object":
            x = canonical_prompt("{}", color)
        elif attribute == "style":
            x = canonical_prompt(obj, color, "{}")
        else:
            x = canonical_prompt(obj, color, None, "{}")
        out.append(HELDOUT_TEMPLATES[k % len(HELDOUT_TEMPLATES)].format(x=x))
    return out


def parse_request(text: str) -> LabelledPrompt:
    """'object=circle,color=red[,style=..][,background=..]' or 'character=bobo' -> canonical prompt.

    Unknown attributes or values raise a one-line ErasureLabError naming the valid ones.
    """
    from erasurelab.errors import ErasureLabError, did_you_mean

    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = (s.strip().lower() for s in part.partition("="))
        if not sep or not value:
            raise ErasureLabError(f"bad request part {part!r}: expected attribute=value, e.g. color=red")
        if key not in vocab.ATTRIBUTES:
            raise ErasureLabError(f"unknown attribute {key!r} in request{did_you_mean(key, vocab.ATTRIBUTES)}; "
                                  f"valid: {', '.join(vocab.ATTRIBUTES)}")
        valid = [c for c in vocab.classes(key) if c != vocab.NO_CHARACTER]
        if value not in valid:
            raise ErasureLabError(f"unknown {key} {value!r}{did_you_mean(value, valid)}; valid: {', '.join(valid)}")
        labels[key] = value
    if not labels:
        raise ErasureLabError("empty request: give attribute=value pairs, e.g. object=circle,color=red")
    if "character" in labels:
        if set(labels) - {"character", "background"}:
            raise ErasureLabError("a character request takes only character= and background=")
        return LabelledPrompt(character_prompt(labels["character"], labels.get("background")), labels)
    if "object" not in labels and "color" not in labels:
        raise ErasureLabError("a request needs at least object= or color=")
    prompt = canonical_prompt(labels.get("object", _GENERIC_OBJECT), labels.get("color"),  # type: ignore[arg-type]
                              labels.get("style"), labels.get("background"))
    return LabelledPrompt(prompt, labels)
