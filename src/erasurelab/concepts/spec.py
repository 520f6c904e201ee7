"""ConceptSpec: what to erase, what must survive, and what is reserved for evaluation.

Why one immutable record: every method (PURE, UCE, ESD, ...) needs the same four things about
a concept — prompts that name it (forget anchors), prompts of neighbours that must survive
(retain anchors), a guide concept to map it to, and the held-out paraphrases that only the
evaluation may see. Keeping them in one hashed record lets a run manifest say exactly which
anchors an edit was built from, and lets a test prove that no anchor leaks an evaluation phrase.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError, did_you_mean

CATEGORIES: tuple[str, ...] = ("color", "object", "style", "background", "character", "custom")

#: PURE's six forget templates (pure.md §4). "{c}" is one training word of the concept.
FORGET_TEMPLATES: tuple[str, ...] = (
    "a photo of {c}", "a picture of {c}", "an image of {c}", "{c}", "a painting of {c}", "a drawing of {c}",
)
#: The "in the style of" forms PURE uses for style concepts.
STYLE_FORGET_TEMPLATES: tuple[str, ...] = (
    "{c}", "in the style of {c}", "a photo in the style of {c}", "a picture in the style of {c}",
    "a painting in the style of {c}", "a drawing in the style of {c}",
)
#: Retain anchors use at most this many neighbours (the plateau of PURE's sweep: 6 x 9 = 54 anchors).
MAX_NEIGHBOURS = 9


def default_templates(category: str) -> tuple[str, ...]:
    """The PURE anchor templates for a category (style concepts get the 'in the style of' forms)."""
    return STYLE_FORGET_TEMPLATES if category == "style" else FORGET_TEMPLATES


def expand(templates: Sequence[str], words: Iterable[str]) -> tuple[str, ...]:
    """templates x words in word-major order, duplicates removed (order kept, so hashes are stable)."""
    out: dict[str, None] = {}
    for word in words:
        for template in templates:
            out[template.format(c=word).strip()] = None
    return tuple(out)


def mentions(prompt: str, phrase: str) -> bool:
    """True when `phrase` occurs in `prompt` as whole words (case-insensitive).

    Whole words, because "outlined" must not count as a mention of the paraphrase "lined".
    """
    phrase = phrase.strip()
    if not phrase:
        return False
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", prompt, flags=re.IGNORECASE) is not None


@dataclass(frozen=True)
class ConceptSpec:
    """A concept to erase.

    name: identifier (the judge label for world concepts).
    category: one of CATEGORIES; picks templates and the UCE guide default.
    forget: anchors naming the target, built from the training words only.
    retain: anchors naming same-category neighbours that must survive.
    guide: concept the target is mapped to by mapping methods (UCE); "" = unconditional.
    paraphrases: held-out phrasings, for evaluation only — never used as anchors.
    synonyms: the training words the forget anchors were built from.
    neighbours: the neighbour phrases the retain anchors were built from.
    templates: the templates anchors were built from; None when the anchors were given explicitly.
    """

    name: str
    category: str = "custom"
    forget: tuple[str, ...] = ()
    retain: tuple[str, ...] = ()
    guide: str = ""
    paraphrases: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    templates: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ErasureLabError("concept spec needs a non-empty name")
        if self.category not in CATEGORIES:
            hint = did_you_mean(self.category, CATEGORIES)
            raise ErasureLabError(f"unknown concept category {self.category!r}{hint}; valid: {', '.join(CATEGORIES)}")
        for attr in ("forget", "retain", "paraphrases", "synonyms", "neighbours"):
            value = getattr(self, attr)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ErasureLabError(f"concept {self.name!r}: {attr} must be a list of strings")
            object.__setattr__(self, attr, tuple(value))
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
        if not isinstance(self.guide, str):
            raise ErasureLabError(f"concept {self.name!r}: guide must be a string")
        self._check_no_leak()

    def _check_no_leak(self) -> None:
        """Anchors must never contain a held-out paraphrase: that would train on the test set."""
        for anchor in self.forget + self.retain:
            for phrase in self.paraphrases:
                if mentions(anchor, phrase):
                    raise ErasureLabError(f"concept {self.name!r}: anchor {anchor!r} contains the held-out "
                                          f"paraphrase {phrase!r} (evaluation leakage); remove it from the anchors")

    @classmethod
    def from_words(cls, name: str, category: str, words: Sequence[str], neighbours: Sequence[str] = (),
                   guide: str | None = None, paraphrases: Sequence[str] = (),
                   templates: Sequence[str] | None = None) -> ConceptSpec:
        """Build forget/retain anchors from templates x training words (and x neighbours)."""
        templates = tuple(templates) if templates is not None else default_templates(category)
        neighbours = tuple(neighbours)[:MAX_NEIGHBOURS]
        if guide is None:
            guide = "art" if category == "style" else ""
        return cls(name=name, category=category, forget=expand(templates, words), retain=expand(templates, neighbours),
                   guide=guide, paraphrases=tuple(paraphrases), synonyms=tuple(words), neighbours=neighbours,
                   templates=templates)

    def with_templates(self, templates: Sequence[str]) -> ConceptSpec:
        """The same concept with anchors rebuilt from other templates (e.g. UCE's).

        Anchors that were given explicitly (not built from this spec's templates) are kept as
        they are: the user chose them.
        """
        if self.templates is None:
            return self
        templates = tuple(templates)
        forget = self.forget
        if self.synonyms and self.forget == expand(self.templates, self.synonyms):
            forget = expand(templates, self.synonyms)
        retain = self.retain
        if self.retain == expand(self.templates, self.neighbours):
            retain = expand(templates, self.neighbours)
        return replace(self, forget=forget, retain=retain, templates=templates)

    @property
    def target_words(self) -> tuple[str, ...]:
        """Every phrase that names the target (name and training words)."""
        return tuple(dict.fromkeys((self.name, *self.synonyms)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def sha256(self) -> str:
        """Hash of the canonical JSON: identifies exactly which anchors an edit was built from."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def manifest_entry(self) -> dict[str, Any]:
        return {**self.to_dict(), "sha256": self.sha256()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptSpec:
        """Inverse of to_dict (e.g. from a manifest); extra keys such as sha256 are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("forget", "retain", "paraphrases", "synonyms", "neighbours"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("templates") is not None:
            kwargs["templates"] = tuple(kwargs["templates"])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ConceptSpec:
        """Load a spec for any model from YAML; see `erasurelab.concepts.yaml_spec` for the format."""
        from erasurelab.concepts.yaml_spec import load_yaml_spec

        return load_yaml_spec(path)


def combine(specs: Sequence[ConceptSpec], templates: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Forget and retain anchors of several concepts erased together.

    Forget anchors are stacked. A retain anchor that names any target is dropped: when red and
    blue are erased together, "a photo of blue" (a neighbour of red) must not be protected.
    templates: rebuild template-made anchors with these templates first (None: as stored).
    """
    specs = [s.with_templates(templates) if templates is not None else s for s in specs]
    forget = list(dict.fromkeys(a for s in specs for a in s.forget))
    targets = [w for s in specs for w in s.target_words]
    forget_set = set(forget)
    retain = [a for a in dict.fromkeys(a for s in specs for a in s.retain)
              if a not in forget_set and not any(mentions(a, w) for w in targets)]
    return forget, retain
