"""Text conditioning exactly as the pipeline feeds it to the U-Net (SD1.x/2.x, SDXL, builtin).

Why through `pipe.encode_prompt`: methods that read or rewrite the cross-attention inputs (UCE's
token vectors, PURE's activation capture) must see the very tensors `pipe(...)` produces —
including clip-skip, BERT attention masks and SDXL's two concatenated encoders. Re-implementing
the encoding would drift from diffusers silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from erasurelab.errors import ErasureLabError


def is_sdxl(pipe: Any) -> bool:
    """True for pipelines whose U-Net needs SDXL's pooled text embeddings and time ids."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def is_clip_encoder(pipe: Any) -> bool:
    """True for causal CLIP text encoders (UCE's `tail` token mode is meant for those)."""
    return type(getattr(pipe, "text_encoder", None)).__name__.startswith("CLIP")


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts (n, L, d) plus what SDXL's U-Net needs besides (None elsewhere)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def take(self, index: Sequence[int]) -> Conditioning:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return Conditioning(self.embeds[idx], None if self.pooled is None else self.pooled[idx])


def _device(pipe: Any) -> torch.device:
    return pipe.unet.device


@torch.no_grad()
def encode(pipe: Any, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
    """Encode prompts as the pipeline's positive branch does (no classifier-free guidance)."""
    if not prompts:
        raise ErasureLabError("no prompts to encode")
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        if is_sdxl(pipe):
            out = pipe.encode_prompt(prompt=chunk, device=_device(pipe), num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
            embeds.append(out[0])
            pooled.append(out[2])
        else:
            out = pipe.encode_prompt(chunk, _device(pipe), 1, False)
            embeds.append(out[0])
    return Conditioning(torch.cat(embeds), torch.cat(pooled) if pooled else None)


@torch.no_grad()
def encode_unconditional(pipe: Any) -> Conditioning:
    """The negative ("" prompt) branch exactly as the pipeline builds it for CFG.

    Why not encode(""): SDXL pipelines with force_zeros_for_empty_prompt use zeros here.
    """
    if is_sdxl(pipe):
        out = pipe.encode_prompt(prompt=[""], device=_device(pipe), num_images_per_prompt=1,
                                 do_classifier_free_guidance=True)
        return Conditioning(out[1], out[3])
    # SD's negative branch tokenizes "" with the positive branch's padding and reads the same encoder
    # output, so encoding "" as a prompt gives its tensors with one text-encoder pass instead of two.
    return encode(pipe, [""])


def sdxl_time_ids(pipe: Any, height: int, width: int, n: int, dtype: torch.dtype, pooled_dim: int) -> torch.Tensor:
    """SDXL micro-conditioning (original size, crop (0, 0), target size) for n samples, as the pipeline does."""
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    projection_dim = int(encoder_2.config.projection_dim) if encoder_2 is not None else pooled_dim
    ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=dtype,
                                 text_encoder_projection_dim=projection_dim)
    return ids.to(_device(pipe)).repeat(n, 1)


def last_word_indices(pipe: Any, prompts: Sequence[str]) -> list[int]:
    """Index of each prompt's last word token in the padded sequence the U-Net sees.

    Tokenised as the pipeline does (pad to model_max_length, truncate); with a start token at
    0 and an end token after the words, the last word sits at (non-padding count) - 2. For ""
    that is 0, the start token (as in UCE's official code).
    """
    tokenizer = pipe.tokenizer
    batch = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
    mask = batch.get("attention_mask")
    if mask is None:
        pad = tokenizer.pad_token_id
        mask = (batch.input_ids != pad).long()
    return [max(int(m.sum()) - 2, 0) for m in mask]
