"""Cross-attention activation capture along a short DDIM trajectory (PURE's data).

What is recorded: for every `attn2`, the INPUT of `attn2.to_out[0]`, i.e. softmax(QKᵀ/√d)V with
heads concatenated, shape (B, N, d). That is the only space where editing W_V by E maps
h -> E h; capturing after to_out has the same width and runs without error but is the wrong
space, so the hook sits on `to_out[0]` as a forward *pre*-hook.
Only the conditional half of the CFG batch is kept (diffusers orders it [uncond, cond]) and it is
pooled by the mean over the N spatial queries: one vector per (prompt, seed, step, layer).

Why the pipeline's own components: prompts are encoded by `pipe.encode_prompt` and the U-Net is
the pipeline's, so the activations are the ones generation produces; only the scheduler is a
DDIM copy built from the pipeline's config, so collection never mutates the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from erasurelab.errors import ErasureLabError
from erasurelab.models.conditioning import Conditioning, encode, encode_unconditional, is_sdxl, sdxl_time_ids
from erasurelab.models.diffusion import ddim_scheduler
from erasurelab.models.kv_reuse import reuse_cross_attention_kv
from erasurelab.models.layers import CrossAttentionLayer, cross_attention_layers


@dataclass(frozen=True)
class CaptureConfig:
    """Trajectory used for collection (PURE's collection settings): DDIM, 10 steps, CFG 7.5, seeds 0..3."""

    steps: int = 10
    guidance: float = 7.5
    seeds: tuple[int, ...] = field(default=(0, 1, 2, 3))
    batch_size: int = 16
    latent_size: int | None = None

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ErasureLabError(f"capture steps must be positive, got {self.steps}")
        if not self.seeds:
            raise ErasureLabError("capture needs at least one latent seed")
        if self.batch_size <= 0:
            raise ErasureLabError(f"capture batch size must be positive, got {self.batch_size}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))


class ToOutInputRecorder:
    """Context manager: forward pre-hooks on each layer's `to_out[0]` that keep its latest input.

    Hooks are removed on exit even when the forward pass raises, so a failed collection never
    leaves a model that silently records (and holds memory) forever.
    """

    def __init__(self, layers: Sequence[CrossAttentionLayer]) -> None:
        self.layers = list(layers)
        self.latest: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Any:
        def record(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            self.latest[name] = args[0].detach()

        return record

    def __enter__(self) -> ToOutInputRecorder:
        try:
            for layer in self.layers:
                self._handles.append(layer.module.to_out[0].register_forward_pre_hook(self._hook(layer.name)))
        except BaseException:
            self.close()
            raise
        return self

    def pop(self, name: str) -> torch.Tensor:
        if name not in self.latest:
            raise ErasureLabError(f"cross-attention layer {name} produced no activation: its forward did not run "
                                  "(is the layer used by this U-Net's processors?)")
        return self.latest.pop(name)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.latest.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _latents(unet: Any, seeds: Sequence[int], size: int) -> torch.Tensor:
    """One latent per seed from its own CPU generator: a sample is independent of its batch."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, int(unet.config.in_channels), size, size)
    return torch.cat([randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
                      for s in seeds]).to(device=unet.device, dtype=unet.dtype)


def _latent_size(pipe: Any, config: CaptureConfig) -> int:
    if config.latent_size is not None:
        return int(config.latent_size)
    size = pipe.unet.config.sample_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def _pool_cond(h: torch.Tensor, n: int, name: str, prompts: Sequence[str]) -> torch.Tensor:
    """(2n, N, d) CFG batch -> (n, d) float64: conditional half, mean over spatial queries."""
    if h.dim() != 3 or h.shape[0] != 2 * n:
        raise ErasureLabError(f"unexpected activation shape {tuple(h.shape)} at {name}; expected (2x{n}, N, d)")
    pooled = h[n:].float().mean(dim=1).double()
    if not torch.isfinite(pooled).all():
        raise ErasureLabError(f"non-finite (NaN/inf) activations at {name} for prompts such as {prompts[0]!r}: "
                              "the model weights are broken or the dtype overflows (try float32)")
    return pooled


@torch.no_grad()
def capture_activations(pipe: Any, prompts: Sequence[str], config: CaptureConfig | None = None,
                        layers: Sequence[CrossAttentionLayer] | None = None,
                        quiet: bool = True) -> dict[str, torch.Tensor]:
    """{layer name: (P, S, T, d) float64} pooled `to_out[0]` inputs for P prompts x S seeds x T steps."""
    config = config or CaptureConfig()
    prompts = list(prompts)
    layers = list(layers) if layers is not None else cross_attention_layers(pipe.unet)
    n_p, n_s, n_t = len(prompts), len(config.seeds), config.steps
    out = {layer.name: torch.zeros(n_p, n_s, n_t, layer.inner_dim, dtype=torch.float64) for layer in layers}
    if n_p == 0:
        return out
    unet = pipe.unet
    size = _latent_size(pipe, config)
    cond_all = encode(pipe, prompts)
    uncond = encode_unconditional(pipe)
    items = [(p, s) for p in range(n_p) for s in range(n_s)]
    batches = [items[i:i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    with ToOutInputRecorder(layers) as recorder, reuse_cross_attention_kv(unet):
        for batch in tqdm(batches, desc="capturing activations", disable=quiet):
            n = len(batch)
            cond = cond_all.take([p for p, _ in batch])
            context = torch.cat([uncond.embeds.expand(n, -1, -1), cond.embeds]).to(unet.dtype)
            added = None
            if is_sdxl(pipe):
                pooled = torch.cat([uncond.pooled.expand(n, -1), cond.pooled]).to(unet.dtype)
                height = size * int(getattr(pipe, "vae_scale_factor", 8))
                added = {"text_embeds": pooled,
                         "time_ids": sdxl_time_ids(pipe, height, height, 2 * n, unet.dtype, pooled.shape[-1])}
            scheduler = ddim_scheduler(pipe, n_t)
            latents = _latents(unet, [config.seeds[s] for _, s in batch], size) * scheduler.init_noise_sigma
            for t_index, t in enumerate(scheduler.timesteps):
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                noise = unet(model_in, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
                for layer in layers:
                    pooled_h = _pool_cond(recorder.pop(layer.name), n, layer.name, [prompts[p] for p, _ in batch])
                    for row, (p, s) in enumerate(batch):
                        out[layer.name][p, s, t_index] = pooled_h[row]
                uncond_noise, cond_noise = noise.chunk(2)
                noise = uncond_noise + config.guidance * (cond_noise - uncond_noise)
                latents = scheduler.step(noise, t, latents).prev_sample
    return out


def stack_rows(activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{layer: (P*S*T, d)}: every (prompt, seed, step) vector as one row of the SVD input."""
    return {name: a.reshape(-1, a.shape[-1]) for name, a in activations.items()}


__all__ = ["CaptureConfig", "Conditioning", "ToOutInputRecorder", "capture_activations", "stack_rows"]
