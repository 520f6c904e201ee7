"""Small value types of the evaluation: its settings, and the attack result types it consumes.

`Rate`, `AttackResult` and `REFERENCE_MIN_ASR` live in `erasurelab.results` (imported by attacks and
evaluation alike) and are re-exported here so existing imports keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from erasurelab.results import REFERENCE_MIN_ASR, AttackResult, Rate

__all__ = ["REFERENCE_MIN_ASR", "AttackResult", "EvaluationSettings", "Rate"]


@dataclass(frozen=True)
class EvaluationSettings:
    """Every knob of the protocol; defaults are the embedded-world sizes.

    Why one frozen record: the settings are part of what makes two reports comparable, so the
    report prints them and the suites' hashes depend on the sizes chosen here.
    steps/guidance None: the model's defaults (embedded 20 / 5.0, SD 50 / 7.5).

    min_reference_rate: a suite counts toward the forget term f only when the unedited model shows
    the target on at least this fraction of its images. Why 0.1: f compares TP_edited / TP_reference,
    and an edit can only be credited for removing what the reference renders; below 10% a suite
    holds a handful of positive images (8 of the 80 anchor images), where one image moves the ratio
    by an eighth or more, and a concept the model hardly renders there says nothing about erasure.
    second_judge: a registered judge whose predict() labels are compared with the main judge's on
    every rendered image (agreement per shared attribute); None to skip.
    """

    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 32
    base_seed: int = 1
    anchor_seeds: int = 10
    paraphrase_max: int = 200
    neighbour_k: int = 10
    neighbour_templates: int = 5
    neighbour_seeds: int = 4
    min_neighbour_rate: float = 0.2
    unrelated_max: int = 256
    selective_max: int = 100
    judge_accuracy_n: int = 500
    judge_accuracy_seed: int = 90210
    measure_overhead: bool = False
    examples: int = 8
    min_reference_rate: float = 0.1
    second_judge: str | None = "pixels"

    def __post_init__(self) -> None:
        from erasurelab.errors import ErasureLabError

        positive = ("batch_size", "anchor_seeds", "neighbour_templates", "neighbour_seeds", "examples")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ErasureLabError(f"evaluation setting {name} must be positive, got {getattr(self, name)}")
        for name in ("paraphrase_max", "neighbour_k", "unrelated_max", "selective_max", "judge_accuracy_n"):
            if int(getattr(self, name)) < 0:
                raise ErasureLabError(f"evaluation setting {name} must be >= 0, got {getattr(self, name)}")
        if self.steps is not None and self.steps <= 0:
            raise ErasureLabError(f"evaluation setting steps must be positive, got {self.steps}")
        if not 0.0 <= self.min_neighbour_rate <= 1.0:
            raise ErasureLabError(f"min_neighbour_rate must be in [0, 1], got {self.min_neighbour_rate}")
        if not 0.0 <= self.min_reference_rate <= 1.0:
            raise ErasureLabError(f"min_reference_rate must be in [0, 1], got {self.min_reference_rate}")
        if self.neighbour_templates > 5:
            raise ErasureLabError(f"neighbour_templates is at most 5 (the held-out templates), "
                                  f"got {self.neighbour_templates}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
