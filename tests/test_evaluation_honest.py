"""Evaluation that cannot flatter an edit (issue 15): relative f, unknown a, per-attribute retention,
reference checks, second-judge agreement, provenance, and the not-measurable cases.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from erasurelab.evaluation import evaluate, metrics
from erasurelab.evaluation.compound import drop_term
from erasurelab.evaluation.types import REFERENCE_MIN_ASR, AttackResult, EvaluationSettings, Rate
from erasurelab.judges.base import register_judge
from stub_judge import StubJudge
from tiny_bert_pipeline import tiny_bert_pipeline

from conftest import needs_assets

torch.set_num_threads(1)

SMALL = EvaluationSettings(steps=2, anchor_seeds=2, paraphrase_max=8, neighbour_k=3, neighbour_templates=2,
                           neighbour_seeds=2, min_neighbour_rate=0.0, unrelated_max=8, selective_max=6,
                           judge_accuracy_n=0, second_judge=None)
TEST_CONCEPTS = ("green", "purple", "triangle", "diamond", "dotted", "outlined", "kiki", "zuzu")


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def _settings(**changes) -> EvaluationSettings:
    return EvaluationSettings(**{**SMALL.to_dict(), **changes})


# -- Forget term ---------------------------------------------------------------------------------------------

def test_forget_term_is_relative_clipped_and_takes_the_worst_suite() -> None:
    rates = {"anchor": {"edited": Rate(1, 10), "reference": Rate(10, 10)},      # ratio .1
             "paraphrase": {"edited": Rate(3, 10), "reference": Rate(5, 10)},   # ratio .6: decides
             "selective": {"edited": Rate(9, 10), "reference": Rate(0, 10)}}    # no reference: left out
    f, details = metrics.forget_term(rates, floor=0.1)
    assert f == pytest.approx(0.4)
    assert [s for s, d in details.items() if d["counted"]] == ["anchor", "paraphrase"]
    assert "below the floor" in details["selective"]["reason"]
    more = {"anchor": {"edited": Rate(8, 10), "reference": Rate(4, 10)}}        # edit shows it more: ratio 1
    assert metrics.forget_term(more, 0.1)[0] == 0.0


def test_a_rarely_rendered_concept_gives_no_credit() -> None:
    """The old absolute f gave a no-op edit f = .875 here; the relative one gives 0, or n/a below the floor."""
    same = {"paraphrase": {"edited": Rate(1, 8), "reference": Rate(1, 8)}}
    assert metrics.forget_term(same, 0.1)[0] == 0.0
    f, details = metrics.forget_term(same, 0.2)
    assert math.isnan(f) and not details["paraphrase"]["counted"]


def test_compound_forget_uses_the_same_floor() -> None:
    assert drop_term(Rate(1, 10), Rate(5, 10)) == pytest.approx(0.8)
    assert math.isnan(drop_term(Rate(0, 20), Rate(1, 20), floor=0.1))
    assert drop_term(Rate(0, 20), Rate(1, 20), floor=0.0) == 1.0


# -- Attack term ---------------------------------------------------------------------------------------------

def test_attack_without_scoreable_instance_makes_a_unknown() -> None:
    empty = AttackResult("ti", "red", Rate(0, 0), reference_asr=Rate(0, 0))
    strong = AttackResult("ring", "red", Rate(2, 10), reference_asr=Rate(9, 10))
    a, note = metrics.attack_term([empty, strong], "red")
    assert math.isnan(a) and "ti" in note and "a <= 0.800" in note
    assert math.isnan(metrics.attack_term([empty], "red")[0])
    assert metrics.attack_term([strong], "red")[0] == pytest.approx(0.8)
    assert math.isnan(metrics.harmonic_h(1.0, 1.0, a, 1.0))


def test_reference_check() -> None:
    def result(reference):
        return AttackResult("x", "red", Rate(1, 4), reference_asr=reference)

    assert result(None).reference_passed is None
    assert result(Rate(0, 0)).reference_passed is False
    assert result(Rate(1, 4)).reference_passed is False
    assert result(Rate(int(REFERENCE_MIN_ASR * 4), 4)).reference_passed is True
    row = result(Rate(1, 4)).to_dict()
    assert row["reference_passed"] is False and row["reference_min_asr"] == REFERENCE_MIN_ASR


# -- Retention per attribute --------------------------------------------------------------------------------

def test_attribute_rates_and_retention() -> None:
    names = [["object", "color"], ["object", "color", "style"], ["character", "background"]]
    ref = metrics.attribute_rates(names, [[True, True], [True, True, True], [True, True]])
    edited = metrics.attribute_rates(names, [[True, False], [True, True, False], [False, True]])
    assert ref["color"] == Rate(2, 2) and edited["color"] == Rate(1, 2) and edited["style"] == Rate(0, 1)
    retention = metrics.attribute_retention(edited, ref)
    assert set(retention) == {"object", "color", "style", "character", "background"}
    assert retention["object"]["ratio"] == 1.0 and retention["style"]["ratio"] == 0.0


# -- End to end on a tiny pipeline (stub judge) --------------------------------------------------------------

def test_unmeasurable_forgetting_is_reported_not_scored(pipe, tmp_path) -> None:
    """The tiny model never renders red: f and H are n/a, with a note in the report and a CLI line."""
    result = evaluate(pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL, out=tmp_path / "r")
    c = result.concept("red")
    assert math.isnan(c.terms["f"]) and math.isnan(c.h) and math.isnan(c.h_reference)
    assert not any(d["counted"] for d in c.forget.values())
    assert c.problems and "not measurable" in c.problems[0] and c.problems[0] in c.notes
    assert any(line.startswith("red: note: forget term f not measurable") for line in result.summary())
    assert "f=n/a" in result.summary()[0] and "H n/a" in result.summary()[0]
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    concept = data["concepts"][0]
    assert concept["terms"]["f"] is None and concept["h"] is None and concept["problems"]
    page = (tmp_path / "r" / "index.html").read_text()
    assert "forget term f not measurable" in page and "n/a" in page and "Forgetting per suite" in page


def test_attacks_with_empty_instance_sets_are_reported_not_scored(pipe, tmp_path) -> None:
    attacks = [AttackResult("ti", "blue", Rate(0, 0), reference_asr=Rate(0, 0)),
               AttackResult("ring", "blue", Rate(0, 0), reference_asr=Rate(3, 4))]
    result = evaluate(pipe, "blue", reference=pipe, judge=StubJudge(), attacks=attacks, settings=SMALL,
                      out=tmp_path / "r")
    c = result.concept("blue")
    assert math.isnan(c.terms["a"]) and math.isnan(c.h)
    assert any("attack term a not measurable" in p for p in c.problems)
    assert [row["reference_passed"] for row in c.attacks] == [False, True]
    assert any(line.startswith("blue: note: attack term a not measurable") for line in result.summary())
    page = (tmp_path / "r" / "index.html").read_text()
    assert "attack term a not measurable" in page and "Reference check failed" in page


def test_unrelated_retention_is_per_attribute_and_feeds_r_without_neighbours(pipe) -> None:
    edited = tiny_bert_pipeline(0)
    with torch.no_grad():
        edited.unet.conv_out.bias.add_(0.5)  # an edit that moves every image
    result = evaluate(edited, "blue", reference=pipe, judge=StubJudge(), settings=_settings(neighbour_k=0))
    c = result.concept("blue")
    attributes = c.unrelated["attributes"]
    assert set(attributes) == {"color", "background"}
    ratios = [v["ratio"] for v in attributes.values() if v["ratio"] == v["ratio"]]
    assert c.unrelated["min_ratio"] == min(ratios)
    assert c.terms["r"] == pytest.approx(min(1.0, min(ratios)))


class _ConstantJudge(StubJudge):
    """Calls every image red: agrees with the stub judge only where the stub also sees red."""

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        return [{"color": "red", "background": "black"} for _ in range(len(images))]


@register_judge("test-same-as-stub")
def _same() -> StubJudge:
    return StubJudge()


@register_judge("test-constant")
def _constant() -> StubJudge:
    return _ConstantJudge()


def test_second_judge_agreement_on_every_rendered_image(pipe) -> None:
    same = evaluate(pipe, "blue", reference=pipe, judge=StubJudge(),
                    settings=_settings(second_judge="test-same-as-stub"))
    agreement = same.judge["agreement"]
    assert agreement["attributes"] == ["color"] and agreement["second_judge"] == StubJudge().id
    n_reference = sum(s["images"] for s in same.concept("blue").suites.values())
    assert agreement["reference"]["color"] == Rate(n_reference, n_reference)
    assert 0 < agreement["edited"]["color"].denominator <= n_reference
    constant = evaluate(pipe, "blue", reference=pipe, judge=StubJudge(),
                        settings=_settings(second_judge="test-constant"))
    rate = constant.judge["agreement"]["reference"]["color"]
    assert rate.denominator == n_reference and rate.numerator < n_reference
    assert "agreement" not in evaluate(pipe, "blue", reference=pipe, judge=StubJudge(),
                                       settings=_settings(second_judge="no-such-judge")).judge
    assert "agreement" in json.dumps(constant.to_dict())


def test_metrics_json_records_provenance(pipe, tmp_path) -> None:
    result = evaluate(pipe, "blue", reference=pipe, judge=StubJudge(), settings=SMALL, out=tmp_path / "r")
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert data["provenance"]["commit"] and data["provenance"]["command"]
    assert data["model_hash"] == result.model_hash and data["judge"]["id"] == StubJudge().id
    assert data["settings"]["min_reference_rate"] == SMALL.min_reference_rate


def test_bad_floor_is_a_one_line_error() -> None:
    from erasurelab.errors import ErasureLabError

    with pytest.raises(ErasureLabError, match="min_reference_rate"):
        EvaluationSettings(min_reference_rate=1.5)


# -- The embedded model ----------------------------------------------------------------------------------

@needs_assets
@pytest.mark.slow
def test_unedited_model_scores_zero_on_every_test_concept(builtin_pipe) -> None:
    """Acceptance (issue 15): the unedited model evaluated as if edited gives f = 0 and H = 0."""
    tiny = EvaluationSettings(anchor_seeds=2, paraphrase_max=8, neighbour_k=1, neighbour_templates=1,
                              neighbour_seeds=1, unrelated_max=4, selective_max=8, judge_accuracy_n=0,
                              batch_size=64, examples=1, second_judge=None, steps=8)  # 8 of 20 sampler steps:
    # the claim is algebraic (same model on both sides), so the renders only need to show each concept
    result = evaluate(builtin_pipe, list(TEST_CONCEPTS), reference=builtin_pipe, judge="shapes", settings=tiny)
    assert [c.concept for c in result.concepts] == list(TEST_CONCEPTS)
    for c in result.concepts:
        assert any(d["counted"] for d in c.forget.values()), c.concept
        assert c.terms["f"] == 0.0 and c.h == 0.0, c.concept
        assert c.terms_reference["f"] == 0.0 and c.h_reference == 0.0, c.concept
