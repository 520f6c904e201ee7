"""The Judge protocol and the judge registry.

Why a protocol: every number erasurelab reports ("target proportion", "retention") is a judge's
verdict. Judges differ (the shapes CNN here; NudeNet or a CLIP classifier for real models), so
evaluation code talks only to this interface and records the judge's id, which changes whenever
its weights, classes or thresholds do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from erasurelab.errors import ErasureLabError, did_you_mean


@runtime_checkable
class Judge(Protocol):
    """Detects concepts in images. Images are float tensors (N, 3, H, W) in [0, 1]."""

    #: Stable identifier: name, version and a hash of the weights and thresholds.
    id: str

    def concepts(self) -> list[str]:
        """Every concept label this judge can detect."""

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        """Boolean (N,) tensor: does each image show the concept?"""

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        """For each image, the predicted label per attribute the judge knows."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, m) penultimate features, for Frechet distances."""


_JUDGES: dict[str, Callable[[], Judge]] = {}


def register_judge(name: str) -> Callable[[Callable[[], Judge]], Callable[[], Judge]]:
    """Decorator adding a judge factory to the registry under `name`."""

    def add(factory: Callable[[], Judge]) -> Callable[[], Judge]:
        _JUDGES[name] = factory
        return factory

    return add


def available_judges() -> list[str]:
    return sorted(_JUDGES)


def load_judge(name: str = "shapes") -> Judge:
    """Instantiate a registered judge; unknown names give a one-line error listing valid ones."""
    if name not in _JUDGES:
        raise ErasureLabError(f"unknown judge {name!r}{did_you_mean(name, _JUDGES)}; "
                              f"available: {', '.join(available_judges())}")
    return _JUDGES[name]()
