"""Compound evaluation (trust.md §3): suites, target decisions and metric arithmetic, no model needed."""

from __future__ import annotations

import math

import pytest
import torch

from erasurelab.concepts import ConceptSpec, concept, mentions
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.compound import (
    COMPOUND_SUITE_VERSION,
    CompoundSettings,
    check_compound_leakage,
    compound_metrics,
    context_present,
    evaluate_compound,
    rotated,
    target_present,
)
from erasurelab.evaluation.suites import load_suite, save_suite
from erasurelab.evaluation.types import EvaluationSettings
from erasurelab.world import vocab
from erasurelab.world.compound import build_compound_suites
from stub_judge import StubJudge

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def red_circle():
    return build_compound_suites(concept("red+circle"))


@pytest.fixture(scope="module")
def circle_white():
    return build_compound_suites(concept("circle|white"))


# -- Suites ------------------------------------------------------------------------------------------

def test_suites_are_deterministic_and_versioned(red_circle) -> None:
    again = build_compound_suites(concept("red circle"))
    assert [s.sha256 for s in again.all()] == [s.sha256 for s in red_circle.all()]
    assert all(s.version == COMPOUND_SUITE_VERSION and s.payload()["version"] == COMPOUND_SUITE_VERSION
               for s in red_circle.all())
    reseeded = build_compound_suites(concept("red+circle"), settings=CompoundSettings(base_seed=2))
    assert all(a.sha256 != b.sha256 for a, b in zip(reseeded.all(), red_circle.all(), strict=True))
    assert CompoundSettings.from_evaluation(EvaluationSettings(base_seed=7)).base_seed == 7


def test_suite_files_round_trip(tmp_path, red_circle) -> None:
    path = save_suite(red_circle.forget, tmp_path / "f.json")
    assert load_suite(path).sha256 == red_circle.forget.sha256


def test_combination_suites_content(red_circle) -> None:
    assert [s.name for s in red_circle.all()] == ["F_ev", "R_A", "R_B", "R_U"]
    sizes = {s.name: (len(s.prompts), s.n_rep) for s in red_circle.all()}
    assert sizes == {"F_ev": (10, 8), "R_A": (40, 8), "R_B": (40, 8), "R_U": (40, 8)}
    assert "a circle coloured red" in red_circle.forget.prompts
    assert all(lab["color"] == "red" and lab["object"] == "circle" for lab in red_circle.forget.labels)
    for prompt, lab in zip(red_circle.suite("R_A").prompts, red_circle.suite("R_A").labels, strict=True):
        assert lab["color"] == "red" and lab["object"] != "circle" and mentions(prompt, lab["object"])
    for lab in red_circle.suite("R_B").labels:
        assert lab["object"] == "circle" and lab["color"] != "red"
    for lab in red_circle.suite("R_U").labels:
        assert lab["object"] != "circle" and lab["color"] != "red"
    assert {lab["object"] for lab in red_circle.suite("R_A").labels} == set(vocab.classes("object")) - {"circle"}
    assert red_circle.measure == {"F_ev": ("red", "circle"), "R_A": ("red",), "R_B": ("circle",), "R_U": ()}


def test_conditional_suites_content(circle_white) -> None:
    assert [s.name for s in circle_white.all()] == ["F_ev", "R_ctx", "R_A", "R_B"]
    sizes = {s.name: len(s.prompts) for s in circle_white.all()}
    assert sizes == {"F_ev": 6, "R_ctx": 12, "R_A": 3, "R_B": 40}
    assert all(lab == {"object": "circle", "background": "white"} for lab in circle_white.forget.labels)
    assert {lab["background"] for lab in circle_white.suite("R_ctx").labels} == {"black", "gray"}
    assert circle_white.suite("R_A").prompts == ("a circle", "a small circle", "a rendering of a circle")
    assert all(lab["object"] != "circle" and lab["background"] == "white" for lab in circle_white.suite("R_B").labels)


def test_rotation_covers_templates_and_variants() -> None:
    grid = [[(f"v{v}t{t}", {}) for t in range(4)] for v in range(3)]
    first = [p for p, _ in rotated(grid, 4)]
    assert first == ["v0t0", "v1t1", "v2t2", "v0t3"]
    assert len({p for p, _ in rotated(grid, 100)}) == 12


