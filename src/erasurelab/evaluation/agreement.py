"""How often two judges give the same label: the cross-check behind every judged rate.

Why: a rate measured by one learned judge is only as credible as that judge on the images at hand,
and edited models draw images no judge was trained on. Counting, per attribute, the images on which
an independent judge (e.g. the rule-based "pixels" judge) names the same label shows where the
verdicts can be trusted and where they are a judge's opinion.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import Rate
from erasurelab.judges.base import Judge


def judge_agreement(judge_a: Judge, judge_b: Judge, images: torch.Tensor,
                    attributes: Sequence[str] = ("object", "color")) -> dict[str, Rate]:
    """Per attribute: the images on which both judges' predict() give the same label, as a Rate.

    An attribute that either judge does not read is a one-line error rather than a silent 0.
    """
    pairs = _paired_labels(judge_a, judge_b, images, attributes)
    return {attribute: Rate.of([a[attribute] == b[attribute] for a, b in pairs]) for attribute in attributes}


def disagreements(judge_a: Judge, judge_b: Judge, images: torch.Tensor,
                  attribute: str) -> list[tuple[int, str, str]]:
    """(index, label of judge_a, label of judge_b) for every image where the two judges differ."""
    pairs = _paired_labels(judge_a, judge_b, images, (attribute,))
    return [(i, a[attribute], b[attribute]) for i, (a, b) in enumerate(pairs) if a[attribute] != b[attribute]]


def _paired_labels(judge_a: Judge, judge_b: Judge, images: torch.Tensor,
                   attributes: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Both judges' predictions per image, after checking that both read every attribute."""
    if not attributes:
        raise ErasureLabError("judge agreement needs at least one attribute")
    labels_a, labels_b = judge_a.predict(images), judge_b.predict(images)
    if len(labels_a) != len(labels_b):
        raise ErasureLabError(f"judges {judge_a.id} and {judge_b.id} returned {len(labels_a)} and "
                              f"{len(labels_b)} predictions for the same images")
    for judge, labels in ((judge_a, labels_a), (judge_b, labels_b)):
        missing = [a for a in attributes if labels and a not in labels[0]]
        if missing:
            raise ErasureLabError(f"judge {judge.id} does not read {', '.join(map(repr, missing))}; "
                                  f"it reads: {', '.join(sorted(labels[0]))}")
    return list(zip(labels_a, labels_b, strict=True))
