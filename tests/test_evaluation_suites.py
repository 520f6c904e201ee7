"""Prompt suites (evaluation.md §3, §5, §6): seed rule, hashes and files, leakage, world suite contents."""

from __future__ import annotations

import json

import pytest
import torch

from erasurelab.concepts import concept, mentions
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.suites import (
    Suite,
    check_leakage,
    load_suite,
    method_anchors,
    save_suite,
)
from erasurelab.evaluation.types import EvaluationSettings
from erasurelab.world import vocab
from erasurelab.world.suites import build_suites, rank_neighbours
from tiny_bert_pipeline import tiny_bert_pipeline

torch.set_num_threads(1)

WORLD = set(vocab.all_labels())


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


@pytest.fixture(scope="module")
def red_suites(pipe):
    return build_suites(concept("red"), pipe, WORLD)


# -- Seed rule, hashes, files ---------------------------------------------------------------------------

def test_seed_rule() -> None:
    suite = Suite("anchor", "red", ("a", "b", "c"), 4, base_seed=1)
    assert [suite.seed(p, r) for p in range(3) for r in range(4)] == list(range(1, 13))
    prompts, seeds = suite.requests()
    assert prompts == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert seeds == list(range(1, 13))


def test_unrelated_seed_sets_are_disjoint(red_suites) -> None:
    unrelated = red_suites.unrelated
    _, a = unrelated.requests([0])
    _, b = unrelated.requests([1])
    assert unrelated.n_rep == 2 and len(a) == len(b) == len(unrelated.prompts)
    assert not set(a) & set(b)


def test_hash_is_stable_and_covers_prompts(pipe, red_suites) -> None:
    again = build_suites(concept("red"), pipe, WORLD)
    assert [s.sha256 for s in again.all()] == [s.sha256 for s in red_suites.all()]
    anchor = red_suites.anchor
    changed = Suite(anchor.name, anchor.concept, (*anchor.prompts[:-1], "a photo of a fire truck"), anchor.n_rep,
                    anchor.labels)
    assert changed.sha256 != anchor.sha256
    reseeded = Suite(anchor.name, anchor.concept, anchor.prompts, anchor.n_rep, anchor.labels, base_seed=2)
    assert reseeded.sha256 != anchor.sha256


def test_suite_file_round_trip_and_tamper_detection(tmp_path, red_suites) -> None:
    path = save_suite(red_suites.selective, tmp_path / "selective.json")
    loaded = load_suite(path)
    assert loaded.sha256 == red_suites.selective.sha256
    assert loaded.items == red_suites.selective.items
    data = json.loads(path.read_text())
    data["prompts"][0] = data["prompts"][0] + " on fire"
    path.write_text(json.dumps(data))
    with pytest.raises(ErasureLabError, match="fails its sha256") as info:
        load_suite(path)
    assert "\n" not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ErasureLabError, match="unreadable suite"):
        load_suite(path)


# -- Leakage ----------------------------------------------------------------------------------------------

def test_leakage_check_rejects_overlapping_suites(red_suites) -> None:
    check_leakage(red_suites.all(), method_anchors(concept("red")))  # the world suites never leak
    for suite in (red_suites.paraphrase, red_suites.neighbours, red_suites.selective):
        leaked = ["a photo of red", suite.prompts[0].upper() + "  "]  # case and spacing do not hide it
        with pytest.raises(ErasureLabError, match="leakage") as info:
            check_leakage(red_suites.all(), leaked)
        assert "\n" not in str(info.value)


def test_anchor_suite_is_not_checked_against_itself(red_suites) -> None:
    check_leakage([red_suites.anchor], red_suites.anchor.prompts)


def test_manifest_anchors_count_for_leakage(red_suites) -> None:
    manifest = [{"name": "red", "forget": ["a photo of red"], "retain": [red_suites.paraphrase.prompts[3]]}]
    with pytest.raises(ErasureLabError, match="paraphrase"):
        check_leakage(red_suites.all(), method_anchors(concept("red"), manifest))


# -- Contents ------------------------------------------------------------------------------------------------

