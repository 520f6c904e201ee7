"""The shapes-world judge network: a small CNN with one classification head per attribute.

Why one shared trunk with several heads: an image is judged on all attributes at once (object,
color, style, background, character), and the trunk's penultimate features double as the
feature space for Frechet distances (like Inception features for FID on real models).
"""

from __future__ import annotations

import torch
from torch import nn

from erasurelab.world import vocab

FEATURE_WIDTH = 256


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.SiLU(),
        nn.MaxPool2d(2),
    )


class ShapesJudgeNet(nn.Module):
    """32x32 RGB in [0, 1] -> logits per attribute head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 32), _block(32, 64), _block(64, 128))  # 32 -> 4
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, FEATURE_WIDTH), nn.SiLU())
        self.heads = nn.ModuleDict({a: nn.Linear(FEATURE_WIDTH, len(vocab.classes(a)))
                                    for a in vocab.ATTRIBUTES})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.trunk(images * 2.0 - 1.0))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {a: head(feats) for a, head in self.heads.items()}
