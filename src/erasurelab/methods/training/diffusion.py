"""The diffusion primitives the trainers call: conditioning batches, U-Net predictions, DDIM sampling.

Why a `Cond` beside `models.conditioning.Conditioning`: training indexes, repeats and concatenates
conditioning rows every step, and SDXL's U-Net takes its pooled embedding and time ids as one
`added_cond_kwargs` dict, so `Cond` holds exactly what the U-Net call takes. The prompts are
encoded by `models.conditioning`, as the pipeline encodes them.

Why `params` on `unet_output`: frozen (original-weight) predictions run the same module through
`torch.func.functional_call` with the original tensors swapped in, bit-identical to a frozen copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from erasurelab.models.conditioning import encode, encode_unconditional, is_sdxl, sdxl_time_ids
from erasurelab.models.diffusion import ddim_scheduler  # noqa: F401  (re-exported for the trainers)
from erasurelab.models.kv_reuse import reuse_cross_attention_kv


@dataclass(frozen=True)
class Cond:
    """Encoded prompts as the U-Net takes them: token states and, for SDXL, added conditioning."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def take(self, index: Sequence[int] | torch.Tensor) -> Cond:
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        added = None if self.added is None else {k: v[idx.to(v.device)] for k, v in self.added.items()}
        return Cond(self.embeds[idx.to(self.embeds.device)], added)

    def repeat(self, n: int) -> Cond:
        """All rows, n times over (n copies of a single prompt's row for the "" branch)."""
        return self.take([i for _ in range(n) for i in range(len(self))])

    @staticmethod
    def cat(parts: Sequence[Cond]) -> Cond:
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}  # type: ignore[index]
        return Cond(torch.cat([p.embeds for p in parts]), added)


def latent_size(unet: torch.nn.Module) -> int:
    """The U-Net's configured latent height (= width) in latent pixels."""
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> Cond:
    """The positive-branch conditioning of prompts, exactly as the pipeline builds it."""
    out = encode(pipe, list(prompts))
    return _as_cond(pipe, out.embeds, out.pooled) if is_sdxl(pipe) else Cond(out.embeds.to(pipe.unet.dtype))


def encode_empty(pipe: Any) -> Cond:
    """The "" (negative) branch as the pipeline builds it for classifier-free guidance."""
    out = encode_unconditional(pipe)
    return _as_cond(pipe, out.embeds, out.pooled) if is_sdxl(pipe) else Cond(out.embeds.to(pipe.unet.dtype))


def _as_cond(pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor) -> Cond:
    unet = pipe.unet
    height = latent_size(unet) * int(getattr(pipe, "vae_scale_factor", 8))
    n = int(embeds.shape[0])
    ids = sdxl_time_ids(pipe, height, height, n, unet.dtype, int(pooled.shape[-1]))
    return Cond(embeds.to(unet.dtype), {"text_embeds": pooled.to(unet.dtype), "time_ids": ids})


def _timesteps(t: torch.Tensor | int, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(n) if t.dim() == 0 else t.to(device)


def unet_output(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | int, cond: Cond,
                params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The U-Net's prediction at (x, t, cond); with `params`, those tensors replace the module's own."""
    kwargs = {"encoder_hidden_states": cond.embeds, "added_cond_kwargs": cond.added}
    args = (x.to(unet.device, unet.dtype), _timesteps(t, x.shape[0], unet.device))
    if params is None:
        return unet(*args, **kwargs).sample
    return torch.func.functional_call(unet, dict(params), args, kwargs).sample


#: A prediction function (x, t, cond) -> model output, e.g. `FineTuner.frozen`.
ModelFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


@torch.no_grad()
def denoise(model: ModelFn, scheduler: Any, latents: torch.Tensor, cond: Cond, empty: Cond, guidance: float,
            n_steps: int, record: bool = False, unet: torch.nn.Module | None = None) -> torch.Tensor:
    """Run the first `n_steps` CFG sampler steps from `latents` (which sit at timesteps[0]).

    Returns the latents after n_steps (at timesteps[n_steps], or x_0 when n_steps = len(timesteps)),
    or with record=True every latent before each step, shape (n_steps, B, ...).
    unet: the U-Net `model` runs; its cross-attention keys and values are computed once for all steps
    (`models.kv_reuse`, bit-identical results).
    """
    n = latents.shape[0]
    both = Cond.cat([empty.repeat(n), cond])
    seen = []
    with reuse_cross_attention_kv(unet):
        for t in scheduler.timesteps[:n_steps]:
            if record:
                seen.append(latents)
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            uncond, conditional = model(model_in, t, both).chunk(2)
            latents = scheduler.step(uncond + guidance * (conditional - uncond), t, latents).prev_sample
    return torch.stack(seen) if record else latents


def start_noise(unet: torch.nn.Module, scheduler: Any, generator: torch.Generator, n: int = 1) -> torch.Tensor:
    """x_T for n samples (scaled by the sampler's init_noise_sigma), drawn on the CPU."""
    shape = (n, int(unet.config.in_channels), latent_size(unet), latent_size(unet))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (noise * scheduler.init_noise_sigma).to(unet.device, unet.dtype)
