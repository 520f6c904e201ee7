"""Asking the judge: resolve it, check it knows a concept, batch many questions, measure its accuracy.

Why here and not in the runner: every facet is a set of (image, concept) questions, and the judge's
own accuracy must be reported next to every number it produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.evaluation.agreement import judge_agreement
from erasurelab.evaluation.types import Rate
from erasurelab.judges import Judge, available_judges, is_judge_name, load_judge


def resolve_judge(judge: str | Judge, specs: Sequence[Any] = ()) -> Judge:
    """A judge instance from a registry name ("shapes", "clip:FOLDER") or an instance; one-line error otherwise.

    specs: the evaluated concepts. A judge whose labels come from concept specs (CLIP, `with_specs`)
    gets them here when it does not know every concept yet.
    """
    if isinstance(judge, str):
        if not is_judge_name(judge):
            raise ErasureLabError(f"unknown judge {judge!r}{did_you_mean(judge, available_judges())}; "
                                  f"available: {', '.join(available_judges())}")
        judge = load_judge(judge)
    missing = [m for m in ("id", "concepts", "present", "predict", "features") if not hasattr(judge, m)]
    if missing:
        raise ErasureLabError(f"{type(judge).__name__} is not a judge: it lacks {', '.join(missing)}")
    if specs and hasattr(judge, "with_specs") and not {s.name for s in specs} <= set(judge.concepts()):
        judge = judge.with_specs(specs)
    return judge


def attribute_of(judge: Judge, concept: str) -> str:
    """Which attribute decides `concept` (judge.attribute_of when the judge has it); one-line error if unknown."""
    if hasattr(judge, "attribute_of"):
        try:
            return str(judge.attribute_of(concept))
        except ErasureLabError:
            raise
        except (KeyError, ValueError) as exc:  # a third-party judge's own error type: keep it to one line
            raise ErasureLabError(f"concept {concept!r} unknown to judge {judge.id}") from exc
    known = judge.concepts()
    if concept not in known:
        raise ErasureLabError(f"concept {concept!r} unknown to judge {judge.id}{did_you_mean(concept, known)}")
    return _category(concept)


def _category(concept: str) -> str:
    """The category a concept provider gives a concept name ("red" -> "color"), else "concept"."""
    from erasurelab.concepts import concept as resolve

    try:
        category = resolve(concept).category
    except ErasureLabError:
        return "concept"
    return category if category != "custom" else "concept"


def present(judge: Judge, images: torch.Tensor, concept: str) -> torch.Tensor:
    """(N,) bool; empty input gives an empty tensor without calling the judge."""
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return torch.as_tensor(judge.present(images, concept), dtype=torch.bool).reshape(-1).cpu()


def detect_items(judge: Judge, images: torch.Tensor, items: Sequence[Sequence[str]]) -> list[list[bool]]:
    """For each image i, whether the judge detects each of items[i]; one judge call per distinct concept."""
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images but {len(items)} item lists")
    answers: list[list[bool]] = [[False] * len(x) for x in items]
    concepts = sorted({c for x in items for c in x})
    for concept in concepts:
        where = [(i, j) for i, x in enumerate(items) for j, c in enumerate(x) if c == concept]
        rows = sorted({i for i, _ in where})
        flags = present(judge, images[rows], concept).tolist()
        lookup = dict(zip(rows, flags, strict=True))
        for i, j in where:
            answers[i][j] = bool(lookup[i])
    return answers


def features(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """(N, m) judge features in float64."""
    return torch.as_tensor(judge.features(images)).double().reshape(len(images), -1).cpu()


def ground_truth_accuracy(judge: Judge, n: int, seed: int) -> dict[str, Rate] | None:
    """Per-attribute accuracy of judge.predict on n fresh ground-truth images, from the first suite
    builder that has ground truth the judge reads (the embedded world's renders).

    None when no builder can measure this judge (its accuracy must then be given).
    """
    from erasurelab.evaluation.suites import suite_builders

    for builder in suite_builders():
        accuracy = builder.judge_accuracy(judge, n, seed)
        if accuracy is not None:
            return accuracy
    return None


def accuracy_dict(accuracy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """JSON form of an accuracy mapping whose values are Rates or plain floats."""
    if accuracy is None:
        return None
    return {k: v.to_dict() if isinstance(v, Rate) else float(v) for k, v in accuracy.items()}


#: Attributes on which a second judge's agreement is reported (those a pixel-rule judge can read).
AGREEMENT_ATTRIBUTES: tuple[str, ...] = ("object", "color")


def _attributes(judge: Judge) -> set[str]:
    """The attributes a judge decides some concept of (`attribute_of` over its concepts)."""
    out = set()
    for concept in judge.concepts():
        try:
            out.add(attribute_of(judge, concept))
        except ErasureLabError:
            continue
    return out


def _shared_attributes(judge_a: Judge, judge_b: Judge) -> tuple[str, ...]:
    """AGREEMENT_ATTRIBUTES on which both judges decide at least one concept."""
    known_a, known_b = _attributes(judge_a), _attributes(judge_b)
    return tuple(a for a in AGREEMENT_ATTRIBUTES if a in known_a and a in known_b)


def second_judge_agreement(judge: Judge, second: str | None, reference: Sequence[torch.Tensor],
                           edited: Sequence[torch.Tensor]) -> dict[str, Any] | None:
    """How often a second, independent judge agrees with `judge` on every rendered image.

    second: a registry name; None, an unregistered name, or a judge sharing no attribute with
    `judge` gives None (nothing to report). reference / edited: image batches of each model.
    Why: every rate is a verdict of one judge; agreement with a judge built on other principles
    (pixel rules instead of learned weights) says how far those verdicts can be trusted, on the
    unedited model's images and on the edited model's, where an edit may produce images the
    main judge was never trained on.
    """
    if not second or second not in available_judges():
        return None
    other = load_judge(second)
    attributes = _shared_attributes(judge, other)
    if not attributes:
        return None

    def over(batches: Sequence[torch.Tensor]) -> dict[str, Rate]:
        batches = [b for b in batches if len(b) and b.shape[-1] > 1]
        images = torch.cat([b.float() for b in batches]) if batches else torch.empty(0, 3, 32, 32)
        if len(images) == 0:
            return {a: Rate(0, 0) for a in attributes}
        return dict(judge_agreement(judge, other, images, attributes=attributes))

    return {"second_judge": str(getattr(other, "id", second)), "attributes": list(attributes),
            "reference": over(reference), "edited": over(edited)}
