"""The built-in catalog: a ConceptSpec for every concept of the embedded shapes world.

Dev and test concepts: DEV_CONCEPTS may be used to choose a method's defaults; TEST_CONCEPTS
(two per category: colour, object, style, character) are never used for tuning, only ever
reported, so a benchmark on them measures how the defaults generalise. `concept_split` says
which set a (possibly compound) name belongs to.

Why built from the world vocabulary: the anchors must use exactly the words the model was
trained on and never the held-out paraphrases the evaluation measures leakage with. Reading
both lists from `world.vocab` keeps the two in step when the vocabulary changes.

Compound concepts (the TRuST paper's combinations and conditionals) are named with two
separators; names are case-insensitive:
- combination "A+B[+C]": parts of different attributes among style, color and object, e.g.
  "red+circle" (aliases: "red circle", "circle + red"; the canonical name orders the parts as
  English does: style, color, object — "striped+red+circle").
- conditional "A|B": concept A (object, color, style or character) erased only on background B,
  e.g. "circle|white" (aliases: "circle on white", "circle | white-background",
  "circle on a white background").
Any such pair of world labels is valid; `compound_catalog()` lists the shipped examples.

Name parsing and label checks live in `world.compound_names`, template filling in
`world.phrases`; their names are re-exported here for existing callers.

The world registers `world_spec` as its concept provider (`erasurelab.world.plugin`), so
`erasurelab.concept("red")` reaches it without importing the world.
"""

from __future__ import annotations

from collections.abc import Sequence

from erasurelab.concepts.spec import (
    ALONE_TRAIN_TEMPLATES,
    COMBINATION_TRAIN_TEMPLATES,
    CONDITIONAL_TRAIN_TEMPLATES,
    MAX_NEIGHBOURS,
    ConceptSpec,
)
from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.world import vocab
from erasurelab.world.compound_names import (
    COMBINABLE,
    CONDITIONABLE,
    combination_labels,
    combination_name,
    conditional_labels,
    parse_compound,
)
from erasurelab.world.phrases import (
    COLOR_ONLY_TEMPLATES,
    alternatives,
    background_phrase,
    combination_items,
    combination_slots,
    conditional_items,
    conditional_slots,
    swapped_labels,
    world_fill,
)

__all__ = [
    "COLOR_ONLY_TEMPLATES", "COMBINABLE", "COMPOUND_EXAMPLES", "CONDITIONABLE", "DEV_CONCEPTS", "PLAIN_STYLE",
    "TEST_CONCEPTS", "alternatives", "background_phrase", "catalog", "combination_items", "combination_labels",
    "combination_name", "combination_slots", "compound_catalog", "concept_split", "conditional_items",
    "conditional_labels", "conditional_slots", "parse_compound", "swapped_labels", "world_combination",
    "world_concept", "world_fill", "world_guide", "world_spec", "world_split",
]

#: Shipped examples of compound concepts (any valid pair works; these are listed and tested).
COMPOUND_EXAMPLES: tuple[str, ...] = ("red+circle", "blue+square", "dotted+heart",
                                      "circle|white", "star|black", "bobo|gray")
#: Concepts only ever reported, never used to choose a default: two per category.
TEST_CONCEPTS: tuple[str, ...] = ("green", "purple", "triangle", "diamond", "dotted", "outlined", "kiki", "zuzu")
#: Every other world label; the four that defaults were chosen on come first.
DEV_CONCEPTS: tuple[str, ...] = tuple(dict.fromkeys(
    ["red", "circle", "striped", "bobo"] + [lab for lab in vocab.all_labels() if lab not in TEST_CONCEPTS]))


def catalog(compound: bool = False) -> list[str]:
    """Every built-in concept name (the embedded world's labels); compound=True adds the compound examples."""
    return vocab.all_labels() + (compound_catalog() if compound else [])


def concept_split(name: str) -> str:
    """"dev", "test" or "other" (not a world concept, e.g. a YAML file) for a concept name.

    Dev concepts may tune defaults; test concepts are only ever reported. A compound name is
    "dev" only when every part (and a conditional's background) is dev, else "test": a compound
    that contains a test concept would leak it into tuning.
    """
    text = str(name)
    if text.lower().endswith((".yaml", ".yml")):
        return "other"
    parsed = parse_compound(text)
    if parsed is None:
        parts: tuple[str, ...] = (" ".join(text.strip().lower().split()),)
    else:
        parts = parsed[1] + ((parsed[2],) if parsed[2] else ())
    labels = []
    for part in parts:
        try:
            labels.append(vocab.lookup(part)[1].name)
        except KeyError:
            return "other"
    return "dev" if all(label in DEV_CONCEPTS for label in labels) else "test"


def compound_catalog() -> list[str]:
    """The shipped combination and conditional examples (canonical names)."""
    return list(COMPOUND_EXAMPLES)


def _neighbour_phrases(attribute: str, name: str) -> list[str]:
    """First training word of each other concept of the same attribute, in vocabulary order."""
    return [c.train_words[0] for c in vocab.concepts(attribute) if c.name != name][:MAX_NEIGHBOURS]  # type: ignore[arg-type]


#: The shapes world's plain style: what a patterned style is replaced by.
PLAIN_STYLE = "solid"


def world_guide(attribute: str, name: str) -> str:
    """The guide a world concept is steered to: "solid" for a patterned style, "" otherwise.

    Why not the SD convention "art" for styles: the embedded model never saw the word and renders
    "art" prompts mostly striped, so steering striped towards "art" (UCE's target, TRuST's anchor
    prediction) kept the stripes (bench/results/methods_notes.md). "solid" is the world's own
    unpatterned style.
    """
    return PLAIN_STYLE if attribute == "style" and name != PLAIN_STYLE else ""


