"""Combination and conditional ConceptSpecs (trust.md §3): names, anchors, errors, YAML, hashing."""

from __future__ import annotations

import dataclasses

import pytest

import erasurelab
from erasurelab.concepts import (
    ALONE_EVAL_TEMPLATES,
    ALONE_TRAIN_TEMPLATES,
    COMBINATION_EVAL_TEMPLATES,
    COMBINATION_TRAIN_TEMPLATES,
    CONDITIONAL_EVAL_TEMPLATES,
    CONDITIONAL_TRAIN_TEMPLATES,
    ConceptSpec,
    catalog,
    combine,
    compound_catalog,
    concept,
    mentions,
)
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.suites import normalise
from erasurelab.methods.finetune import forget_pairs
from erasurelab.world import vocab
from erasurelab.world.catalog import parse_compound
from erasurelab.world.compound import build_compound_suites

from conftest import yaml_error

#: sha256 of single-concept specs: they change only on purpose (striped: its guide became "solid", 2026-11-24).
SINGLE_HASHES = {
    "red": "36eadb33945a8638d6575455f57dccd6b4735c8607a704dd7d4ddab875b6aca2",
    "circle": "73b933a234cd7f2d713ddcbbc8fb2d4e7ed156ad26e21c1d1cd18c69a2f3116a",
    "striped": "c1fef14d7e74283e9f2091149ee39e5d73b88d570d69e7cdba9097b4c06a4a66",
    "black": "76d2a9c2d6d839d7894a06eab4c5a11bf7fd527e90cb4fec1d54b6f50d071264",
    "bobo": "91c897826a56bf963cebe60c12a1eaebfd2947affd431013597f0daf557fbd56",
}


# -- Backwards compatibility -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "digest"), sorted(SINGLE_HASHES.items()))
def test_single_concept_hashes_unchanged(name: str, digest: str) -> None:
    spec = concept(name)
    assert spec.kind == "single" and spec.parts == () and spec.context == ""
    assert spec.sha256() == digest
    assert not {"kind", "parts", "context"} & set(spec.to_dict())
    assert ConceptSpec.from_dict(spec.manifest_entry()) == spec


def test_old_manifest_entries_load_as_single() -> None:
    entry = concept("red").to_dict()
    assert ConceptSpec.from_dict(entry).kind == "single"


def test_catalog_of_single_labels_is_unchanged() -> None:
    assert catalog() == vocab.all_labels()
    assert catalog(compound=True) == vocab.all_labels() + compound_catalog()


# -- Names and aliases -------------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["red+circle", "red circle", "circle+red", "Red + Circle", "  red  circle "])
def test_combination_aliases(alias: str) -> None:
    spec = concept(alias)
    assert (spec.name, spec.kind, spec.parts, spec.context) == ("red+circle", "combination", ("red", "circle"), "")
    assert spec == concept("red+circle")


@pytest.mark.parametrize("alias", ["circle|white", "circle | white", "circle|white-background", "circle on white",
                                   "circle on a white background", "Circle|White background"])
def test_conditional_aliases(alias: str) -> None:
    spec = concept(alias)
    assert (spec.name, spec.kind, spec.parts, spec.context) == ("circle|white", "conditional", ("circle",), "white")


def test_top_level_api_and_parse() -> None:
    assert erasurelab.concept("red circle").kind == "combination"
    assert parse_compound("red") is None
    assert parse_compound("striped red circle") == ("combination", ("striped", "red", "circle"), "")
    assert parse_compound("moon on a black background") == ("conditional", ("moon",), "black")


def test_canonical_order_is_noun_phrase_order() -> None:
    assert concept("circle+red+striped").name == "striped+red+circle"
    assert concept("circle+red+striped").forget[0] == "a striped red circle"


@pytest.mark.parametrize("name", compound_catalog())
def test_compound_catalog_entries_build(name: str) -> None:
    spec = concept(name)
    assert spec.name == name and spec.is_compound and spec.forget and spec.retain
    assert spec.templates is None  # explicit anchors: no method rebuilds them from {c} templates
    assert spec.with_templates(("{c} thing",)) is spec


def test_catalog_has_two_of_each_kind() -> None:
    kinds = [concept(n).kind for n in compound_catalog()]
    assert kinds.count("combination") >= 2 and kinds.count("conditional") >= 2


# -- Anchors -----------------------------------------------------------------------------------------

def test_combination_anchors() -> None:
    spec = concept("red+circle")
    assert len(spec.forget) == 7 + 3  # 8 training templates, the {bg} one over three backgrounds
    assert "a red circle" in spec.forget and "a red circle on a gray background" in spec.forget
    assert all(mentions(a, "red circle") for a in spec.forget)
    assert "a red square" in spec.retain and "a blue circle" in spec.retain
    assert not any(mentions(a, "red circle") for a in spec.retain)
    assert len(spec.retain) == 2 * 7 * 8  # per part: 7 alternatives x 8 templates (one background each)
    assert spec.synonyms == ("red circle",)


