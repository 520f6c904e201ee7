"""The loss terms ESD and TRuST share: noise MSE, the negative-guidance target, the retain term.

Why here and not in each method: both methods regress a prediction onto a target built from the
frozen model, and both may add the same preservation term on retain prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from erasurelab.methods.training.diffusion import Cond, encode_prompts
from erasurelab.methods.training.streams import STREAM_RETAIN, step_generator

if TYPE_CHECKING:
    from erasurelab.methods.finetune import FineTuner


def noise_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (prediction - target)^2, in float32 (the loss of ESD and TRuST)."""
    return (prediction.float() - target.float()).pow(2).mean()


def negative_guidance(eps_concept: torch.Tensor, eps_base: torch.Tensor, eta: float) -> torch.Tensor:
    """y = ε_base − η (ε_c − ε_base): the base prediction pushed away from the concept.

    ESD's target with base ∅; TRuST's L_prev target with base = the guide anchor.
    """
    return eps_base - eta * (eps_concept - eps_base)


def retain_conditioning(pipe: Any, retain: Sequence[str], weight: float) -> Cond | None:
    """Encoded retain prompts, or None when there are none or the retain term is off."""
    return encode_prompts(pipe, retain) if retain and weight > 0 else None


def retain_term(tuner: FineTuner, x_t: torch.Tensor, t: torch.Tensor, retain: Cond | None, step: int,
                seed: int) -> torch.Tensor | None:
    """Preservation loss ‖ε_θ(x_t, t, c_r) − ε_*(x_t, t, c_r)‖² on retain anchors, at the same x_t.

    Retain prompts are drawn per sample from the (seed, step) retain stream.
    """
    cond = retain_draw(retain, x_t.shape[0], step, seed)
    if cond is None:
        return None
    return noise_mse(tuner.predict(x_t, t, cond), tuner.frozen(x_t, t, cond))


def retain_draw(retain: Cond | None, n: int, step: int, seed: int) -> Cond | None:
    """The retain prompts of this step's n samples, drawn from the (seed, step) retain stream; None if none."""
    if retain is None or len(retain) == 0:
        return None
    generator = step_generator(seed, STREAM_RETAIN, step)
    return retain.take(torch.randint(0, len(retain), (n,), generator=generator))
