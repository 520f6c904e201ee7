"""The three kinds of weight delta an Edit holds, and the low-rank algebra between them.

  LowRank(B, A)  ΔW = B @ A (closed-form methods, LoRA adapters): exported exactly as a LoRA;
  Dense(delta)   ΔW given in full (full fine-tuning): exported as a truncated-SVD LoRA;
  Replace(W)     the edited weight itself (what a saved `full` run holds): a delta only given its base.

Why factors are refactored rather than multiplied out: a rank-r edit of a large weight stays
O(d r) in memory and O(d r²) in time, and low-rank sums stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erasurelab.errors import ErasureLabError

#: Dense deltas exported without a rank keep singular values above this fraction of the largest:
#: below float32 resolution, so the export is exact at the precision the LoRA is stored in.
DENSE_RTOL = 1e-7


@dataclass(frozen=True)
class LowRank:
    """ΔW = B @ A with B (out, r) and A (r, in); kept in float64 so apply is exact to rounding."""

    B: torch.Tensor
    A: torch.Tensor

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.A.dim() != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"bad low-rank factors: B {tuple(self.B.shape)}, A {tuple(self.A.shape)}")

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.B.double() @ self.A.double()


@dataclass(frozen=True)
class Dense:
    """ΔW given in full."""

    value: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.value.shape)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.value.double()


@dataclass(frozen=True)
class Replace:
    """The edited weight itself; its delta is defined only relative to a base weight."""

    weight: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.weight.shape)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        if base is None:
            raise ErasureLabError("a full-weights edit needs its base model to express a delta (pass base=pipe)")
        return self.weight.double() - base.detach().cpu().double()


Delta = LowRank | Dense | Replace


def compress_low_rank(B: torch.Tensor, A: torch.Tensor, rtol: float = 1e-12,
                      max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Re-factor B @ A at its numerical rank (or at most max_rank): (B', A', relative error).

    Why QR + SVD of the small core: the product is never formed, so a rank-r edit of a
    1280x768 weight costs O(d r^2), and the kept factors are orthogonally balanced.
    """
    B, A = B.double(), A.double()
    if B.shape[1] == 0:
        return B, A, 0.0
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if max_rank is not None:
        keep = min(keep, max_rank)
    total = float((s ** 2).sum())
    error = float((s[keep:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    root = s[:keep].sqrt()
    return (q_b @ u[:, :keep]) * root, root[:, None] * (vh[:keep] @ q_a.T), error


def dense_to_low_rank(delta: torch.Tensor, rank: int | None = None,
                      rtol: float = DENSE_RTOL) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of a dense delta: (B, A, ‖ΔW − BA‖_F / ‖ΔW‖_F)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if rank is not None:
        keep = min(keep, rank)
    total = float((s ** 2).sum())
    error = float((s[keep:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    root = s[:keep].sqrt()
    return u[:, :keep] * root, root[:, None] * vh[:keep], error
