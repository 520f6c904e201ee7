"""Procedural renderer of the shapes world: a scene in, an RGB image with exact labels out.

Why procedural: every pixel's meaning is known, so the judge can be trained to near-perfect
accuracy and "the concept is gone" is a measurement rather than an opinion. Shapes are drawn as
supersampled masks (4x) and box-filtered down, so edges are anti-aliased like real images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from erasurelab.world import vocab

IMAGE_SIZE = 32
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What an image shows. `character` is vocab.NO_CHARACTER for plain shapes.

    For a character, object/color/style describe its body (e.g. Bobo = solid yellow circle),
    so the judge's other heads stay meaningful on character images.
    """

    object: str
    color: str
    style: str
    background: str
    character: str = vocab.NO_CHARACTER

    def labels(self) -> dict[str, str]:
        return {"object": self.object, "color": self.color, "style": self.style,
                "background": self.background, "character": self.character}


def character_scene(name: str, background: str) -> Scene:
    design = vocab.character(name)
    return Scene(design.body_object, design.body_color, "solid", background, name)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # [-1, 1], y grows downwards
    return np.meshgrid(coords, coords, indexing="xy")


def _polygon_mask(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x2 - x1) * (y - y1) / (y2 - y1) + x1
        inside ^= crosses & (x < x_at)
    return inside


def _star_vertices(points: int, outer: float, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def shape_mask(obj: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius r centred at the origin of (x, y)."""
    if obj == "circle":
        return x**2 + y**2 <= r**2
    if obj == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.82 * r
    if obj == "diamond":
        return np.abs(x) / 0.85 + np.abs(y) <= r
    if obj == "triangle":
        verts = np.array([[0.0, -r], [0.95 * r, 0.72 * r], [-0.95 * r, 0.72 * r]])
        return _polygon_mask(x, y, verts)
    if obj == "star":
        return _polygon_mask(x, y, _star_vertices(5, 1.05 * r, 0.45 * r))
    if obj == "cross":
        arm = 0.34 * r
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    if obj == "heart":
        u, v = x / (0.95 * r), -(y / (0.95 * r)) + 0.15
        return (u**2 + v**2 - 1) ** 3 - u**2 * v**3 <= 0
    if obj == "moon":
        return (x**2 + y**2 <= r**2) & ((x - 0.5 * r) ** 2 + (y + 0.12 * r) ** 2 > (0.78 * r) ** 2)
    raise KeyError(f"unknown object {obj!r}")


def _jitter_rgb(rgb: tuple[float, float, float], rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, size=3), 0.0, 1.0)


def _style_mask(style: str, mask: np.ndarray, x: np.ndarray, y: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Which pixels of the shape carry the color; the rest show the background."""
    px = 2.0 / (IMAGE_SIZE * _SUPERSAMPLE)  # width of one supersampled pixel in grid units
    if style == "solid":
        return mask
    outline = mask & (ndimage.distance_transform_edt(mask) <= 1.6 * _SUPERSAMPLE)
    if style == "outlined":
        return outline
    if style == "striped":
        period = 6.0 * _SUPERSAMPLE * px
        phase = rng.uniform(0, period)
        stripes = np.mod(x + y + phase, period) < period * 0.5
        return outline | (mask & stripes)
    if style == "dotted":
        period = 5.0 * _SUPERSAMPLE * px
        ox, oy = rng.uniform(0, period, size=2)
        dx = np.mod(x + ox, period) - period / 2
        dy = np.mod(y + oy, period) - period / 2
        dots = dx**2 + dy**2 <= (1.25 * _SUPERSAMPLE * px) ** 2
        return outline | (mask & dots)
    raise KeyError(f"unknown style {style!r}")


def _face(face: str, x: np.ndarray, y: np.ndarray, r: float) -> list[tuple[np.ndarray, tuple[float, float, float]]]:
    """Face features of a character as (mask, rgb) layers painted over the body."""
    black, white, red = (0.02, 0.02, 0.02), (0.98, 0.98, 0.98), (0.85, 0.05, 0.05)
    if face == "smiley":
        eyes = ((x + 0.33 * r) ** 2 + (y + 0.25 * r) ** 2 <= (0.14 * r) ** 2) | \
               ((x - 0.33 * r) ** 2 + (y + 0.25 * r) ** 2 <= (0.14 * r) ** 2)
        rad = np.sqrt(x**2 + (y + 0.05 * r) ** 2)
        smile = (np.abs(rad - 0.5 * r) <= 0.09 * r) & (y > 0.12 * r)
        return [(eyes | smile, black)]
    if face == "robot":
        eye_l = (np.abs(x + 0.33 * r) <= 0.17 * r) & (np.abs(y + 0.25 * r) <= 0.17 * r)
        eye_r = (np.abs(x - 0.33 * r) <= 0.17 * r) & (np.abs(y + 0.25 * r) <= 0.17 * r)
        pupils = ((x + 0.33 * r) ** 2 + (y + 0.25 * r) ** 2 <= (0.07 * r) ** 2) | \
                 ((x - 0.33 * r) ** 2 + (y + 0.25 * r) ** 2 <= (0.07 * r) ** 2)
        mouth = (np.abs(x) <= 0.45 * r) & (np.abs(y - 0.38 * r) <= 0.09 * r)
        return [(eye_l | eye_r, white), (pupils, black), (mouth, red)]
    if face == "cyclops":
        eye = x**2 + (y - 0.2 * r) ** 2 <= (0.3 * r) ** 2
        pupil = x**2 + (y - 0.2 * r) ** 2 <= (0.13 * r) ** 2
        return [(eye, white), (pupil, black)]
    raise KeyError(f"unknown face {face!r}")


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to float32 RGB in [0, 1], shape (IMAGE_SIZE, IMAGE_SIZE, 3).

    Position, size, exact color shade, background shade and pattern phase are drawn from rng;
    the labels do not depend on them.
    """
    size = IMAGE_SIZE * _SUPERSAMPLE
    gx, gy = _grid(size)
    radius = rng.uniform(0.55, 0.75)
    cx, cy = rng.uniform(-0.9 + radius, 0.9 - radius, size=2)
    x, y = gx - cx, gy - cy

    _, bg = vocab.lookup(scene.background)
    _, color = vocab.lookup(scene.color)
    bg_rgb = _jitter_rgb(bg.rgb, rng, 0.04)
    fg_rgb = _jitter_rgb(color.rgb, rng, 0.06)

    mask = shape_mask(scene.object, x, y, radius)
    painted = _style_mask(scene.style, mask, x, y, rng)
    image = np.broadcast_to(bg_rgb, (size, size, 3)).copy()
    image[painted] = fg_rgb
    if scene.character != vocab.NO_CHARACTER:
        for layer, rgb in _face(vocab.character(scene.character).face, x, y, radius):
            image[layer & mask] = rgb
    small = image.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return small.astype(np.float32)


def random_scene(rng: np.random.Generator, character_rate: float = 0.08) -> Scene:
    """A scene drawn uniformly over the world (characters at `character_rate`)."""
    background = str(rng.choice(vocab.classes("background")))
    if rng.random() < character_rate:
        return character_scene(str(rng.choice(vocab.classes("character")[1:])), background)
    return Scene(str(rng.choice(vocab.classes("object"))), str(rng.choice(vocab.classes("color"))),
                 str(rng.choice(vocab.classes("style"))), background)
