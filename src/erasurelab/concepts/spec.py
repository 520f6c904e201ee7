"""ConceptSpec: what to erase, what must survive, and what is reserved for evaluation.

Why one immutable record: every method (PURE, UCE, ESD, ...) needs the same four things about
a concept — prompts that name it (forget anchors), prompts of neighbours that must survive
(retain anchors), a guide concept to map it to, and the held-out paraphrases that only the
evaluation may see. Keeping them in one hashed record lets a run manifest say exactly which
anchors an edit was built from, and lets a test prove that no anchor leaks an evaluation phrase.

Compound concepts (the TRuST paper's combinations and conditionals) use the same record with a `kind`:
- "combination": the parts are harmful only together ("red" ∧ "circle"); forget anchors name all
  parts, retain anchors each part without the others ("a red square", "a blue circle").
- "conditional": one concept erased only in a context ("circle" on a white background); retain
  anchors hold the concept elsewhere, alone, and other concepts in the context.
Compound anchors are built from *training* templates only; the evaluation uses the disjoint
*evaluation* templates (`erasurelab.concepts.templates`), so no evaluation prompt is ever an
anchor. Single concepts keep the defaults (kind "single", no parts, no context), which `to_dict`
leaves out, so a single-concept spec's hash depends only on the fields a single concept has.

The templates and the mention test live in `concepts.templates` and `concepts.mentions`; their
names are re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from erasurelab.concepts.mentions import mention_pattern, mentions, replace_mention
from erasurelab.concepts.templates import (
    ALONE_EVAL_TEMPLATES,
    ALONE_TRAIN_TEMPLATES,
    COMBINATION_EVAL_TEMPLATES,
    COMBINATION_TRAIN_TEMPLATES,
    CONDITIONAL_EVAL_TEMPLATES,
    CONDITIONAL_TRAIN_TEMPLATES,
    FORGET_TEMPLATES,
    KINDS,
    MAX_NEIGHBOURS,
    PART_SLOTS,
    STYLE_FORGET_TEMPLATES,
    check_compound_templates,
    default_templates,
    expand,
    fill,
    part_slots,
    template_slots,
)
from erasurelab.errors import ErasureLabError, did_you_mean

__all__ = [
    "ALONE_EVAL_TEMPLATES", "ALONE_TRAIN_TEMPLATES", "CATEGORIES", "COMBINATION_EVAL_TEMPLATES",
    "COMBINATION_TRAIN_TEMPLATES", "CONDITIONAL_EVAL_TEMPLATES", "CONDITIONAL_TRAIN_TEMPLATES", "FORGET_TEMPLATES",
    "KINDS", "MAX_NEIGHBOURS", "PART_SLOTS", "STYLE_FORGET_TEMPLATES", "ConceptSpec", "check_compound_templates",
    "combination_spec", "combine", "conditional_spec", "default_templates", "expand", "fill", "mention_pattern",
    "mentions", "part_slots", "replace_mention", "template_slots",
]

CATEGORIES: tuple[str, ...] = ("color", "object", "style", "background", "character", "custom")


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
    kind: "single" (default), "combination" or "conditional" (see the module docstring).
    parts: combination — the ≥ 2 distinct parts ("red", "circle"); conditional — the one concept
        erased under the condition ("circle"); single — empty.
    context: conditional only — the condition (a world background label such as "white", or the
        phrase used in prompts elsewhere, e.g. "on a table"); "" otherwise.
    Compound specs keep templates=None: their anchors are explicit prompts to every method.
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
    kind: str = "single"
    parts: tuple[str, ...] = ()
    context: str = ""

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
        self._check_kind()
        self._check_no_leak()

    def _check_kind(self) -> None:
        """kind, parts and context must agree: a malformed compound would erase the wrong thing."""
        if self.kind not in KINDS:
            hint = did_you_mean(str(self.kind), KINDS)
            raise ErasureLabError(f"concept {self.name!r}: unknown kind {self.kind!r}{hint}; valid: {', '.join(KINDS)}")
        if isinstance(self.parts, str) or not all(isinstance(p, str) and p.strip() for p in self.parts):
            raise ErasureLabError(f"concept {self.name!r}: parts must be a list of non-empty strings")
        if not isinstance(self.context, str):
            raise ErasureLabError(f"concept {self.name!r}: context must be a string")
        object.__setattr__(self, "parts", tuple(p.strip() for p in self.parts))
        object.__setattr__(self, "context", self.context.strip())
        lowered = [p.lower() for p in self.parts]
        repeated = sorted({p for p in lowered if lowered.count(p) > 1})
        if self.kind == "single" and (self.parts or self.context):
            raise ErasureLabError(f"concept {self.name!r}: parts/context need kind combination or conditional")
        if self.kind == "combination":
            if len(self.parts) < 2:
                raise ErasureLabError(f"combination {self.name!r} needs at least two parts, got "
                                      f"{len(self.parts)} ({', '.join(self.parts) or 'none'})")
            if repeated:
                raise ErasureLabError(f"combination {self.name!r} repeats the part {repeated[0]!r}; "
                                      "give each part once")
            if self.context:
                raise ErasureLabError(f"combination {self.name!r} takes no context (a context makes it a conditional)")
        if self.kind == "conditional":
            if len(self.parts) != 1:
                raise ErasureLabError(f"conditional {self.name!r} needs exactly one concept in parts, got "
                                      f"{len(self.parts)}")
            if not self.context:
                raise ErasureLabError(f"conditional {self.name!r} has an empty context; say where the concept "
                                      "is erased (e.g. a background)")
            if self.context.lower() == lowered[0]:
                raise ErasureLabError(f"conditional {self.name!r}: the context equals the concept {self.parts[0]!r}")

    @property
    def is_compound(self) -> bool:
        """True for combinations and conditionals."""
        return self.kind != "single"

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
        """Plain JSON-ready fields; kind/parts/context only when set, so single-concept hashes never change."""
        data = asdict(self)
        for key, default in _COMPOUND_DEFAULTS.items():
            if data[key] == default:
                del data[key]
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
        for key in ("forget", "retain", "paraphrases", "synonyms", "neighbours", "parts"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("templates") is not None:
            kwargs["templates"] = tuple(kwargs["templates"])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ConceptSpec:
        """Load a spec for any model from YAML; see `erasurelab.concepts.yaml_spec` for the format.

        Read through the concept-provider registry (the YAML loader registers itself there), so
        this record never imports its own loader.
        """
        from erasurelab.concepts.providers import concept_file

        return concept_file(path)


#: Fields that to_dict leaves out at these values (added after hashes of single concepts were in use).
_COMPOUND_DEFAULTS: dict[str, Any] = {"kind": "single", "parts": (), "context": ""}


def combination_spec(parts: Sequence[str], name: str | None = None, templates: Sequence[str] | None = None,
                     alternatives: Mapping[str, Sequence[str]] | None = None, guide: str | None = None,
                     paraphrases: Sequence[str] = ()) -> ConceptSpec:
    """A combination for any model (no world vocabulary): anchors from templates over the parts.

    forget: each template with every part ("a {A} drinking {B}" -> "a child drinking beer").
    retain: each part alone in the single templates ("a photo of beer"), plus, for every part P
    with alternatives, the templates with P replaced by each alternative ("an adult drinking
    beer" keeps "beer"). templates default to the combination training templates without {bg}.
    guide (None): the parts with the last one swapped for its first alternative ("child juice"),
    TRuST's anchor c_a, which keeps the other parts; "" when the last part has no alternative.
    """
    parts = tuple(p.strip() for p in parts)
    spec_name = name or "+".join(parts)
    ConceptSpec(spec_name, kind="combination", parts=parts)  # validates parts before building anything
    templates = tuple(templates) if templates else tuple(t for t in COMBINATION_TRAIN_TEMPLATES
                                                         if "bg" not in template_slots(t))
    check_compound_templates("combination", templates, len(parts))
    forget = tuple(dict.fromkeys(fill(t, part_slots(parts)) for t in templates))
    swaps = _alternatives(spec_name, alternatives, parts)
    swapped = [tuple(alt if j == i else p for j, p in enumerate(parts)) for i, alts in swaps for alt in alts]
    retain = expand(FORGET_TEMPLATES, parts) + tuple(fill(t, part_slots(s)) for s in swapped for t in templates)
    if guide is None:  # the first neighbour with the last part swapped ("child juice")
        guide = next((" ".join(s) for s in swapped if s[-1] != parts[-1]), "")
    return ConceptSpec(spec_name, "custom", forget, _unique(retain, forget), guide, tuple(paraphrases),
                       synonyms=(part_slots(parts)["x"],), neighbours=tuple(" ".join(s) for s in swapped),
                       kind="combination", parts=parts)


def conditional_spec(part: str, context: str, name: str | None = None, templates: Sequence[str] | None = None,
                     alternatives: Mapping[str, Sequence[str]] | None = None, guide: str | None = None,
                     paraphrases: Sequence[str] = ()) -> ConceptSpec:
    """A conditional for any model: `part` erased only `context` (a phrase, e.g. "on a table").

    forget: templates with {A} = part, {ctx} = context. retain: the part alone (alone templates),
    and from alternatives {part: [...]} other concepts in the context, {"context": [...]} the part
    in other contexts. templates default to the conditional training templates.
    guide (None): the first alternative concept in the same context ("dog on a table"), TRuST's
    anchor c_a, which keeps the context; "" when the part has no alternative.
    """
    part, context = part.strip(), context.strip()
    spec_name = name or f"{part}|{context}"
    ConceptSpec(spec_name, kind="conditional", parts=(part,), context=context)
    templates = tuple(templates) if templates else CONDITIONAL_TRAIN_TEMPLATES
    check_compound_templates("conditional", templates, 1)
    forget = tuple(dict.fromkeys(fill(t, {"A": part, "ctx": context}) for t in templates))
    swaps = dict(_alternatives(spec_name, alternatives, (part, "context")))
    pairs = [(alt, context) for alt in swaps.get(0, ())] + [(part, alt) for alt in swaps.get(1, ())]
    retain = tuple(fill(t, {"A": part}) for t in ALONE_TRAIN_TEMPLATES)
    retain += tuple(fill(t, {"A": a, "ctx": c}) for a, c in pairs for t in templates)
    siblings = [f"{a} {c}" for a, c in pairs]
    if guide is None:  # the first other concept in the context ("dog on a table")
        guide = siblings[0] if swaps.get(0) else ""
    return ConceptSpec(spec_name, "custom", forget, _unique(retain, forget), guide, tuple(paraphrases),
                       synonyms=(f"{part} {context}",), neighbours=(part, *siblings),
                       kind="conditional", parts=(part,), context=context)


def _alternatives(name: str, alternatives: Mapping[str, Sequence[str]] | None,
                  slots: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    """(slot index, alternatives) from a mapping slot name -> alternatives; one-line error for unknown slots."""
    out = []
    for key, values in (alternatives or {}).items():
        if key not in slots:
            raise ErasureLabError(f"concept {name!r}: alternatives for {key!r}, which is not one of "
                                  f"{', '.join(slots)}{did_you_mean(str(key), slots)}")
        if isinstance(values, str) or not all(isinstance(v, str) and v.strip() for v in values):
            raise ErasureLabError(f"concept {name!r}: alternatives for {key!r} must be a list of non-empty strings")
        out.append((list(slots).index(key), tuple(v.strip() for v in values)))
    return sorted(out)


def _unique(prompts: Iterable[str], exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """Prompts in order, without duplicates and without any of `exclude`."""
    excluded = set(exclude)
    return tuple(p for p in dict.fromkeys(prompts) if p not in excluded)


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