def test_conditional_anchors() -> None:
    spec = concept("circle|white")
    assert spec.forget == tuple(f"{p} circle on a white background" for p in
                                ("a", "a photo of a", "an image of a", "a picture of a", "a drawing of a", "one"))
    assert "a circle on a black background" in spec.retain  # elsewhere
    assert "a photo of a circle" in spec.retain  # alone
    assert "a square on a white background" in spec.retain  # other concepts in the context
    assert len(spec.retain) == 2 * 6 + 5 + 7 * 6


def test_world_guides_keep_the_other_part() -> None:
    """trust.md §3's c_a: the prompt with the erased part swapped for a sibling, so guided edits keep the rest."""
    assert concept("red+circle").guide == "red square"
    assert concept("striped+red+circle").guide == "striped red square"
    assert concept("circle|white").guide == "square on a white background"
    pairs = dict(forget_pairs([concept("red+circle")]))
    assert pairs["a photo of a red circle"] == "a photo of a red square"
    pairs = dict(forget_pairs([concept("circle|white")]))
    assert pairs["a drawing of a circle on a white background"] == "a drawing of a square on a white background"


def test_character_conditional_uses_names_without_article() -> None:
    spec = concept("bobo|gray")
    assert "the character Bobo on a gray background" in spec.forget
    assert "a photo of Bobo on a gray background" in spec.forget
    assert not any("a Bobo" in a for a in spec.forget + spec.retain)


def test_articles() -> None:
    assert concept("orange+circle").forget[0] == "an orange circle"
    assert "an image of an orange circle" in concept("orange+circle").forget


def test_train_and_eval_templates_are_disjoint() -> None:
    assert not set(COMBINATION_TRAIN_TEMPLATES) & set(COMBINATION_EVAL_TEMPLATES)
    assert not set(CONDITIONAL_TRAIN_TEMPLATES) & set(CONDITIONAL_EVAL_TEMPLATES)
    assert not set(ALONE_TRAIN_TEMPLATES) & set(ALONE_EVAL_TEMPLATES)


@pytest.mark.parametrize("name", [*compound_catalog(), "striped+red+circle", "red+striped", "red|black",
                                  "striped|gray", "orange+moon", "kiki|white"])
def test_eval_prompts_never_equal_an_anchor(name: str) -> None:
    spec = concept(name)
    anchors = {normalise(a) for a in spec.forget + spec.retain}
    prompts = [p for s in build_compound_suites(spec).all() for p in s.prompts]
    assert prompts and not {normalise(p) for p in prompts} & anchors
    every_paraphrase = [p for a in vocab.ATTRIBUTES for c in vocab.concepts(a) for p in c.paraphrases]
    assert not any(mentions(a, p) for a in spec.forget + spec.retain for p in every_paraphrase)


def test_combine_keeps_part_anchors_of_a_combination() -> None:
    forget, retain = combine([concept("red+circle")])
    assert "a red square" in retain and "a red circle" in forget
    forget, retain = combine([concept("red+circle"), concept("red")])
    assert not any(mentions(r, "red") for r in retain)  # red itself is erased too: no red anchor is protected


