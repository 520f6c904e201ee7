"""The rule-based "pixels" judge and judge agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.agreement import disagreements, judge_agreement
from erasurelab.judges import available_judges, load_judge
from erasurelab.world import render, vocab
from erasurelab.world.dataset import render_dataset, to_uint8
from erasurelab.world.pixel_judge import PixelJudge, PixelRules


@pytest.fixture(scope="module")
def judge() -> PixelJudge:
    return PixelJudge()


@pytest.fixture(scope="module")
def renders():
    return render_dataset(400, seed=31, character_rate=0.15)


def test_registered_with_a_versioned_id_that_follows_its_rules(judge) -> None:
    assert "pixels" in available_judges()
    assert load_judge("pixels").id == judge.id
    assert judge.id.startswith("pixels-v")
    assert PixelJudge(PixelRules(chroma_floor=0.2)).id != judge.id
    assert judge.concepts() == sorted([*vocab.classes("object"), *vocab.classes("color")])
    assert judge.attribute_of("red") == "color" and judge.attribute_of("moon") == "object"


def test_reads_ground_truth_renders(judge, renders) -> None:
    predicted = judge.predict(renders.float_images())
    for attribute in ("object", "color", "background"):
        truth = [s.labels()[attribute] for s in renders.scenes]
        accuracy = np.mean([p[attribute] == t for p, t in zip(predicted, truth, strict=True)])
        assert accuracy >= 0.97, (attribute, accuracy)


@pytest.mark.parametrize("style", ["striped", "dotted", "outlined"])
def test_patterned_shapes_are_read_as_their_silhouette(judge, style) -> None:
    rng = np.random.default_rng(5)
    scenes = [render.Scene(o, c, style, b) for o in vocab.classes("object")
              for c, b in (("blue", "white"), ("yellow", "black"), ("pink", "gray"))]
    images = to_uint8(np.stack([render.render(s, rng) for s in scenes])).float() / 255
    predicted = judge.predict(images)
    objects = np.mean([p["object"] == s.object for p, s in zip(predicted, scenes, strict=True)])
    colours = np.mean([p["color"] == s.color for p, s in zip(predicted, scenes, strict=True)])
    assert objects >= 0.9 and colours >= 0.95, (style, objects, colours)


def test_present_agrees_with_predict_and_needs_evidence(judge, renders) -> None:
    images = renders.float_images()[:64]
    predicted = judge.predict(images)
    for concept in ("red", "circle"):
        flags = judge.present(images, concept)
        assert flags.dtype == torch.bool and flags.shape == (64,)
        attribute = judge.attribute_of(concept)
        assert all(not f or p[attribute] == concept for f, p in zip(flags.tolist(), predicted, strict=True))
        assert flags.any()
    blank = torch.full((2, 3, 32, 32), 0.5)
    assert not judge.present(blank, "circle").any() and not judge.present(blank, "red").any()


def test_features_and_resized_inputs(judge, renders) -> None:
    images = renders.float_images()[:8]
    features = judge.features(images)
    assert features.shape == (8, 19) and torch.isfinite(features).all()
    big = torch.nn.functional.interpolate(images, size=(64, 64), mode="nearest")
    assert judge.predict(big) == judge.predict(images)
    assert judge.predict(torch.zeros(0, 3, 32, 32)) == [] and judge.features(torch.zeros(0, 3, 32, 32)).shape == (0, 19)


def test_bad_input_is_a_one_line_error(judge) -> None:
    with pytest.raises(ErasureLabError, match="did you mean: circle") as err:
        judge.present(torch.zeros(1, 3, 32, 32), "circel")
    assert "\n" not in str(err.value)
    with pytest.raises(ErasureLabError, match="unknown to judge"):
        judge.present(torch.zeros(1, 3, 32, 32), "striped")
    with pytest.raises(ErasureLabError, match=r"shaped \(N, 3, H, W\)"):
        judge.predict(torch.zeros(3, 32, 32))
    with pytest.raises(ErasureLabError, match=r"shaped \(N, 3, H, W\)"):
        judge.predict(torch.zeros(2, 1, 32, 32))


class _WrongColour:
    """A judge that reads objects like `inner` but always names the colour next to the true one."""

    def __init__(self, inner: PixelJudge, every: int) -> None:
        self.inner, self.every, self.id = inner, every, "wrong-colour"

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        colours = vocab.classes("color")
        out = self.inner.predict(images)
        for i in range(0, len(out), self.every):
            out[i] = {**out[i], "color": colours[(colours.index(out[i]["color"]) + 1) % len(colours)]}
        return out


def test_agreement_is_one_with_itself_and_counts_disagreements(judge, renders) -> None:
    images = renders.float_images()[:40]
    same = judge_agreement(judge, judge, images)
    assert set(same) == {"object", "color"}
    assert all(r.numerator == r.denominator == 40 for r in same.values())
    wrong = judge_agreement(judge, _WrongColour(judge, every=4), images)
    assert wrong["object"].value == 1.0
    assert (wrong["color"].numerator, wrong["color"].denominator) == (30, 40)
    listed = disagreements(judge, _WrongColour(judge, every=4), images, "color")
    assert [i for i, _, _ in listed] == list(range(0, 40, 4)) and all(a != b for _, a, b in listed)


def test_agreement_rejects_attributes_a_judge_does_not_read(judge) -> None:
    with pytest.raises(ErasureLabError, match="does not read 'style'"):
        judge_agreement(judge, judge, torch.zeros(2, 3, 32, 32), attributes=("object", "style"))
    with pytest.raises(ErasureLabError, match="at least one attribute"):
        judge_agreement(judge, judge, torch.zeros(2, 3, 32, 32), attributes=())
