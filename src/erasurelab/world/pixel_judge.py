"""A rule-based judge of the shapes world: colour and object read straight from pixels.

Why a second judge: every reported rate is a judge's verdict, and a learned judge can be fooled in
the same ways a learned generator errs. This one has no learned weights: it segments the object from
the neutral background, names the colour from the hue of the object's chromatic pixels (mixing a
colour with black, white or gray keeps its hue, so anti-aliased edges vote correctly), and names the
shape by comparing the filled silhouette, normalised to its bounding box, with template silhouettes
drawn by the world's own renderer. Its agreement with the CNN judge is what makes either credible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from erasurelab.errors import ErasureLabError
from erasurelab.judges.base import LabelTable, register_judge
from erasurelab.world import render, vocab

JUDGE_VERSION = "1"
#: Attributes this judge reads (background comes for free from the segmentation).
READS: tuple[str, ...] = ("object", "color", "background")


@dataclass(frozen=True)
class PixelRules:
    """Every hand-set constant of the judge; all of them enter the judge id."""

    foreground_floor: float = 0.10     # min channel distance from the background to count as object
    foreground_fraction: float = 0.45  # ... or this fraction of the image's strongest distance, if larger
    silhouette_floor: float = 0.06     # weaker pixels joined to the object when connected to it (hysteresis)
    silhouette_fraction: float = 0.3
    closing: int = 2                   # closing iterations before filling holes (bridges gaps in outlines)
    chroma_floor: float = 0.12         # pixels less chromatic than this do not vote on colour
    core_quantile: float = 0.6         # only painted pixels at least this far (quantile) from the background vote
    hue_scale: float = 30.0            # degrees of hue that cost as much as ...
    saturation_scale: float = 0.25     # ... this much saturation (max - min) / max; separates pink from red
    grid: int = 16                     # side of the bounding-box-normalised silhouette
    aspect_weight: float = 0.1         # penalty per unit |log aspect ratio| difference from the template (weak:
                                       # generated shapes drift from the world's aspect ratios, e.g. squat diamonds)
    templates_per_object: int = 24     # renders averaged into one template
    template_blur: float = 1.0         # Gaussian sigma (pixels) on template renders: generated images are soft
    template_seed: int = 7
    present_colour_share: float = 0.5  # present(): the colour's share of the chromatic vote, at least
    present_object_score: float = 0.6  # present(): the shape's template score, at least


@dataclass(frozen=True)
class Reading:
    """What the rules see in one image."""

    colour_votes: np.ndarray  # (colours,) chroma-weighted vote shares, sums to 1 (0 if no chromatic pixel)
    object_scores: np.ndarray  # (objects,) template similarity minus aspect penalty
    background: str
    area: float               # filled silhouette, fraction of the image
    fill: float               # painted pixels / filled silhouette (1 for solid shapes)
    aspect: float             # bounding box width / height


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and chroma (max - min) of (..., 3) RGB."""
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = high - low
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, np.mod((g - b) / safe, 6.0),
                   np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return hue * 60.0, chroma


_COLOUR_NAMES = vocab.classes("color")
_OBJECT_NAMES = vocab.classes("object")
_COLOUR_RGB = np.array([vocab.lookup(c)[1].rgb for c in _COLOUR_NAMES])
_COLOUR_HUES, _COLOUR_CHROMAS = _hue(_COLOUR_RGB)
_COLOUR_SATURATIONS = _COLOUR_CHROMAS / _COLOUR_RGB.max(axis=-1)
_BACKGROUNDS = {c.name: np.array(c.rgb) for c in vocab.BACKGROUNDS}


