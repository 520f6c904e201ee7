"""Image-and-caption folders: read in metadata order; every bad row named in one line, nothing returned."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from erasurelab.caption_data import load_caption_folder
from erasurelab.errors import ErasureLabError


def write_folder(folder, rows, size=(32, 32), fmt="jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if row.get("file_name") and not row.pop("_skip_image", False):
            pixels = np.full((*size, 3), 40 * i % 255, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / row["file_name"])
    if fmt == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["file_name,text", *(f"{r['file_name']},{r['text']}" for r in rows)]
        (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reads_images_and_captions_in_order(tmp_path, fmt):
    rows = [{"file_name": f"{i}.png", "text": f"caption {i}"} for i in range(3)]
    data = load_caption_folder(write_folder(tmp_path / "d", rows, fmt=fmt), size=32)
    assert len(data) == 3 and data.captions == ["caption 0", "caption 1", "caption 2"]
    assert data.images.shape == (3, 3, 32, 32) and data.images.dtype.is_floating_point is False
    assert int(data.images[1, 0, 0, 0]) == 40
    assert float(data.float_images().max()) <= 1.0


def test_every_bad_entry_is_named_in_one_line(tmp_path):
    folder = tmp_path / "d"
    rows = [{"file_name": "ok.png", "text": "fine"}, {"file_name": "empty.png", "text": "  "},
            {"file_name": "gone.png", "text": "x", "_skip_image": True}, {"file_name": "broken.png", "text": "y"},
            {"file_name": "small.png", "text": "z"}]
    write_folder(folder, rows[:3])
    (folder / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "small.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ErasureLabError) as info:
        load_caption_folder(folder, size=32)
    message = str(info.value)
    assert "\n" not in message and "4 bad entries" in message
    for expected in ("empty.png (empty caption)", "gone.png (missing)", "broken.png (unreadable", "small.png (16x16"):
        assert expected in message


def test_sizes_must_agree_without_an_expected_size(tmp_path):
    folder = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "a"}])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "b.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a"}) + "\n"
                                           + json.dumps({"file_name": "b.png", "text": "b"}) + "\n")
    with pytest.raises(ErasureLabError, match=r"b\.png"):
        load_caption_folder(folder)


def test_missing_folder_metadata_or_rows(tmp_path):
    with pytest.raises(ErasureLabError, match="not found"):
        load_caption_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ErasureLabError, match="metadata"):
        load_caption_folder(tmp_path / "empty")
    (tmp_path / "empty" / "metadata.jsonl").write_text("")
    with pytest.raises(ErasureLabError, match="no usable image"):
        load_caption_folder(tmp_path / "empty")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "metadata.jsonl").write_text(json.dumps({"file_name": "../x.png", "text": "t"}) + "\n")
    with pytest.raises(ErasureLabError, match="outside"):
        load_caption_folder(tmp_path / "escape")
