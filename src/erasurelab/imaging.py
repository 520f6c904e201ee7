"""Image grids with captions, written atomically.

Why atomic: a crash halfway through must never leave a half-written PNG that looks like a result.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from erasurelab.errors import ErasureLabError


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """(3, H, W) float in [0, 1] -> PIL image, upscaled by an integer factor (nearest)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def grid(images: torch.Tensor, captions: Sequence[str] | None = None, columns: int | None = None,
         cell: int = 128) -> Image.Image:
    """Tile images into a grid; each tile gets up to two caption lines below it."""
    n = len(images)
    columns = columns or min(n, 8)
    rows = (n + columns - 1) // columns
    scale = max(1, cell // images.shape[-1])
    tile_w, tile_h = images.shape[-1] * scale, images.shape[-2] * scale
    text_h = 26 if captions else 0
    canvas = Image.new("RGB", (columns * tile_w, rows * (tile_h + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        x, y = (i % columns) * tile_w, (i // columns) * (tile_h + text_h)
        canvas.paste(to_pil(images[i], scale), (x, y))
        if captions:
            lines = _wrap(captions[i], max_chars=max(8, tile_w // 6))[:2]
            for k, line in enumerate(lines):
                draw.text((x + 2, y + tile_h + 1 + 12 * k), line, fill="black", font=font)
    return canvas


def _wrap(text: str, max_chars: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > max_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG via a temporary file in the same folder, then rename."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ErasureLabError(f"output must be a .png file, got {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
    except OSError as exc:
        raise ErasureLabError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