def test_leakage_and_refusals(red_circle) -> None:
    with pytest.raises(ErasureLabError, match="evaluation leakage") as info:
        check_compound_leakage(red_circle, ["A circle coloured red."])
    assert "\n" not in str(info.value)
    with pytest.raises(ErasureLabError, match="single concept"):
        build_compound_suites(concept("red"))
    yaml_like = ConceptSpec("child_beer", forget=("a child drinking beer",), kind="combination",
                            parts=("child", "beer"))
    with pytest.raises(ErasureLabError, match="embedded-world labels"):
        build_compound_suites(yaml_like)
    with pytest.raises(ErasureLabError, match="cannot detect circle"):
        build_compound_suites(concept("red+circle"), judge_concepts=StubJudge().concepts())
    with pytest.raises(ErasureLabError, match="must be positive"):
        CompoundSettings(seeds=0)


# -- Target decisions --------------------------------------------------------------------------------

def test_target_present_combination() -> None:
    spec = concept("red+circle")
    assert target_present(spec, {"color": "red", "object": "circle", "style": "solid"})  # judge.predict form
    assert not target_present(spec, {"color": "red", "object": "square"})
    assert not target_present(spec, {"color": "blue", "object": "circle"})
    assert target_present(spec, {"red": True, "circle": True})  # concept -> flag form
    assert not target_present(spec, {"red": True, "circle": False})
    assert not target_present(spec, {"red": True})


def test_target_present_conditional() -> None:
    spec = concept("circle|white")
    on_black = {"object": "circle", "background": "black"}
    assert target_present(spec, on_black) and not context_present(spec, on_black)
    assert context_present(spec, {"object": "square", "background": "white"})
    assert not target_present(spec, {"object": "square", "background": "white"})
    with pytest.raises(ErasureLabError, match="no context"):
        context_present(concept("red+circle"), on_black)


# -- Metrics -----------------------------------------------------------------------------------------

SMALL = CompoundSettings(seeds=2, retain_max=4)


def _perfect(suites):
    """Every image shows exactly its prompt's labels (judge.predict form)."""
    return {s.name: [dict(s.labels[p]) for p, _ in s.indices()] for s in suites.all()}


def test_combination_metrics_arithmetic() -> None:
    spec = concept("red+circle")
    suites = build_compound_suites(spec, settings=SMALL)
    reference = _perfect(suites)
    edited = _perfect(suites)
    n_forget = len(suites.forget)
    assert n_forget == 20
    # Half the F_ev images lose the circle (red square instead): CR 10/20 against 20/20.
    edited["F_ev"] = [dict(o, object="square") if i % 2 else o for i, o in enumerate(edited["F_ev"])]
    # R_A (red kept): 2 of 8 images lose red.
    edited["R_A"] = [dict(o, color="blue") if i < 2 else o for i, o in enumerate(edited["R_A"])]
    result = compound_metrics(spec, suites, reference, edited)
    assert (result.forget["reference"].numerator, result.forget["reference"].denominator) == (20, 20)
    assert (result.forget["edited"].numerator, result.forget["edited"].denominator) == (10, 20)
    assert result.forget_term == pytest.approx(0.5)
    assert result.forget_parts["circle"]["edited"].numerator == 10
    assert result.forget_parts["red"]["edited"].numerator == 20
    rho = {r.name: r.rho for r in result.retention}
    assert rho == {"R_A": pytest.approx(0.75), "R_B": 1.0, "R_U": 1.0}
    assert [r.in_score for r in result.retention] == [True, True, False]
    assert result.retention_term == pytest.approx(0.875)
    assert result.score == pytest.approx(2 * 0.5 * 0.875 / 1.375)
    assert result.terms() == {"f": pytest.approx(0.5), "r": pytest.approx(0.875)}
    data = result.to_dict()
    assert data["forget"]["edited"] == {"numerator": 10, "denominator": 20, "value": 0.5}
    assert data["suites"]["F_ev"]["sha256"] == suites.forget.sha256


