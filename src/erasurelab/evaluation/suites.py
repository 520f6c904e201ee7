"""Fixed, versioned prompt suites of the evaluation protocol, embedded world.

Why fixed and hashed: every number in a report is a rate over a suite, so two reports are only
comparable when their suites are identical. Each suite is built deterministically from the world
vocabulary and the settings, carries a sha256 over its prompts, seeds and labels, and can be
stored as a file whose hash is checked on reading (a tampered suite fails loudly).

Why a leakage check: a method trained on an evaluation prompt is graded on its training set. The
evaluator refuses paraphrase, neighbour and selective prompts that appear among the anchors the
method was built from.

Seed rule: image r of prompt p uses seed = base_seed + n_rep·p + r, so every
image is reproducible from (suite, p, r) alone. The unrelated suite has n_rep = 2: r = 0 is seed
set A and r = 1 seed set B.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import EvaluationSettings
from erasurelab.world import vocab
from erasurelab.world.captions import HELDOUT_TEMPLATES, canonical_prompt, canonical_suite, paraphrase_prompts

#: Bump when the construction of any suite changes: it is part of every suite hash.
SUITE_VERSION = "2"
SUITE_NAMES: tuple[str, ...] = ("anchor", "paraphrase", "neighbours", "unrelated", "selective")
#: Suites whose prompts must never be among a method's anchors.
HELD_OUT_SUITES: tuple[str, ...] = ("paraphrase", "neighbours", "selective")
#: Character templates of the selective suite: the name plus a detectable background.
_SELECTIVE_CHARACTER_TEMPLATES: tuple[str, ...] = (
    "{name} on a {bg} background", "the character {name} on a {bg} background",
    "an image of {name} on a {bg} background",
)
_PLAIN_ATTRIBUTES: tuple[str, ...] = ("object", "color", "style", "background")


@dataclass(frozen=True)
class Suite:
    """One prompt suite: prompts, n_rep images each, ground-truth labels and per-prompt extras.

    labels[p]: attribute -> label an image of prompt p should show (judge-detectable ones only).
    groups[p]: the neighbour a prompt belongs to (neighbour suite), "" elsewhere.
    items[p]: the other judge-detectable items of a selective prompt, () elsewhere.
    """

    name: str
    concept: str
    prompts: tuple[str, ...]
    n_rep: int
    labels: tuple[dict[str, str], ...] = ()
    groups: tuple[str, ...] = ()
    items: tuple[tuple[str, ...], ...] = ()
    base_seed: int = 1
    version: str = SUITE_VERSION
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.prompts)
        object.__setattr__(self, "labels", tuple(dict(x) for x in self.labels) or tuple({} for _ in range(n)))
        object.__setattr__(self, "groups", tuple(self.groups) or ("",) * n)
        object.__setattr__(self, "items", tuple(tuple(x) for x in self.items) or ((),) * n)
        if not (len(self.labels) == len(self.groups) == len(self.items) == n):
            raise ValueError(f"suite {self.name}: labels/groups/items must align with the {n} prompts")
        if self.n_rep <= 0:
            raise ValueError(f"suite {self.name}: n_rep must be positive")

    def __len__(self) -> int:
        """Number of images (prompts × n_rep)."""
        return len(self.prompts) * self.n_rep

    def seed(self, p: int, r: int) -> int:
        """The seed rule: base_seed + n_rep·p + r."""
        return self.base_seed + self.n_rep * p + r

    def indices(self, reps: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """(p, r) pairs in render order (prompt-major); reps restricts r (e.g. [0] = seed set A)."""
        reps = list(range(self.n_rep)) if reps is None else list(reps)
        return [(p, r) for p in range(len(self.prompts)) for r in reps]

    def requests(self, reps: Iterable[int] | None = None) -> tuple[list[str], list[int]]:
        """(prompts, seeds) to render, one entry per image, in `indices` order."""
        pairs = self.indices(reps)
        return [self.prompts[p] for p, _ in pairs], [self.seed(p, r) for p, r in pairs]

    def payload(self) -> dict[str, Any]:
        """Canonical JSON content (what the hash covers)."""
        return {"name": self.name, "concept": self.concept, "version": self.version, "base_seed": self.base_seed,
                "n_rep": self.n_rep, "prompts": list(self.prompts),
                "seeds": [[self.seed(p, r) for r in range(self.n_rep)] for p in range(len(self.prompts))],
                "labels": [dict(sorted(x.items())) for x in self.labels], "groups": list(self.groups),
                "items": [list(x) for x in self.items]}

    @property
    def sha256(self) -> str:
        text = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "prompts": len(self.prompts),
                "images_per_prompt": self.n_rep, "images": len(self), "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save_suite(suite: Suite, path: str | Path) -> Path:
    """Write a suite as JSON with its sha256 (atomically)."""
    from erasurelab.runinfo import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {**suite.payload(), "notes": list(suite.notes), "sha256": suite.sha256})


def load_suite(path: str | Path) -> Suite:
    """Read a suite file; one-line error when it is unreadable or fails its sha256."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        suite = Suite(data["name"], data["concept"], tuple(data["prompts"]), int(data["n_rep"]),
                      tuple(data["labels"]), tuple(data["groups"]), tuple(tuple(x) for x in data["items"]),
                      int(data["base_seed"]), str(data["version"]), tuple(data.get("notes", ())))
        expected = data["sha256"]
        seeds = data["seeds"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ErasureLabError(f"unreadable suite file {path}: {type(exc).__name__}: {exc}") from exc
    if suite.sha256 != expected or seeds != suite.payload()["seeds"]:
        raise ErasureLabError(f"suite file {path} fails its sha256 (tampered or corrupt); rebuild the suite")
    return suite


# ---------------------------------------------------------------------------------------------
# Leakage
# ---------------------------------------------------------------------------------------------


def normalise(prompt: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how prompts are compared for leakage."""
    return re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(" .,")


def check_leakage(suites: Iterable[Suite], anchors: Iterable[str]) -> None:
    """Refuse paraphrase/neighbour/selective prompts that appear among a method's anchors."""
    anchor_set = {normalise(a) for a in anchors}
    for suite in suites:
        if suite.name not in HELD_OUT_SUITES:
            continue
        for prompt in suite.prompts:
            if normalise(prompt) in anchor_set:
                raise ErasureLabError(f"evaluation leakage: {suite.name} prompt {prompt!r} of concept "
                                      f"{suite.concept!r} is one of the method's anchors; use other anchors")


def method_anchors(spec: ConceptSpec, manifest_concepts: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Every anchor a method may have trained on: the spec's and those recorded in the run manifest."""
    anchors = [*spec.forget, *spec.retain]
    for entry in manifest_concepts:
        anchors += [str(a) for a in entry.get("forget", ())] + [str(a) for a in entry.get("retain", ())]
    return list(dict.fromkeys(anchors))


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    prompt: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Neighbour:
    """A neighbour concept: its name, the labels that define it and its text similarity to the target."""

    name: str
    labels: dict[str, str]
    cosine: float | None


@dataclass(frozen=True)
class ConceptSuites:
    """All suites of one concept plus the neighbour ranking they were built from."""

    concept: str
    attribute: str
    anchor: Suite
    paraphrase: Suite
    neighbours: Suite
    unrelated: Suite
    selective: Suite
    neighbour_info: tuple[Neighbour, ...]

    def all(self) -> list[Suite]:
        return [self.anchor, self.paraphrase, self.neighbours, self.unrelated, self.selective]


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


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n): a stable, varied subset."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


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
    items = [items[i] for i in _spread(len(items), settings.paraphrase_max)]
    return _nonempty(Suite("paraphrase", spec.name, tuple(x.prompt for x in items), 1,
                           tuple(_known(x.labels, judge_concepts) for x in items), base_seed=settings.base_seed))


def _display(attribute: str, label: str) -> str:
    """The word a prompt uses for a world concept (its first training word)."""
    return vocab.lookup(label)[1].train_words[0] if attribute in ("character",) else label


@torch.no_grad()
def text_embeddings(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm pooled text embeddings (float64): CLIP's pooled output, else the attention-masked mean.

    Why the masked mean for BERT/MiniLM: that is how sentence-transformers pools MiniLM, and
    padding tokens must not pull every short phrase towards the same vector.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    tokens = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    device = next(encoder.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    out = encoder(ids, attention_mask=mask)
    pooled = getattr(out, "pooler_output", None)
    if type(encoder).__name__.startswith("CLIP") and pooled is not None:
        vectors = pooled
    else:
        states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        weights = mask[..., None].to(states.dtype)
        vectors = (states * weights).sum(1) / weights.sum(1).clamp_min(1)
    return torch.nn.functional.normalize(vectors.double().cpu(), dim=-1)


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
    items = [items[i] for i in _spread(len(items), settings.unrelated_max)]
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
    keep = _spread(len(prompts), settings.selective_max)
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
