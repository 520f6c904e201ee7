"""The facets of one concept: what each model renders, and the metrics the judge's answers give.

Why this order: the reference renders every suite, and its neighbour rates decide which
neighbours count, so the edited model renders only the kept ones. Every metric is a pure
function of the judge's answers (erasurelab.evaluation.metrics); this module decides which
images feed which metric and writes the notes that explain a missing term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.evaluation import judging, metrics
from erasurelab.evaluation.attack_results import attack_terms
from erasurelab.evaluation.generic_suites import concept_suites
from erasurelab.evaluation.rendering import RenderCache
from erasurelab.evaluation.result import ConceptResult, Examples
from erasurelab.evaluation.suites import ConceptSuites, Suite
from erasurelab.evaluation.types import AttackResult, EvaluationSettings, Rate

#: The suites whose target proportion enters the forget term f.
FORGET_SUITES: tuple[str, ...] = ("anchor", "paraphrase", "selective")


class Images:
    """Images of one suite on one model, addressable by (p, r)."""

    def __init__(self, suite: Suite, pairs: list[tuple[int, int]], images: torch.Tensor) -> None:
        self.suite = suite
        self.pairs = pairs
        self.images = images
        self._index = {pair: i for i, pair in enumerate(pairs)}

    def take(self, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        if not pairs:
            return self.images[:0]
        return self.images[[self._index[p] for p in pairs]]


def render_suite(cache: RenderCache, pipe: Any, key: str, suite: Suite, pairs: list[tuple[int, int]]) -> Images:
    """Render (or take from the cache) the given (prompt, repeat) pairs of a suite on one model."""
    prompts = [suite.prompts[p] for p, _ in pairs]
    seeds = [suite.seed(p, r) for p, r in pairs]
    images = cache.render(pipe, key, prompts, seeds) if pairs else torch.empty(0, 3, 1, 1)
    return Images(suite, pairs, images)


def edited_pairs(suites: ConceptSuites, kept: set[str]) -> dict[str, list[tuple[int, int]]]:
    """The (prompt, repeat) pairs the edited model renders: every suite, kept neighbours only."""
    pairs = {s.name: s.indices() for s in suites.all()}
    pairs["unrelated"] = suites.unrelated.indices([0])  # seed set A only: FD_e compares it with M_0 on B
    pairs["neighbours"] = [(p, r) for p, r in suites.neighbours.indices() if suites.neighbours.groups[p] in kept]
    return pairs


def _flags(judge: Any, images: Images, concept: str) -> torch.Tensor:
    return judging.present(judge, images.images, concept)


def _labels_detected(judge: Any, images: Images) -> list[list[bool]]:
    items = [tuple(images.suite.labels[p].values()) for p, _ in images.pairs]
    return judging.detect_items(judge, images.images, items)


def neighbour_rates(judge: Any, images: Images) -> dict[str, Rate]:
    """Detection rate of each neighbour on its own prompts (all of its labels must be detected)."""
    detected = _labels_detected(judge, images)
    groups: dict[str, list[bool]] = {}
    for (p, _), flags in zip(images.pairs, detected, strict=True):
        groups.setdefault(images.suite.groups[p], []).append(all(flags))
    return {name: Rate.of(flags) for name, flags in groups.items()}


def _examples(ref: Images, edited: Images, k: int, judge: Any, concept: str | None) -> Examples:
    """First k prompts at r = 0 (one per neighbour for the neighbour suite), before and after."""
    common = [pair for pair in edited.pairs if pair[1] == 0]
    if ref.suite.name == "neighbours":
        seen: dict[str, tuple[int, int]] = {}
        for p, r in common:
            seen.setdefault(ref.suite.groups[p], (p, r))
        common = list(seen.values())
    chosen = common[:k]
    before, after = ref.take(chosen), edited.take(chosen)
    captions = [ref.suite.prompts[p] for p, _ in chosen]
    if concept is not None and chosen:
        b, a = judging.present(judge, before, concept).tolist(), judging.present(judge, after, concept).tolist()
        captions = [f"{c} [{'T' if x else '-'}|{'T' if y else '-'}]" for c, x, y in zip(captions, b, a, strict=True)]
    return Examples(captions, before, after)


def _unrelated(judge: Any, edited: Images, reference: Images) -> dict[str, Any]:
    """Attribute accuracy on the unrelated prompts, pooled and per attribute, edited vs reference.

    Every label is decided by judge.present with its threshold, the same rule as the target.
    """
    def answers(images: Images) -> tuple[list[list[str]], list[list[bool]]]:
        names = [list(images.suite.labels[p]) for p, _ in images.pairs]
        return names, _labels_detected(judge, images)

    names_e, detected_e = answers(edited)
    names_0, detected_0 = answers(reference)
    acc_e, acc_0 = metrics.attribute_accuracy(detected_e), metrics.attribute_accuracy(detected_0)
    per_attribute = metrics.attribute_retention(metrics.attribute_rates(names_e, detected_e),
                                                metrics.attribute_rates(names_0, detected_0))
    ratios = [v["ratio"] for v in per_attribute.values() if v["ratio"] == v["ratio"]]
    return {"edited": acc_e, "reference": acc_0, "ratio": metrics.retention_ratio(acc_e, acc_0),
            "attributes": per_attribute, "min_ratio": min(ratios) if ratios else float("nan")}



def concept_result(spec: ConceptSpec, suites: ConceptSuites, ref: dict[str, Images], edited: dict[str, Images],
                    neighbour_ref: dict[str, Rate], kept: list[str], judge: Any, attacks: list[AttackResult],
                    settings: EvaluationSettings) -> ConceptResult:
    """Every facet of one concept from the judge's answers on both models, the terms f, r, a, q and H."""
    notes: list[str] = []
    problems: list[str] = []
    name = spec.name
    # TP on anchor, paraphrase and selective (the target's own share of the selective images).
    target = {s: {"edited": metrics.target_proportion(_flags(judge, edited[s], name)),
                  "reference": metrics.target_proportion(_flags(judge, ref[s], name))}
              for s in FORGET_SUITES}

    # Neighbours (pinpoint-ness).
    neighbour_edit = neighbour_rates(judge, edited["neighbours"]) if kept else {}
    info = {n.name: n for n in suites.neighbour_info}
    neighbours, dropped = [], []
    for n_name, rate0 in neighbour_ref.items():
        entry = {"name": n_name, "labels": info[n_name].labels, "cosine": info[n_name].cosine, "reference": rate0}
        if n_name in kept:
            rate_e = neighbour_edit[n_name]
            neighbours.append({**entry, "edited": rate_e, "rho": metrics.neighbour_retention(rate_e, rate0)})
        else:
            dropped.append(entry)
    if dropped:
        notes.append(f"dropped neighbours the reference renders on < {settings.min_neighbour_rate:.0%} of images: "
                     + ", ".join(d["name"] for d in dropped))

    # Unrelated prompts (seed set A on both models) and quality (FD of judge features).
    ref_a = Images(suites.unrelated, suites.unrelated.indices([0]),
                    ref["unrelated"].take(suites.unrelated.indices([0])))
    ref_b = ref["unrelated"].take(suites.unrelated.indices([1]))
    unrelated = _unrelated(judge, edited["unrelated"], ref_a)
    features_e = judging.features(judge, edited["unrelated"].images)
    features_a, features_b = judging.features(judge, ref_a.images), judging.features(judge, ref_b)
    if len(features_e) >= 2:
        fd_e = metrics.frechet_distance(features_e, features_b)
        fd_floor = metrics.frechet_distance(features_a, features_b)
        q = metrics.quality_term(fd_floor, fd_e)
    else:
        fd_e = fd_floor = q = float("nan")
        notes.append("quality not measured: the unrelated suite needs at least 2 prompts")
    quality = {"fd_edited": fd_e, "fd_floor": fd_floor, "q": q, "features": int(features_e.shape[1]),
               "images": len(features_e)}

    # Selective alignment.
    def sa(images: Images) -> Rate:
        items = [suites.selective.items[p] for p, _ in images.pairs]
        return metrics.selective_alignment(judging.detect_items(judge, images.images, items))

    selective = {"edited": sa(edited["selective"]), "reference": sa(ref["selective"])}

    # Attacks.
    a, a_ref, a_ref_note, attack_rows = attack_terms(attacks, name, notes, problems)

    # Forgetting relative to the unedited model; the "no edit" row uses the same formula.
    f, forget = metrics.forget_term(target, settings.min_reference_rate)
    f_ref, _ = metrics.forget_term({s: {"edited": t["reference"], "reference": t["reference"]}
                                    for s, t in target.items()}, settings.min_reference_rate)
    left_out = [s for s, d in forget.items() if not d["counted"]]
    if left_out and f == f:
        notes.append(f"suites left out of f (reference TP below {settings.min_reference_rate:g}): "
                     + ", ".join(left_out))
    if f != f:
        problems.append(f"forget term f not measurable: the unedited model shows {name} on fewer than "
                        f"{settings.min_reference_rate:.0%} of images in every suite ({', '.join(forget)}); "
                        "H is not reported")

    # Retention: mean neighbour rho; without neighbours, the worst attribute of the unrelated suite.
    rhos = [n["rho"] for n in neighbours]
    if rhos:
        r = sum(rhos) / len(rhos)
    else:
        worst = unrelated["min_ratio"]
        r = min(1.0, worst) if worst == worst else float("nan")
        notes.append("no neighbour survived the reference filter: r = min(1, min over attributes of the unrelated "
                     "retention ratio)")
    terms = {"f": f, "r": r, "a": a, "q": q}
    terms_ref = {"f": f_ref, "r": 1.0, "a": a_ref, "q": 1.0}
    h = metrics.harmonic_h(f, r, a, q)
    h_ref = metrics.harmonic_h(f_ref, 1.0, a_ref, 1.0)
    if h != h and not problems:
        problems.append("H not reported: a term is not measurable (" + ", ".join(k for k, v in terms.items()
                                                                                 if v != v) + ")")
    notes += problems
    if a_ref != a_ref and attack_rows and a == a:
        notes.append(f"no-edit row: {a_ref_note}")

    suite_info = {s.name: s.summary() for s in suites.all()}
    suite_info["neighbours"]["kept"] = list(kept)
    examples = {}
    for s in ("anchor", "paraphrase", "neighbours", "unrelated", "selective"):
        if edited[s].pairs:
            examples[s] = _examples(ref[s], edited[s], settings.examples, judge,
                                    name if s in FORGET_SUITES else None)
    return ConceptResult(concept=name, attribute=suites.attribute, suites=suite_info, target=target,
                         neighbours=neighbours, dropped_neighbours=dropped, unrelated=unrelated, selective=selective,
                         quality=quality, attacks=attack_rows, terms=terms, terms_reference=terms_ref, h=h,
                         h_reference=h_ref, notes=notes, examples=examples, forget=forget, problems=problems)


def suites_for(spec: ConceptSpec, pipe: Any, judge: Any, known: set[str], settings: EvaluationSettings,
                anchors: Sequence[str]) -> ConceptSuites:
    """A registered builder's suites (the embedded world's, for its labels); suites built from the spec otherwise."""
    return concept_suites(spec, pipe, known, lambda c: judging.attribute_of(judge, c), settings, anchors)
