"""The Judge protocol and the judge registry (an `erasurelab.registry.Registry`, entry-point group `erasurelab.judges`).

Why a protocol: every number erasurelab reports ("target proportion", "retention") is a judge's
verdict. Judges differ (the shapes CNN here; NudeNet or a CLIP classifier for real models), so
evaluation code talks only to this interface and records the judge's id, which changes whenever
its weights, classes or thresholds do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.registry import Registry


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


class LastBatchMemo:
    """Remembers a judge's per-image outputs for the last batch it saw, keyed by the images' content.

    Why: evaluation asks `present(images, c)` once per concept on the same images; a judge whose
    answers all come from one expensive pass (CLIP features, NudeNet detections) should run it once.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._value: Any = None

    @staticmethod
    def digest(images: torch.Tensor) -> str:
        data = images.detach().cpu().contiguous()
        header = f"{tuple(data.shape)}:{data.dtype}".encode()
        return hashlib.blake2b(header + data.reshape(-1).view(torch.uint8).numpy().tobytes(),
                               digest_size=16).hexdigest()

    def get(self, images: torch.Tensor, compute: Callable[[torch.Tensor], Any]) -> Any:
        key = self.digest(images)
        if key != self._key:
            self._key, self._value = key, compute(images)
        return self._value


class LabelTable:
    """`concepts()` and `attribute_of()` from a concept -> attribute table (`_attribute_of`) and an `id`.

    Why shared: every judge with a fixed label set answers these two the same way, with the same
    one-line error for a concept it does not read.
    """

    id: str
    _attribute_of: dict[str, str]

    def concepts(self) -> list[str]:
        return sorted(self._attribute_of)

    def attribute_of(self, concept: str) -> str:
        """Which attribute (judge head) decides a concept; one-line error for concepts this judge does not read."""
        if concept not in self._attribute_of:
            raise ErasureLabError(f"concept {concept!r} unknown to judge {self.id}"
                                  f"{did_you_mean(concept, self._attribute_of)}")
        return self._attribute_of[concept]


#: Every judge: name -> zero-argument factory; parametric ones ("NAME:ARGUMENT", e.g.
#: "clip:/models/clip-vit-large") -> a factory taking the argument.
JUDGES: Registry[Callable[..., Judge]] = Registry("judge", "erasurelab.judges")


def _summary(factory: Callable[..., Any]) -> str:
    """The first docstring line of the factory, else of the judge class it is annotated to return."""
    import typing

    doc = factory.__doc__
    if not doc:
        try:
            doc = getattr(typing.get_type_hints(factory).get("return"), "__doc__", None)
        except Exception:  # an unresolvable annotation only costs the listing its summary
            doc = None
    return (doc or "").strip().split("\n")[0]


def register_judge(name: str, summary: str = "",
                   aliases: Sequence[str] = ()) -> Callable[[Callable[[], Judge]], Callable[[], Judge]]:
    """Decorator adding a judge factory (no arguments) to the registry under `name`."""

    def add(factory: Callable[[], Judge]) -> Callable[[], Judge]:
        JUDGES.add(name, factory, None, tuple(aliases), summary or _summary(factory))
        return factory

    return add


def register_parametric_judge(name: str, summary: str = "") -> Callable[[Callable[[str], Judge]],
                                                                        Callable[[str], Judge]]:
    """Decorator adding a judge factory that is loaded as "NAME:ARGUMENT" (a folder, a file, ...)."""

    def add(factory: Callable[[str], Judge]) -> Callable[[str], Judge]:
        JUDGES.add(name, factory, None, (), summary or _summary(factory), parametric=True)
        return factory

    return add


def available_judges() -> list[str]:
    """Registered judge names, third-party plugins included; parametric ones are listed as "NAME:ARGUMENT"."""
    JUDGES.load_entry_points()
    return JUDGES.names()


def is_judge_name(name: str) -> bool:
    """True for a registered name or a "NAME:ARGUMENT" of a registered parametric judge."""
    try:
        JUDGES.lookup(name)
    except ErasureLabError:
        return False
    return True


def load_judge(name: str = "shapes") -> Judge:
    """Instantiate a registered judge; unknown names give a one-line error listing valid ones."""
    entry, argument = JUDGES.lookup(name)
    return entry.factory(argument) if entry.parametric else entry.factory()
