"""The metrics of the evaluation protocol: rates, retention, selective alignment, Fréchet distance, H.

Why pure functions on tensors and Rates: every formula here is checked by a property test
(H(1,1,1,1) = 1, FD(X, X) = 0, ...) without any model, and the runner only wires them up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from erasurelab.evaluation.types import Rate


def target_proportion(flags: torch.Tensor | Sequence[bool]) -> Rate:
    """TP: fraction of images judged to show the target (lower is better after an edit)."""
    return Rate.of(flags)


def any_of(flags: torch.Tensor, n_rep: int) -> Rate:
    """Instance-level rate: an instance (n_rep consecutive images) counts if any image is positive."""
    flags = torch.as_tensor(flags, dtype=torch.bool).reshape(-1, n_rep)
    return Rate.of(flags.any(dim=1))


def neighbour_retention(edited: Rate, reference: Rate) -> float:
    """ρ_n = min(1, P_e(n) / P_0(n)); 1 when the reference never shows n (nothing to lose)."""
    if reference.numerator == 0:
        return 1.0
    return min(1.0, edited.value / reference.value)


def retention_ratio(edited: Rate, reference: Rate) -> float:
    """Edited / reference rate (unclipped); nan when the reference rate is 0."""
    if reference.numerator == 0:
        return float("nan") if edited.numerator == 0 else float("inf")
    return edited.value / reference.value


def selective_alignment(detected: Iterable[Sequence[bool]]) -> Rate:
    """SA = detected (image, other item) pairs / all pairs: normalised by questions, so SA ≤ 1.

    detected: per image, one flag per other item of its prompt (HUB divides by prompts instead,
    which exceeds 1 with several items per prompt).
    """
    flags = [bool(f) for per_image in detected for f in per_image]
    return Rate(sum(flags), len(flags))


def attribute_accuracy(detected: Iterable[Sequence[bool]]) -> Rate:
    """Unrelated-prompt attribute accuracy: detected ground-truth (image, attribute) pairs / pairs."""
    return selective_alignment(detected)


def attribute_rates(attributes: Iterable[Sequence[str]], detected: Iterable[Sequence[bool]]) -> dict[str, Rate]:
    """Per attribute: detected ground-truth labels / images asking for that attribute.

    attributes[i][j] names the attribute of detected[i][j] (an image's j-th ground-truth label).
    Why per attribute: a pooled accuracy hides an edit that wipes out one attribute (all styles)
    behind the many object and colour questions that survive.
    """
    counts: dict[str, list[int]] = {}
    for names, flags in zip(attributes, detected, strict=True):
        for name, flag in zip(names, flags, strict=True):
            hit_total = counts.setdefault(str(name), [0, 0])
            hit_total[0] += bool(flag)
            hit_total[1] += 1
    return {name: Rate(hit, total) for name, (hit, total) in counts.items()}


def attribute_retention(edited: dict[str, Rate], reference: dict[str, Rate]) -> dict[str, dict[str, Any]]:
    """Per attribute {"edited", "reference", "ratio"} (ratio unclipped, nan without reference hits)."""
    return {a: {"edited": edited[a], "reference": reference[a], "ratio": retention_ratio(edited[a], reference[a])}
            for a in reference if a in edited}


def forget_ratio(edited: Rate, reference: Rate) -> float:
    """TP_edited / TP_reference clipped to [0, 1]; nan when the reference never shows the target."""
    if reference.numerator == 0 or edited.denominator == 0:
        return float("nan")
    return clip01(edited.value / reference.value)


def forget_term(rates: dict[str, dict[str, Rate]], floor: float) -> tuple[float, dict[str, dict[str, Any]]]:
    """f = 1 − max over counted suites of TP_edited / TP_reference (each clipped to [0, 1]).

    rates: suite -> {"edited": Rate, "reference": Rate}. A suite counts when its reference rate is
    positive and at least `floor`: an edit is only credited for removing what the unedited model
    renders. Returns (f, per suite {"edited", "reference", "ratio", "counted", "reason"}); f is nan
    ("not measurable") when no suite counts. Why the maximum: the target must be gone everywhere,
    so the suite where most of it survives decides.
    """
    details: dict[str, dict[str, Any]] = {}
    for suite, pair in rates.items():
        edited, reference = pair["edited"], pair["reference"]
        counted = reference.denominator > 0 and reference.numerator > 0 and reference.value >= floor
        reason = "" if counted else (f"reference TP {reference} below the floor {floor:g}"
                                     if reference.denominator else "no images")
        details[suite] = {"edited": edited, "reference": reference, "ratio": forget_ratio(edited, reference),
                          "counted": counted, "reason": reason}
    ratios = [d["ratio"] for d in details.values() if d["counted"] and not math.isnan(d["ratio"])]
    return (1.0 - max(ratios) if ratios else float("nan")), details


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr((A B)^{1/2}) for PSD A, B, as Σ sqrt(eig(A^{1/2} B A^{1/2})) (a symmetric PSD matrix)."""
    root = _psd_sqrt(a)
    inner = root @ b @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def gaussian_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2}) in float64.

    Why eigen-decompositions instead of scipy.linalg.sqrtm: both operands are PSD, so the trace
    term is Σ sqrt(eig(Σ1^{1/2} Σ2 Σ1^{1/2})), which is real by construction (sqrtm returns
    complex noise on near-singular covariances, common with fewer samples than features).
    The term is averaged over both operand orders so FD is exactly symmetric.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    cross = (_trace_sqrt_product(sigma1, sigma2) + _trace_sqrt_product(sigma2, sigma1)) / 2
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)
    return max(value, 0.0)


