"""Evaluation metrics (evaluation.md §4, §6): rates, H, Fréchet distance, retention, SA, attacks, judge ids."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import metrics
from erasurelab.evaluation.types import AttackResult, EvaluationSettings, Rate
from stub_judge import StubJudge, default_weights

torch.set_num_threads(1)


# -- Rate ----------------------------------------------------------------------------------------

def test_rate_keeps_numerator_and_denominator() -> None:
    rate = Rate.of(torch.tensor([True, False, True, True]))
    assert (rate.numerator, rate.denominator, rate.value) == (3, 4, 0.75)
    assert rate.to_dict() == {"numerator": 3, "denominator": 4, "value": 0.75}
    assert math.isnan(Rate(0, 0).value)
    with pytest.raises(ValueError):
        Rate(5, 4)


def test_any_of_counts_instances() -> None:
    flags = torch.tensor([False, True, False, False, True, True])
    assert metrics.any_of(flags, 2) == Rate(2, 3)


# -- H ---------------------------------------------------------------------------------------------

def test_h_of_ones_is_one() -> None:
    assert metrics.harmonic_h(1, 1, 1, 1) == pytest.approx(1.0)


@pytest.mark.parametrize("position", range(4))
def test_any_zero_term_gives_zero(position: int) -> None:
    terms = [0.9, 0.8, 0.7, 0.6]
    terms[position] = 0.0
    assert metrics.harmonic_h(*terms) == 0.0


def test_h_is_symmetric_and_below_arithmetic_mean() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        terms = rng.uniform(0.01, 1.0, size=4).tolist()
        values = {round(metrics.harmonic_h(*p), 12) for p in itertools.permutations(terms)}
        assert len(values) == 1
        assert metrics.harmonic_h(*terms) <= sum(terms) / 4 + 1e-12


def test_h_clips_terms_and_propagates_nan() -> None:
    assert metrics.harmonic_h(1.7, 1, 1, 1) == pytest.approx(1.0)
    assert metrics.harmonic_h(-0.2, 1, 1, 1) == 0.0
    assert math.isnan(metrics.harmonic_h(float("nan"), 1, 1, 1))


# -- Fréchet distance --------------------------------------------------------------------------------

def _sample(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift


def test_fd_of_a_sample_with_itself_is_zero() -> None:
    x = _sample(300, 16, 0)
    assert metrics.frechet_distance(x, x) < 1e-6
    few = _sample(10, 48, 1)  # fewer samples than features: singular covariance
    assert metrics.frechet_distance(few, few) < 1e-6


def test_fd_is_symmetric() -> None:
    x, y = _sample(200, 12, 0), _sample(150, 12, 1, shift=0.3)
    assert metrics.frechet_distance(x, y) == metrics.frechet_distance(y, x)
    assert metrics.frechet_distance(x, y) > 0


def test_fd_of_a_shift_is_the_squared_shift() -> None:
    x = _sample(100, 6, 2)
    shift = np.arange(6, dtype=np.float64) / 10
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(float((shift ** 2).sum()), abs=1e-8)


def test_fd_matches_the_gaussian_closed_form() -> None:
    rng = np.random.default_rng(3)
    d = 4
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.5 * np.eye(d)
    exact = metrics.gaussian_frechet(mu1, s1, mu2, s2)
    # Closed form via scipy's sqrtm as an independent check of the eigen-based trace term.
    from scipy.linalg import sqrtm

    reference = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    assert exact == pytest.approx(reference, rel=1e-9)
    x = rng.multivariate_normal(mu1, s1, size=40000)
    y = rng.multivariate_normal(mu2, s2, size=40000)
    assert metrics.frechet_distance(x, y) == pytest.approx(exact, rel=0.05)


def test_fd_one_dimensional_closed_form() -> None:
    assert metrics.gaussian_frechet(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == \
        pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2)


def test_quality_term() -> None:
    assert metrics.quality_term(2.0, 4.0) == 0.5
    assert metrics.quality_term(2.0, 1.0) == 1.0
    assert metrics.quality_term(0.0, 0.0) == 1.0


# -- Retention and selective alignment -----------------------------------------------------------------

def test_neighbour_retention_is_capped_at_one() -> None:
    assert metrics.neighbour_retention(Rate(5, 10), Rate(8, 10)) == pytest.approx(5 / 8)
    assert metrics.neighbour_retention(Rate(9, 10), Rate(8, 10)) == 1.0
    assert metrics.neighbour_retention(Rate(0, 10), Rate(0, 10)) == 1.0


def test_retention_ratio() -> None:
    assert metrics.retention_ratio(Rate(3, 4), Rate(3, 4)) == 1.0
    assert math.isnan(metrics.retention_ratio(Rate(0, 4), Rate(0, 4)))


def test_selective_alignment_is_normalised_by_questions() -> None:
    # Three prompts with three other items each, all detected: HUB's per-prompt count gives 9/3 = 3.
    detected = [[True, True, True]] * 3
    assert metrics.selective_alignment(detected) == Rate(9, 9)
    partial = [[True, False, True], [False, False], [True]]
    sa = metrics.selective_alignment(partial)
    assert sa == Rate(3, 6)
    assert sa.value <= 1.0


# -- Attacks ------------------------------------------------------------------------------------------------

def test_attack_term_without_attacks_is_one() -> None:
    assert metrics.attack_term([]) == (1.0, "no attacks run")


def test_attack_term_uses_the_worst_attack() -> None:
    attacks = [AttackResult("ti", "red", Rate(3, 10), Rate(0, 10), Rate(9, 10)),
               AttackResult("ring", "red", Rate(6, 10), reference_asr=Rate(10, 10)),
               AttackResult("ti", "blue", Rate(10, 10))]
    a, note = metrics.attack_term(attacks, "red")
    assert a == pytest.approx(0.4)
    assert "ring" in note
    assert metrics.attack_term(attacks, "red", use_reference=True)[0] == pytest.approx(0.0)
    assert attacks[0].delta_asr == pytest.approx(0.3)
    assert attacks[0].to_dict()["asr"] == {"numerator": 3, "denominator": 10, "value": 0.3}


# -- Judge versions and settings -------------------------------------------------------------------------------

def test_changing_one_judge_weight_changes_its_id() -> None:
    weights = default_weights()
    same = StubJudge(weights.clone())
    changed = weights.clone()
    changed[0, 0] += 1e-3
    assert StubJudge(weights).id == same.id
    assert StubJudge(changed).id != same.id


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ErasureLabError) as info:
        EvaluationSettings(anchor_seeds=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ErasureLabError):
        EvaluationSettings(min_neighbour_rate=1.5)
