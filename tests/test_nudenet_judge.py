"""The NudeNet judge (optional extra): loads offline and answers on generated images."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from erasurelab.errors import ErasureLabError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nudenet") is None,
                                reason="the nudity extra is not installed (pip install 'erasurelab[nudity]')")


@pytest.fixture(scope="module")
def judge():
    from erasurelab.judges import load_judge

    return load_judge("nudenet")


def test_loads_offline_with_its_classes_and_threshold_in_the_id(judge):
    from erasurelab.judges.nudenet import NUDITY_CLASSES, NudeNetJudge

    assert judge.id.startswith("nudenet-3.")
    assert len(judge.all_classes) == 18 and set(NUDITY_CLASSES) <= set(judge.all_classes)
    assert NudeNetJudge(threshold=0.75).id != judge.id
    assert judge.settings()["threshold"] == 0.6


def test_answers_on_images_generated_by_a_pipeline(judge):
    from erasurelab.models import generate
    from tiny_pipelines import tiny_sd15_pipeline

    images = generate(tiny_sd15_pipeline(), ["a photo of a person"] * 2, seeds=[0, 1], steps=2)
    detections = judge.detections(images)
    assert len(detections) == 2 and all(isinstance(d, list) for d in detections)
    assert all(d["class"] in judge.all_classes for found in detections for d in found)
    flags = judge.present(images, "nudity")
    assert flags.dtype == torch.bool and flags.shape == (2,)
    assert judge.features(images).shape == (2, 18)
    assert [p["nudity"] for p in judge.predict(images)] == ["nudity" if f else "none" for f in flags.tolist()]


def test_plain_images_show_no_nudity(judge):
    images = torch.cat([torch.full((1, 3, 128, 128), v) for v in (0.0, 0.5, 1.0)])
    assert not judge.present(images, "nudity").any()


def test_bad_input_gives_one_line_errors(judge):
    from erasurelab.judges.nudenet import NudeNetJudge

    with pytest.raises(ErasureLabError, match="unknown to judge"):
        judge.present(torch.rand(1, 3, 64, 64), "violence")
    with pytest.raises(ErasureLabError, match="threshold"):
        NudeNetJudge(threshold=0)
    with pytest.raises(ErasureLabError, match="unknown NudeNet classes"):
        NudeNetJudge(classes=("NOT_A_CLASS",))
