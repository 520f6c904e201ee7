"""ConceptSpec, the world catalog and concept YAML files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from erasurelab.concepts import (
    FORGET_TEMPLATES,
    STYLE_FORGET_TEMPLATES,
    ConceptSpec,
    catalog,
    combine,
    concept,
    mentions,
)
from erasurelab.errors import ErasureLabError
from erasurelab.world import captions, vocab

from conftest import yaml_error

torch.set_num_threads(1)


def test_world_concept_red() -> None:
    spec = concept("red")
    assert spec.category == "color" and spec.guide == ""
    assert spec.synonyms == ("red", "crimson")
    assert len(spec.forget) == len(FORGET_TEMPLATES) * 2
    assert all(mentions(a, "red") or mentions(a, "crimson") for a in spec.forget)
    assert len(spec.retain) == 6 * 7  # six templates x the seven other colors
    assert "a photo of blue" in spec.retain
    assert spec.paraphrases == vocab.lookup("red")[1].paraphrases


def test_style_character_and_background_specs() -> None:
    striped = concept("striped")
    assert striped.guide == "solid" and striped.templates == STYLE_FORGET_TEMPLATES  # the world's plain style
    assert concept("solid").guide == ""
    assert "in the style of striped" in striped.forget
    bobo = concept("bobo")
    assert "a photo of Bobo" in bobo.forget
    assert any("yellow circle" in a for a in bobo.retain)  # the body must survive erasing the character
    assert len(concept("black").retain) == 6 * 2


@pytest.mark.parametrize("label", catalog())
def test_anchors_never_use_heldout_phrases_or_evaluation_prompts(label: str) -> None:
    spec = concept(label)
    every_paraphrase = [p for a in vocab.ATTRIBUTES for c in vocab.concepts(a) for p in c.paraphrases]
    for anchor in spec.forget + spec.retain:
        assert not any(mentions(anchor, p) for p in every_paraphrase), anchor
    evaluation = {p.prompt for p in captions.canonical_suite()}
    evaluation |= {p.prompt for lab in catalog() for p in captions.paraphrase_prompts(lab)}
    assert not evaluation & set(spec.forget + spec.retain)


def test_unknown_concept_one_line_with_suggestion() -> None:
    with pytest.raises(ErasureLabError) as info:
        concept("circel")
    assert "did you mean: circle" in str(info.value) and "\n" not in str(info.value)


def test_hash_is_stable_and_content_addressed() -> None:
    a, b = concept("red"), concept("red")
    assert a.sha256() == b.sha256() and len(a.sha256()) == 64
    assert dataclasses.replace(a, guide="x").sha256() != a.sha256()
    assert ConceptSpec.from_dict(a.manifest_entry()) == a


def test_combine_drops_retain_anchors_naming_a_target() -> None:
    forget, retain = combine([concept("red"), concept("blue")])
    assert "a photo of red" in forget and "a photo of blue" in forget
    assert not any(mentions(r, w) for r in retain for w in ("red", "crimson", "blue", "azure"))
    assert "a photo of green" in retain


def test_with_templates_rebuilds_only_templated_anchors() -> None:
    spec = concept("red").with_templates(("{c} thing",))
    assert spec.forget == ("red thing", "crimson thing")
    explicit = ConceptSpec("x", forget=("a photo of x",))
    assert explicit.with_templates(("{c} thing",)) is explicit


def test_leaking_anchor_is_refused() -> None:
    with pytest.raises(ErasureLabError, match="held-out paraphrase"):
        ConceptSpec("red", "color", forget=("a scarlet disk",), paraphrases=("scarlet",))


def test_bad_category() -> None:
    with pytest.raises(ErasureLabError, match="did you mean: style"):
        ConceptSpec("x", "styel")


def test_yaml_spec_full(tmp_path) -> None:
    path = tmp_path / "van_gogh.yaml"
    path.write_text(
        "name: van_gogh\ncategory: style\nwords: [Van Gogh]\nneighbours: [Monet, Picasso]\n"
        "anchors: ['Starry Night by Van Gogh']\nparaphrases: ['the painter of Sunflowers']\n", encoding="utf-8")
    spec = concept(path)
    assert spec.category == "style" and spec.guide == "art"
    assert "in the style of Van Gogh" in spec.forget and "Starry Night by Van Gogh" in spec.forget
    assert "in the style of Monet" in spec.retain
    assert spec.paraphrases == ("the painter of Sunflowers",)
    assert concept(str(path)) == spec


def test_yaml_spec_templates_and_explicit_retain(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("name: cat\nwords: [cat, kitten]\ntemplates: ['a {c}']\nretain: ['a dog']\nguide: animal\n",
                    encoding="utf-8")
    spec = ConceptSpec.from_yaml(path)
    assert spec.forget == ("a cat", "a kitten") and spec.retain == ("a dog",) and spec.guide == "animal"
    assert spec.category == "custom"


@pytest.mark.parametrize(("text", "needle"), [
    ("name: [unclosed\n", "malformed concept YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("name: x\nwords: [x]\nneighbors: [y]\n", "did you mean: neighbours"),
    ("words: [x]\n", "`name`"),
    ("name: x\n", "give `words`"),
    ("name: x\nwords: [x]\ntemplates: ['no placeholder']\n", "placeholder"),
    ("name: x\nwords: {a: 1}\n", "list of strings"),
    ("name: red\nwords: [red]\nparaphrases: [red]\n", "held-out paraphrase"),
])
def test_yaml_errors_are_one_line(tmp_path, text: str, needle: str) -> None:
    message, _ = yaml_error(tmp_path, text)
    assert needle in message


def test_missing_yaml() -> None:
    with pytest.raises(ErasureLabError, match="not found"):
        concept("does/not/exist.yaml")


# --- dev and test concepts ------------------------------------------------------------------


def test_dev_and_test_concepts_partition_the_world_labels() -> None:
    from erasurelab.world.catalog import DEV_CONCEPTS, TEST_CONCEPTS

    assert not set(DEV_CONCEPTS) & set(TEST_CONCEPTS)
    assert set(DEV_CONCEPTS) | set(TEST_CONCEPTS) == set(vocab.all_labels())
    assert DEV_CONCEPTS[:4] == ("red", "circle", "striped", "bobo")
    per_category = {a: [c for c in TEST_CONCEPTS if vocab.lookup(c)[0] == a] for a in
                    ("color", "object", "style", "character")}
    assert all(len(labels) >= 2 for labels in per_category.values()), per_category


@pytest.mark.parametrize(("name", "split"), [
    ("red", "dev"), ("Circle", "dev"), ("green", "test"), ("kiki", "test"), ("white", "dev"),
    ("red+circle", "dev"), ("red circle", "dev"), ("green+circle", "test"), ("striped+red+triangle", "test"),
    ("circle|white", "dev"), ("diamond|white", "test"), ("bobo on a gray background", "dev"),
    ("concept.yaml", "other"), ("unicorn", "other"), ("red+unicorn", "other"),
])
def test_concept_split(name: str, split: str) -> None:
    from erasurelab.world.catalog import concept_split

    assert concept_split(name) == split
