"""peft-format U-Net LoRAs ↔ low-rank deltas: exact factors out of an adapter, state dicts, files.

Why peft's format: a saved LoRA then loads in plain diffusers (`pipe.load_lora_weights(folder)`).
Per-module ranks go in peft's `rank_pattern`/`alpha_pattern` with alpha = rank, so the adapter's
scale is exactly 1 and W + B A is the edit; no factor is padded to a common rank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from erasurelab.deltas import Delta, LowRank, compress_low_rank, dense_to_low_rank
from erasurelab.errors import ErasureLabError
from erasurelab.unet_weights import unet_of


def deltas_from_peft(target: Any, adapter_name: str = "default") -> dict[str, Delta]:
    """The exact low-rank deltas of one attached peft LoRA adapter: ΔW = B·(scale·A) per wrapped Linear."""
    deltas: dict[str, Delta] = {}
    for name, module in unet_of(target).named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or lora_b is None or adapter_name not in lora_a:
            continue
        if not isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
            raise ErasureLabError(f"{name} carries a LoRA on a {type(module.base_layer).__name__}: only "
                                  "Linear layers have an exact low-rank delta")
        if (getattr(module, "use_dora", None) or {}).get(adapter_name):
            raise ErasureLabError(f"{name} is a DoRA adapter: its delta is not low-rank")
        scale = float(module.scaling[adapter_name])
        deltas[f"{name}.weight"] = LowRank(lora_b[adapter_name].weight.detach().cpu().double(),
                                           lora_a[adapter_name].weight.detach().cpu().double() * scale)
    if not deltas:
        raise ErasureLabError(f"the model carries no LoRA adapter named {adapter_name!r}")
    return deltas


def lora_factors(deltas: Mapping[str, Delta], rank: int | None, base_weights: Mapping[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """peft-format factors {"<module>.lora_A.weight", "<module>.lora_B.weight"} (float32, scale 1), ranks, errors.

    Low-rank entries are exact (rank None or ≥ their rank); dense entries and low-rank ones above
    `rank` are truncated by SVD, with relative error ‖ΔW − BA‖/‖ΔW‖. Rank-0 entries are left out.
    `base_weights` holds the unedited tensors of Replace entries.
    """
    state, ranks, errors = {}, {}, {}
    for key, entry in deltas.items():
        module = key.removesuffix(".weight")
        if isinstance(entry, LowRank):
            if rank is None or entry.rank <= rank:
                B, A, err = entry.B.double(), entry.A.double(), 0.0
            else:
                B, A, err = compress_low_rank(entry.B, entry.A, max_rank=rank)
        elif len(entry.shape) != 2:  # fine-tuned biases, norms and convolutions have no LoRA form
            raise ErasureLabError(f"{key} is a {len(entry.shape)}-D tensor and a LoRA holds only 2-D weight "
                                  "deltas: save this edit with format='full'")
        else:
            B, A, err = dense_to_low_rank(entry.delta(base_weights.get(key)), rank)
        if B.shape[1] == 0:
            continue
        state[f"{module}.lora_A.weight"] = A.float().contiguous()
        state[f"{module}.lora_B.weight"] = B.float().contiguous()
        ranks[module] = int(B.shape[1])
        errors[module] = err
    return state, ranks, errors


def write_lora(folder: Path, state: dict[str, torch.Tensor], ranks: dict[str, int], weight_name: str) -> None:
    """Save with diffusers' own writer; per-module ranks go in peft's rank/alpha patterns.

    lora_alpha = rank per module makes peft's scale alpha/r exactly 1, so W + B A is the edit.
    """
    from diffusers import StableDiffusionPipeline

    metadata = {"r": max(ranks.values()), "lora_alpha": max(ranks.values()), "rank_pattern": dict(ranks),
                "alpha_pattern": dict(ranks), "target_modules": sorted(ranks), "lora_dropout": 0.0,
                "bias": "none", "use_rslora": False, "use_dora": False}
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state,
                                              unet_lora_adapter_metadata=metadata, weight_name=weight_name)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; one-line error when it is truncated or corrupt."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise ErasureLabError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from exc


def _lora_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("lora_adapter_metadata")
    except Exception as exc:
        raise ErasureLabError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from exc
    if not raw:
        return {}
    data = json.loads(raw)
    # diffusers stores the U-Net's config with a "unet." prefix on every key.
    return {k.removeprefix("unet."): v for k, v in data.items()}


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    for pattern, value in patterns.items():
        if module == pattern or re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def parse_lora(path: Path) -> dict[str, Delta]:
    """peft-format U-Net LoRA -> {"<module>.weight": LowRank(B, scale * A)}."""
    state = load_safetensors(path)
    meta = _lora_metadata(path)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(?:unet\.)?(.+)\.lora_([AB])\.weight", key)
        if match is None or key.startswith(("text_encoder", "lora_te", "lora_unet")):
            raise ErasureLabError(f"unsupported LoRA in {path}: key {key!r} (only peft-format U-Net LoRAs with "
                                  "'unet.<module>.lora_A/B.weight' keys are supported)")
        factors.setdefault(match.group(1), {})[match.group(2)] = tensor
    deltas: dict[str, Delta] = {}
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise ErasureLabError(f"corrupt LoRA in {path}: {module} lacks lora_{'A' if 'A' not in pair else 'B'}")
        rank = int(pair["A"].shape[0])
        alpha = _pattern_value(meta.get("alpha_pattern") or {}, module)
        alpha = float(alpha if alpha is not None else meta.get("lora_alpha", rank))
        scale = alpha / (rank ** 0.5 if meta.get("use_rslora") else rank)
        deltas[f"{module}.weight"] = LowRank(pair["B"].double(), pair["A"].double() * scale)
    return deltas
