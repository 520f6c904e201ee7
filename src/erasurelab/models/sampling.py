"""Batched, seeded image generation shared by the CLI, benchmarks, evaluation and attacks.

Why one generator per image: the noise of image i comes from its own CPU torch.Generator seeded
with seeds[i], so an image is the same whether it is rendered alone or inside any batch, on CPU
or GPU (evaluation.md §2). Results are reproducible from (prompt, seed) alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from erasurelab.errors import ErasureLabError


def is_embedded(pipe: Any) -> bool:
    """True for the embedded shapes model, also after an edit was applied to it (a saved run)."""
    base = getattr(pipe, "erasurelab_base_source", None) or getattr(pipe, "erasurelab_source", "")
    return str(base).startswith("builtin:")


def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (e.g. seed, stream, step, prompt, iteration).

    Why per (keys) instead of one stream: work that is resumed, shortened or run on a subset
    (an attack, a fine-tuning run) draws the same noise for the same step.
    """
    value = 0
    for key in keys:
        value = (value * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator("cpu").manual_seed(value)


def noise_scheduler(pipe: Any) -> Any:
    """A DDPM scheduler with the pipeline's training noise schedule (ᾱ_t for x_t = √ᾱ x_0 + √(1-ᾱ) ε, and
    the prediction type), whatever sampler the pipeline itself uses."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def default_sampling(pipe: Any) -> tuple[int, float]:
    """(steps, guidance) defaults: the embedded world's, or SD's usual 50 / 7.5."""
    if is_embedded(pipe):
        from erasurelab.world.architecture import DEFAULT_GUIDANCE, DEFAULT_STEPS

        return DEFAULT_STEPS, DEFAULT_GUIDANCE
    return 50, 7.5


def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
             guidance: float | None = None, batch_size: int = 16, quiet: bool = True,
             negative_prompt: str | None = None) -> torch.Tensor:
    """Render prompts[i] with seeds[i]; returns float images (N, 3, H, W) in [0, 1] on the CPU."""
    if len(prompts) != len(seeds):
        raise ErasureLabError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if not prompts:
        raise ErasureLabError("nothing to generate: the prompt list is empty")
    default_steps, default_guidance = default_sampling(pipe)
    steps = default_steps if steps is None else steps
    guidance = default_guidance if guidance is None else guidance
    if steps <= 0:
        raise ErasureLabError(f"steps must be positive, got {steps}")
    if batch_size <= 0:
        raise ErasureLabError(f"batch size must be positive, got {batch_size}")
    images = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", disable=quiet or len(starts) < 2):
        chunk = list(prompts[start:start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        negative = [negative_prompt] * len(chunk) if negative_prompt is not None else None
        with torch.no_grad():
            out = pipe(prompt=chunk, negative_prompt=negative, generator=generators, num_inference_steps=steps,
                       guidance_scale=guidance, output_type="pt")
        batch = out.images if isinstance(out.images, torch.Tensor) else torch.as_tensor(out.images)
        if not torch.isfinite(batch).all():
            raise ErasureLabError("generation produced NaN/inf pixels: the model weights are broken")
        images.append(batch.float().cpu())
    return torch.cat(images)
