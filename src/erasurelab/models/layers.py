"""Cross-attention discovery: the `attn2` layers where text conditions the U-Net.

Why a shared discovery function: closed-form erasure methods (UCE, TIME-style edits), LoRA
targets and activation hooks all act on the key/value projections of the cross-attention
layers, and they must agree on exactly which layers those are on every architecture
(SD1.x, SD2.x, SDXL and the embedded shapes U-Net). Discovery is by module type and name,
not by a per-architecture table, so a new UNet2DConditionModel layout needs no code change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from erasurelab.errors import ErasureLabError

if TYPE_CHECKING:
    import torch
    from diffusers.models.attention_processor import Attention


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of a U-Net.

    name: module path inside the U-Net, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2".
    module: the diffusers Attention module (edited in place by methods).
    inner_dim: width of keys/values (to_k.out_features). context_dim: width of the text states
    the layer reads (to_k.in_features). heads: number of attention heads.
    """

    name: str
    module: Attention = field(repr=False)
    inner_dim: int
    context_dim: int
    heads: int

    @property
    def to_k(self) -> torch.nn.Module:
        return self.module.to_k

    @property
    def to_v(self) -> torch.nn.Module:
        return self.module.to_v


def _is_fused(module: Any) -> bool:
    """True when the layer computes keys/values with a fused `to_kv` instead of to_k/to_v.

    Why the processor and not only the weights: `fuse_qkv_projections()` keeps to_k/to_v and adds
    `to_kv`, and `unfuse_qkv_projections()` only restores the processors; the weights that matter
    are the ones the active processor reads.
    """
    if not (hasattr(module, "to_k") and hasattr(module, "to_v")):
        return True
    processor = getattr(module, "processor", None)
    return getattr(module, "to_kv", None) is not None and type(processor).__name__.startswith("Fused")


def cross_attention_layers(unet: Any) -> list[CrossAttentionLayer]:
    """Every cross-attention `attn2` layer of `unet` (or of `pipeline.unet`), in named_modules order.

    Raises ErasureLabError when there is none (not a text-conditioned U-Net) or when the
    projections are fused, because edits to to_k/to_v would then silently have no effect.
    """
    from diffusers.models.attention_processor import Attention

    model = getattr(unet, "unet", unet)
    if not hasattr(model, "named_modules"):
        raise TypeError(f"expected a U-Net (torch module) or a pipeline with a `unet`, got {type(unet).__name__}")
    layers = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "attn2" or not isinstance(module, Attention) or not module.is_cross_attention:
            continue
        if _is_fused(module):
            raise ErasureLabError(
                f"cross-attention layer {name} uses fused key/value projections (to_kv); "
                "call unet.unfuse_qkv_projections() before erasing")
        layers.append(CrossAttentionLayer(
            name=name, module=module, inner_dim=int(module.to_k.out_features),
            context_dim=int(module.to_k.in_features), heads=int(module.heads)))
    if not layers:
        raise ErasureLabError(
            f"no cross-attention (attn2) layers found in {type(model).__name__}: "
            "expected a text-conditioned UNet2DConditionModel (Stable Diffusion 1.x/2.x/XL or builtin:shapes)")
    return layers


def projection_weights(layers: list[CrossAttentionLayer]) -> dict[str, torch.nn.Linear]:
    """{"NAME.to_k": Linear, "NAME.to_v": Linear} for each layer: the weights erasure methods edit.

    Why unwrap `base_layer`: when a peft LoRA is attached, to_k is a LoRA wrapper; dense edits
    belong to the frozen base Linear underneath, while the adapter stays a separate edit.
    """
    weights: dict[str, torch.nn.Linear] = {}
    for layer in layers:
        for proj in ("to_k", "to_v"):
            linear = getattr(layer.module, proj)
            weights[f"{layer.name}.{proj}"] = getattr(linear, "base_layer", linear)
    return weights
