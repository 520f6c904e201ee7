"""Image-to-image (SDEdit) on any loaded pipeline, seeded per image like `models.sampling.generate`.

Why from the pipeline's own components: an img2img pipeline built with `**pipe.components` shares
the very modules (no copy, no download), so SDEdit runs the same U-Net, VAE, text encoder and
sampler the text-to-image pipeline does — the embedded model, SD-1.x/2.x or SDXL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models.conditioning import is_sdxl
from erasurelab.models.kv_reuse import reuse_cross_attention_kv
from erasurelab.models.sampling import default_sampling


def img2img_pipeline(pipe: Any) -> Any:
    """The img2img counterpart of `pipe` over the same components (SDXL: StableDiffusionXLImg2ImgPipeline)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    cls = StableDiffusionXLImg2ImgPipeline if is_sdxl(pipe) else StableDiffusionImg2ImgPipeline
    # A pipeline loaded without a safety checker keeps it off here too, without diffusers' warning per call.
    extra = {"requires_safety_checker": False} if not is_sdxl(pipe) and pipe.components.get("safety_checker") is None \
        else {}
    try:
        out = cls(**pipe.components, **extra)
    except TypeError as exc:
        raise ErasureLabError(f"cannot build {cls.__name__} from a {type(pipe).__name__}: {exc}") from exc
    out.set_progress_bar_config(disable=True)
    return out


def check_denoising_steps(steps: int, strength: float) -> None:
    """One-line error when SDEdit would re-run no sampler step (diffusers runs int(steps · strength) of them)."""
    if int(int(steps) * float(strength)) < 1:
        raise ErasureLabError(f"img2img at strength {strength} with {steps} sampler steps runs no denoising step; "
                              "use more steps or a higher strength")


def img2img(pipe: Any, images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], strength: float = 0.75,
            guidance: float | None = None, steps: int | None = None, negative_prompts: Sequence[str] | None = None,
            batch_size: int = 16) -> torch.Tensor:
    """SDEdit images[i] (float (N, 3, H, W) in [0, 1]) towards prompts[i] with seeds[i]; returns images in [0, 1].

    strength: fraction of the sampler's steps re-run (0.75: noise to 3/4 of the schedule, then denoise).
    negative_prompts: per-image negative prompts (DUO: the unsafe prompt), None for the "" branch.
    """
    n = len(prompts)
    if len(images) != n or len(seeds) != n or (negative_prompts is not None and len(negative_prompts) != n):
        raise ErasureLabError(f"img2img needs one image, seed and negative prompt per prompt; got {len(images)} "
                              f"images, {n} prompts, {len(seeds)} seeds")
    if not 0.0 < float(strength) <= 1.0:
        raise ErasureLabError(f"img2img strength must be in (0, 1], got {strength!r}")
    default_steps, default_guidance = default_sampling(pipe)
    steps = default_steps if steps is None else int(steps)
    guidance = default_guidance if guidance is None else float(guidance)
    check_denoising_steps(steps, strength)
    edit = img2img_pipeline(pipe)
    out = []
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:end]]
        negative = list(negative_prompts[start:end]) if negative_prompts is not None else None
        with torch.no_grad(), reuse_cross_attention_kv(pipe.unet):
            result = edit(prompt=list(prompts[start:end]), image=images[start:end].float().clamp(0, 1),
                          negative_prompt=negative, strength=float(strength), guidance_scale=guidance,
                          num_inference_steps=steps, generator=generators, output_type="pt")
        batch = result.images if isinstance(result.images, torch.Tensor) else torch.as_tensor(result.images)
        if not torch.isfinite(batch).all():
            raise ErasureLabError("img2img produced NaN/inf pixels: the model weights are broken")
        out.append(batch.float().cpu())
    return torch.cat(out)
