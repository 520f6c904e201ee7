"""Diffusers -> original ("ldm", single-file) tensor names for SD1.x pipelines.

Why: users load edited models in A1111, ComfyUI and diffusers' `from_single_file`, which read the
layout of the original CompVis checkpoints. The renames are derived from the block structure in the
U-Net and VAE configs, so they hold for any SD1.x-shaped pipeline (the tiny test ones included),
not only for one checkpoint's key list. SD2's OpenCLIP text encoder and SDXL's two encoders use
other layouts and are refused with a one-line error by the exporter.
"""

from __future__ import annotations

from typing import Any

import torch

_RESNET_RENAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                   ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION_RENAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(key: str, prefixes: dict[str, str], inner: tuple[tuple[str, str], ...] = ()) -> str:
    """Swap the block prefix of `key`, then the first sub-module name after it if `inner` lists it."""
    for source, target in prefixes.items():
        if key.startswith(source):
            rest = key[len(source):]
            for old, new in inner:
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return target + rest
    raise KeyError(f"no original-layout name for {key}")


def _unet_prefixes(config: Any) -> dict[str, str]:
    """diffusers block prefix -> original prefix: input_blocks count resnets, attentions and downsamplers in a row."""
    per_block = config.layers_per_block
    levels = len(config.block_out_channels)
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(levels):
        for j in range(per_block):
            index = 1 + i * (per_block + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per_block + 1)}.0.op."
        for j in range(per_block + 1):
            index = i * (per_block + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        if i < levels - 1:
            slot = 2 if "CrossAttn" in config.up_block_types[i] else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per_block + 1) + per_block}.{slot}."
    return prefixes


def _vae_prefixes(config: Any) -> dict[str, str]:
    """diffusers VAE prefix -> original prefix; the original numbers decoder levels bottom-up."""
    levels = len(config.block_out_channels)
    per_block = config.layers_per_block
    prefixes = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        prefixes.update({
            f"{part}.conv_in.": f"{part}.conv_in.", f"{part}.conv_out.": f"{part}.conv_out.",
            f"{part}.conv_norm_out.": f"{part}.norm_out.", f"{part}.mid_block.resnets.0.": f"{part}.mid.block_1.",
            f"{part}.mid_block.resnets.1.": f"{part}.mid.block_2.",
            f"{part}.mid_block.attentions.0.": f"{part}.mid.attn_1.",
        })
    for i in range(levels):
        for j in range(per_block):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(per_block + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    return prefixes


def original_sd_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """All tensors of an SD1.x pipeline (U-Net, VAE, CLIP text encoder) under original single-file names."""
    tensors: dict[str, torch.Tensor] = {}
    unet_prefixes = _unet_prefixes(pipe.unet.config)
    for key, value in pipe.unet.state_dict().items():
        inner = _RESNET_RENAMES if ".resnets." in key else ()
        tensors["model.diffusion_model." + _rename(key, unet_prefixes, inner)] = value
    vae_prefixes = _vae_prefixes(pipe.vae.config)
    for key, value in pipe.vae.state_dict().items():
        inner = _VAE_ATTENTION_RENAMES if ".attentions." in key else (("conv_shortcut", "nin_shortcut"),)
        name = _rename(key, vae_prefixes, inner)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        tensors["first_stage_model." + name] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; checkpoints keep the `text_model.` level.
        name = key if key.startswith("text_model.") else "text_model." + key
        tensors["cond_stage_model.transformer." + name] = value
    return {key: value.detach().contiguous() for key, value in tensors.items()}
