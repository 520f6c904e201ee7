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

SDXL (`TextSide`): the U-Net reads both encoders' penultimate hidden states side by side, plus the
second encoder's pooled projection (with the size/crop time ids). Both tokenizers share one
vocabulary (they differ at most in the padding token), so one id sequence is searched and each
encoder reads it with its own padding, exactly as `StableDiffusionXLPipeline.encode_prompt` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models.conditioning import is_sdxl

#: BERT's reserved placeholder rows ("[unused17]") are special too: never trained, never typed.
_RESERVED = re.compile(r"^\[unused\d+\]$|^<\|.*\|>$")


def require_text_encoders(pipe: Any, attack: str) -> None:
    """One-line refusal of pipelines whose text side the token attacks cannot drive.

    Needed: a tokenizer and text encoder (SD1.x/2.x, builtin:shapes), or for SDXL both pairs with
    one shared vocabulary and the same start/end framing (searched ids must mean the same tokens
    to both encoders). An SDXL pipeline without its first encoder (the refiner) is refused.
    """
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ErasureLabError(f"attack {attack} needs a pipeline with a text encoder and a tokenizer")
    if not is_sdxl(pipe):
        return
    tokenizer_2, encoder_2 = getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)
    if tokenizer_2 is None or encoder_2 is None:
        raise ErasureLabError(f"attack {attack} needs both SDXL text encoders and tokenizers")
    one, two = frame(pipe.tokenizer), frame(tokenizer_2)
    if (one.start, one.end, one.length) != (two.start, two.end, two.length) or \
            pipe.tokenizer.get_vocab() != tokenizer_2.get_vocab():
        raise ErasureLabError(f"attack {attack} needs SDXL's two tokenizers to share one vocabulary and framing")


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
    """Sorted ids an attack may choose: decodable by the tokenizer, a row of the encoder(s), not special.

    encoder: one text encoder, or a `TextSide` (then a row of every encoder, special in no tokenizer).
    """
    if isinstance(encoder, TextSide):
        rows = min(int(e.get_input_embeddings().weight.shape[0]) for e in encoder.encoders)
        banned = set().union(*(special_ids(t) for t in encoder.tokenizers))
    else:
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
    texts = [_end_of_word(tokenizer, t) for t in tokenizer.batch_decode(
        [[int(i)] for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=True)]
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
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return _end_of_word(tokenizer, text).strip()


def _end_of_word(tokenizer: Any, text: str) -> str:
    """`text` with CLIP's end-of-word mark ("</w>") turned into a space, as CLIPTokenizer.decode does.

    Why here: transformers removes the mark through a wrapper on the backend tokenizer's `decode`,
    and a deep copy of the tokenizer (a copied pipeline, textual inversion's tokenizer) loses that
    wrapper, so a copy would decode "red</w>" and render a prompt nobody typed.
    """
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    suffix = getattr(model, "end_of_word_suffix", None)
    return text.replace(suffix, " ") if isinstance(suffix, str) and suffix else text


def round_trips(tokenizer: Any, ids: Sequence[int]) -> bool:
    """True when decoding ids to text and tokenizing it again gives the same ids."""
    return prompt_tokens(tokenizer, decode(tokenizer, ids)) == [int(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# The pipeline's whole text side (one encoder, or SDXL's two)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """What the U-Net reads from a prompt: token states (n, L, d) and, for SDXL, the pooled embedding (n, p)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def __add__(self, other: Encoded) -> Encoded:
        return Encoded(self.embeds + other.embeds, _add(self.pooled, other.pooled))

    def __sub__(self, other: Encoded) -> Encoded:
        return Encoded(self.embeds - other.embeds, _add(self.pooled, None if other.pooled is None else -other.pooled))

    def scaled(self, factor: float) -> Encoded:
        return Encoded(self.embeds * factor, None if self.pooled is None else self.pooled * factor)

    def mean(self) -> Encoded:
        """The mean over the batch (dimension 0 kept out: (L, d) and (p,))."""
        return Encoded(self.embeds.mean(dim=0), None if self.pooled is None else self.pooled.mean(dim=0))

    def __getitem__(self, index: Any) -> Encoded:
        return Encoded(self.embeds[index], None if self.pooled is None else self.pooled[index])

    def float(self) -> Encoded:
        return Encoded(self.embeds.float(), None if self.pooled is None else self.pooled.float())

    def squared_distance(self, target: Encoded) -> torch.Tensor:
        """Per row ‖embeds − target.embeds‖² (+ ‖pooled − target.pooled‖² for SDXL), in float32 on the CPU."""
        out = ((self.embeds.float() - target.embeds.float()) ** 2).flatten(1).sum(dim=1)
        if self.pooled is not None and target.pooled is not None:
            out = out + ((self.pooled.float() - target.pooled.float()) ** 2).sum(dim=-1)
        return out.cpu()


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class TextSide:
    """The (tokenizer, encoder) pairs whose outputs the U-Net reads: one pair, or SDXL's two.

    Ids are the first tokenizer's; on SDXL the second encoder reads the same ids with its own
    padding token, its penultimate hidden states are concatenated to the first's, and its
    projected pooled output is the pooled embedding (StableDiffusionXLPipeline.encode_prompt).
    """

    tokenizers: tuple[Any, ...]
    encoders: tuple[Any, ...]
    sdxl: bool = False

    @classmethod
    def of(cls, pipe: Any, tokenizers: Sequence[Any] | None = None, encoders: Sequence[Any] | None = None) -> TextSide:
        """The pipeline's text side, or the given replacements for its tokenizers/encoders (same count)."""
        sdxl = is_sdxl(pipe)
        own_tok = (pipe.tokenizer, pipe.tokenizer_2) if sdxl else (pipe.tokenizer,)
        own_enc = (pipe.text_encoder, pipe.text_encoder_2) if sdxl else (pipe.text_encoder,)
        tokenizers = tuple(tokenizers) if tokenizers is not None else own_tok
        encoders = tuple(encoders) if encoders is not None else own_enc
        if len(tokenizers) != len(own_tok) or len(encoders) != len(own_enc):
            raise ValueError(f"{type(pipe).__name__} reads {len(own_enc)} text encoder(s)")
        return cls(tokenizers, encoders, sdxl)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer whose ids the attacks search and record (the first)."""
        return self.tokenizers[0]

    @property
    def encoder(self) -> Any:
        return self.encoders[0]

    @property
    def device(self) -> torch.device:
        return self.encoders[0].device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.tokenizer, prompts)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        """What the U-Net reads for these ids (no torch.no_grad: attacks differentiate through it)."""
        if not self.sdxl:
            return Encoded(encode_ids(self.encoder, ids, lengths))
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            own = _repad(ids, lengths, int(tokenizer.pad_token_id))
            out = encoder(own.to(encoder.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            states.append(out.hidden_states[-2])
        return Encoded(torch.cat(states, dim=-1), pooled)

    def encode_prompts(self, prompts: Sequence[str]) -> Encoded:
        return self.encode(*self.tokenize(prompts))

    @contextmanager
    def override(self, replaces: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]) -> Iterator[None]:
        """`embedding_override` on every encoder, replaces[i] on encoder i (each hook always removed)."""
        if len(replaces) != len(self.encoders):
            raise ValueError(f"one replacement per encoder: got {len(replaces)} for {len(self.encoders)}")
        with ExitStack() as stack:
            for encoder, replace in zip(self.encoders, replaces, strict=True):
                stack.enter_context(embedding_override(encoder, replace))
            yield

    def tables(self, ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each encoder's input-embedding rows (detached, float32; only `ids` when given)."""
        out = []
        for encoder in self.encoders:
            weight = encoder.get_input_embeddings().weight.detach()
            out.append((weight if ids is None else weight[ids.to(weight.device)]).float())
        return out


def _repad(ids: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """ids with every position at or after its row's length set to `pad` (the second SDXL tokenizer's padding)."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    return torch.where(positions[None, :] < lengths.to(ids.device)[:, None], ids, torch.full_like(ids, pad))
