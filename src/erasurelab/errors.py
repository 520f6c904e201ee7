"""User-facing errors.

Why one exception type: bad input (an unknown concept, a missing model folder, corrupt weights)
must reach the user as a single line naming the problem and what would be valid. The CLI prints
`str(error)` of an ErasureLabError and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ErasureLabError(ValueError):
    """Bad input from the user; the message is one line and names the problem."""


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for close matches of word among options, or ''."""
    close = difflib.get_close_matches(word.lower(), [o.lower() for o in options], n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
