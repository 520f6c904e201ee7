"""Diagnostics of a fine-tuned model: the concept's guidance direction and its alignment with the original.

Why: the direction ε(x, t, c) − ε(x, t, ∅) is what negative-guidance training reverses, so its
alignment with the original model's direction shows how far an erasure has gone (1 before it,
−η where ESD has converged) without sampling images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from erasurelab.methods.training.diffusion import encode_empty, encode_prompts, unet_output


@torch.no_grad()
def guidance_direction(pipe: Any, prompts: Sequence[str], latents: torch.Tensor,
                       timesteps: torch.Tensor) -> torch.Tensor:
    """ε(x, t, c) − ε(x, t, ∅) for each prompt at fixed (latents[j], timesteps[j]): the concept's pull.

    Alignment of an edited model with the original is ⟨d_edit, d_orig⟩ / ⟨d_orig, d_orig⟩: 1 before
    erasure, −η where ESD has converged.
    """
    cond, empty = encode_prompts(pipe, prompts), encode_empty(pipe)
    out = []
    for j in range(latents.shape[0]):
        n = len(cond)
        x = latents[j:j + 1].expand(n, *latents.shape[1:])
        t = timesteps[j]
        out.append(unet_output(pipe.unet, x, t, cond) - unet_output(pipe.unet, x, t, empty.repeat(n)))
    return torch.stack(out).float()


def alignment(direction: torch.Tensor, reference: torch.Tensor) -> float:
    """⟨d, d_ref⟩ / ⟨d_ref, d_ref⟩ over all elements."""
    return float((direction.double() * reference.double()).sum() / reference.double().pow(2).sum())
