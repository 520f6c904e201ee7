"""Cross-attention discovery on SD1.5-, SD2-, SDXL-shaped U-Nets and the embedded shapes U-Net.

Why check against an independent count from the config: a discovery that silently misses a
layer (e.g. SDXL's second transformer layer per block) would leave a concept half-erased.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models import CrossAttentionLayer, cross_attention_layers, projection_weights
from tiny_pipelines import tiny_sd15_pipeline, tiny_sdxl_pipeline


def tiny_sd2_unet() -> Any:
    """SD2.x's U-Net differences: linear projections in the transformers, per-block head dims."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=48, norm_num_groups=2,
    )


def embedded_unet() -> Any:
    """The shapes world's U-Net, randomly initialised (its trained weights are not needed here)."""
    from erasurelab.world import architecture

    torch.manual_seed(0)
    return architecture.new_unet()


#: name -> (builder, cross-attention count worked out by hand from the config)
UNETS = {
    "sd15": (lambda: tiny_sd15_pipeline().unet, 6),
    "sd2": (tiny_sd2_unet, 6),
    "sdxl": (lambda: tiny_sdxl_pipeline().unet, 12),
    "embedded": (embedded_unet, 6),
}


@pytest.fixture(scope="module")
def unets() -> dict[str, Any]:
    return {name: build() for name, (build, _) in UNETS.items()}


def expected_from_config(config: Any) -> int:
    """Cross-attention layers implied by a UNet2DConditionModel config, counted independently."""
    blocks = len(config.down_block_types)
    per_block = config.transformer_layers_per_block
    per_block = [per_block] * blocks if isinstance(per_block, int) else list(per_block)
    reverse = config.reverse_transformer_layers_per_block or list(reversed(per_block))
    reverse = [reverse] * blocks if isinstance(reverse, int) else list(reverse)
    down = sum(config.layers_per_block * per_block[i]
               for i, kind in enumerate(config.down_block_types) if "CrossAttn" in kind)
    mid = per_block[-1] if config.mid_block_type == "UNetMidBlock2DCrossAttn" else 0
    up = sum((config.layers_per_block + 1) * reverse[i]
             for i, kind in enumerate(config.up_block_types) if "CrossAttn" in kind)
    return down + mid + up


@pytest.mark.parametrize("name", list(UNETS))
def test_finds_every_cross_attention_layer(unets, name):
    unet = unets[name]
    layers = cross_attention_layers(unet)
    attn2_names = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    assert [layer.name for layer in layers] == attn2_names
    assert len(layers) == expected_from_config(unet.config) == UNETS[name][1]


@pytest.mark.parametrize("name", list(UNETS))
def test_dims_match_projection_weights(unets, name):
    unet = unets[name]
    for layer in cross_attention_layers(unet):
        out_features, in_features = layer.module.to_k.weight.shape
        assert (layer.inner_dim, layer.context_dim) == (out_features, in_features)
        assert layer.module.to_v.weight.shape == (out_features, in_features)
        assert layer.context_dim == unet.config.cross_attention_dim
        assert layer.heads == layer.module.heads
        assert layer.to_k is layer.module.to_k and layer.to_v is layer.module.to_v


@pytest.mark.parametrize("name", list(UNETS))
def test_no_self_attention_is_returned(unets, name):
    layers = cross_attention_layers(unets[name])
    self_attention = {id(m) for n, m in unets[name].named_modules() if n.endswith("attn1")}
    assert self_attention
    assert all(layer.module.is_cross_attention for layer in layers)
    assert not any(id(layer.module) in self_attention or "attn1" in layer.name for layer in layers)


def test_accepts_a_pipeline():
    pipe = tiny_sd15_pipeline()
    assert [layer.module for layer in cross_attention_layers(pipe)] == [
        layer.module for layer in cross_attention_layers(pipe.unet)]


def test_layer_is_frozen(unets):
    layer = cross_attention_layers(unets["sd15"])[0]
    assert isinstance(layer, CrossAttentionLayer)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.name = "other"  # type: ignore[misc]
    assert "Linear" not in repr(layer)


def test_projection_weights_are_the_live_modules(unets):
    layers = cross_attention_layers(unets["sdxl"])
    weights = projection_weights(layers)
    assert len(weights) == 2 * len(layers)
    for layer in layers:
        assert weights[f"{layer.name}.to_k"] is layer.module.to_k
        assert weights[f"{layer.name}.to_v"] is layer.module.to_v
    assert all(isinstance(linear, torch.nn.Linear) for linear in weights.values())


def test_projection_weights_unwrap_lora_to_base_layer():
    from peft import LoraConfig

    unet = tiny_sd15_pipeline().unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["attn2.to_k", "attn2.to_v"]))
    layers = cross_attention_layers(unet)
    for name, linear in projection_weights(layers).items():
        assert type(linear) is torch.nn.Linear, name
    assert layers[0].inner_dim == layers[0].module.to_k.base_layer.out_features


def test_fused_projections_are_refused_until_unfused():
    unet = tiny_sd15_pipeline().unet
    unet.fuse_qkv_projections()
    with pytest.raises(ErasureLabError) as info:
        cross_attention_layers(unet)
    assert "unfuse_qkv_projections" in str(info.value) and "\n" not in str(info.value)
    unet.unfuse_qkv_projections()
    assert len(cross_attention_layers(unet)) == 6


def test_unet_without_cross_attention():
    from diffusers import UNet2DModel

    unet = UNet2DModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    with pytest.raises(ErasureLabError) as info:
        cross_attention_layers(unet)
    assert "no cross-attention" in str(info.value) and "\n" not in str(info.value)
