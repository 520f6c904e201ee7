"""The result types attacks hand to the evaluator: `Rate` and `AttackResult`, plus `REFERENCE_MIN_ASR`.

Why a module of their own: the attacks package produces `AttackResult`s and the evaluator consumes
them; neither should import the other, so the contract lives here, with no heavy imports
(`erasurelab.evaluation.types` re-exports it). Every rate carries its numerator and denominator so
a report never shows "0.5" without saying "of how many".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: An attack whose ASR on the unedited model is below this "does not work": its reference check fails
#: and its ASR on the edited model is reported as not meaningful. Home of the constant (attacks import it).
REFERENCE_MIN_ASR = 0.5


@dataclass(frozen=True)
class Rate:
    """A proportion stored as numerator / denominator; `value` is nan when the denominator is 0."""

    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        if self.denominator < 0 or self.numerator < 0 or self.numerator > self.denominator:
            raise ValueError(f"invalid rate {self.numerator}/{self.denominator}")

    @property
    def value(self) -> float:
        return self.numerator / self.denominator if self.denominator else float("nan")

    @classmethod
    def of(cls, flags: torch.Tensor | list[bool]) -> Rate:
        """The rate of True among boolean flags."""
        flags = torch.as_tensor(flags, dtype=torch.bool)
        return cls(int(flags.sum()), int(flags.numel()))

    def to_dict(self) -> dict[str, Any]:
        return {"numerator": self.numerator, "denominator": self.denominator, "value": self.value}

    def __str__(self) -> str:
        return f"{self.value:.3f} ({self.numerator}/{self.denominator})"


@dataclass
class AttackResult:
    """What one attack on one concept hands to the evaluator.

    asr is measured on the edited model; pre_asr is the same count for the unattacked prompts on
    the edited model; reference_asr is the attack's ASR on the unedited model (sanity check: an
    attack that fails there makes its ASR on the edited model meaningless). images are example
    renders on the edited model, (N, 3, H, W) in [0, 1], aligned with prompts when given.
    budget holds steps, U-Net forward/backward counts, wall time and peak memory. curves: what an
    attack measures along its run, JSON-ready (the "ft" attack: target proportion at every
    fine-tuning checkpoint and the re-emergence ratio, see erasurelab.finetuning.curves); an
    AttackRun takes them from its runs' outcome extra "curves", the reference run's (which follows
    the edited run and can complete it) first.
    """

    name: str
    concept: str
    asr: Rate
    pre_asr: Rate | None = None
    reference_asr: Rate | None = None
    prompts: list[str] = field(default_factory=list)
    images: torch.Tensor | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.curves:  # an AttackRun: the curves its runs reported
            suite = getattr(self, "suite", None) or {}
            for role in ("reference_info", "edited_info"):
                found = (suite.get(role) or {}).get("curves")
                if found:
                    self.curves = dict(found)
                    break

    @property
    def delta_asr(self) -> float | None:
        """ΔASR = ASR − pre-ASR, or None without a pre-ASR."""
        return None if self.pre_asr is None else self.asr.value - self.pre_asr.value

    @property
    def reference_passed(self) -> bool | None:
        """The sanity check: does the attack work on the unedited model (ASR >= REFERENCE_MIN_ASR)?

        None when no reference ASR was measured; False when it has no scoreable instance.
        """
        if self.reference_asr is None:
            return None
        return self.reference_asr.denominator > 0 and self.reference_asr.value >= REFERENCE_MIN_ASR

    @property
    def scoreable(self) -> bool:
        """Whether the attack has at least one scoreable instance on the edited model."""
        return self.asr.denominator > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (images are left out; the report embeds them separately)."""
        return {
            "name": self.name,
            "concept": self.concept,
            "asr": self.asr.to_dict(),
            "pre_asr": None if self.pre_asr is None else self.pre_asr.to_dict(),
            "reference_asr": None if self.reference_asr is None else self.reference_asr.to_dict(),
            "delta_asr": self.delta_asr,
            "reference_passed": self.reference_passed,
            "reference_min_asr": REFERENCE_MIN_ASR,
            "prompts": list(self.prompts),
            "n_images": 0 if self.images is None else len(self.images),
            "budget": dict(self.budget),
            **({"curves": self.curves} if self.curves else {}),
        }
