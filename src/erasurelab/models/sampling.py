"""Batched, seeded image generation shared by the CLI, benchmarks, evaluation and attacks.

Why one generator per image: the noise of image i comes from its own CPU torch.Generator seeded
with seeds[i], so an image is the same whether it is rendered alone or inside any batch, on CPU
or GPU. Results are reproducible from (prompt, seed) alone.

Why bf16 autocast is an option and not the default: on a CPU with native bf16 matrix instructions
it makes the U-Net's convolutions and matmuls markedly faster, but the rule for making it the
default is that the shapes judge's verdicts on the world's canonical prompts change on under 1% of
images, and the style verdict misses that rule; bf16 also breaks the batch independence above
beyond float rounding. bench/bench_generation.py measures both the speed-up and the verdict changes
(bench/results/generation.json). So "auto" means float32; autocast=True (or the variable below)
trades those verdicts for speed, e.g. in exploratory runs.
`ERASURELAB_AUTOCAST=on|off|auto` overrides the default everywhere (benches, A/B checks).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from erasurelab.errors import ErasureLabError
from erasurelab.models.kv_reuse import reuse_cross_attention_kv
from erasurelab.models.provenance import base_source_of
from erasurelab.runinfo import cpu_bf16_capable


def is_embedded(pipe: Any) -> bool:
    """True for the embedded shapes model, also after an edit was applied to it (a saved run)."""
    return str(base_source_of(pipe) or "").startswith("builtin:")


#: Environment override of generate()'s autocast default: "on", "off" or "auto".
AUTOCAST_ENV = "ERASURELAB_AUTOCAST"
_ON, _OFF = {"on", "1", "true", "bf16", "yes"}, {"off", "0", "false", "fp32", "no"}


def _unet_param(pipe: Any) -> torch.Tensor | None:
    unet = getattr(pipe, "unet", None)
    return next(iter(unet.parameters()), None) if isinstance(unet, torch.nn.Module) else None


def resolve_autocast(pipe: Any, autocast: bool | None = None) -> bool:
    """Whether generate() samples `pipe` under bf16 autocast.

    autocast: True / False force it; None ("auto") follows `ERASURELAB_AUTOCAST` if set, else float32
    (bf16 failed the verdict rule in the module docstring on the embedded model, the only one checked).
    """
    if autocast is not None:
        return bool(autocast)
    env = os.environ.get(AUTOCAST_ENV, "auto").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    if env not in {"", "auto"}:
        raise ErasureLabError(f"{AUTOCAST_ENV}={env!r} is not one of on, off, auto")
    return False


def sampler_info(pipe: Any, autocast: bool | None = None) -> dict[str, Any]:
    """How generate() will sample `pipe`: {"autocast": "bf16" or "off", "dtype": weight dtype}; for records and keys."""
    param = _unet_param(pipe)
    return {"autocast": "bf16" if resolve_autocast(pipe, autocast) else "off",
            "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "unknown"}


def _precision(pipe: Any, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device_type(pipe), dtype=torch.bfloat16)


def _device_type(pipe: Any) -> str:
    param = _unet_param(pipe)
    return param.device.type if param is not None else "cpu"


_UNSET = object()


@contextlib.contextmanager
def progress_bar_disabled(pipe: Any, disable: bool = True) -> Any:
    """Silence a diffusers pipeline's per-step progress bar for the calls inside, then restore its own config.

    Why per call and not once at load: the pipeline is the caller's object, and erasurelab leaves
    its settings as it found them (no attribute added or left changed).
    """
    setter = getattr(pipe, "set_progress_bar_config", None)
    if not disable or setter is None:
        yield pipe
        return
    saved = getattr(pipe, "_progress_bar_config", _UNSET)  # diffusers' own store of the config
    setter(**{**(saved if isinstance(saved, dict) else {}), "disable": True})
    try:
        yield pipe
    finally:
        if saved is _UNSET:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


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


#: SD's usual sampler defaults, for models whose source registered none.
SD_SAMPLING: tuple[int, float] = (50, 7.5)
#: (steps, guidance) defaults per model spec (e.g. "builtin:shapes"), registered by the plugin that ships the model.
SAMPLING_DEFAULTS: dict[str, tuple[int, float]] = {}


def register_sampling_defaults(source: str, steps: int, guidance: float) -> None:
    """Make `steps` / `guidance` the defaults of every pipeline loaded from model spec `source` (and its runs)."""
    SAMPLING_DEFAULTS[str(source)] = (int(steps), float(guidance))


def sampling_defaults(source: str | None) -> tuple[int, float]:
    """(steps, guidance) registered for model spec `source` (plugins loaded first), else SD's usual 50 / 7.5."""
    from erasurelab.plugins import load_plugins

    load_plugins()
    return SAMPLING_DEFAULTS.get(str(source), SD_SAMPLING) if source else SD_SAMPLING


