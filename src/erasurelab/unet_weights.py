"""The U-Net tensors an edit touches: finding them by name and fingerprinting them.

Why a fingerprint of names, shapes and only the touched tensors: an edit needs to know that the
architecture matches and that the weights it rewrites are the ones it was computed from, and
hashing a whole model would cost seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from erasurelab.errors import ErasureLabError


def unet_of(target: Any) -> torch.nn.Module:
    """The U-Net of a pipeline, or the module itself."""
    model = getattr(target, "unet", target)
    if not isinstance(model, torch.nn.Module):
        raise ErasureLabError(f"expected a diffusers pipeline or a U-Net module, got {type(target).__name__}")
    return model


def parameter_at(unet: torch.nn.Module, key: str) -> torch.Tensor | None:
    """The parameter named `key`; a peft LoRA wrapper is looked through to its base Linear.

    Why through the wrapper: deltas are additive, so adding one to the frozen base weight while
    an adapter is attached gives the same function as adding it to the merged weight.
    """
    path, _, leaf = key.rpartition(".")
    try:
        module = unet.get_submodule(path)
    except AttributeError:
        return None
    module = getattr(module, "base_layer", module)
    param = getattr(module, leaf, None)
    return param if isinstance(param, torch.Tensor) else None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(target: Any, keys: Any, originals: Mapping[str, torch.Tensor] | None = None) -> str:
    """sha256 over every parameter's name/shape/dtype plus the bytes of the tensors at `keys`.

    Why not a hash of the whole model: hashing gigabytes costs seconds, and an edit only needs
    to know that the architecture matches and that the weights it rewrites are the ones it was
    computed from. `originals` supplies unedited values for keys that are currently edited.
    """
    unet = unet_of(target)
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
    for key in sorted(keys):
        tensor = (originals or {}).get(key)
        if tensor is None:
            tensor = parameter_at(unet, key)
        if tensor is not None:
            digest.update(key.encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()