def test_conditional_metrics_arithmetic() -> None:
    spec = concept("circle|white")
    suites = build_compound_suites(spec, settings=SMALL)
    reference, edited = _perfect(suites), _perfect(suites)
    assert len(suites.forget) == 12 and len(suites.suite("R_A")) == 6
    # On white the circle is gone from all but 2 of 12 images; the white background stays.
    edited["F_ev"] = [dict(o, object="moon") if i >= 2 else o for i, o in enumerate(edited["F_ev"])]
    # The circle alone survives on 4 of 6 images.
    edited["R_A"] = [dict(o, object="star") if i < 2 else o for i, o in enumerate(edited["R_A"])]
    result = compound_metrics(spec, suites, reference, edited)
    assert result.forget_term == pytest.approx(1 - 2 / 12)
    rho = {r.name: r.rho for r in result.retention}
    assert rho == {"context on F_ev": 1.0, "R_ctx": 1.0, "R_A": pytest.approx(4 / 6), "R_B": 1.0,
                   "R_B others": 1.0}
    assert result.retention_term == pytest.approx((3 + 4 / 6) / 4)
    assert result.score == pytest.approx((1 - 2 / 12 + (3 + 4 / 6) / 4) / 2)


def test_rho_is_capped_and_missing_reference_is_nan() -> None:
    spec = concept("red+circle")
    suites = build_compound_suites(spec, settings=SMALL)
    reference, edited = _perfect(suites), _perfect(suites)
    reference["F_ev"] = [dict(o, color="blue") for o in reference["F_ev"]]  # the reference never shows it
    reference["R_A"] = [dict(o, color="blue") if i else o for i, o in enumerate(reference["R_A"])]
    result = compound_metrics(spec, suites, reference, edited)
    assert math.isnan(result.forget_term) and math.isnan(result.score)
    assert any("cannot be measured" in n for n in result.notes)
    assert {r.name: r.rho for r in result.retention}["R_A"] == 1.0  # 8/8 edited vs 1/8 reference: capped
    assert result.to_dict()["forget_term"] is None


def test_observation_count_must_match() -> None:
    spec = concept("red+circle")
    suites = build_compound_suites(spec, settings=SMALL)
    reference = _perfect(suites)
    short = dict(reference, R_B=reference["R_B"][:-1])
    with pytest.raises(ErasureLabError, match="R_B"):
        compound_metrics(spec, suites, reference, short)
    with pytest.raises(ErasureLabError, match="lack the R_U"):
        compound_metrics(spec, suites, reference, {k: v for k, v in reference.items() if k != "R_U"})


# -- Judge hook --------------------------------------------------------------------------------------

def _image(color: str | None, background: str) -> torch.Tensor:
    """A 32x32 render the stub judge reads: the color in the centre, the background at the border."""
    bg = vocab.lookup(background)[1].rgb
    image = torch.tensor(bg, dtype=torch.float32)[:, None, None].expand(3, 32, 32).clone()
    if color is not None:
        image[:, 8:24, 8:24] = torch.tensor(vocab.lookup(color)[1].rgb)[:, None, None]
    return image


def _render(suites, erase: bool) -> dict[str, torch.Tensor]:
    out = {}
    for suite in suites.all():
        images = []
        for p, _ in suite.indices():
            labels = suite.labels[p]
            background = labels.get("background", "gray")
            color = labels["color"]
            if erase and suite.name == "F_ev":
                color = "blue"  # red is gone on white; the background stays
            images.append(_image(color, background))
        out[suite.name] = torch.stack(images)
    return out


def test_evaluate_compound_with_a_stub_judge() -> None:
    judge = StubJudge()
    spec = concept("red|white")
    suites = build_compound_suites(spec, judge.concepts(), SMALL)
    result = evaluate_compound(spec, suites, judge, _render(suites, False), _render(suites, True))
    assert result.forget["reference"].value == 1.0 and result.forget["edited"].value == 0.0
    assert result.forget_term == 1.0 and result.retention_term == 1.0 and result.score == 1.0
    identity = evaluate_compound(spec, suites, judge, _render(suites, False), _render(suites, False))
    assert identity.forget_term == 0.0 and identity.retention_term == 1.0
