"""Fixed, versioned prompt suites of the evaluation protocol, and the registry of who builds them.

Why fixed and hashed: every number in a report is a rate over a suite, so two reports are only
comparable when their suites are identical. Each suite is built deterministically from a concept
and the settings, carries a sha256 over its prompts, seeds and labels, and can be stored as a file
whose hash is checked on reading (a tampered suite fails loudly).

Who builds them: a plugin that knows its concepts better than their specs do (the embedded
world, with its own grammar and ground-truth renders) registers a `SuiteBuilder` here
(`register_suite_builder`); every other concept gets the suites built from its spec
(`evaluation.generic_suites`). `generic_suites.concept_suites` picks one.

Why a leakage check: a method trained on an evaluation prompt is graded on its training set. The
evaluator refuses paraphrase, neighbour and selective prompts that appear among the anchors the
method was built from.

Seed rule: image r of prompt p uses seed = base_seed + n_rep·p + r, so every
image is reproducible from (suite, p, r) alone. The unrelated suite has n_rep = 2: r = 0 is seed
set A and r = 1 seed set B.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import EvaluationSettings, Rate
from erasurelab.plugins import load_plugins
from erasurelab.registry import Registry

#: Bump when the construction of any suite changes: it is part of every suite hash.
SUITE_VERSION = "2"
SUITE_NAMES: tuple[str, ...] = ("anchor", "paraphrase", "neighbours", "unrelated", "selective")
#: Suites whose prompts must never be among a method's anchors.
HELD_OUT_SUITES: tuple[str, ...] = ("paraphrase", "neighbours", "selective")


@dataclass(frozen=True)
class Suite:
    """One prompt suite: prompts, n_rep images each, ground-truth labels and per-prompt extras.

    labels[p]: attribute -> label an image of prompt p should show (judge-detectable ones only).
    groups[p]: the neighbour a prompt belongs to (neighbour suite), "" elsewhere.
    items[p]: the other judge-detectable items of a selective prompt, () elsewhere.
    """

    name: str
    concept: str
    prompts: tuple[str, ...]
    n_rep: int
    labels: tuple[dict[str, str], ...] = ()
    groups: tuple[str, ...] = ()
    items: tuple[tuple[str, ...], ...] = ()
    base_seed: int = 1
    version: str = SUITE_VERSION
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.prompts)
        object.__setattr__(self, "labels", tuple(dict(x) for x in self.labels) or tuple({} for _ in range(n)))
        object.__setattr__(self, "groups", tuple(self.groups) or ("",) * n)
        object.__setattr__(self, "items", tuple(tuple(x) for x in self.items) or ((),) * n)
        if not (len(self.labels) == len(self.groups) == len(self.items) == n):
            raise ValueError(f"suite {self.name}: labels/groups/items must align with the {n} prompts")
        if self.n_rep <= 0:
            raise ValueError(f"suite {self.name}: n_rep must be positive")

    def __len__(self) -> int:
        """Number of images (prompts × n_rep)."""
        return len(self.prompts) * self.n_rep

    def seed(self, p: int, r: int) -> int:
        """The seed rule: base_seed + n_rep·p + r."""
        return self.base_seed + self.n_rep * p + r

    def indices(self, reps: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """(p, r) pairs in render order (prompt-major); reps restricts r (e.g. [0] = seed set A)."""
        reps = list(range(self.n_rep)) if reps is None else list(reps)
        return [(p, r) for p in range(len(self.prompts)) for r in reps]

    def requests(self, reps: Iterable[int] | None = None) -> tuple[list[str], list[int]]:
        """(prompts, seeds) to render, one entry per image, in `indices` order."""
        pairs = self.indices(reps)
        return [self.prompts[p] for p, _ in pairs], [self.seed(p, r) for p, r in pairs]

    def payload(self) -> dict[str, Any]:
        """Canonical JSON content (what the hash covers)."""
        return {"name": self.name, "concept": self.concept, "version": self.version, "base_seed": self.base_seed,
                "n_rep": self.n_rep, "prompts": list(self.prompts),
                "seeds": [[self.seed(p, r) for r in range(self.n_rep)] for p in range(len(self.prompts))],
                "labels": [dict(sorted(x.items())) for x in self.labels], "groups": list(self.groups),
                "items": [list(x) for x in self.items]}

    @property
    def sha256(self) -> str:
        text = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "prompts": len(self.prompts),
                "images_per_prompt": self.n_rep, "images": len(self), "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save_suite(suite: Suite, path: str | Path) -> Path:
    """Write a suite as JSON with its sha256 (atomically)."""
    from erasurelab.runinfo import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {**suite.payload(), "notes": list(suite.notes), "sha256": suite.sha256})


def load_suite(path: str | Path) -> Suite:
    """Read a suite file; one-line error when it is unreadable or fails its sha256."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        suite = Suite(data["name"], data["concept"], tuple(data["prompts"]), int(data["n_rep"]),
                      tuple(data["labels"]), tuple(data["groups"]), tuple(tuple(x) for x in data["items"]),
                      int(data["base_seed"]), str(data["version"]), tuple(data.get("notes", ())))
        expected = data["sha256"]
        seeds = data["seeds"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ErasureLabError(f"unreadable suite file {path}: {type(exc).__name__}: {exc}") from exc
    if suite.sha256 != expected or seeds != suite.payload()["seeds"]:
        raise ErasureLabError(f"suite file {path} fails its sha256 (tampered or corrupt); rebuild the suite")
    return suite


# ---------------------------------------------------------------------------------------------
# Leakage
# ---------------------------------------------------------------------------------------------


def normalise(prompt: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how prompts are compared for leakage."""
    return re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(" .,")


def check_leakage(suites: Iterable[Suite], anchors: Iterable[str]) -> None:
    """Refuse paraphrase/neighbour/selective prompts that appear among a method's anchors."""
    anchor_set = {normalise(a) for a in anchors}
    for suite in suites:
        if suite.name not in HELD_OUT_SUITES:
            continue
        for prompt in suite.prompts:
            if normalise(prompt) in anchor_set:
                raise ErasureLabError(f"evaluation leakage: {suite.name} prompt {prompt!r} of concept "
                                      f"{suite.concept!r} is one of the method's anchors; use other anchors")


def method_anchors(spec: ConceptSpec, manifest_concepts: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Every anchor a method may have trained on: the spec's and those recorded in the run manifest."""
    anchors = [*spec.forget, *spec.retain]
    for entry in manifest_concepts:
        anchors += [str(a) for a in entry.get("forget", ())] + [str(a) for a in entry.get("retain", ())]
    return list(dict.fromkeys(anchors))


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    """A neighbour concept: its name, the labels that define it and its text similarity to the target."""

    name: str
    labels: dict[str, str]
    cosine: float | None


@dataclass(frozen=True)
class ConceptSuites:
    """All suites of one concept plus the neighbour ranking they were built from."""

    concept: str
    attribute: str
    anchor: Suite
    paraphrase: Suite
    neighbours: Suite
    unrelated: Suite
    selective: Suite
    neighbour_info: tuple[Neighbour, ...]

    def all(self) -> list[Suite]:
        return [self.anchor, self.paraphrase, self.neighbours, self.unrelated, self.selective]


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n): a stable, varied subset."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@torch.no_grad()
def text_embeddings(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm pooled text embeddings (float64): CLIP's pooled output, else the attention-masked mean.

    Why the masked mean for BERT/MiniLM: that is how sentence-transformers pools MiniLM, and
    padding tokens must not pull every short phrase towards the same vector.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    tokens = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    device = next(encoder.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    out = encoder(ids, attention_mask=mask)
    pooled = getattr(out, "pooler_output", None)
    if type(encoder).__name__.startswith("CLIP") and pooled is not None:
        vectors = pooled
    else:
        states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        weights = mask[..., None].to(states.dtype)
        vectors = (states * weights).sum(1) / weights.sum(1).clamp_min(1)
    return torch.nn.functional.normalize(vectors.double().cpu(), dim=-1)



# ---------------------------------------------------------------------------------------------
# Suite builders
# ---------------------------------------------------------------------------------------------


class SuiteBuilder(Protocol):
    """A plugin's suites for the concepts it knows; any method may decline (False / None).

    accepts: whether this builder makes the suites of `spec` (single or compound).
    build: the five suites of a single concept (same contract as `generic_suites.build_generic_suites`).
    build_compound: the suites of a combination or conditional (`evaluation.compound.CompoundSuites`).
    judge_accuracy: per-attribute accuracy of `judge` on n fresh ground-truth images, or None when
    the builder has no ground truth the judge can read.
    """

    def accepts(self, spec: ConceptSpec) -> bool: ...

    def build(self, spec: ConceptSpec, pipe: Any, judge_concepts: Iterable[str], attribute_of: Callable[[str], str],
              settings: EvaluationSettings, anchors: Iterable[str]) -> ConceptSuites: ...

    def build_compound(self, spec: ConceptSpec, judge_concepts: Iterable[str], settings: Any,
                       anchors: Iterable[str]) -> Any: ...

    def judge_accuracy(self, judge: Any, n: int, seed: int) -> dict[str, Rate] | None: ...


#: Suite builders by name; each factory returns the builder object.
SUITE_BUILDERS: Registry[Callable[[], SuiteBuilder]] = Registry("suite builder", "erasurelab.suite_builders")
_INSTANCES: dict[str, SuiteBuilder] = {}


def register_suite_builder(name: str, factory: Callable[[], SuiteBuilder], summary: str = "") -> None:
    """Add a suite builder: `factory()` returns an object with the methods of SuiteBuilder."""
    SUITE_BUILDERS.add(name, factory, summary=summary)


def suite_builders() -> list[SuiteBuilder]:
    """Every registered suite builder (plugins loaded first), in name order."""
    load_plugins()
    for entry in SUITE_BUILDERS.entries():
        if entry.name not in _INSTANCES:
            _INSTANCES[entry.name] = entry.factory()
    return [_INSTANCES[e.name] for e in SUITE_BUILDERS.entries()]


def suite_builder_for(spec: ConceptSpec) -> SuiteBuilder | None:
    """The registered builder that accepts `spec`, or None (its suites then come from the spec)."""
    return next((b for b in suite_builders() if b.accepts(spec)), None)
