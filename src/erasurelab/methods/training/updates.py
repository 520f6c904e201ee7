"""Optimiser steps confined to a mask, and trained − original deltas that are exact.

Why masked steps: TRuST confines its updates to a per-parameter mask, and Adam's stale moments
would otherwise keep moving entries outside it. Why exact deltas: an Edit applied to the original
weights must reproduce the trained weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def apply_masked_update(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter],
                        masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """optimizer.step() confined to the masks: entries with mask 0 keep their value and their moments.

    Why: multiplying the gradient by the mask keeps new gradient out, restoring the value keeps
    stale moments (and Adam's bias correction) from moving an entry outside the mask, and restoring
    the moments keeps zero gradients from decaying them (first moment ×0.9 per step). With a mask
    re-drawn often (TRuST's masks overlap only partly between refreshes) decayed moments would
    leave an entry re-entering the mask only a fraction of a step; TRuST keeps them.
    """
    if not masks:
        optimizer.step()
        return
    before = {}
    for name, param in params.items():
        mask = masks.get(name)
        if mask is None:
            continue
        if param.grad is not None:
            param.grad.mul_(mask.to(param.grad.dtype))
        moments = {k: v.clone() for k, v in optimizer.state.get(param, {}).items() if k.startswith("exp_avg")}
        before[name] = (param.detach().clone(), moments)
    optimizer.step()
    with torch.no_grad():
        for name, (old, moments) in before.items():
            param, keep = params[name], masks[name] != 0
            param.copy_(torch.where(keep, param, old))
            state = optimizer.state[param]
            for key, value in moments.items():
                state[key].copy_(torch.where(keep, state[key], value))


def exact_delta(trained: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """trained − original such that original + delta (in float64, cast back) reproduces trained bit for bit.

    float32 when that is exact (nearly always for fine-tuning steps, by Sterbenz's lemma), else float64.
    """
    trained, original = trained.detach().cpu(), original.detach().cpu()
    wide = trained.double() - original.double()
    narrow = wide.float()
    if torch.equal((original.double() + narrow.double()).to(trained.dtype), trained):
        return narrow
    return wide
