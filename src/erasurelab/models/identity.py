"""`model_hash`: the content hash of a pipeline's image-deciding weights and sampler config.

Why in models/: render caches (evaluation), attack caches and pair caches (methods) all key on it,
so it belongs beside the pipeline code rather than inside any one of its users.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

#: Pipeline components whose weights decide the images.
_COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2", "vae")


def update_with_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    """Feed a named tensor (name, shape, dtype, raw bytes) into a hashlib digest: the one tensor-hashing rule."""
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _unused(component: str, module: torch.nn.Module, key: str) -> bool:
    """Weights a pipeline never uses: a BERT pooler (from_pretrained initialises it at random)."""
    return component.startswith("text_encoder") and type(module).__name__.startswith("Bert") \
        and key.startswith("pooler.")


def model_hash(pipe: Any) -> str:
    """sha256 over the weights of every image-deciding component plus the scheduler config (public keys).

    Stable across processes, so on-disk caches keyed by it are reused by a later run.
    """
    digest = hashlib.sha256()
    for name in _COMPONENTS:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        digest.update(f"[{name}:{type(module).__name__}]".encode())
        for key, tensor in sorted(module.state_dict().items()):
            if _unused(name, module, key):
                continue
            update_with_tensor(digest, key, tensor)
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is not None:
        digest.update(type(scheduler).__name__.encode())
        # diffusers' private keys ("_use_default_values" is a list built from a set, so its order changes
        # from process to process) say nothing about sampling: hashing them would make every process miss.
        public = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    return digest.hexdigest()
