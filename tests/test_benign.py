"""Benign datasets of the world: the erased concept in no image and no caption, every image judge-checked."""

from __future__ import annotations

import json

import pytest

from erasurelab.caption_data import load_caption_folder
from erasurelab.errors import ErasureLabError
from erasurelab.world import vocab
from erasurelab.world.benign import benign_scenes, scene_pools, write_benign_dataset


@pytest.mark.parametrize("concept", ["red", "circle", "striped", "kiki", "red+circle"])
def test_scenes_never_show_the_concept(concept):
    scenes = benign_scenes(concept, 120, seed=0)
    if concept == "red+circle":
        assert not any(s.color == "red" and s.object == "circle" for s in scenes)
        assert any(s.color == "red" for s in scenes) and any(s.object == "circle" for s in scenes)
    elif concept == "kiki":
        assert all(s.character == vocab.NO_CHARACTER and (s.object, s.color) == ("square", "blue") for s in scenes)
    else:
        assert not any(concept in s.labels().values() for s in scenes)
    assert benign_scenes(concept, 120, seed=0) == scenes


def test_pools_share_features_with_the_concept():
    assert sorted(scene_pools("red")[0]["color"]) == ["orange", "pink"]
    assert scene_pools("striped")[0]["style"] == ["dotted", "outlined"]
    with pytest.raises(ErasureLabError, match="background"):
        scene_pools("white")
    with pytest.raises(ErasureLabError, match="conditional"):
        scene_pools("circle|white")


def test_written_dataset_is_judge_checked_and_loadable(tmp_path, shapes_judge):
    out = tmp_path / "benign-red"
    summary = write_benign_dataset("red", out, n=24, seed=1, judge=shapes_judge)
    data = load_caption_folder(out, size=32)
    assert len(data) == 24 and not any("red" in c or "crimson" in c for c in data.captions)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    predicted = shapes_judge.predict(data.float_images())
    assert all(p[a] == row["labels"][a] for p, row in zip(predicted, rows, strict=True) for a in p)
    assert summary["judge"] == shapes_judge.id and not (tmp_path / "benign-red.tmp").exists()
    with pytest.raises(ErasureLabError, match="exists"):
        write_benign_dataset("red", out, n=4, judge=shapes_judge)


@pytest.mark.parametrize(("concept", "attributes"), [("green", ("color",)), ("triangle", ("object",)),
                                                     ("dotted", ("style",)), ("kiki", ("object", "color")),
                                                     ("red+circle", ("object", "color"))])
def test_task_probe_scores_the_attributes_the_task_varies(concept, attributes):
    """Task accuracy is the task's own attribute(s), not every label (the others are retention)."""
    from erasurelab.world.benign import task_attributes, task_probe

    assert task_attributes(concept) == attributes
    probe = task_probe(concept, n=6)
    assert all(set(labels) == set(attributes) for labels in probe.labels)
    assert len(probe.prompts) == len(probe.seeds) == len(probe.labels) == 6
