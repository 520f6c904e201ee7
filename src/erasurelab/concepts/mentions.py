"""Whole-word mentions of a phrase in a prompt: the test for leakage and for "names the target".

Why whole words: "outlined" must not count as a mention of the paraphrase "lined", and a
hyphenated word ("red-orange") is one word, so neither anchors nor attacks match inside it.
"""

from __future__ import annotations

import re


def mentions(prompt: str, phrase: str) -> bool:
    """True when `phrase` occurs in `prompt` as whole words (case-insensitive).

    Whole words, because "outlined" must not count as a mention of the paraphrase "lined".
    """
    phrase = phrase.strip()
    return bool(phrase) and re.search(mention_pattern(phrase), prompt, flags=re.IGNORECASE) is not None


def replace_mention(prompt: str, phrase: str, replacement: str) -> str | None:
    """`prompt` with the first whole-word mention of `phrase` replaced (None when it has none)."""
    if not mentions(prompt, phrase):
        return None
    return re.sub(mention_pattern(phrase.strip()), replacement, prompt, count=1, flags=re.IGNORECASE)


def mention_pattern(phrase: str) -> str:
    """The regex of a whole-word mention of `phrase` (a hyphen counts as part of a word)."""
    return rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"