# -- Errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "needle"), [
    ("red+", "at least two"),
    ("red+red", "repeats the part"),
    ("red+blue", "both colors"),
    ("red+circel", "did you mean: circle"),
    ("circle+white", "conditional syntax"),
    ("bobo+red", "fixed design"),
    ("circle|", "empty context"),
    ("circle on", "empty context"),
    ("circle|whte", "did you mean: white"),
    ("circle|blue", "context (background)"),
    ("white|black", "cannot be a conditioned concept"),
    ("|white", "names no concept"),
])
def test_bad_compound_names_are_one_line_errors(name: str, needle: str) -> None:
    with pytest.raises(ErasureLabError) as info:
        concept(name)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"kind": "combination", "parts": ("red",)}, "at least two parts"),
    ({"kind": "combination", "parts": ("red", "Red")}, "repeats"),
    ({"kind": "combination", "parts": ("red", "circle"), "context": "white"}, "takes no context"),
    ({"kind": "conditional", "parts": ("circle",)}, "empty context"),
    ({"kind": "conditional", "parts": ("circle",), "context": "  "}, "empty context"),
    ({"kind": "conditional", "parts": ("a", "b"), "context": "x"}, "exactly one"),
    ({"kind": "single", "parts": ("a", "b")}, "need kind"),
    ({"kind": "combo"}, "did you mean: combination"),
    ({"kind": "combination", "parts": ("red", "")}, "non-empty"),
])
def test_spec_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(ErasureLabError) as info:
        ConceptSpec("x", **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


# -- Hashing and round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("name", compound_catalog())
def test_compound_round_trip_and_hash(name: str) -> None:
    spec = concept(name)
    entry = spec.manifest_entry()
    assert entry["kind"] == spec.kind and entry["parts"] == list(spec.parts)
    assert ConceptSpec.from_dict(entry) == spec
    assert ConceptSpec.from_dict(entry).sha256() == spec.sha256() == concept(name).sha256()
    assert dataclasses.replace(spec, guide="g").sha256() != spec.sha256()


def test_kinds_change_the_hash() -> None:
    a = ConceptSpec("x", forget=("a x",), parts=("p", "q"), kind="combination")
    b = dataclasses.replace(a, parts=("p", "r"))
    assert a.sha256() != b.sha256()


# -- YAML --------------------------------------------------------------------------------------------

def test_yaml_combination(tmp_path) -> None:
    path = tmp_path / "child_beer.yaml"
    path.write_text("name: child_beer\nkind: combination\nparts: [child, beer]\n"
                    "templates: ['a {A} drinking {B}', 'a photo of a {A} drinking {B}']\n"
                    "neighbours: {child: [adult], beer: [juice]}\nretain: ['a bar']\n", encoding="utf-8")
    spec = concept(path)
    assert (spec.kind, spec.parts, spec.context) == ("combination", ("child", "beer"), "")
    assert spec.forget == ("a child drinking beer", "a photo of a child drinking beer")
    assert "an adult drinking beer" in spec.retain and "a child drinking juice" in spec.retain
    assert "a photo of child" in spec.retain and "a photo of beer" in spec.retain  # each part alone
    assert spec.retain[-1] == "a bar"
    assert ConceptSpec.from_dict(spec.to_dict()) == spec
    assert spec.guide == "child juice"  # the last part swapped for its first alternative
    assert dict(forget_pairs([spec]))["a photo of a child drinking beer"] == "a photo of a child drinking juice"
    path.write_text(path.read_text(encoding="utf-8") + "guide: ''\n", encoding="utf-8")
    assert concept(path).guide == ""  # an explicit empty guide stays unconditional


def test_yaml_conditional_default_templates(tmp_path) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text("name: cat_on_table\nkind: conditional\nparts: [cat]\ncontext: on a table\n"
                    "neighbours: {cat: [dog], context: [on a chair]}\n", encoding="utf-8")
    spec = concept(path)
    assert spec.context == "on a table" and spec.forget[0] == "a cat on a table"
    assert len(spec.forget) == len(CONDITIONAL_TRAIN_TEMPLATES)
    assert "a dog on a table" in spec.retain and "a cat on a chair" in spec.retain
    assert "a photo of a cat" in spec.retain
    assert not set(spec.forget) & set(spec.retain)
    assert spec.guide == "dog on a table"


def test_yaml_combination_default_templates_skip_backgrounds(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: apple_pie\nkind: combination\nparts: [apple, pie]\n", encoding="utf-8")
    spec = concept(path)
    assert spec.forget[0] == "an apple pie" and len(spec.forget) == len(COMBINATION_TRAIN_TEMPLATES) - 1


@pytest.mark.parametrize(("text", "needle"), [
    ("name: x\nkind: combination\nparts: [a]\n", "at least two parts"),
    ("name: x\nkind: combination\nparts: [a, a]\n", "repeats"),
    ("name: x\nkind: conditional\nparts: [cat]\n", "empty context"),
    ("name: x\nkind: conditional\nparts: [cat, dog]\ncontext: on a mat\n", "exactly one"),
    ("name: x\nkind: combo\nparts: [a, b]\n", "did you mean: combination"),
    ("name: x\nwords: [x]\nparts: [a, b]\n", "need `kind"),
    ("name: x\nkind: combination\nparts: [a, b]\nwords: [x]\n", "not `words`"),
    ("name: x\nkind: combination\nparts: [a, b]\ntemplates: ['a {A}']\n", "whole target"),
    ("name: x\nkind: combination\nparts: [a, b]\ntemplates: ['a {A} {Q}']\n", "unknown slot"),
    ("name: x\nkind: conditional\nparts: [a]\ncontext: on b\ntemplates: ['a {A}']\n", "whole target"),
    ("name: x\nkind: combination\nparts: [a, b]\nneighbours: [c]\n", "maps a part"),
    ("name: x\nkind: combination\nparts: [a, b]\nneighbours: {c: [d]}\n", "not one of"),
    ("name: x\nkind: combination\nparts: [a, b]\ncontext: on c\n", "takes no `context`"),
])
def test_yaml_compound_errors_are_one_line(tmp_path, text: str, needle: str) -> None:
    message, path = yaml_error(tmp_path, text)
    assert needle in message and path in message
