"""What a compound evaluation runs on: its settings, its suites, and whether one image shows the target.

Why apart from the metrics (evaluation/compound.py): suite builders (the embedded world's
`world/compound.py`) need the suite records and the leakage check but no scoring, and the
target decisions here are the only place that says what "the image shows red+circle" means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import judging
from erasurelab.evaluation.suites import Suite, normalise, suite_builder_for
from erasurelab.evaluation.types import EvaluationSettings

#: Bump when the construction of any compound suite changes: it is part of every suite hash.
COMPOUND_SUITE_VERSION = "compound-1"

#: One image's judge answer: attribute -> predicted label (judge.predict) or concept -> detected flag.
Observation = Mapping[str, Any]


@dataclass(frozen=True)
class CompoundSettings:
    """Sizes of the compound suites: seeds per prompt (the TRuST paper: 8) and the cap on each retain suite."""

    seeds: int = 8
    retain_max: int = 40
    base_seed: int = 1

    def __post_init__(self) -> None:
        for name in ("seeds", "retain_max"):
            if int(getattr(self, name)) <= 0:
                raise ErasureLabError(f"compound setting {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_evaluation(cls, settings: EvaluationSettings | None) -> CompoundSettings:
        """The same base seed as the rest of an evaluation; sizes at the TRuST paper's defaults, shrunk with the
        protocol (seeds <= anchor_seeds, retain suites <= unrelated_max prompts) so small settings stay small."""
        if settings is None:
            return cls()
        return cls(seeds=max(1, min(cls.seeds, settings.anchor_seeds)),
                   retain_max=max(1, min(cls.retain_max, settings.unrelated_max)), base_seed=settings.base_seed)


@dataclass(frozen=True)
class CompoundSuites:
    """The suites of one compound concept.

    measure[suite name]: the concepts whose joint detection is that suite's rate (an empty tuple:
    every label of the prompt).
    """

    concept: str
    kind: str
    parts: tuple[str, ...]
    context: str
    forget: Suite
    retain: tuple[Suite, ...]
    measure: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def all(self) -> list[Suite]:
        return [self.forget, *self.retain]

    def suite(self, name: str) -> Suite:
        for suite in self.all():
            if suite.name == name:
                return suite
        raise KeyError(name)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {s.name: {**s.summary(), "measure": list(self.measure.get(s.name, ()))} for s in self.all()}


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------


def rotated(grid: Sequence[Sequence[tuple[str, dict[str, str]]]], k: int) -> list[tuple[str, dict[str, str]]]:
    """Up to k items of a variants × templates grid, diagonal by diagonal.

    Why diagonals: the first items already cover every template with changing variants, so a cap
    keeps the suite varied in both directions instead of exhausting one variant first.
    """
    if not grid:
        return []
    n_v, n_t = len(grid), len(grid[0])
    order = [grid[(t + d) % n_v][t] for d in range(n_v) for t in range(n_t)]
    return order[:k]


def compound_suite(name: str, spec: ConceptSpec, items: Sequence[tuple[str, dict[str, str]]],
                   settings: CompoundSettings, known: set[str], note: str) -> Suite:
    """One compound suite from (prompt, labels) items; labels the judge cannot see are dropped."""
    if not items:
        raise ErasureLabError(f"the {name} suite of {spec.name!r} is empty; nothing to evaluate")
    labels = tuple({a: v for a, v in lab.items() if v in known} for _, lab in items)
    return Suite(name, spec.name, tuple(p for p, _ in items), settings.seeds, labels, base_seed=settings.base_seed,
                 version=COMPOUND_SUITE_VERSION, notes=(note,))


def check_compound_leakage(suites: CompoundSuites, anchors: Iterable[str]) -> None:
    """Every compound suite is held out: none of its prompts may be an anchor a method trained on."""
    anchor_set = {normalise(a) for a in anchors}
    for suite in suites.all():
        for prompt in suite.prompts:
            if normalise(prompt) in anchor_set:
                raise ErasureLabError(f"evaluation leakage: {suite.name} prompt {prompt!r} of {suites.concept!r} "
                                      "is one of the method's anchors; use other anchors")


def compound_suites(spec: ConceptSpec, judge_concepts: Iterable[str] | None = None,
                    settings: CompoundSettings | None = None, anchors: Iterable[str] = ()) -> CompoundSuites:
    """The fixed suites of a combination or conditional, from the registered suite builder that accepts it.

    judge_concepts: labels the judge can detect (None: the builder's own labels); anchors: the
    method's anchors, checked against every suite prompt. One-line error when no builder knows it.
    """
    if not spec.is_compound:
        raise ErasureLabError(f"concept {spec.name!r} is a single concept: use evaluation.generic_suites")
    builder = suite_builder_for(spec)
    if builder is None:
        raise ErasureLabError(f"no evaluation suites for {spec.kind} {spec.name!r}: compound suites exist only where "
                              "a plugin builds them (the embedded world's labels, e.g. red+circle, circle|white)")
    return builder.build_compound(spec, judge_concepts, settings or CompoundSettings(), anchors)


# ---------------------------------------------------------------------------------------------
# Target decisions
# ---------------------------------------------------------------------------------------------


def detected(observation: Observation, concept: str) -> bool:
    """Whether one image shows `concept`, from concept -> flag answers or attribute -> label predictions."""
    if concept in observation:
        return bool(observation[concept])
    return concept in observation.values()  # a prediction: some attribute's label is the concept


def target_present(spec: ConceptSpec, observation: Observation) -> bool:
    """Is the compound target on this image? Combination: every part; conditional: the concept.

    The conditional's context is judged separately (context_present): an image of a circle on
    black still shows the concept, and UA counts it, because an erased conditional must not
    render the concept on the condition's prompts, whatever background it drew instead.
    """
    if spec.kind == "combination":
        return all(detected(observation, p) for p in spec.parts)
    if spec.kind == "conditional":
        return detected(observation, spec.parts[0])
    return detected(observation, spec.name)


def context_present(spec: ConceptSpec, observation: Observation) -> bool:
    """Does the image show the conditional's context (its background)? (ρ_B on F_ev and R_B)."""
    if spec.kind != "conditional":
        raise ErasureLabError(f"concept {spec.name!r} is a {spec.kind}, which has no context")
    return detected(observation, spec.context)


def judge_observations(judge: Any, images: torch.Tensor, concepts: Iterable[str]) -> list[dict[str, bool]]:
    """concept -> detected for each image (judge.present with its threshold, as every other rate)."""
    concepts = sorted(set(concepts))
    flags = {c: judging.present(judge, images, c).tolist() for c in concepts}
    return [{c: bool(flags[c][i]) for c in concepts} for i in range(len(images))]
