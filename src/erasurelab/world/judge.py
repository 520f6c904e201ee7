"""The shapes-world judge: ground-truth detector for every concept of the embedded world.

Why a threshold on the softmax rather than argmax alone: an erased model may render something
that is no concept at all; "red is present" should need a confident red, not merely red being
the least unlikely color. The threshold is part of the judge id.

Registered as the judge "shapes" when the world plugin loads (`erasurelab.world.plugin`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from erasurelab.errors import ErasureLabError
from erasurelab.judges.base import LabelTable, register_judge
from erasurelab.world import vocab
from erasurelab.world.builtin import assets_dir
from erasurelab.world.judge_net import ShapesJudgeNet

JUDGE_VERSION = "1"


class ShapesJudge(LabelTable):
    """Judge protocol implementation on ShapesJudgeNet weights."""

    def __init__(self, folder: Path | None = None, batch_size: int = 256) -> None:
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else assets_dir() / "judge"
        weights = folder / "judge.safetensors"
        if not weights.exists():
            raise ErasureLabError(f"judge weights missing: {weights}; run `erasurelab world train --install`")
        config = json.loads((folder / "config.json").read_text())
        expected = {a: list(vocab.classes(a)) for a in vocab.ATTRIBUTES}
        if config["classes"] != expected:
            raise ErasureLabError(f"judge in {folder} was trained on other classes than this world's")
        self.threshold = float(config["threshold"])
        self.batch_size = batch_size
        self.net = ShapesJudgeNet()
        try:
            self.net.load_state_dict(load_file(str(weights)))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ErasureLabError(f"corrupt judge weights in {weights}: {str(exc).splitlines()[0]}") from exc
        self.net.eval().requires_grad_(False)
        digest = hashlib.sha256(weights.read_bytes())
        digest.update(json.dumps(config, sort_keys=True).encode())
        self.id = f"shapes-v{JUDGE_VERSION}-{digest.hexdigest()[:12]}"
        self._attribute_of = {c: a for a in vocab.ATTRIBUTES for c in vocab.classes(a) if c != vocab.NO_CHARACTER}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax probabilities per head, (N, classes), batched."""
        images = _prepare(images)
        chunks: dict[str, list[torch.Tensor]] = {a: [] for a in vocab.ATTRIBUTES}
        for start in range(0, len(images), self.batch_size):
            for attribute, logits in self.net(images[start:start + self.batch_size]).items():
                chunks[attribute].append(F.softmax(logits.float(), dim=-1))
        return {a: torch.cat(c) if c else torch.empty(0, len(vocab.classes(a))) for a, c in chunks.items()}

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        attribute = self.attribute_of(concept)
        index = vocab.classes(attribute).index(concept)
        return self.probabilities(images)[attribute][:, index] >= self.threshold

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        probs = self.probabilities(images)
        best = {a: p.argmax(dim=-1).tolist() for a, p in probs.items()}
        return [{a: vocab.classes(a)[best[a][i]] for a in vocab.ATTRIBUTES} for i in range(len(images))]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        images = _prepare(images)
        return torch.cat([self.net.features(images[s:s + self.batch_size])
                          for s in range(0, len(images), self.batch_size)]) if len(images) else torch.empty(0)


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """Float (N, 3, 32, 32) in [0, 1]; other sizes are resized (area) so real-model images work."""
    images = images.float()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ErasureLabError(f"judge expects images shaped (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] != (32, 32):
        images = F.interpolate(images, size=(32, 32), mode="area")
    return images.clamp(0, 1)


@register_judge("shapes")
def _shapes_judge() -> ShapesJudge:
    return ShapesJudge()
