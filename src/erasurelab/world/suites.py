"""The embedded world's evaluation suites: the five suites of every world label, and judge accuracy.

Why the world's own suites: its concepts come with a grammar the model was trained on and
held-out paraphrases (world/captions.py), so each suite is built from the vocabulary rather than
from a spec's few phrases — paraphrase prompts pair the paraphrase with every plainly named
object, neighbours are ranked among same-attribute labels, unrelated prompts cover every
attribute (characters included), and selective prompts add every other judge-detectable
attribute. Registered as the suite builder "shapes" (`erasurelab.evaluation.suites`), which also
measures a judge's accuracy on fresh ground-truth renders.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.suites import (
    ConceptSuites,
    Neighbour,
    Suite,
    check_leakage,
    spread,
    text_embeddings,
)
from erasurelab.evaluation.types import EvaluationSettings, Rate
from erasurelab.world import vocab
from erasurelab.world.captions import HELDOUT_TEMPLATES, canonical_prompt, canonical_suite, paraphrase_prompts

#: Character templates of the selective suite: the name plus a detectable background.
_SELECTIVE_CHARACTER_TEMPLATES: tuple[str, ...] = (
    "{name} on a {bg} background", "the character {name} on a {bg} background",
    "an image of {name} on a {bg} background",
)
_PLAIN_ATTRIBUTES: tuple[str, ...] = ("object", "color", "style", "background")


@dataclass(frozen=True)
class _Item:
    prompt: str
    labels: dict[str, str]


def is_world_concept(name: str) -> bool:
    """True for a label of the embedded world (its suites come from the world's grammar)."""
    try:
        vocab.lookup(name)
    except KeyError:
        return False
    return True


def world_attribute(name: str) -> str:
    """The world attribute of a concept; one-line error for concepts outside the embedded world."""
    try:
        return vocab.lookup(name)[0]
    except KeyError:
        raise ErasureLabError(f"no evaluation suites for concept {name!r}: suites exist only for the embedded "
                              f"world's concepts ({', '.join(vocab.all_labels())})") from None



def _nonempty(suite: Suite) -> Suite:
    if not suite.prompts:
        raise ErasureLabError(f"the {suite.name} suite of concept {suite.concept!r} is empty "
                              "(settings too small or no judge-detectable content); nothing to evaluate")
    return suite



def _known(labels: dict[str, str], judge_concepts: set[str]) -> dict[str, str]:
    return {a: v for a, v in labels.items() if v in judge_concepts}


def anchor_suite(spec: ConceptSpec, settings: EvaluationSettings) -> Suite:
    """The concept's forget anchors × anchor_seeds seeds."""
    attribute = world_attribute(spec.name)
    return _nonempty(Suite("anchor", spec.name, tuple(spec.forget), settings.anchor_seeds,
                           tuple({attribute: spec.name} for _ in spec.forget), base_seed=settings.base_seed))


def paraphrase_suite(spec: ConceptSpec, settings: EvaluationSettings, judge_concepts: set[str]) -> Suite:
    """Held-out paraphrase prompts of the concept (captions.paraphrase_prompts), up to paraphrase_max × 1."""
    world_attribute(spec.name)
    items = list(paraphrase_prompts(spec.name))
    items = [items[i] for i in spread(len(items), settings.paraphrase_max)]
    return _nonempty(Suite("paraphrase", spec.name, tuple(x.prompt for x in items), 1,
                           tuple(_known(x.labels, judge_concepts) for x in items), base_seed=settings.base_seed))


def _display(attribute: str, label: str) -> str:
    """The word a prompt uses for a world concept (its first training word)."""
    return vocab.lookup(label)[1].train_words[0] if attribute in ("character",) else label



def rank_neighbours(pipe: Any, spec: ConceptSpec, judge_concepts: set[str], k: int) -> list[Neighbour]:
    """Top-k same-attribute concepts by cosine of "a photo of {x}" embeddings (target and synonyms excluded).

    Characters also get their body ("yellow circle" for Bobo) as a neighbour when the judge can
    see it: a character is a design on that body, and erasing the character must not erase it.
    """
    attribute = world_attribute(spec.name)
    targets = {w.lower() for w in spec.target_words}
    candidates = [c for c in vocab.classes(attribute)  # type: ignore[arg-type]
                  if c != spec.name and c != vocab.NO_CHARACTER and c in judge_concepts
                  and _display(attribute, c).lower() not in targets]
    ranked: list[Neighbour] = []
    if candidates and k > 0:
        texts = [f"a photo of {_display(attribute, spec.name)}"] + [f"a photo of {_display(attribute, c)}"
                                                                   for c in candidates]
        vectors = text_embeddings(pipe, texts)
        cosines = (vectors[1:] @ vectors[0]).tolist()
        order = sorted(range(len(candidates)), key=lambda i: (-round(cosines[i], 12), candidates[i]))
        ranked = [Neighbour(candidates[i], {attribute: candidates[i]}, float(cosines[i])) for i in order[:k]]
    if attribute == "character":
        design = vocab.character(spec.name)
        body = {"object": design.body_object, "color": design.body_color}
        if all(v in judge_concepts for v in body.values()):
            ranked.append(Neighbour(f"{design.body_color} {design.body_object}", body, None))
    return ranked


def _neighbour_phrase(attribute: str, neighbour: Neighbour, j: int, offset: int) -> str:
    """Noun phrase (with article) naming the neighbour inside a plain scene; j, offset rotate the filler."""
    objects, colors = vocab.classes("object"), vocab.classes("color")
    obj, color = objects[(j + offset) % len(objects)], colors[(j + offset) % len(colors)]
    if set(neighbour.labels) == {"object", "color"}:  # a character's body
        return canonical_prompt(neighbour.labels["object"], neighbour.labels["color"])
    label = neighbour.labels[attribute]
    if attribute == "color":
        return canonical_prompt(obj, label)
    if attribute == "object":
        return canonical_prompt(label, color)
    if attribute == "style":
        return canonical_prompt(obj, color, label)
    if attribute == "background":
        return canonical_prompt(obj, color, None, label)
    return _display(attribute, label)


def neighbour_suite(spec: ConceptSpec, neighbours: Sequence[Neighbour], settings: EvaluationSettings) -> Suite:
    """Each neighbour in the held-out templates (neighbour_templates of them) × neighbour_seeds seeds."""
    attribute = world_attribute(spec.name)
    prompts, labels, groups = [], [], []
    for offset, neighbour in enumerate(neighbours):
        for j, template in enumerate(HELDOUT_TEMPLATES[:settings.neighbour_templates]):
            phrase = _neighbour_phrase(attribute, neighbour, j, offset)
            if "this {x}" in template and phrase.startswith(("a ", "an ")):
                phrase = phrase.split(" ", 1)[1]  # "look at this red circle", not "this a red circle"
            prompts.append(template.format(x=phrase))
            labels.append(dict(neighbour.labels))
            groups.append(neighbour.name)
    return Suite("neighbours", spec.name, tuple(prompts), settings.neighbour_seeds, tuple(labels), tuple(groups),
                 base_seed=settings.base_seed)


def _character_items() -> list[tuple[str, dict[str, str]]]:
    """Each character on each background (first selective template): the unrelated suite's characters."""
    template = _SELECTIVE_CHARACTER_TEMPLATES[0]
    return [(template.format(name=_display("character", c), bg=bg), {"character": c, "background": bg})
            for c in vocab.classes("character") if c != vocab.NO_CHARACTER for bg in vocab.classes("background")]


def unrelated_suite(spec: ConceptSpec, settings: EvaluationSettings, judge_concepts: set[str]) -> Suite:
    """World prompts that do not contain the target, rendered with seed sets A and B.

    The canonical scenes (object, colour, style, background) plus every character on every
    background, interleaved so that a capped suite keeps both: retention must cover every attribute
    the judge reads, and a scene-only suite never asks for a character.
    """
    world_attribute(spec.name)
    scenes = [(x.prompt, dict(x.labels)) for x in canonical_suite()]
    characters = _character_items()
    step = max(1, len(scenes) // max(1, len(characters)))
    merged: list[tuple[str, dict[str, str]]] = []
    for i, item in enumerate(scenes):
        merged.append(item)
        if i % step == step - 1 and characters:
            merged.append(characters.pop(0))
    merged += characters
    items = [_Item(prompt, labels) for prompt, labels in merged if spec.name not in labels.values()]
    items = [items[i] for i in spread(len(items), settings.unrelated_max)]
    return _nonempty(Suite("unrelated", spec.name, tuple(x.prompt for x in items), 2,
                           tuple(_known(x.labels, judge_concepts) for x in items), base_seed=settings.base_seed))


def selective_suite(spec: ConceptSpec, settings: EvaluationSettings, judge_concepts: set[str]) -> Suite:
    """Prompts with the target plus other judge-detectable items, each with its list of other items."""
    attribute = world_attribute(spec.name)
    prompts, labels, items = [], [], []
    if attribute == "character":
        name = _display(attribute, spec.name)
        for bg, template in itertools.product(vocab.classes("background"), _SELECTIVE_CHARACTER_TEMPLATES):
            if bg in judge_concepts:
                prompts.append(template.format(name=name, bg=bg))
                labels.append({"character": spec.name, "background": bg})
                items.append((bg,))
    else:
        others = [a for a in _PLAIN_ATTRIBUTES if a != attribute]
        combos = list(itertools.product(*(vocab.classes(a) for a in others)))  # type: ignore[arg-type]
        for combo in combos:
            scene = {attribute: spec.name, **dict(zip(others, combo, strict=True))}
            other = tuple(scene[a] for a in others if scene[a] in judge_concepts)
            if other:
                prompts.append(canonical_prompt(scene["object"], scene["color"], scene["style"],
                                                scene["background"]))
                labels.append(_known(scene, judge_concepts))
                items.append(other)
    keep = spread(len(prompts), settings.selective_max)
    n_rep = max(1, min(10, settings.selective_max // max(1, len(keep))))
    return _nonempty(Suite("selective", spec.name, tuple(prompts[i] for i in keep), n_rep,
                           tuple(labels[i] for i in keep), (), tuple(items[i] for i in keep),
                           base_seed=settings.base_seed))


def build_suites(spec: ConceptSpec, pipe: Any, judge_concepts: Iterable[str],
                 settings: EvaluationSettings | None = None, anchors: Iterable[str] = ()) -> ConceptSuites:
    """Every suite of one concept; the neighbour suite holds all k candidates (filtered later on M_0).

    pipe: any pipeline with the evaluated text encoder (for the neighbour ranking).
    anchors: the method's anchors, for the leakage check (ErasureLabError on overlap).
    """
    settings = settings or EvaluationSettings()
    known = set(judge_concepts)
    attribute = world_attribute(spec.name)
    if spec.name not in known:
        raise ErasureLabError(f"concept {spec.name!r} is not detectable by the judge; cannot measure it")
    neighbours = rank_neighbours(pipe, spec, known, settings.neighbour_k)
    suites = ConceptSuites(
        concept=spec.name, attribute=attribute, anchor=anchor_suite(spec, settings),
        paraphrase=paraphrase_suite(spec, settings, known), neighbours=neighbour_suite(spec, neighbours, settings),
        unrelated=unrelated_suite(spec, settings, known), selective=selective_suite(spec, settings, known),
        neighbour_info=tuple(neighbours))
    check_leakage(suites.all(), anchors)
    return suites


def world_accuracy(judge: Any, n: int, seed: int) -> dict[str, Rate] | None:
    """Per-attribute accuracy of judge.predict on n fresh ground-truth renders of the shapes world.

    None when the judge does not speak the world's labels (its accuracy must then be given).
    Why fresh renders with a fixed seed: the number is reproducible and not the training set.
    """
    world_labels = set(vocab.all_labels()) | {vocab.NO_CHARACTER}
    if n <= 0 or not set(judge.concepts()) <= world_labels:
        return None
    from erasurelab.world.dataset import render_dataset

    data = render_dataset(n, seed)
    predictions = judge.predict(data.float_images())
    truths = [scene.labels() for scene in data.scenes]
    attributes = [a for a in vocab.ATTRIBUTES if predictions and a in predictions[0]]
    return {a: Rate(sum(p[a] == t[a] for p, t in zip(predictions, truths, strict=True)), n) for a in attributes}


class WorldSuites:
    """The SuiteBuilder of the shapes world: its labels and its compound names (red+circle, circle|white)."""

    def accepts(self, spec: ConceptSpec) -> bool:
        if not spec.is_compound:
            return is_world_concept(spec.name)
        from erasurelab.world.compound import world_labels

        try:
            world_labels(spec)
        except ErasureLabError:
            return False
        return True

    def build(self, spec: ConceptSpec, pipe: Any, judge_concepts: Iterable[str], attribute_of: Callable[[str], str],
              settings: EvaluationSettings, anchors: Iterable[str]) -> ConceptSuites:
        return build_suites(spec, pipe, judge_concepts, settings, anchors)

    def build_compound(self, spec: ConceptSpec, judge_concepts: Iterable[str], settings: Any,
                       anchors: Iterable[str]) -> Any:
        from erasurelab.world.compound import build_compound_suites

        return build_compound_suites(spec, judge_concepts, settings, anchors)

    def judge_accuracy(self, judge: Any, n: int, seed: int) -> dict[str, Rate] | None:
        return world_accuracy(judge, n, seed)