def default_sampling(pipe: Any) -> tuple[int, float]:
    """(steps, guidance) defaults: those registered for the pipeline's model source (the embedded
    world's for builtin:shapes and runs on it), or SD's usual 50 / 7.5."""
    return sampling_defaults(base_source_of(pipe))


def _negative_conditioning(pipe: Any, negative_prompt: str | None, guidance: float) -> Any:
    """The negative branch, encoded once per `generate` call; None without classifier-free guidance (the
    pipeline's own condition, guidance > 1) or for pipelines without `encode_prompt`."""
    if guidance <= 1 or not callable(getattr(pipe, "encode_prompt", None)):
        return None
    from erasurelab.models.conditioning import encode, encode_unconditional

    return encode(pipe, [negative_prompt]) if negative_prompt is not None else encode_unconditional(pipe)


def _embedding_inputs(conditioning: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A Conditioning as the pipeline's keyword arguments (`prompt_embeds`, and SDXL's pooled embeddings)."""
    inputs = {f"{prefix}prompt_embeds": conditioning.embeds}
    if conditioning.pooled is not None:
        inputs[f"{prefix}pooled_prompt_embeds"] = conditioning.pooled
    return inputs


def _text_inputs(pipe: Any, chunk: list[str], negative_prompt: str | None, negative: Any) -> dict[str, Any]:
    """The pipeline's text inputs for one batch, each distinct prompt encoded once; `negative` is the
    call's `_negative_conditioning`.

    Why: evaluation suites render each prompt at several seeds, and the pipeline would encode every
    copy, plus one empty negative prompt per image (the measured cost: bench/results/evaluate.md). The
    embeddings come from `pipe.encode_prompt` (models.conditioning), so they
    are the tensors the pipeline would build itself. Pipelines without `encode_prompt` get the prompts.
    """
    if not callable(getattr(pipe, "encode_prompt", None)):
        negatives = [negative_prompt] * len(chunk) if negative_prompt is not None else None
        return {"prompt": chunk, "negative_prompt": negatives}
    from erasurelab.models.conditioning import encode

    position = {prompt: k for k, prompt in enumerate(dict.fromkeys(chunk))}
    inputs = _embedding_inputs(encode(pipe, list(position)).take([position[p] for p in chunk]), "")
    if negative is not None:
        inputs.update(_embedding_inputs(negative.take([0] * len(chunk)), "negative_"))
    return inputs


def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
             guidance: float | None = None, batch_size: int = 16, quiet: bool = True,
             negative_prompt: str | None = None, autocast: bool | None = None) -> torch.Tensor:
    """Render prompts[i] with seeds[i]; returns float images (N, 3, H, W) in [0, 1] on the CPU.

    autocast: bf16 autocast on / off; None = the default of `resolve_autocast` (float32 unless
    `ERASURELAB_AUTOCAST` says otherwise).
    """
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
    use_autocast = resolve_autocast(pipe, autocast)
    if use_autocast and _device_type(pipe) == "cpu" and not cpu_bf16_capable():
        warnings.warn("bf16 autocast on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and runs "
                      "several times slower than float32; unset ERASURELAB_AUTOCAST or pass autocast=False",
                      RuntimeWarning, stacklevel=2)
    with torch.no_grad(), _precision(pipe, use_autocast):
        negative = _negative_conditioning(pipe, negative_prompt, guidance)
    images = []
    starts = range(0, len(prompts), batch_size)
    # Quiet, or several batches under the bar below: the pipeline's per-step bar is off for these calls only.
    for start in tqdm(starts, desc="generating", disable=quiet or len(starts) < 2):
        chunk = list(prompts[start:start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        with (torch.no_grad(), _precision(pipe, use_autocast), progress_bar_disabled(pipe, quiet or len(starts) > 1),
              reuse_cross_attention_kv(getattr(pipe, "unet", None))):
            out = pipe(**_text_inputs(pipe, chunk, negative_prompt, negative), generator=generators,
                       num_inference_steps=steps, guidance_scale=guidance, output_type="pt")
        batch = out.images if isinstance(out.images, torch.Tensor) else torch.as_tensor(out.images)
        if not torch.isfinite(batch).all():
            raise ErasureLabError("generation produced NaN/inf pixels: the model weights are broken")
        images.append(batch.float().cpu())
    return torch.cat(images)
