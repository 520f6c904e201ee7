"""Prompt text for the training-based methods: anchor prompts with the target words replaced.

Why text operations: ESD and TRuST train on (forget anchor, anchor prompt) pairs, where the anchor
prompt is the forget anchor with the concept's target words swapped for its guide ("a photo of
red" -> "a photo of" for guide ""), so the two prompts differ only in the concept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from erasurelab.concepts.spec import ConceptSpec, mention_pattern, mentions
from erasurelab.errors import ErasureLabError


def _replace_words(text: str, word: str, by: str) -> str:
    """`text` with every whole-word occurrence of `word` (case-insensitive) replaced by `by`."""
    return re.sub(mention_pattern(word.strip()), by, text, flags=re.IGNORECASE)


def anchor_prompt(anchor: str, target_words: Sequence[str], guide: str) -> str:
    """The anchor with its target words replaced by the guide ("a photo of red" -> "a photo of" for guide "").

    When no target phrase occurs but one has as many words as the guide, the words that differ are
    swapped one by one: a combination "child beer" with guide "child juice" turns "a child
    drinking beer" into "a child drinking juice" (TRuST's anchor c_a). Otherwise: the guide itself.
    """
    out = anchor
    for word in sorted(target_words, key=len, reverse=True):
        if word.strip() and mentions(out, word):
            out = _replace_words(out, word, guide)
    if out == anchor:
        for word in target_words:
            pairs = list(zip(word.split(), guide.split(), strict=False))
            if len(word.split()) == len(guide.split()) > 1 and all(mentions(anchor, a) for a, _ in pairs):
                for a, b in pairs:
                    out = _replace_words(out, a, b) if a.lower() != b.lower() else out
                break
    out = " ".join(out.split())
    return guide if out == " ".join(anchor.split()) else out


def forget_pairs(specs: Sequence[ConceptSpec], guide: str | None = None) -> list[tuple[str, str]]:
    """(forget anchor, anchor prompt) for every concept, in order, without duplicate anchors."""
    pairs: dict[str, str] = {}
    for spec in specs:
        target = spec.guide if guide is None else guide
        for anchor in spec.forget:
            pairs.setdefault(anchor, anchor_prompt(anchor, spec.target_words, target))
    if not pairs:
        raise ErasureLabError(f"nothing to erase: concept {specs[0].name if specs else '?'} has no forget anchors")
    return list(pairs.items())