def test_anchor_suite_is_the_forget_anchors_times_ten_seeds(red_suites) -> None:
    spec = concept("red")
    assert red_suites.anchor.prompts == spec.forget
    assert red_suites.anchor.n_rep == 10


def test_paraphrase_suite_uses_only_held_out_words(red_suites) -> None:
    para = red_suites.paraphrase
    assert 0 < len(para.prompts) <= 200 and para.n_rep == 1
    for prompt, labels in zip(para.prompts, para.labels, strict=True):
        assert not any(mentions(prompt, w) for w in concept("red").target_words)
        assert labels["color"] == "red"


def test_neighbours_are_ranked_same_attribute_concepts(pipe, red_suites) -> None:
    info = red_suites.neighbour_info
    names = [n.name for n in info]
    assert "red" not in names and set(names) <= set(vocab.classes("color"))
    assert len(names) == min(10, len(vocab.classes("color")) - 1)
    cosines = [n.cosine for n in info]
    assert cosines == sorted(cosines, reverse=True)
    suite = red_suites.neighbours
    assert suite.n_rep == 4 and len(suite.prompts) == 5 * len(names)
    for prompt, group in zip(suite.prompts, suite.groups, strict=True):
        assert mentions(prompt, group)
        assert not mentions(prompt, "red") and not mentions(prompt, "crimson")
    top3 = rank_neighbours(pipe, concept("red"), WORLD, 3)
    assert [n.name for n in top3] == names[:3]


def test_neighbours_only_include_judge_detectable_concepts(pipe) -> None:
    known = {"red", "blue", "green"}
    assert {n.name for n in rank_neighbours(pipe, concept("red"), known, 10)} == {"blue", "green"}


def test_character_neighbours_include_the_body(pipe) -> None:
    names = [n.name for n in rank_neighbours(pipe, concept("bobo"), WORLD, 10)]
    assert names[-1] == "yellow circle"
    assert set(names[:-1]) == {"kiki", "zuzu"}


def test_unrelated_suite_never_shows_the_target(red_suites) -> None:
    unrelated = red_suites.unrelated
    assert 0 < len(unrelated.prompts) <= 256
    for prompt, labels in zip(unrelated.prompts, unrelated.labels, strict=True):
        assert "red" not in labels.values() and not mentions(prompt, "red")


def test_selective_suite_lists_other_detectable_items(red_suites) -> None:
    selective = red_suites.selective
    assert 0 < len(selective.prompts) <= 100
    for prompt, items in zip(selective.prompts, selective.items, strict=True):
        assert mentions(prompt, "red")
        assert items and "red" not in items and set(items) <= WORLD
        assert all(mentions(prompt, item) for item in items)


@pytest.mark.parametrize("name", ["circle", "striped", "white", "kiki"])
def test_every_kind_of_world_concept_has_all_suites(pipe, name: str) -> None:
    suites = build_suites(concept(name), pipe, WORLD)
    assert all(len(s.prompts) > 0 for s in suites.all())
    check_leakage(suites.all(), method_anchors(concept(name)))


def test_empty_suite_is_a_one_line_error(pipe) -> None:
    with pytest.raises(ErasureLabError, match=r"paraphrase suite .* is empty") as info:
        build_suites(concept("red"), pipe, WORLD, EvaluationSettings(paraphrase_max=0))
    assert "\n" not in str(info.value)
    with pytest.raises(ErasureLabError, match="selective suite"):
        build_suites(concept("red"), pipe, set(vocab.classes("color")))  # nothing else is detectable


def test_concepts_outside_the_world_have_no_suites(pipe) -> None:
    from erasurelab.concepts import ConceptSpec

    spec = ConceptSpec.from_words("van_gogh", "style", ["Van Gogh"])
    with pytest.raises(ErasureLabError, match="embedded world"):
        build_suites(spec, pipe, WORLD | {"van_gogh"})


def test_undetectable_target_is_refused(pipe) -> None:
    with pytest.raises(ErasureLabError, match="not detectable"):
        build_suites(concept("red"), pipe, {"blue"})
