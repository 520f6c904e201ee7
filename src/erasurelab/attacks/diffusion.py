"""The diffusion-loss pieces the optimisation attacks share (textual inversion, UnlearnDiffAtk).

Why one place: both attacks use the edited model as a denoiser, L = ‖target − ε_θ(x_t, t, c)‖², with
x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε from the model's own training schedule and the target chosen by its
prediction type (ε or v). Getting ᾱ from the *sampling* scheduler (DPM-Solver here) would be
wrong for v-prediction models, so the noise schedule is rebuilt as a DDPM scheduler from the
pipeline scheduler's config, which carries the β schedule and prediction type.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from erasurelab.models.sampling import noise_scheduler, seeded  # noqa: F401  (re-exported)


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net should output at (x_t, t): ε for epsilon models, v for v-prediction models."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction type {kind!r} (epsilon and v_prediction are)")


def denoising_loss(pipe: Any, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   context: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the U-Net's prediction at noise level t, computed in float32."""
    unet = pipe.unet
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy.to(unet.dtype), t.to(unet.device), encoder_hidden_states=context.to(unet.dtype)).sample
    return F.mse_loss(pred.float(), prediction_target(scheduler, latents, noise, t).float())


@torch.no_grad()
def images_to_latents(pipe: Any, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VAE posterior means of images in [0, 1], scaled as the U-Net expects (float32, on the U-Net's device).

    Why the mean: deterministic, and what the UnlearnDiffAtk reference code uses for its targets.
    """
    vae = pipe.vae
    scale = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(vae.device, vae.dtype) * 2 - 1
        out.append(((vae.encode(chunk).latent_dist.mean - shift) * scale).float())
    return torch.cat(out).to(pipe.unet.device)


@contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Set requires_grad False on every parameter for the duration, then restore each flag exactly.

    Why: gradients must flow *through* the U-Net and text encoder to the attack variables without
    accumulating `.grad` on the user's weights (memory) or leaving their flags changed.
    """
    flags = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
