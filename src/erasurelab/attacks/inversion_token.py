"""Textual inversion's placeholder token: tokenizer/encoder copies carrying it, its start vectors, the result.

Why copies: the user's tokenizer and text encoder are deep-copied and the copy gets one added
token, so only the placeholder row ever differs from the user's encoder and the user's pipeline
is never touched (see `erasurelab.attacks.textual_inversion`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from erasurelab.attacks.base import strip_budget_hooks
from erasurelab.attacks.tokens import TextSide, prompt_tokens, special_ids
from erasurelab.errors import ErasureLabError

if TYPE_CHECKING:
    from erasurelab.attacks.textual_inversion import TextualInversionConfig

#: Initializer words when the user gives none: the concept's coarse class, as the official scripts'
#: --initializer_token ("painting", "cat"). Not the concept's guide: that is what erasure maps the
#: concept *to* ("solid" for a world style), the opposite of where the attack should start.
CATEGORY_WORDS = {"color": "color", "object": "shape", "style": "art", "background": "background",
                  "character": "character", "custom": "object"}


def _placeholder_pair(tokenizer: Any, encoder: Any, placeholder: str) -> tuple[Any, Any, int]:
    tokenizer = copy.deepcopy(tokenizer)
    if placeholder in tokenizer.get_vocab():
        raise ErasureLabError(f"placeholder {placeholder!r} is already a token of this tokenizer; choose another")
    tokenizer.add_tokens([placeholder])
    token_id = int(tokenizer.convert_tokens_to_ids(placeholder))
    encoder = strip_budget_hooks(copy.deepcopy(encoder)).requires_grad_(False).eval()
    if token_id >= encoder.get_input_embeddings().weight.shape[0]:
        encoder.resize_token_embeddings(token_id + 1, mean_resizing=False)  # the row is set before use
    if prompt_tokens(tokenizer, f"a {placeholder} b")[1:-1] != [token_id]:
        raise ErasureLabError(f"placeholder {placeholder!r} does not tokenize to one token; choose another")
    return tokenizer, encoder, token_id


def placeholder_copies(pipe: Any, placeholder: str) -> tuple[TextSide, int]:
    """Every tokenizer/encoder the U-Net reads, copied with the placeholder added (SDXL: both, one shared id)."""
    text = TextSide.of(pipe)
    pairs = [_placeholder_pair(t, e, placeholder) for t, e in zip(text.tokenizers, text.encoders, strict=True)]
    if len({token_id for _, _, token_id in pairs}) != 1:
        raise ErasureLabError(f"placeholder {placeholder!r} gets different ids in the pipeline's tokenizers")
    return TextSide.of(pipe, [t for t, _, _ in pairs], [e for _, e, _ in pairs]), pairs[0][2]


def initial_vectors(pipe: Any, spec: Any, config: TextualInversionConfig) -> tuple[list[torch.Tensor], str]:
    """Per encoder the mean embedding of the initializer word's tokens (first candidate with ordinary tokens)."""
    text = TextSide.of(pipe)
    banned = special_ids(text.tokenizer)
    candidates = [config.initializer] if config.initializer else [CATEGORY_WORDS[spec.category], "art"]
    for word in candidates:
        ids = [i for i in prompt_tokens(text.tokenizer, word) if i not in banned] if word.strip() else []
        if ids:
            return [table.mean(dim=0).clone() for table in text.tables(torch.tensor(ids))], word
    raise ErasureLabError(f"initializer {candidates[0]!r} has no ordinary token in this tokenizer; "
                          "pass initializer=<a word the tokenizer knows>")


def with_text_components(pipe: Any, tokenizer: Any, encoder: Any) -> Any:
    """A pipeline sharing every component of `pipe` except the tokenizer and text encoder.

    tokenizer / encoder: one each, or one per encoder the U-Net reads (SDXL: two, as in `TextSide`).
    It shares the U-Net, so it shares its provenance (source, applied edits) too.
    """
    tokenizers = list(tokenizer) if isinstance(tokenizer, list | tuple) else [tokenizer]
    encoders = list(encoder) if isinstance(encoder, list | tuple) else [encoder]
    components = {**pipe.components, "tokenizer": tokenizers[0], "text_encoder": encoders[0]}
    if len(tokenizers) > 1:
        components.update(tokenizer_2=tokenizers[1], text_encoder_2=encoders[1])
    if "requires_safety_checker" in inspect.signature(type(pipe).__init__).parameters:
        components["requires_safety_checker"] = False
    clone = type(pipe)(**components)
    clone.set_progress_bar_config(disable=True)
    return clone


@dataclass
class LearnedToken:
    """The learned placeholder: tokenizer/encoder copies carrying it (`text`), one vector per encoder, the losses."""

    text: TextSide
    vectors: list[torch.Tensor]
    losses: list[float]
    initializer: str

    def set_rows(self, token_id: int) -> None:
        """Write each vector into its encoder copy's placeholder row."""
        with torch.no_grad():
            for encoder, vector in zip(self.text.encoders, self.vectors, strict=True):
                table = encoder.get_input_embeddings().weight
                table[token_id] = vector.to(table.device, table.dtype)

    def embeds(self, placeholder: str) -> dict[str, torch.Tensor]:
        """The saved form: {placeholder: v} (diffusers' `load_textual_inversion`), or SDXL's {"clip_l", "clip_g"}."""
        if len(self.vectors) == 1:
            return {placeholder: self.vectors[0]}
        return {"clip_l": self.vectors[0], "clip_g": self.vectors[1]}
