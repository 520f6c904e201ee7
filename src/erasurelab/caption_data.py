"""Image-and-caption folders in the layout `datasets`' imagefolder reads, checked before any training.

Layout: a folder with `metadata.jsonl` (one JSON object per line) or `metadata.csv`, each row
naming an image by `file_name` (relative to the folder) and its caption by `text`. This is the
layout of diffusers' text-to-image training examples, so a user's existing fine-tuning data works
as is.

Why every row is checked first: a fine-tuning run that dies at step 700 on an unreadable file, or
silently trains on empty captions, wastes the run. Every problem (a missing or unreadable image,
an empty caption, a size other than the expected one) is collected and reported in one line with
the file names, and nothing is returned, so nothing is trained on bad data.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from erasurelab.errors import ErasureLabError

METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")
#: How many bad files the one-line error names before it says "and N more".
SHOWN_PROBLEMS = 5


@dataclass
class CaptionData:
    """Images (N, 3, H, W) uint8, their captions and file names, in metadata order."""

    folder: Path
    images: torch.Tensor
    captions: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def float_images(self) -> torch.Tensor:
        """Images in [0, 1] as float32."""
        return self.images.float() / 255.0


def _rows(folder: Path) -> list[dict[str, str]]:
    for name in METADATA_FILES:
        path = folder / name
        if not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if name.endswith(".jsonl"):
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            return list(csv.DictReader(text.splitlines()))
        except (OSError, ValueError, csv.Error) as exc:
            raise ErasureLabError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    raise ErasureLabError(f"dataset folder {folder} has no {' or '.join(METADATA_FILES)} "
                          "(rows with file_name and text columns)")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def load_caption_folder(folder: str | Path, size: int | tuple[int, int] | None = None) -> CaptionData:
    """Read and check every row of an image-and-caption folder; one-line error naming every bad file.

    size: the (height, width) every image must have (an int means square); None accepts any size
    as long as all images share it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ErasureLabError(f"dataset folder not found: {folder}")
    rows = _rows(folder)
    if not rows:
        raise ErasureLabError(f"dataset {folder} has no usable image: its metadata lists no rows")
    expected = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    problems: list[str] = []
    images, captions, files = [], [], []
    for i, row in enumerate(rows):
        name = str(row.get("file_name") or "").strip() if isinstance(row, dict) else ""
        caption = str(row.get("text") or "").strip() if isinstance(row, dict) else ""
        if not name:
            problems.append(f"row {i + 1} (no file_name)")
            continue
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents:
            problems.append(f"{name} (outside the dataset folder)")
            continue
        if not caption:
            problems.append(f"{name} (empty caption)")
        if not path.is_file():
            problems.append(f"{name} (missing)")
            continue
        try:
            pixels = _read_image(path)
        except ValueError as exc:
            problems.append(f"{name} (unreadable: {exc})")
            continue
        shape = tuple(pixels.shape[:2])
        expected = expected or shape
        if shape != expected:
            problems.append(f"{name} ({shape[0]}x{shape[1]}, expected {expected[0]}x{expected[1]})")
            continue
        images.append(pixels)
        captions.append(caption)
        files.append(name)
    if problems:
        shown = ", ".join(problems[:SHOWN_PROBLEMS])
        more = f" and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise ErasureLabError(f"dataset {folder} has {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}: "
                              f"{shown}{more}; fix or remove them (nothing was trained)")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return CaptionData(folder, stacked, captions, files)
