"""Diffusion-loss primitives shared by methods and attacks: noising, the ε / v prediction target, image → latent.

Why one place: textual inversion, UnlearnDiffAtk and DUO all use a model as a denoiser,
L = ‖target − ε_θ(x_t, t, c)‖², with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε from the model's own training schedule
and the target chosen by its prediction type (ε or v). Getting ᾱ from the *sampling* scheduler
(DPM-Solver here) would be wrong for v-prediction models, so the noise schedule is rebuilt as a DDPM
scheduler from the pipeline scheduler's config, which carries the β schedule and prediction type.
SDXL's U-Net also reads the pooled text embedding and the size/crop time ids (`added_conditioning`).
"""

from __future__ import annotations

import warnings
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
                   context: Any) -> torch.Tensor:
    """Mean squared error of the U-Net's prediction at noise level t, computed in float32.

    context: token states (n, L, d), or a `tokens.Encoded` (SDXL: with its pooled embedding).
    """
    unet = pipe.unet
    embeds, pooled = (context.embeds, context.pooled) if hasattr(context, "embeds") else (context, None)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy.to(unet.dtype), t.to(unet.device), encoder_hidden_states=embeds.to(unet.dtype),
                added_cond_kwargs=added_conditioning(pipe, pooled, latents)).sample
    return F.mse_loss(pred.float(), prediction_target(scheduler, latents, noise, t).float())


def added_conditioning(pipe: Any, pooled: torch.Tensor | None, latents: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """SDXL's added U-Net inputs for these latents: the pooled text embedding and the size/crop time ids.

    Time ids say "original = target size = the latents' image size, no crop", as the pipeline sets
    them when rendering at that size (the attacks' latents come from such renders). None elsewhere.
    """
    from erasurelab.models.conditioning import is_sdxl, sdxl_time_ids

    if not is_sdxl(pipe):
        return None
    if pooled is None:
        raise ValueError("an SDXL U-Net needs the pooled text embedding (encode with tokens.TextSide)")
    unet = pipe.unet
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    height, width = int(latents.shape[-2]) * scale, int(latents.shape[-1]) * scale
    n = int(latents.shape[0])
    pooled = pooled.to(unet.device, unet.dtype)
    if pooled.shape[0] != n:
        pooled = pooled.expand(n, -1)
    return {"text_embeds": pooled, "time_ids": sdxl_time_ids(pipe, height, width, n, unet.dtype, int(pooled.shape[-1]))}


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


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A DDIM copy of the pipeline's noise schedule with `steps` timesteps (the pipeline's own is untouched).

    Why DDIM: deterministic and stateless between steps, so x_t depends only on its start noise.
    """
    from diffusers import DDIMScheduler

    with warnings.catch_warnings():  # e.g. SD's steps_offset=0 deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(int(steps), device=pipe.unet.device)
    return scheduler
