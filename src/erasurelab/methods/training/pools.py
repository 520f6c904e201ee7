"""Frozen-model trajectory pools cached on disk: ESD's x_t pool and TRuST's forget set D_f.

Why: both are DDIM trajectories of the unedited U-Net under the concept's prompts, so they depend
only on the frozen weights, the prompt encodings, the sampler and the seeds, and building them is
a sizeable share of a short CPU run. Keyed by a digest of exactly those inputs, a second run with
the same inputs (a re-run, a sweep, a resumed run) loads the pool instead of sampling it again,
and any change to the weights or prompts is a miss. A loaded pool is bit-identical to a built one
(float32 safetensors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from erasurelab import diskcache
from erasurelab.methods.training.diffusion import Cond, denoise, start_noise
from erasurelab.methods.training.streams import step_generator
from erasurelab.models.identity import update_with_tensor

NAMESPACE = "trajectories"


def frozen_unet_digest(unet: torch.nn.Module, originals: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the U-Net's state with every trained parameter at its original (frozen) value."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        update_with_tensor(digest, name, originals.get(name, tensor))
    return digest.hexdigest()


def cond_digest(conds: Sequence[Cond]) -> str:
    """sha256 of encoded prompts (token states and SDXL's added conditioning)."""
    digest = hashlib.sha256()
    for i, cond in enumerate(conds):
        update_with_tensor(digest, f"{i}.embeds", cond.embeds)
        for key, value in sorted((cond.added or {}).items()):
            update_with_tensor(digest, f"{i}.{key}", value)
    return digest.hexdigest()


def cached_pool(kind: str, unet: torch.nn.Module, originals: Mapping[str, torch.Tensor], conds: Sequence[Cond],
                scheduler: Any, settings: Mapping[str, Any],
                build: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(the pool `build()` makes, True when it was loaded from the disk cache instead).

    kind names the pool ("esd_pool", "trust_forget"); settings are every other input of `build`
    (sizes, seeds, guidance, sampler steps, random streams). The flag goes into the edit's manifest,
    so a timing says whether it included the pool.
    """
    if diskcache.cache_root() is None:  # caching off: no key to compute (hashing a large U-Net costs seconds)
        return build(), False
    schedule = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    key = diskcache.cache_key(NAMESPACE, kind, frozen_unet_digest(unet, originals), cond_digest(conds),
                              type(scheduler).__name__, json.loads(json.dumps(schedule, default=str)), dict(settings))
    cached = diskcache.load_tensors(NAMESPACE, key)
    if cached is not None and "pool" in cached:
        return cached["pool"].to(next(unet.parameters()).device), True
    pool = build()
    diskcache.save_tensors(NAMESPACE, key, {"pool": pool.detach().cpu().contiguous()})
    return pool, False


def frozen_pool(kind: str, tuner: Any, sampler: Any, forget: Cond, empty: Cond, n: int, seed: int, stream: int,
                chunk: int, guidance: float, record: bool) -> tuple[torch.Tensor, bool]:
    """n full DDIM runs of the frozen U-Net, run j from the noise of (seed, stream, j) under forget prompt
    j mod len(forget), in batches of `chunk`; cached (`cached_pool`). Returns the final latents (n, C, H, W),
    or with record=True every run's latents before each step (n, steps, C, H, W); and the cache flag."""
    unet, steps = tuner.unet, len(sampler.timesteps)

    def build() -> torch.Tensor:
        out = []
        for start in range(0, n, chunk):
            idx = list(range(start, min(start + chunk, n)))
            noise = torch.cat([start_noise(unet, sampler, step_generator(seed, stream, j)) for j in idx])
            runs = denoise(tuner.frozen, sampler, noise, forget.take([j % len(forget) for j in idx]), empty,
                           guidance, steps, record=record, unet=unet)
            out.append(runs.transpose(0, 1) if record else runs)
        return torch.cat(out)

    settings = {"n": n, "seed": seed, "stream": stream, "chunk": chunk, "guidance": guidance, "steps": steps,
                "record": record}
    return cached_pool(kind, unet, tuner.originals, [forget, empty], sampler, settings, build)