def world_concept(label: str) -> ConceptSpec:
    """The spec of one world concept; unknown labels raise a one-line error with close matches."""
    try:
        attribute, concept = vocab.lookup(label)
    except KeyError:
        labels = catalog()
        raise ErasureLabError(f"unknown concept {label!r}{did_you_mean(label, labels)}; "
                              f"built-in concepts: {', '.join(labels)} (or give a concept .yaml file)") from None
    neighbours = _neighbour_phrases(attribute, concept.name)
    if attribute == "character":
        # A character is a compound design on a plain body ("Bobo" = a yellow circle + a face):
        # with only two other characters, the body itself is the neighbour that must survive.
        design = vocab.character(concept.name)
        neighbours.append(f"{design.body_color} {design.body_object}")
    return ConceptSpec.from_words(concept.name, attribute, concept.train_words, neighbours,
                                  guide=world_guide(attribute, concept.name), paraphrases=concept.paraphrases)


def world_spec(name: str) -> ConceptSpec | None:
    """The spec of a world name ("red", "red+circle", "circle|white"), or None when it is not the world's.

    A single name is the world's when it is a label; a compound name when any of its parts (or its
    context) is one, so "red+circel" gets the world's one-line error with a suggestion while a
    name of another provider's (e.g. "van gogh") is left to that provider.
    """
    text = str(name)
    if text.lower().endswith((".yaml", ".yml")):
        return None
    parsed = parse_compound(text)
    if parsed is None:
        return world_concept(text) if _is_label(text) else None
    kind, parts, context = parsed
    if not any(_is_label(p) for p in (*parts, context) if p):
        return None
    return world_combination(parts) if kind == "combination" else world_conditional(parts[0], context)


def _is_label(text: str) -> bool:
    try:
        vocab.lookup(text)
    except KeyError:
        return False
    return True


def world_split(name: str) -> str | None:
    """"dev" or "test" for a world name, None for any other (the concept provider's split)."""
    split = concept_split(name)
    return None if split == "other" else split


# ---------------------------------------------------------------------------------------------
# World compound specs
# ---------------------------------------------------------------------------------------------


def world_combination(parts: Sequence[str]) -> ConceptSpec:
    """The combination spec of world labels, anchors from the training templates only.

    guide: the phrase with the last part (the noun) swapped for its first alternative, "red
    square" for red+circle: the TRuST paper's anchor c_a, so a guided edit keeps the other parts.

    forget (F_tr): every training template with all parts ({bg} over the three backgrounds).
    retain: each part without the others (R_A, R_B in training templates): for each part, every
    alternative of the other parts ("red square" ... and "blue circle" ...), one background each.
    """
    labels = combination_labels(parts)
    backgrounds = vocab.classes("background")
    forget = tuple(dict.fromkeys(p for p, _ in combination_items(COMBINATION_TRAIN_TEMPLATES, labels)))
    retain: dict[str, None] = {}
    phrases: dict[str, None] = {}
    for attribute in labels:
        for j, variant in enumerate(swapped_labels(labels, (attribute,))):
            phrases[combination_slots(variant)["x"]] = None
            background = backgrounds[j % len(backgrounds)]
            for prompt, _ in combination_items(COMBINATION_TRAIN_TEMPLATES, variant, (background,)):
                retain.setdefault(prompt, None)
    x = combination_slots(labels)["x"]
    guide = combination_slots(swapped_labels(labels, tuple(labels)[:-1])[0])["x"]
    return ConceptSpec(combination_name(labels), "custom", forget, tuple(r for r in retain if r not in forget),
                       guide=guide, synonyms=(x,), neighbours=tuple(phrases), kind="combination",
                       parts=tuple(labels.values()))


def world_conditional(part: str, context: str) -> ConceptSpec:
    """The conditional spec "A|B" of the world: A erased only on background B.

    forget (F_tr): the conditional training templates with A on B. retain: A on every other
    background, A alone, and every other concept of A's attribute on B — training templates only.
    guide: the first other concept on B ("square on a white background"), the TRuST anchor c_a.
    """
    attribute, background = conditional_labels(part, context)
    label = part.strip().lower()
    forget = tuple(p for p, _ in conditional_items(CONDITIONAL_TRAIN_TEMPLATES, attribute, label, background))
    other_backgrounds = [b for b in vocab.classes("background") if b != background]
    others = alternatives(attribute, label)
    retain = [p for b in other_backgrounds
              for p, _ in conditional_items(CONDITIONAL_TRAIN_TEMPLATES, attribute, label, b)]
    retain += [p for p, _ in conditional_items(ALONE_TRAIN_TEMPLATES, attribute, label)]
    retain += [p for o in others for p, _ in conditional_items(CONDITIONAL_TRAIN_TEMPLATES, attribute, o, background)]
    phrase = conditional_slots(attribute, label, background)
    siblings = [f"{conditional_slots(attribute, o)['A']} {phrase['ctx']}" for o in others]  # B's other concepts
    neighbours = [f"{phrase['A']} on {background_phrase(b)}" for b in other_backgrounds] + [phrase["A"]] + siblings
    retain = [r for r in dict.fromkeys(retain) if r not in forget]
    return ConceptSpec(f"{label}|{background}", "custom", forget, tuple(retain), guide=siblings[0],
                       synonyms=(f"{phrase['A']} {phrase['ctx']}",), neighbours=tuple(neighbours),
                       kind="conditional", parts=(label,), context=background)
