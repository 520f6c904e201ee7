"""Evaluation of combination and conditional concepts (as the TRuST paper defines them).

Why separate from the single-concept suites: a compound target is not one judge label. A
combination "red+circle" is present only when the judge sees every part on the same image, and
erasing it is judged against keeping each part alone ("a red square", "a blue circle"); a
conditional "circle|white" is erased only on white backgrounds and must survive elsewhere. Each
facet is a rate over a fixed, versioned suite built from the *evaluation* templates, which are
disjoint from the training templates every anchor comes from (checked on every build).

Who builds the suites: a registered suite builder that accepts the compound (the embedded world
does, for its labels: `world/compound.py`). What any compound evaluation shares is split in two:
`evaluation.compound_setup` (settings, suite records, target decisions; asks the builders through
`compound_suites`) and this module (the metrics), which re-exports the setup names.

Suites (each prompt × `seeds` images, seed rule of suites.Suite; labels = what the judge must see):
- combination: F_ev (all parts, held-out templates), R_A, R_B, ... (part A kept, every other part
  changed), R_U (every part changed).
- conditional A|B: F_ev (A on B), R_ctx (A on other backgrounds), R_A (A alone), R_B (other
  concepts of A's attribute on B).

Metrics (plain Rates and floats):
- combination: CR = P(all parts | F_ev); f = 1 − CR/CR_0; ρ_P = min(1, P(d_P | R_P)/P_0(d_P | R_P));
  r = mean ρ_P; score = harmonic mean of f and r.
- conditional: UA = 1 − P(d_A | F_ev)/P_0(d_A | F_ev); IRA = mean of ρ(d_B on F_ev), ρ(d_A on R_ctx),
  ρ(d_A on R_A), ρ(d_B on R_B); score = (UA + IRA)/2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import metrics
from erasurelab.evaluation.compound_setup import (
    COMPOUND_SUITE_VERSION,
    CompoundSettings,
    CompoundSuites,
    Observation,
    check_compound_leakage,
    compound_suite,
    compound_suites,
    context_present,
    detected,
    judge_observations,
    rotated,
    target_present,
)
from erasurelab.evaluation.suites import Suite
from erasurelab.evaluation.types import EvaluationSettings, Rate

__all__ = [
    "COMPOUND_SUITE_VERSION", "CompoundMetrics", "CompoundSettings", "CompoundSuites", "Observation", "Retention",
    "check_compound_leakage", "compound_metrics", "compound_suite", "compound_suites", "context_present", "detected",
    "drop_term", "evaluate_compound", "judge_observations", "observe_suites", "rotated", "target_present",
]

@dataclass(frozen=True)
class Retention:
    """One retention ratio: the rate of `concepts` on `suite`, edited vs reference, ρ capped at 1."""

    name: str
    suite: str
    concepts: tuple[str, ...]
    reference: Rate
    edited: Rate
    rho: float
    in_score: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "suite": self.suite, "concepts": list(self.concepts),
                "reference": self.reference.to_dict(), "edited": self.edited.to_dict(), "rho": self.rho,
                "in_score": self.in_score}


@dataclass(frozen=True)
class CompoundMetrics:
    """The compound facets of one concept.

    forget: target proportion on F_ev, {"reference": Rate, "edited": Rate} (CR, or P(d_A) for a conditional).
    forget_term: 1 − CR/CR_0 (combination) or UA (conditional), clipped to [0, 1]; nan when the
    reference never shows the target. forget_parts: per part (and context) detection rates on F_ev,
    which tells which part a combination edit removed. retention: the ρ's; retention_term: the
    mean of those in the score. score: harmonic mean of f and r (combination) or UA-IRA (conditional).
    """

    concept: str
    kind: str
    parts: tuple[str, ...]
    context: str
    forget: dict[str, Rate]
    forget_term: float
    forget_parts: dict[str, dict[str, Rate]]
    retention: tuple[Retention, ...]
    retention_term: float
    score: float
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def terms(self) -> dict[str, float]:
        """The f and r terms that replace the single-concept ones in H."""
        return {"f": self.forget_term, "r": self.retention_term}

    def to_dict(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"concept": self.concept, "kind": self.kind, "parts": list(self.parts), "context": self.context,
                "forget": {k: v.to_dict() for k, v in self.forget.items()}, "forget_term": finite(self.forget_term),
                "forget_parts": {c: {k: v.to_dict() for k, v in r.items()} for c, r in self.forget_parts.items()},
                "retention": [r.to_dict() for r in self.retention],
                "retention_term": finite(self.retention_term), "score": finite(self.score),
                "suites": self.suites, "notes": list(self.notes)}


def _rate(suite: Suite, observations: Sequence[Observation], concepts: Sequence[str]) -> Rate:
    """Images of the suite on which every one of `concepts` (empty: every label of the prompt) is detected."""
    flags = []
    for (p, _), obs in zip(suite.indices(), observations, strict=True):
        wanted = concepts or tuple(suite.labels[p].values())
        flags.append(all(detected(obs, c) for c in wanted))
    return Rate.of(flags)


def _check_lengths(suites: CompoundSuites, side: str, observations: Mapping[str, Sequence[Observation]]) -> None:
    for suite in suites.all():
        if suite.name not in observations:
            raise ErasureLabError(f"{side} observations lack the {suite.name} suite of {suites.concept!r}")
        if len(observations[suite.name]) != len(suite):
            raise ErasureLabError(f"{side} observations of {suites.concept!r} {suite.name}: "
                                  f"{len(observations[suite.name])} images, the suite has {len(suite)}")


def drop_term(edited: Rate, reference: Rate, floor: float = 0.0) -> float:
    """1 − edited/reference rate, clipped to [0, 1]: the single-concept forget term on one suite.

    nan ("not measurable") when the reference never shows the target or shows it on fewer than
    `floor` of the images, exactly as metrics.forget_term leaves such a suite out.
    """
    f, _ = metrics.forget_term({"F_ev": {"edited": edited, "reference": reference}}, floor)
    return f


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _harmonic2(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    a, b = metrics.clip01(a), metrics.clip01(b)
    return 0.0 if a == 0 or b == 0 else 2 * a * b / (a + b)


def _retention(name: str, suite: Suite, concepts: tuple[str, ...], reference: Sequence[Observation],
               edited: Sequence[Observation], in_score: bool = True) -> Retention:
    rate0, rate_e = _rate(suite, reference, concepts), _rate(suite, edited, concepts)
    return Retention(name, suite.name, concepts, rate0, rate_e, metrics.neighbour_retention(rate_e, rate0), in_score)


def compound_metrics(spec: ConceptSpec, suites: CompoundSuites, reference: Mapping[str, Sequence[Observation]],
                     edited: Mapping[str, Sequence[Observation]],
                     min_reference_rate: float = EvaluationSettings.min_reference_rate) -> CompoundMetrics:
    """The compound facets from per-image judge answers of both models.

    min_reference_rate: below this reference rate on F_ev the forget term is not measurable (the
    floor of the single-concept f, EvaluationSettings.min_reference_rate).

    reference/edited: suite name -> one Observation per image, in `suite.indices()` order (all
    seeds), on the unedited and the edited model.
    """
    _check_lengths(suites, "reference", reference)
    _check_lengths(suites, "edited", edited)
    f_ev = suites.forget
    targets = suites.measure["F_ev"]
    forget = {"reference": _rate(f_ev, reference["F_ev"], targets), "edited": _rate(f_ev, edited["F_ev"], targets)}
    shown = [*suites.parts, *([suites.context] if suites.context else [])]
    forget_parts = {c: {"reference": _rate(f_ev, reference["F_ev"], (c,)), "edited": _rate(f_ev, edited["F_ev"], (c,))}
                    for c in shown}
    notes = []
    f = drop_term(forget["edited"], forget["reference"], min_reference_rate)
    if math.isnan(f):
        notes.append(f"the reference shows the target on fewer than {min_reference_rate:.0%} of F_ev images "
                     f"({forget['reference']}): forgetting cannot be measured")
    if spec.kind == "combination":
        entries = [_retention(s.name, s, suites.measure[s.name], reference[s.name], edited[s.name], s.name != "R_U")
                   for s in suites.retain]
    else:
        context = (suites.context,)
        r_b = suites.suite("R_B")
        entries = [_retention("context on F_ev", f_ev, context, reference["F_ev"], edited["F_ev"])]
        entries += [_retention(s.name, s, suites.measure[s.name], reference[s.name], edited[s.name])
                    for s in suites.retain]
        entries.append(_retention("R_B others", r_b, (), reference["R_B"], edited["R_B"], in_score=False))
    r = _mean([e.rho for e in entries if e.in_score])
    score = _harmonic2(f, r) if spec.kind == "combination" else (f + r) / 2
    if spec.kind == "combination" and not math.isnan(f) and f > 0 and r < 1:
        low = [e.name for e in entries if e.in_score and e.rho < 1]
        notes.append(f"parts lost outside the combination ({', '.join(low)}): report ρ next to CR")
    return CompoundMetrics(spec.name, spec.kind, suites.parts, suites.context, forget, f, forget_parts,
                           tuple(entries), r, score, suites.summary(), tuple(notes))


def observe_suites(judge: Any, suites: CompoundSuites, images: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Judge answers for every suite's images (suite name -> images in `indices()` order)."""
    out = {}
    for suite in suites.all():
        if suite.name not in images:
            raise ErasureLabError(f"no images for the {suite.name} suite of {suites.concept!r}")
        concepts = {c for labels in suite.labels for c in labels.values()}
        out[suite.name] = judge_observations(judge, images[suite.name], concepts)
    return out


def evaluate_compound(spec: ConceptSpec, suites: CompoundSuites, judge: Any,
                      reference_images: Mapping[str, torch.Tensor],
                      edited_images: Mapping[str, torch.Tensor],
                      min_reference_rate: float = EvaluationSettings.min_reference_rate) -> CompoundMetrics:
    """The runner's hook: judge both models' renders of every suite (judge.present, the target's
    rule, for parts and retention alike), then compound_metrics."""
    return compound_metrics(spec, suites, observe_suites(judge, suites, reference_images),
                            observe_suites(judge, suites, edited_images), min_reference_rate)
