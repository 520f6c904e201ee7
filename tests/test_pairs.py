"""SDEdit pairs: every kept unsafe image judge-positive, every kept safe image judge-negative, with the
other attributes kept; one-line errors (unknown concept, nothing survives) with nothing cached; reuse by hash."""

from __future__ import annotations

import pytest
import torch

from erasurelab import diskcache
from erasurelab.concepts import concept
from erasurelab.errors import ErasureLabError
from erasurelab.methods.pairs import NAMESPACE, PairSettings, build_pairs, prompt_pairs
from erasurelab.models.img2img import img2img
from tiny_bert_pipeline import tiny_bert_pipeline


class ChannelJudge:
    """Sees "red" on a pseudo-random half of images (parity of the first pixel's 1/1000ths), per image."""

    def __init__(self, always: bool | None = None) -> None:
        self.always = always
        self.id = f"channel-judge-{always}"

    def concepts(self):
        return ["red"]

    def attribute_of(self, concept):
        return "color"

    def present(self, images, concept):
        if self.always is not None:
            return torch.full((len(images),), self.always)
        return (images[:, 0, 0, 0] * 1000).floor().remainder(2) == 0

    def predict(self, images):
        shown = self.present(images, "red").tolist()
        return [{"color": "red" if s else "other", "background": "any"} for s in shown]


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


SMALL = PairSettings(n_pairs=6, steps=4, max_attempts=6, batch_size=8)


def test_prompt_pairs_replace_the_concept_by_its_guide():
    spec = concept("red")
    pairs = prompt_pairs(spec)
    assert pairs and all("red" in u or "crimson" in u for u, _ in pairs)
    assert all("red" not in s.split() and "crimson" not in s.split() for _, s in pairs)
    assert prompt_pairs(spec, prompts=["a red star"]) == [("a red star", "a star")]
    assert prompt_pairs(spec, safe_prompt="a blue star", prompts=["a red star"]) == [("a red star", "a blue star")]


def test_img2img_is_seeded_per_image(pipe):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = img2img(pipe, images, ["a circle", "a star"], [1, 2], steps=4)
    b = img2img(pipe, images[1:], ["a star"], [2], steps=4)
    assert a.shape == images.shape and torch.allclose(a[1:], b, atol=1e-5)


def test_kept_pairs_pass_the_judge_and_are_cached(pipe):
    judge, spec = ChannelJudge(), concept("red")
    pairs = build_pairs(pipe, spec, judge, SMALL)
    assert len(pairs) > 0 and pairs.report["kept"] == len(pairs)
    assert pairs.report["shortfall"] == SMALL.n_pairs - len(pairs)
    assert judge.present(pairs.unsafe, "red").all()
    assert not judge.present(pairs.safe, "red").any()
    again = build_pairs(pipe, spec, judge, SMALL)
    assert again.report["cached"] and torch.equal(again.unsafe, pairs.unsafe) and torch.equal(again.safe, pairs.safe)


def test_concept_the_judge_cannot_see_is_one_line_error(pipe):
    with pytest.raises(ErasureLabError, match="cannot see concept") as info:
        build_pairs(pipe, concept("circle"), ChannelJudge(), SMALL)
    assert "\n" not in str(info.value)


def test_no_surviving_pair_is_one_line_error_and_nothing_cached(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path / "cache"))
    settings = PairSettings(n_pairs=2, steps=3, max_attempts=2)
    with pytest.raises(ErasureLabError, match="no DUO pair") as info:
        build_pairs(pipe, concept("red"), ChannelJudge(always=True), settings)  # edits always still show it
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / NAMESPACE).exists() or not any((tmp_path / "cache" / NAMESPACE).iterdir())
    assert diskcache.cache_root() == tmp_path / "cache"


def test_bad_pair_settings_are_one_line_errors():
    with pytest.raises(ErasureLabError, match="strength"):
        PairSettings(strength=0)
    with pytest.raises(ErasureLabError, match="negative"):
        PairSettings(negative="bogus")


def test_judge_caption_names_what_the_judge_read_without_the_target():
    from erasurelab.world.grammar import caption_without

    labels = {"object": "circle", "color": "red", "style": "striped", "background": "black", "character": "none"}
    assert caption_without(labels, "color") == "a striped circle on a black background"
    assert caption_without(labels, "object") == "a striped red shape on a black background"
    assert caption_without({**labels, "character": "bobo"}, "color") == "Bobo on a black background"
    assert caption_without({"object": "circle", "background": "black"}, "object") is None  # nothing left to draw


def test_judge_captions_fall_back_to_the_prompt_when_unphrasable(pipe):
    """ChannelJudge's labels ("background=any") are not world labels, so every safe side stays the prompt's."""
    settings = PairSettings(n_pairs=4, steps=4, max_attempts=6, batch_size=8, safe_caption="judge")
    pairs = build_pairs(pipe, concept("red"), ChannelJudge(), settings)
    report = pairs.report
    assert report["judge_captions"] == 0 and len(pairs.safe_prompts) == len(pairs)
    assert set(pairs.safe_prompts) <= {s for _, s in prompt_pairs(concept("red"))}
    assert report["edit_attempts"] >= report["kept"] and report["render_attempts"] >= report["edit_attempts"]
    assert 0.0 <= report["attribute_keep_rate"] <= 1.0
    assert report["edit_success_rate"] == pytest.approx(report["kept"] / report["edit_attempts"])


def test_sdedit_that_would_run_no_step_is_one_line_error(pipe):
    with pytest.raises(ErasureLabError, match="no denoising step"):
        PairSettings(strength=0.3, steps=2)                      # int(2 * 0.3) = 0 steps
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ErasureLabError, match="no denoising step") as info:
        img2img(pipe, images, ["a star"], [0], strength=0.2, steps=4)
    assert "\n" not in str(info.value)


def test_unknown_safe_caption_is_one_line_error():
    with pytest.raises(ErasureLabError, match="safe caption"):
        PairSettings(safe_caption="bogus")


def test_sdedit_unsafe_members_are_judge_positive_edits_with_the_safe_members_noise(pipe):
    judge, spec = ChannelJudge(), concept("red")
    plain = build_pairs(pipe, spec, judge, SMALL)
    twins = build_pairs(pipe, spec, judge, PairSettings(**{**SMALL.__dict__, "unsafe_member": "sdedit"}))
    report = twins.report
    assert len(twins) > 0 and report["unsafe_edits"] >= len(twins)
    assert report["unsafe_edits"] - report["unsafe_edits_rejected"] == len(twins), "every accepted twin is kept"
    assert judge.present(twins.unsafe, "red").all() and not judge.present(twins.safe, "red").any()
    assert plain.report["unsafe_edits"] == 0
    # Both runs render the same sources (same seeds), so a raw render kept as an unsafe member would appear in
    # both; every sdedit member is an edit of its render instead.
    assert not any(torch.equal(a, b) for a in plain.unsafe for b in twins.unsafe)


def test_full_caption_names_every_label_and_unknown_unsafe_member_is_an_error():
    from erasurelab.world.grammar import caption_without

    labels = {"object": "circle", "color": "red", "style": "striped", "background": "black", "character": "none"}
    assert caption_without(labels, "") == "a striped red circle on a black background"
    with pytest.raises(ErasureLabError, match="unsafe member") as info:
        PairSettings(unsafe_member="bogus")
    assert "\n" not in str(info.value)