def _segment(image: np.ndarray, rules: PixelRules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background RGB, painted mask and filled silhouette of one (32, 32, 3) image.

    The background is the median of the border ring (the renderer keeps objects off the border).
    Fill-holes after a small closing turns striped, dotted and outlined shapes and character faces
    into solid silhouettes; only the largest connected part is kept.
    """
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    background = np.median(border, axis=0)
    distance = np.abs(image - background).max(axis=-1)
    threshold = max(rules.foreground_floor, rules.foreground_fraction * float(np.percentile(distance, 99)))
    painted = distance > threshold
    strongest = float(np.percentile(distance, 99))
    weak = distance > max(rules.silhouette_floor, rules.silhouette_fraction * strongest)
    labels, count = ndimage.label(weak)
    touched = np.unique(labels[painted & weak])
    joined = np.isin(labels, touched[touched > 0]) | painted
    if rules.closing:
        joined |= ndimage.binary_closing(joined, iterations=rules.closing)
    filled = ndimage.binary_fill_holes(joined)
    labels, count = ndimage.label(filled)
    if count > 1:
        sizes = ndimage.sum(filled, labels, index=range(1, count + 1))
        filled = labels == (int(np.argmax(sizes)) + 1)
    return background, painted & filled, filled


def _normalised(filled: np.ndarray, grid: int) -> tuple[np.ndarray, float]:
    """The silhouette cropped to its bounding box and resampled to (grid, grid); and its aspect ratio."""
    rows, cols = np.nonzero(filled)
    if len(rows) == 0:
        return np.zeros((grid, grid)), 1.0
    crop = filled[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32)
    resized = F.interpolate(torch.from_numpy(crop)[None, None], size=(grid, grid), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    return resized, crop.shape[1] / crop.shape[0]


@lru_cache(maxsize=4)
def _templates(rules: PixelRules) -> tuple[np.ndarray, np.ndarray]:
    """(objects, grid, grid) mean normalised silhouettes and (objects,) mean log aspect ratios.

    Drawn with the world renderer (solid, varied colour, background, size and position), blurred by
    `template_blur` (a diffusion model's 32x32 images have soft edges that crisp renders lack), and
    read through the same segmentation the judge uses, so the templates carry the same pixel effects.
    """
    rng = np.random.default_rng(rules.template_seed)
    shapes, aspects = [], []
    for obj in _OBJECT_NAMES:
        masks, logs = [], []
        for _ in range(rules.templates_per_object):
            scene = render.Scene(obj, str(rng.choice(_COLOUR_NAMES)), "solid",
                                 str(rng.choice(vocab.classes("background"))))
            image = render.render(scene, rng).astype(np.float64)
            if rules.template_blur > 0:
                image = ndimage.gaussian_filter(image, sigma=(rules.template_blur, rules.template_blur, 0))
            _, _, filled = _segment(image, rules)
            mask, aspect = _normalised(filled, rules.grid)
            masks.append(mask)
            logs.append(np.log(aspect))
        shapes.append(np.mean(masks, axis=0))
        aspects.append(float(np.mean(logs)))
    return np.stack(shapes), np.array(aspects)


def _colour_votes(pixels: np.ndarray, background: np.ndarray, rules: PixelRules) -> np.ndarray:
    """Chroma-weighted shares of the world colours nearest to the object's core pixels.

    Core pixels are the painted pixels farthest from the background (edges mix with it). Each votes
    for the colour nearest in hue and saturation: hue alone cannot tell a pale pink from red.
    """
    votes = np.zeros(len(_COLOUR_NAMES))
    if len(pixels) == 0:
        return votes
    distance = np.abs(pixels - background).max(axis=-1)
    core = pixels[distance >= np.quantile(distance, rules.core_quantile)]
    hue, chroma = _hue(core)
    keep = chroma >= rules.chroma_floor
    if not keep.any():
        return votes
    saturation = chroma[keep] / np.maximum(core[keep].max(axis=-1), 1e-6)
    gap = np.abs(hue[keep, None] - _COLOUR_HUES[None, :])
    cost = (np.minimum(gap, 360.0 - gap) / rules.hue_scale) ** 2 \
        + ((saturation[:, None] - _COLOUR_SATURATIONS[None, :]) / rules.saturation_scale) ** 2
    np.add.at(votes, cost.argmin(axis=1), chroma[keep])
    return votes / votes.sum()


def read_image(image: np.ndarray, rules: PixelRules) -> Reading:
    """Apply the rules to one (32, 32, 3) float image."""
    background, painted, filled = _segment(image, rules)
    votes = _colour_votes(image[painted], background, rules)
    mask, aspect = _normalised(filled, rules.grid)
    templates, log_aspects = _templates(rules)
    overlap = np.minimum(templates, mask).sum(axis=(1, 2)) / np.maximum(templates, mask).sum(axis=(1, 2))
    scores = overlap - rules.aspect_weight * np.abs(np.log(aspect) - log_aspects)
    area = float(filled.mean())
    name = min(_BACKGROUNDS, key=lambda b: float(np.abs(_BACKGROUNDS[b] - background).sum()))
    return Reading(votes, scores, name, area, float(painted.sum() / max(filled.sum(), 1)), aspect)


class PixelJudge(LabelTable):
    """Judge protocol implementation on fixed pixel rules (colour, object, background)."""

    def __init__(self, rules: PixelRules | None = None) -> None:
        self.rules = rules or PixelRules()
        templates, aspects = _templates(self.rules)
        digest = hashlib.sha256(json.dumps(asdict(self.rules), sort_keys=True).encode())
        digest.update(np.round(templates, 6).tobytes())
        digest.update(np.round(aspects, 6).tobytes())
        self.id = f"pixels-v{JUDGE_VERSION}-{digest.hexdigest()[:12]}"
        self._attribute_of = {c: a for a in ("object", "color") for c in vocab.classes(a)}

    def readings(self, images: torch.Tensor) -> list[Reading]:
        """The rules' reading of each image."""
        pixels = _prepare(images).permute(0, 2, 3, 1).double().numpy()
        return [read_image(image, self.rules) for image in pixels]

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        """The concept is the judge's answer and its evidence clears the rule's floor."""
        attribute = self.attribute_of(concept)
        flags = []
        for reading in self.readings(images):
            if attribute == "color":
                index = _COLOUR_NAMES.index(concept)
                flags.append(int(reading.colour_votes.argmax()) == index
                             and reading.colour_votes[index] >= self.rules.present_colour_share)
            else:
                index = _OBJECT_NAMES.index(concept)
                flags.append(int(reading.object_scores.argmax()) == index
                             and reading.object_scores[index] >= self.rules.present_object_score)
        return torch.tensor(flags, dtype=torch.bool)

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        return [{"object": _OBJECT_NAMES[int(r.object_scores.argmax())],
                 "color": _COLOUR_NAMES[int(r.colour_votes.argmax())], "background": r.background}
                for r in self.readings(images)]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 19): colour vote shares, object scores, silhouette area, fill ratio, log aspect ratio."""
        rows = [np.concatenate([r.colour_votes, r.object_scores, [r.area, r.fill, np.log(r.aspect)]])
                for r in self.readings(images)]
        return torch.tensor(np.array(rows), dtype=torch.float32).reshape(len(rows), 2 * 8 + 3)


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """Float (N, 3, 32, 32) in [0, 1]; other sizes are resized (area), as the CNN judge does."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ErasureLabError(f"judge expects images shaped (N, 3, H, W), got {shape}")
    images = images.detach().float().cpu()
    if images.shape[-2:] != (render.IMAGE_SIZE, render.IMAGE_SIZE):
        images = F.interpolate(images, size=(render.IMAGE_SIZE, render.IMAGE_SIZE), mode="area")
    return images.clamp(0, 1)


@register_judge("pixels")
def _pixel_judge() -> PixelJudge:
    return PixelJudge()
