"""What evaluate() returns: per-concept facets, the summary terms and H, and everything a report shows.

Why plain dataclasses with a to_dict: metrics.json is exactly `EvaluationResult.to_dict()`, so the
JSON, the HTML and the Python object can never disagree. Images live only on the object (for the
report's grids), never in the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from erasurelab.evaluation.types import AttackResult, Rate

RESULT_KIND = "erasurelab-evaluation"
RESULT_VERSION = 1


def jsonable(value: Any) -> Any:
    """Rates to dicts, non-finite floats to None (JSON has no NaN), tuples to lists, Paths to str."""
    if isinstance(value, Rate):
        return jsonable(value.to_dict())
    if isinstance(value, AttackResult):
        return jsonable(value.to_dict())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    return value


@dataclass
class Examples:
    """A few images of one suite on both models, for the report's before/after grids."""

    captions: list[str]
    before: torch.Tensor
    after: torch.Tensor


@dataclass
class ConceptResult:
    """Every facet of one concept.

    target: {"anchor"|"paraphrase"|"selective": {"edited": Rate, "reference": Rate}} (target proportion TP;
    on the selective suite, the target's own share of its images).
    forget: per suite of `target` {"edited", "reference", "ratio", "counted", "reason"}: how f was made
    (f = 1 − max ratio over the counted suites; a suite counts when its reference TP reaches the floor).
    neighbours: per kept neighbour {name, labels, cosine, reference: Rate, edited: Rate, rho}.
    dropped_neighbours: neighbours the reference renders on < min_neighbour_rate of images.
    unrelated: {"edited": Rate, "reference": Rate, "ratio": float} attribute accuracy on seed set A, plus
    "attributes": per attribute {"edited", "reference", "ratio"} and "min_ratio" (the worst attribute).
    selective: {"edited": Rate, "reference": Rate} selective alignment.
    quality: {"fd_edited", "fd_floor", "q", "features", "images"}.
    terms / terms_reference: {"f", "r", "a", "q"} of the edited model and of the unedited one; a term
    that cannot be measured is nan (null in JSON, "n/a" in tables), and so is H then.
    problems: one line per term that is not a number and why (also among notes; the CLI prints them).
    """

    concept: str
    attribute: str
    suites: dict[str, dict[str, Any]]
    target: dict[str, dict[str, Rate]]
    neighbours: list[dict[str, Any]]
    dropped_neighbours: list[dict[str, Any]]
    unrelated: dict[str, Any]
    selective: dict[str, Rate]
    quality: dict[str, Any]
    attacks: list[dict[str, Any]]
    terms: dict[str, float]
    terms_reference: dict[str, float]
    h: float
    h_reference: float
    notes: list[str] = field(default_factory=list)
    examples: dict[str, Examples] = field(default_factory=dict, repr=False)
    forget: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"forget": self.forget, "problems": self.problems,
            "concept": self.concept, "attribute": self.attribute, "suites": self.suites, "target": self.target,
            "neighbours": self.neighbours, "dropped_neighbours": self.dropped_neighbours,
            "unrelated": self.unrelated, "selective": self.selective, "quality": self.quality,
            "attacks": self.attacks, "terms": self.terms, "terms_reference": self.terms_reference, "h": self.h,
            "h_reference": self.h_reference, "notes": self.notes,
        })


@dataclass
class EvaluationResult:
    """The result of one evaluate() call (one edited model, one reference, one judge, ≥ 1 concept).

    judge: {"id", "accuracy" (attribute -> Rate or float, or None), "accuracy_source"}.
    sampler: steps, guidance, scheduler class, base seed.
    efficiency: edit cost from the manifest (see evaluation.efficiency) and inference overhead.
    report: the report folder when one was written.
    provenance: git commit (or "unknown"), command line and time of the run that made the numbers.
    """

    model: str
    reference: str
    method: str | None
    model_hash: str
    reference_hash: str
    judge: dict[str, Any]
    sampler: dict[str, Any]
    settings: dict[str, Any]
    efficiency: dict[str, Any]
    concepts: list[ConceptResult]
    compound: list[Any] = field(default_factory=list)
    attacks: list[AttackResult] = field(default_factory=list, repr=False)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None

    def concept(self, name: str) -> ConceptResult:
        for result in self.concepts:
            if result.concept == name:
                return result
        raise KeyError(name)

    @property
    def h(self) -> float:
        """Mean H over the evaluated concepts (nan when any concept's H is not measurable)."""
        values = [c.h for c in self.concepts]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> list[str]:
        """One line per concept for the CLI: H, the four terms and the paraphrase target proportion.

        A term that is not measurable shows as n/a, followed by one "note:" line saying why.
        """
        def fmt(x: float) -> str:
            return f"{x:.3f}" if math.isfinite(x) else "n/a"

        lines = []
        for c in self.concepts:
            terms = " ".join(f"{k}={fmt(c.terms[k])}" for k in "fraq")
            para = c.target["paraphrase"]
            lines.append(f"{c.concept}: H {fmt(c.h)} (no edit {fmt(c.h_reference)}); {terms}; "
                         f"TP paraphrase {para['edited']} vs {para['reference']} unedited")
            lines += [f"{c.concept}: note: {problem}" for problem in c.problems]
        for m in self.compound:
            rhos = " ".join(f"rho[{r.name}]={fmt(r.rho)}" for r in m.retention)
            lines.append(f"{m.concept} ({m.kind}): score {fmt(m.score)}; target {m.forget['edited']} vs "
                         f"{m.forget['reference']} unedited; {rhos}")
        return lines

    def metrics(self) -> list[dict[str, Any]]:
        """Only the numbers (per concept), for comparing runs: no timings, paths or versions."""
        return [c.to_dict() for c in self.concepts]

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "kind": RESULT_KIND, "version": RESULT_VERSION, "model": self.model, "reference": self.reference,
            "method": self.method, "model_hash": self.model_hash, "reference_hash": self.reference_hash,
            "judge": self.judge, "sampler": self.sampler, "settings": self.settings, "efficiency": self.efficiency,
            "h_mean": self.h, "concepts": self.metrics(),
            "compound": [c.to_dict() for c in self.compound], "attacks": [a.to_dict() for a in self.attacks],
            "versions": self.versions, "timings": self.timings, "provenance": self.provenance,
        })
