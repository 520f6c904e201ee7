"""A tiny random StableDiffusionPipeline with a BERT text encoder, built offline in milliseconds.

Why BERT: the embedded world conditions its U-Net on MiniLM (a BertModel) token states, so the
closed-form methods must be tested on that code path — bidirectional encoder, attention mask,
UCE's `all` token mode — without loading the (still training) embedded weights. The tokenizer is
built from an in-memory word-level vocabulary covering every word the tests and world anchors use.
"""

from __future__ import annotations

import re
from typing import Any

import torch

#: Tokens per prompt (short, like the embedded world's 32).
MAX_TOKENS = 16
TEXT_WIDTH = 32
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _world_words() -> list[str]:
    from erasurelab.concepts.spec import FORGET_TEMPLATES, STYLE_FORGET_TEMPLATES
    from erasurelab.world import vocab

    text = " ".join(FORGET_TEMPLATES + STYLE_FORGET_TEMPLATES)
    text += " portrait painting by art artwork picture style of image photo on a background that is in"
    for attribute in vocab.ATTRIBUTES:
        for concept in vocab.concepts(attribute):
            text += " " + " ".join(concept.train_words) + " " + " ".join(concept.paraphrases)
    words = re.findall(r"[a-z]+|[^\sa-z]", text.lower().replace("{c}", " "))
    return sorted(set(words))


def tiny_bert_tokenizer() -> Any:
    """BertTokenizerFast over the world's words (lower-cased, word-level, no [UNK] for world text)."""
    from transformers import BertTokenizerFast

    tokens = [*SPECIALS, ",", ".", *_world_words()]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def tiny_bert_encoder(tokenizer: Any) -> Any:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=MAX_TOKENS + 8)
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.config.use_attention_mask = True  # as the embedded world: padding does not change token states
    return encoder.requires_grad_(False).eval()


def tiny_unet() -> Any:
    """Cross-attention at 4x4 (down, mid, up): 1 + 1 + 2 = 4 attn2 layers of width 64."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=16).eval()


def tiny_bert_pipeline(seed: int = 0) -> Any:
    """StableDiffusionPipeline(BERT, tiny U-Net, tiny VAE, DPM-Solver like the world); same seed -> same weights."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from erasurelab.world.architecture import SCHEDULE

    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    encoder = tiny_bert_encoder(tokenizer)
    # Random init gives near-identical token states; scale the embeddings so prompts differ clearly.
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight.mul_(20.0)
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=encoder, tokenizer=tokenizer, unet=tiny_unet(),
        scheduler=DPMSolverMultistepScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise_prediction(pipe: Any, prompt: str = "a photo of red", seed: int = 0) -> torch.Tensor:
    """One U-Net call on fixed noise and a fixed timestep: the quantity edits are compared on."""
    from erasurelab.models.conditioning import encode

    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    context = encode(pipe, [prompt]).embeds
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor(500), encoder_hidden_states=context).sample


def assert_lora_round_trip(edit: Any, pipe: Any, folder: Any) -> None:
    """An edit saved as LoRA and loaded by diffusers reproduces the directly edited U-Net (1e-4)."""
    edit.apply(pipe)
    direct = noise_prediction(pipe)
    edit.revert(pipe)
    edit.save(folder, format="lora")
    loaded = tiny_bert_pipeline(0)
    loaded.load_lora_weights(str(folder))
    assert torch.allclose(noise_prediction(loaded), direct, atol=1e-4)
    assert not torch.allclose(noise_prediction(pipe), direct, atol=1e-6)  # the edit does something


def unet_state(pipe: Any) -> dict[str, torch.Tensor]:
    """A detached copy of every U-Net tensor, to prove later what training touched."""
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts (same keys, torch.equal on every tensor)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
