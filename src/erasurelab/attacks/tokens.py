"""Token-level plumbing shared by the attacks: vocabularies, id sequences, encoding, embedding overrides.

Why here and not through `pipe.encode_prompt`: discrete attacks (UnlearnDiffAtk, Ring-A-Bell) search
over token ids, not text, and text → ids → text does not round-trip for every tokenizer (BERT
word pieces, CLIP byte pairs). So they build id sequences themselves and encode them exactly as
`StableDiffusionPipeline.encode_prompt` encodes a tokenized prompt: same padding, same attention
mask rule (`text_encoder.config.use_attention_mask`), output [0]. A test checks that the two agree.

Why a forward hook on the input-embedding table instead of `inputs_embeds`: transformers 5's
`CLIPTextModel.forward` takes no `inputs_embeds` (it needs the ids to find the end token), while
BERT does. Replacing the output of `get_input_embeddings()` at chosen positions works for both
and leaves everything downstream (positions, masks, pooling) as the model does it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models.conditioning import is_sdxl

#: BERT's reserved placeholder rows ("[unused17]") are special too: never trained, never typed.
_RESERVED = re.compile(r"^\[unused\d+\]$|^<\|.*\|>$")


def require_single_encoder(pipe: Any, attack: str) -> None:
    """Attacks that touch the text encoder support SD1.x/2.x-style pipelines (one encoder) only.

    Why refuse SDXL: its U-Net reads two encoders plus pooled embeddings and time ids; a learned
    token or an adversarial prefix would have to exist in both. One line, not a traceback.
    """
    if is_sdxl(pipe) or getattr(pipe, "text_encoder_2", None) is not None:
        raise ErasureLabError(f"attack {attack} supports single-text-encoder pipelines (SD1.x/2.x, builtin:shapes); "
                              f"{type(pipe).__name__} has two encoders (SDXL is not supported yet)")
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ErasureLabError(f"attack {attack} needs a pipeline with a text encoder and a tokenizer")


def special_ids(tokenizer: Any) -> set[int]:
    """Every id a searched prompt must never contain.

    The tokenizer's special tokens (CLIP start/end; BERT [CLS]/[SEP]/[PAD]/[MASK]/[UNK]), reserved
    rows ([unused*], <|...|>) and tokens added after training (e.g. a textual-inversion placeholder).
    """
    ids = set(int(i) for i in tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if _RESERVED.match(token):
            ids.add(int(index))
    ids.update(int(i) for i in tokenizer.get_added_vocab().values())
    return ids


def vocabulary_ids(tokenizer: Any, encoder: Any) -> torch.Tensor:
    """Sorted ids an attack may choose: decodable by the tokenizer, a row of the encoder, not special."""
    rows = int(encoder.get_input_embeddings().weight.shape[0])
    banned = special_ids(tokenizer)
    ids = [i for i in range(min(len(tokenizer), rows)) if i not in banned]
    if not ids:
        raise ErasureLabError("the tokenizer has no ordinary (non-special) tokens to search over")
    return torch.tensor(ids, dtype=torch.long)


def whole_word_ids(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    """The ids among `ids` that decode to text which tokenizes back to that one id.

    Why: a searched prompt is rendered as text. A word piece (BERT "##ing", a CLIP byte pair
    without its end-of-word mark) glues onto its neighbour when decoded, and the glued word
    tokenizes to different ids, so the prompt rendered is not the prompt found. Whole words keep
    the search's ids and the rendered text the same in the common case.
    """
    texts = tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=True)
    encoded = tokenizer([t.strip() for t in texts], add_special_tokens=False).input_ids
    keep = [int(i) for i, back in zip(ids.tolist(), encoded, strict=True) if back == [int(i)]]
    if not keep:
        raise ErasureLabError("the tokenizer has no whole-word tokens to search over")
    return torch.tensor(keep, dtype=torch.long)


@dataclass(frozen=True)
class Frame:
    """How the pipeline frames a prompt: [start] tokens [end] [pad]... of fixed length."""

    start: int
    end: int
    pad: int
    length: int

    def build(self, middle: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (n, length), real lengths (n,)) for token lists placed between start and end."""
        rows, lengths = [], []
        for tokens in middle:
            tokens = list(tokens)
            if len(tokens) > self.length - 2:
                raise ErasureLabError(f"{len(tokens)} tokens do not fit a {self.length}-token prompt "
                                      f"(at most {self.length - 2} between start and end)")
            row = [self.start, *tokens, self.end]
            lengths.append(len(row))
            rows.append(row + [self.pad] * (self.length - len(row)))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)


def frame(tokenizer: Any) -> Frame:
    """Start/end/pad ids and length, read off how the tokenizer encodes "" (BERT and CLIP alike)."""
    length = int(tokenizer.model_max_length)
    ids = tokenizer("", padding="max_length", max_length=length, truncation=True).input_ids
    if len(ids) < 3:
        raise ErasureLabError(f"tokenizer {type(tokenizer).__name__} frames prompts without start/end tokens; "
                              "token attacks need SD-style [start] ... [end] prompts")
    return Frame(start=int(ids[0]), end=int(ids[1]), pad=int(ids[2]), length=length)


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """The ids of a prompt's words, without start/end/padding."""
    return [int(i) for i in tokenizer(prompt, add_special_tokens=False).input_ids]


def attention_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """1 on the real tokens (start, words, end), 0 on padding, as the tokenizer's own mask."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    return (positions[None, :] < lengths.to(ids.device)[:, None]).long()


def encode_ids(encoder: Any, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Token states (n, L, d) exactly as `encode_prompt` computes them from tokenized ids.

    No `torch.no_grad` here: the attacks differentiate through it (embedding overrides).
    """
    device = encoder.device
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = attention_mask(ids, lengths).to(device)
    return encoder(ids.to(device), attention_mask=mask)[0]


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, lengths) as the pipeline tokenizes prompts (pad to max length, truncate)."""
    batch = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
    if "attention_mask" in batch:
        lengths = batch.attention_mask.sum(dim=1)
    else:  # a tokenizer without a mask: count up to and including the first end token
        lengths = torch.tensor([len(tokenizer(p, truncation=True).input_ids) for p in prompts])
    return batch.input_ids, lengths


@contextmanager
def embedding_override(encoder: Any, replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, the encoder's token embeddings are `replace(input_ids, embeddings)`.

    The hook is always removed, so the encoder is unchanged afterwards (no weights are touched).
    """
    module = encoder.get_input_embeddings()

    def hook(_module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return replace(inputs[0], output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Human-readable text for searched ids (may not re-tokenize to the same ids; see round_trips)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()


def round_trips(tokenizer: Any, ids: Sequence[int]) -> bool:
    """True when decoding ids to text and tokenizing it again gives the same ids."""
    return prompt_tokens(tokenizer, decode(tokenizer, ids)) == [int(i) for i in ids]