def frechet_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between two feature samples (n, m) and (k, m), float64."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"frechet_distance needs two (n>=2, m) samples, got {x.shape} and {y.shape}")
    return gaussian_frechet(x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], -1),
                            y.mean(0), np.cov(y, rowvar=False).reshape(y.shape[1], -1))


def quality_term(fd_floor: float, fd_edited: float) -> float:
    """q = min(1, FD_floor / FD_e); 1 when the edited distance is 0 (nothing changed)."""
    if fd_edited <= 0:
        return 1.0
    return min(1.0, max(0.0, fd_floor) / fd_edited)


def clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value))) if not math.isnan(value) else float("nan")


def harmonic_h(f: float, r: float, a: float, q: float) -> float:
    """H = 4 / (1/f + 1/r + 1/a + 1/q), each term clipped to [0, 1]; 0 if any term is 0; nan if any is nan."""
    terms = [clip01(float(t)) for t in (f, r, a, q)]
    if any(math.isnan(t) for t in terms):
        return float("nan")
    if any(t == 0 for t in terms):
        return 0.0
    return 4.0 / sum(1.0 / t for t in terms)


def attack_term(results: Sequence[Any], concept: str | None = None,
                use_reference: bool = False) -> tuple[float, str]:
    """a = 1 − max ASR over the attacks (for one concept when given) and a note for the report.

    use_reference: take each attack's ASR on the unedited model (for the "no edit" row).
    Returns (1.0, "no attacks run") without attack results. An attack with no scoreable instance
    (denominator 0) makes a unknown (nan), never 1: an attack that never ran cannot vouch for
    robustness, and the worst case is the one we could not measure.
    """
    chosen = [r for r in results if concept is None or r.concept == concept]
    if not chosen:
        return 1.0, "no attacks run"
    rates = [(r.name, r.reference_asr if use_reference else r.asr) for r in chosen]
    missing = [n for n, rate in rates if rate is None or rate.denominator == 0]
    rates = [(n, rate) for n, rate in rates if rate is not None and rate.denominator > 0]
    if missing:
        bound = ""
        if rates:
            name, worst = max(rates, key=lambda x: x[1].value)
            bound = f"; a <= {1.0 - worst.value:.3f} from {name}"
        side = "the unedited" if use_reference else "the edited"
        return float("nan"), (f"a unknown: no scoreable attack instance on {side} model for "
                              f"{', '.join(missing)}{bound}")
    name, worst = max(rates, key=lambda x: x[1].value)
    return 1.0 - worst.value, f"worst attack: {name} (ASR {worst})"
