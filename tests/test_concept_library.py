"""The shipped concept library: every spec loads, keeps anchors and held-out paraphrases apart, and the
generic unrelated prompts name none of the library's targets."""

from __future__ import annotations

import pytest

from erasurelab.concepts.library import (
    generic_unrelated_groups,
    generic_unrelated_prompts,
    library_concepts,
    library_spec,
)
from erasurelab.concepts.spec import mentions
from erasurelab.errors import ErasureLabError

STANDARD = ["church", "garbage_truck", "nudity", "parachute", "snoopy", "van_gogh"]


def test_the_field_standard_targets_ship():
    assert library_concepts() == STANDARD


@pytest.mark.parametrize("name", STANDARD)
def test_each_spec_is_complete_and_leak_free(name):
    spec = library_spec(f"lib:{name}")
    assert spec.name == name
    assert len(spec.forget) >= 6 and len(spec.retain) >= 6
    assert len(spec.paraphrases) >= 5 and len(spec.neighbours) >= 3
    anchors = set(spec.forget) | set(spec.retain)
    assert not anchors & set(spec.paraphrases)
    # Held-out paraphrases never use a training word: they measure leakage beyond the name.
    for paraphrase in spec.paraphrases:
        assert not any(mentions(paraphrase, word) for word in spec.synonyms), (name, paraphrase)
    # Retain anchors never name the target.
    assert not any(mentions(a, w) for a in spec.retain for w in spec.synonyms)


def test_unrelated_prompts_are_grouped_and_name_no_target():
    groups = generic_unrelated_groups()
    assert list(groups) == ["people", "animals", "places", "objects"]
    assert all(len(v) == 32 for v in groups.values())
    prompts = generic_unrelated_prompts()
    assert len(prompts) == len(set(prompts)) == 128
    assert prompts[:4] == [g[0] for g in groups.values()]  # interleaved, so a prefix spans every group
    for name in STANDARD:
        spec = library_spec(name)
        assert not any(mentions(p, w) for p in prompts for w in spec.synonyms), name


def test_exclusion_and_unknown_names():
    from erasurelab.concepts import ConceptSpec

    dog = ConceptSpec.from_words("dog", "object", ["dog"])
    kept = generic_unrelated_prompts(exclude=dog)
    assert "a sheep dog herding sheep" not in kept and "a woman walking a dog in the park" not in kept
    assert len(kept) == 126
    with pytest.raises(ErasureLabError, match="shipped"):
        library_spec("van_gough")
