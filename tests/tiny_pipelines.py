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


def tiny_sd2_pipeline(seed: int = 0) -> Any:
    """StableDiffusionPipeline shaped like SD2.x: v-prediction, linear projections, per-block head dims.

    As diffusers' SD2 fast tests: `use_linear_projection`, attention_head_dim (2, 4), a GELU text
    encoder, and a scheduler with `prediction_type="v_prediction"`; the context width (48) differs
    from SD1.5's (32) so a width taken from the wrong component fails. 6 cross-attention layers.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=48, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    vae = _tiny_vae()
    tokenizer = tiny_clip_tokenizer()
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=48, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_TOKENS, hidden_act="gelu", projection_dim=64,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=CLIPTextModel(config).eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
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


def at_sample_size(pipe: Any, size: int) -> Any:
    """The same pipeline with a smaller default latent size (`size` x `size`), in place; returns it.

    Why: a U-Net's `sample_size` sets only the default resolution (its convolutions take any size
    the down blocks divide), and suites that render hundreds of images only need the code paths, so
    8x8 latents cost a sixteenth of the 32x32 ones. SDXL pipelines cache it as `default_sample_size`.
    """
    pipe.unet.register_to_config(sample_size=size)
    if hasattr(pipe, "default_sample_size"):
        pipe.default_sample_size = size
    return pipe


def run(pipe: Any, seed: int = 0, prompt: str = "a red circle") -> Any:
    """Two denoising steps at 64x64 with a fixed CPU generator: the images every test compares."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=2, output_type="np", height=64, width=64, generator=generator).images


# The original single-file layout lives in the package (erasurelab.models.original_layout).
from erasurelab.models.original_layout import original_sd_state_dict  # noqa: E402,F401
