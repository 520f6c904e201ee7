"""Which U-Net parameters a fine-tuning method trains, chosen by parameter name.

Why by name: the subsets of the papers (ESD-x, ESD-u, TRuST's cross-attention projections) are
defined by where a tensor sits in the U-Net, and names are the same across SD1.x, SD2.x and SDXL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from erasurelab.errors import ErasureLabError

#: Top-level modules ESD-u leaves out besides cross-attention (the original ESD code's list).
ESD_U_EXCLUDED: tuple[str, ...] = ("time_embedding", "conv_norm_out", "conv_out")


def _in_attn2(name: str) -> bool:
    return "attn2" in name.split(".")


def _attn2_projection(name: str, projections: Sequence[str]) -> bool:
    parts = name.split(".")
    return any(parts[i] == "attn2" and parts[i + 1] in projections for i in range(len(parts) - 1))


SUBSETS: dict[str, Callable[[str], bool]] = {
    "esd-x": _in_attn2,
    "esd-x-strict": lambda n: _attn2_projection(n, ("to_k", "to_v")),
    "esd-u": lambda n: not _in_attn2(n) and n.split(".")[0] not in ESD_U_EXCLUDED,
    "esd-all": lambda n: True,
    "trust": lambda n: _attn2_projection(n, ("to_q", "to_k", "to_v")) and n.endswith(".weight"),
}


def select_parameters(unet: torch.nn.Module, subset: str) -> list[str]:
    """Names of the U-Net parameters in `subset` (see SUBSETS), in named_parameters order."""
    if subset not in SUBSETS:
        raise ErasureLabError(f"unknown parameter subset {subset!r}; valid: {', '.join(SUBSETS)}")
    names = [n for n, _ in unet.named_parameters() if SUBSETS[subset](n)]
    if not names:
        raise ErasureLabError(f"the U-Net has no parameters in subset {subset} (no cross-attention attn2 layers?)")
    wrapped = [n for n in names if ".base_layer." in n or ".lora_" in n]
    if wrapped:
        raise ErasureLabError(f"{wrapped[0]} belongs to an unmerged LoRA adapter: merge it first "
                              "(pipe.fuse_lora(); pipe.unload_lora_weights())")
    return names
