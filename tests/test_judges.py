"""The judge registry and the shapes judge."""

from __future__ import annotations

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.judges import available_judges, load_judge
from erasurelab.world import vocab
from erasurelab.world.dataset import render_dataset

from conftest import needs_assets


def test_registry_lists_shapes_and_rejects_unknown_names() -> None:
    assert "shapes" in available_judges()
    with pytest.raises(ErasureLabError, match="unknown judge 'nudenett'"):
        load_judge("nudenett")


def test_missing_weights_give_a_one_line_error(tmp_path) -> None:
    from erasurelab.world.judge import ShapesJudge

    with pytest.raises(ErasureLabError, match="judge weights missing") as err:
        ShapesJudge(tmp_path)
    assert "\n" not in str(err.value)


@needs_assets
def test_judge_is_accurate_on_fresh_renders(shapes_judge) -> None:
    data = render_dataset(300, seed=999, character_rate=0.2)
    probs = shapes_judge.probabilities(data.float_images())
    for attribute in vocab.ATTRIBUTES:
        accuracy = (probs[attribute].argmax(-1) == data.labels[attribute]).float().mean().item()
        assert accuracy >= 0.97, (attribute, accuracy)


@needs_assets
def test_present_predict_and_features_agree(shapes_judge) -> None:
    data = render_dataset(64, seed=4)
    images = data.float_images()
    predicted = shapes_judge.predict(images)
    red = shapes_judge.present(images, "red")
    assert red.dtype == torch.bool and red.shape == (64,)
    assert all(not r or p["color"] == "red" for r, p in zip(red.tolist(), predicted, strict=True))
    assert shapes_judge.features(images).shape == (64, 256)
    assert shapes_judge.id.startswith("shapes-v")
    # larger images (real models) are resized, not rejected
    big = torch.nn.functional.interpolate(images[:4], size=(64, 64), mode="nearest")
    assert [p["object"] for p in shapes_judge.predict(big)] == [p["object"] for p in predicted[:4]]


@needs_assets
def test_unknown_concept_is_a_one_line_error(shapes_judge) -> None:
    with pytest.raises(ErasureLabError, match="did you mean: circle") as err:
        shapes_judge.present(torch.zeros(1, 3, 32, 32), "circel")
    assert "\n" not in str(err.value)
