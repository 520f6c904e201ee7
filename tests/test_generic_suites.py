"""Suites for any ConceptSpec on any model (a tiny SD1.5 pipeline, a CLIP judge's label space)."""

from __future__ import annotations

import pytest

from erasurelab.concepts.library import library_spec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.generic_suites import build_generic_suites
from erasurelab.evaluation.types import EvaluationSettings
from tiny_pipelines import tiny_sd15_pipeline

SETTINGS = EvaluationSettings(anchor_seeds=2, paraphrase_max=12, neighbour_k=3, neighbour_templates=2,
                              neighbour_seeds=2, unrelated_max=16, selective_max=8)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd15_pipeline()


def judge_space(spec):
    known = {spec.name, *spec.neighbours[:4]}
    return known, lambda c: spec.category


def test_every_suite_comes_from_the_spec(pipe):
    spec = library_spec("van_gogh")
    known, attribute_of = judge_space(spec)
    suites = build_generic_suites(spec, pipe, known, attribute_of, SETTINGS)
    assert suites.anchor.prompts == spec.forget and suites.anchor.n_rep == 2
    assert set(suites.paraphrase.prompts) <= set(spec.paraphrases) and len(suites.paraphrase) >= 8
    assert {n.name for n in suites.neighbour_info} <= set(spec.neighbours[:4]) and len(suites.neighbour_info) == 3
    assert len(suites.neighbours.prompts) == 3 * 2 and set(suites.neighbours.groups) == {
        n.name for n in suites.neighbour_info}
    assert len(suites.unrelated.prompts) == 16 and suites.unrelated.n_rep == 2
    assert not any("gogh" in p.lower() for p in suites.unrelated.prompts)
    assert all(p.endswith("in the style of Van Gogh") for p in suites.selective.prompts)
    assert all(labels == {"style": "van_gogh"} for labels in suites.selective.labels)
    again = build_generic_suites(spec, pipe, known, attribute_of, SETTINGS)
    assert [s.sha256 for s in again.all()] == [s.sha256 for s in suites.all()]


def test_judge_must_see_the_concept_and_leakage_is_refused(pipe):
    spec = library_spec("snoopy")
    with pytest.raises(ErasureLabError, match="cannot see"):
        build_generic_suites(spec, pipe, {"Garfield"}, lambda c: "character", SETTINGS)
    known, attribute_of = judge_space(spec)
    with pytest.raises(ErasureLabError, match="leakage"):
        build_generic_suites(spec, pipe, known, attribute_of, SETTINGS, anchors=[spec.paraphrases[0]])
