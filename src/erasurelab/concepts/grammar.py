"""Prompt grammars: how a plugin phrases prompts about the concepts it knows.

Why a hook: a model trained on its own caption grammar (the embedded shapes world) is attacked,
scored and asked for images in that grammar — "a dotted crimson circle on a gray background",
not "a photo of red" — while any other concept falls back to its spec's templates and phrases.
Attacks, `erasurelab generate` and the fine-tuning attack ask here which grammar (if any) knows
a concept; a plugin registers its grammar with `register_prompt_grammar`, as a third-party
package would.

A grammar is an object with the methods of `PromptGrammar`; every method may answer "nothing"
([] / None), and the caller then uses its generic fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from erasurelab.errors import ErasureLabError
from erasurelab.plugins import load_plugins
from erasurelab.registry import Registry

if TYPE_CHECKING:
    from erasurelab.concepts.spec import ConceptSpec


class PromptGrammar(Protocol):
    """What a plugin knows about phrasing prompts for its concepts (and the model that speaks them)."""

    #: The registered judge that reads this grammar's labels (e.g. "shapes").
    judge: str

    def knows(self, spec: ConceptSpec) -> bool:
        """True when the concept is one of the grammar's own (its prompts below are then used)."""

    def paraphrase_prompts(self, spec: ConceptSpec) -> list[str]:
        """Prompts naming the concept only through its held-out paraphrases, interleaved over phrases."""

    def described_prompts(self, spec: ConceptSpec) -> list[str]:
        """Prompts naming the concept and every other attribute of the image ([] when it cannot)."""

    def template_pairs(self, spec: ConceptSpec) -> list[tuple[str, str]]:
        """(with concept, without concept) prompt pairs sharing a template (Ring-A-Bell, DUO)."""

    def scoring_templates(self, spec: ConceptSpec) -> list[str]:
        """Held-out prompts with a "{}" slot where the concept's word goes ([]: the caller's defaults)."""

    def parse_request(self, text: str) -> tuple[str, dict[str, str]]:
        """'object=circle,color=red' -> (prompt, labels an image of it must show); one-line errors."""

    def describe(self, predicted: Mapping[str, str]) -> str:
        """One short caption of a judge's predicted labels for an image."""

    def caption_without(self, predicted: Mapping[str, str], attribute: str) -> str | None:
        """A prompt for an image showing the judge's labels except `attribute` (DUO's safe SDEdit prompt), or None."""

    def owns_model(self, source: str) -> bool:
        """True when the model spec `source` (e.g. "builtin:shapes") was trained on this grammar."""

    def benign_data(self, spec: ConceptSpec, n: int, seed: int, judge: Any) -> Any | None:
        """A benign fine-tuning dataset that never shows the concept (a CaptionData), or None."""


#: Prompt grammars by name; each factory returns the grammar object.
PROMPT_GRAMMARS: Registry[Callable[[], PromptGrammar]] = Registry("prompt grammar", "erasurelab.prompt_grammars")


def register_prompt_grammar(name: str, factory: Callable[[], PromptGrammar], summary: str = "") -> None:
    """Add a prompt grammar: `factory()` returns an object with the methods of PromptGrammar."""
    PROMPT_GRAMMARS.add(name, factory, summary=summary)


@cache
def _instance(name: str) -> PromptGrammar:
    return PROMPT_GRAMMARS.get(name).factory()


def grammars() -> list[PromptGrammar]:
    """Every registered grammar (plugins loaded first), in name order."""
    load_plugins()
    return [_instance(e.name) for e in PROMPT_GRAMMARS.entries()]


def grammar_for(spec: ConceptSpec) -> PromptGrammar | None:
    """The grammar that knows `spec`, or None (the caller then phrases prompts from the spec)."""
    return next((g for g in grammars() if g.knows(spec)), None)


def grammar_for_model(source: str | None) -> PromptGrammar | None:
    """The grammar the model spec `source` was trained on, or None (e.g. a user's SD folder)."""
    if not source:
        return None
    return next((g for g in grammars() if g.owns_model(str(source))), None)


def request_grammar() -> PromptGrammar:
    """The grammar that composes prompts from attribute requests; one-line error when no plugin has one."""
    found = grammars()
    if not found:
        raise ErasureLabError("attribute requests need a prompt grammar (the embedded shapes world's); "
                              "none is registered, so pass --prompt TEXT instead")
    return found[0]


def benign_data_for(spec: ConceptSpec, n: int, seed: int, judge: Any) -> Any:
    """A benign dataset for `spec` from the first grammar that can make one; one-line error when none can."""
    for grammar in grammars():
        data = grammar.benign_data(spec, n, seed, judge)
        if data is not None:
            return data
    raise ErasureLabError(f"no plugin makes benign data for concept {spec.name!r}")


def round_robin(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Interleave groups (a0, b0, c0, a1, ...) so any prefix covers every group."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out
