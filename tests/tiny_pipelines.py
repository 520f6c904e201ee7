"""Tiny random-weight Stable Diffusion 1.5- and SDXL-shaped pipelines, built offline from configs.

Why: loading and layer discovery must be tested on the real SD / SDXL architectures, but there is
no hub here and real checkpoints are gigabytes. Like diffusers' own fast tests
(tests/pipelines/stable_diffusion*/get_dummy_components) we build every component from a small
config with seeded random weights; the only hub asset those tests use, a tiny CLIP tokenizer,
is replaced by one built in memory from a byte-level vocabulary (`tiny_clip_tokenizer`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers/transformers import huggingface_hub

#: Tokens per prompt; CLIP's usual 77 (the text encoder's position table has that many rows).
MAX_TOKENS = 77
#: Text-encoder vocabulary rows: more than the tokenizer uses (514), like diffusers' dummy configs.
VOCAB_SIZE = 1000


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, so every byte has a visible token."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_clip_tokenizer() -> Any:
    """A CLIPTokenizer over single byte-level characters, made without files or network.

    CLIP's BPE marks the last symbol of a word with "</w>", so the vocabulary holds every byte
    character both bare and with that suffix (512 entries), then <|startoftext|> and
    <|endoftext|> at the end as in the real CLIP vocabulary. No merges are needed: every word
    splits into characters, which is all a random-weight encoder needs.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_TOKENS, hidden_act="gelu", **extra,
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=2, sample_size=64,
    )


def tiny_sd15_pipeline(seed: int = 0) -> Any:
    """StableDiffusionPipeline shaped like SD1.5 (one cross-attention down block, mid, one up block).

    Cross-attention layers: 2 (down, layers_per_block) + 1 (mid) + 3 (up, layers_per_block + 1) = 6.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    vae = _tiny_vae()
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer)).eval()
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """StableDiffusionXLPipeline with SDXL's conditioning: two text encoders and "text_time" embeddings.

    The U-Net's context is both encoders' hidden states concatenated (32 + 32 = 64); its added
    embedding input is 6 micro-conditioning numbers x addition_time_embed_dim 8 + the pooled
    projection 32 = 80. Cross-attention layers, with transformer_layers_per_block (1, 2):
    2 attentions x 2 (down) + 2 (mid) + 3 attentions x 2 (up) = 12.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    vae = _tiny_vae()
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, projection_dim=32)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=32)).eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet.eval(), scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: Any, seed: int = 0, prompt: str = "a red circle") -> Any:
    """Two denoising steps at 64x64 with a fixed CPU generator: the images every test compares."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=2, output_type="np", height=64, width=64, generator=generator).images


# --- original (single-file, "ldm") checkpoint layout ---------------------------------------------
#
# Why: `load_pipeline("model.safetensors", config=folder)` must be tested on a real single-file
# checkpoint, and the only ones that exist are gigabytes. These helpers rename a tiny SD1.x
# pipeline's tensors to the layout of the original CompVis checkpoints (what civitai-style
# .safetensors files use), derived from the block structure in the configs.

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
