"""A tiny deterministic judge for tests: color by the mean of the image centre, background by its border.

Why: the evaluation runner must be testable before the shapes judge is trained. The stub follows
the Judge protocol (id, concepts, present, predict, features, attribute_of), and its id is a hash
of its prototype weights, so changing one weight changes the id, as for a real judge.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.world import vocab

COLORS = vocab.classes("color")
BACKGROUNDS = vocab.classes("background")


def default_weights() -> torch.Tensor:
    """(11, 3) RGB prototypes: the 8 world colors, then the 3 backgrounds."""
    rgb = [c.rgb for c in vocab.COLORS] + [b.rgb for b in vocab.BACKGROUNDS]
    return torch.tensor(rgb, dtype=torch.float32)


class StubJudge:
    def __init__(self, weights: torch.Tensor | None = None) -> None:
        self.weights = (default_weights() if weights is None else weights).float().clone()
        digest = hashlib.sha256(self.weights.numpy().tobytes()).hexdigest()[:12]
        self.id = f"stub-v1-{digest}"
        self.calls = 0

    def concepts(self) -> list[str]:
        return sorted([*COLORS, *BACKGROUNDS])

    def attribute_of(self, concept: str) -> str:
        if concept in COLORS:
            return "color"
        if concept in BACKGROUNDS:
            return "background"
        raise ErasureLabError(f"concept {concept!r} unknown to judge {self.id}{did_you_mean(concept, self.concepts())}")

    @staticmethod
    def _regions(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.float()
        h, w = images.shape[-2:]
        centre = images[..., h // 4: h - h // 4, w // 4: w - w // 4].mean(dim=(-2, -1))
        mask = torch.ones(h, w, dtype=torch.bool)
        mask[1:-1, 1:-1] = False
        border = images[..., mask].mean(dim=-1)
        return centre, border

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        self.calls += 1
        centre, border = self._regions(images)
        color = torch.cdist(centre, self.weights[:len(COLORS)]).argmin(dim=1).tolist()
        background = torch.cdist(border, self.weights[len(COLORS):]).argmin(dim=1).tolist()
        return [{"color": COLORS[c], "background": BACKGROUNDS[b]} for c, b in zip(color, background, strict=True)]

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        attribute = self.attribute_of(concept)
        return torch.tensor([p[attribute] == concept for p in self.predict(images)], dtype=torch.bool)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1).double()
