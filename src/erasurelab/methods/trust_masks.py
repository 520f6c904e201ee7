"""TRuST's pure math: the saliency masks, the CSR curvature estimate and the CIP proximal shrink.

Kept apart from the trainer so each rule can be tested on small tensors without a model
(erasurelab.methods.trust describes where each one enters the method).
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: δ = DELTA_SCALE·RMS(θ_M) for the CSR finite difference.
DELTA_SCALE = 1e-3


def zscore_mask(grad: torch.Tensor, xi: float) -> torch.Tensor:
    """M = 1[(|g| − mean) / std > ξ] over one matrix; all False (never NaN) when std is 0."""
    s = grad.detach().abs().double()
    std = s.std(unbiased=False)
    if not std > 0:
        return torch.zeros_like(s, dtype=torch.bool)
    return (s - s.mean()) / std > xi


def fraction_mask(grad: torch.Tensor, fraction: float) -> torch.Tensor:
    """The max(1, round(f·n)) entries of largest |g| (ties broken by position, deterministically)."""
    s = grad.detach().abs().reshape(-1)
    k = min(s.numel(), max(1, round(fraction * s.numel())))
    mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    mask[torch.topk(s, k, sorted=False).indices] = True
    return mask.reshape(grad.shape)


def saliency_index(n_steps: int, window: str, generator: torch.Generator) -> int:
    """Sampler step at which saliency is scored, uniform within a third of the trajectory.

    "late" (the plain reconstruction): the last third, little noise left. "early": the first third,
    where the layout and the object are decided (the step index counts from pure noise).
    """
    third = max(1, math.ceil(n_steps / 3))
    start = n_steps - third if window == "late" else 0
    return start + int(torch.randint(0, third, (1,), generator=generator))


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0


def rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1


def csr_estimate(fn: Any, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], base: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """R̂ = mean (fn(θ + δ M⊙v) − fn(θ))² / δ² with v Rademacher and δ = 1e-3·RMS(θ_M); 0 for an empty mask.

    fn(overrides) evaluates the model with `overrides` in place of the named tensors; `base` is fn(θ).
    For a linear fn(θ) = Jθ, R̂·numel = ‖J (M⊙v)‖² exactly, for any δ.
    """
    masked = [params[n].detach()[masks[n]] for n in params if bool(masks[n].any())]
    if not masked:
        return base.new_zeros(())
    rms = torch.cat(masked).double().pow(2).mean().sqrt().item()
    delta = DELTA_SCALE * rms if rms > 0 else DELTA_SCALE
    overrides = {}
    for name, param in params.items():
        v = rademacher(param.shape, generator).to(param.device, param.dtype)
        overrides[name] = param + delta * (masks[name].to(param.dtype) * v)
    return (fn(overrides).float() - base.float()).pow(2).mean() / (delta * delta)


def proximal_shrink(param: torch.Tensor, mask: torch.Tensor, grad_abs: torch.Tensor, kappa_w: float) -> torch.Tensor:
    """Soft-thresholding on M: θ_i ← sign(θ_i) max(|θ_i| − κ_W ĝ_i, 0), ĝ = |g| / mean_M |g|; outside M unchanged."""
    if not bool(mask.any()):
        return param.clone()
    g_hat = grad_abs / grad_abs[mask].mean().clamp_min(torch.finfo(grad_abs.dtype).tiny)
    shrunk = param.sign() * (param.abs() - kappa_w * g_hat).clamp_min(0)
    return torch.where(mask, shrunk.to(param.dtype), param)

