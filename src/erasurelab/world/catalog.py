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

The world registers `world_spec` as its concept provider (`erasurelab.world.plugin`), so
`erasurelab.concept("red")` reaches it without importing the world.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from erasurelab.concepts.spec import (
    ALONE_TRAIN_TEMPLATES,
    COMBINATION_TRAIN_TEMPLATES,
    CONDITIONAL_TRAIN_TEMPLATES,
    MAX_NEIGHBOURS,
    ConceptSpec,
    fill,
    template_slots,
)
from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.world import vocab

#: Attributes a combination may join, in noun-phrase order ("striped red circle").
COMBINABLE: tuple[str, ...] = ("style", "color", "object")
#: Attributes a conditional may erase (its context is always a background).
CONDITIONABLE: tuple[str, ...] = ("object", "color", "style", "character")
#: Shipped examples of compound concepts (any valid pair works; these are listed and tested).
COMPOUND_EXAMPLES: tuple[str, ...] = ("red+circle", "blue+square", "dotted+heart",
                                      "circle|white", "star|black", "bobo|gray")
#: Templates that read naturally only when the modifier {A} is a single color ("a circle coloured red").
COLOR_ONLY_TEMPLATES: frozenset[str] = frozenset({"a {B} coloured {A}"})
_GENERIC_OBJECT = "shape"

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
# Compound names
# ---------------------------------------------------------------------------------------------


def parse_compound(text: str) -> tuple[str, tuple[str, ...], str] | None:
    """(kind, parts, context) of a compound name, or None for a single concept name.

    "A|B" and "A on [a] B[ background]" are conditionals; "A+B" and "A B" (space-separated labels)
    are combinations. Only the syntax is read here; the labels are checked when the spec is built.
    """
    key = " ".join(text.strip().lower().split())
    if "|" in key or " on " in f" {key} ":
        concept_text, _, context = key.partition("|") if "|" in key else f" {key} ".partition(" on ")
        return "conditional", (concept_text.strip(),), _context_label(context)
    if "+" in key or " " in key:
        return "combination", tuple(p.strip() for p in re.split(r"[+ ]+", key) if p.strip()) or ("",), ""
    return None


def _context_label(text: str) -> str:
    """'on a white background', 'white-background', 'white' -> 'white'."""
    text = re.sub(r"^(on\s+)?(an?\s+)?", "", text.strip())
    return re.sub(r"[\s-]*(background|backdrop)$", "", text).strip()


def _lookup_label(label: str, role: str, allowed: Sequence[str]) -> str:
    """The attribute of a world label, checked against the attributes this role accepts; one-line errors."""
    try:
        attribute = vocab.lookup(label)[0]
    except KeyError:
        labels = [lab for a in allowed for lab in vocab.classes(a) if lab != vocab.NO_CHARACTER]  # type: ignore[arg-type]
        raise ErasureLabError(f"unknown {role} {label!r}{did_you_mean(label, labels)}; "
                              f"valid: {', '.join(labels)}") from None
    if attribute not in allowed:
        hint = {"background": " (a background is a condition: use the conditional syntax, e.g. circle|white)",
                "character": " (a character is already a fixed design: use a conditional, e.g. bobo|white)"}
        valid = ", ".join(vocab.classes(allowed[0])) if len(allowed) == 1 else " or ".join(allowed)  # type: ignore[arg-type]
        raise ErasureLabError(f"{label!r} is a {attribute}, which cannot be a {role}{hint.get(attribute, '')}; "
                              f"valid: {valid}")
    return attribute


def combination_labels(parts: Sequence[str]) -> dict[str, str]:
    """attribute -> label of a world combination, in noun-phrase order; one-line errors on bad parts.

    Why one part per attribute: the judge has one head per attribute, so an image cannot show
    "red" and "blue" as one object's color; such a combination could never be detected.
    """
    parts = [p.strip().lower() for p in parts]
    if len([p for p in parts if p]) < 2 or not all(parts):
        raise ErasureLabError(f"a combination needs at least two non-empty parts, got {'+'.join(parts)!r} "
                              "(e.g. red+circle)")
    labels: dict[str, str] = {}
    for part in parts:
        attribute = _lookup_label(part, "combination part", COMBINABLE)
        if labels.get(attribute) == part:
            raise ErasureLabError(f"combination {'+'.join(parts)!r} repeats the part {part!r}; give each part once")
        if attribute in labels:
            raise ErasureLabError(f"combination parts {labels[attribute]!r} and {part!r} are both {attribute}s: "
                                  f"one image shows one {attribute}, so combine different attributes "
                                  f"({', '.join(COMBINABLE)})")
        labels[attribute] = part
    return {a: labels[a] for a in COMBINABLE if a in labels}


def combination_name(labels: Mapping[str, str]) -> str:
    """Canonical name: the parts in noun-phrase order joined by '+'."""
    return "+".join(labels[a] for a in COMBINABLE if a in labels)


def conditional_labels(part: str, context: str) -> tuple[str, str]:
    """(attribute of the concept, background label) of a world conditional; one-line errors."""
    part, context = part.strip().lower(), context.strip().lower()
    if not part:
        raise ErasureLabError(f"conditional {part}|{context} names no concept; write e.g. circle|white")
    if not context:
        raise ErasureLabError(f"conditional {part!r} has an empty context; give a background: "
                              f"{', '.join(vocab.classes('background'))} (e.g. {part}|white)")
    attribute = _lookup_label(part, "conditioned concept", CONDITIONABLE)
    _lookup_label(context, "context (background)", ("background",))
    return attribute, context


# ---------------------------------------------------------------------------------------------
# World phrases
# ---------------------------------------------------------------------------------------------


def world_fill(template: str, slots: Mapping[str, str]) -> str:
    """fill() plus the world's names: characters take no article.

    A leading "a Bobo" becomes "the character Bobo" (a training-caption form) and any other
    "a Bobo" becomes "Bobo", so "a {A} ..." (train) and "{A} ..." (eval) stay different prompts.
    """
    text = re.sub(r"^[Aa]n? (?=[A-Z])", "the character ", fill(template, slots))
    return re.sub(r"\b[Aa]n? (?=[A-Z])", "", text)


def _display(attribute: str, label: str) -> str:
    """The prompt word of a world label (its first training word: "Bobo" for bobo)."""
    return vocab.lookup(label)[1].train_words[0] if attribute == "character" else label


def background_phrase(background: str) -> str:
    return f"a {background} background"


def combination_slots(labels: Mapping[str, str], background: str | None = None) -> dict[str, str]:
    """World slots of a combination: {A} modifiers, {B} object (or "shape"), {x} both, {bg}."""
    modifiers = " ".join(labels[a] for a in ("style", "color") if a in labels)
    head = labels.get("object", _GENERIC_OBJECT)
    slots = {"A": modifiers, "B": head, "x": f"{modifiers} {head}".strip()}
    if background is not None:
        slots["bg"] = background_phrase(background)
    return slots


def combination_items(templates: Sequence[str], labels: Mapping[str, str],
                      backgrounds: Sequence[str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """(prompt, judge labels) of a world combination in each template; {bg} templates once per background.

    Templates in COLOR_ONLY_TEMPLATES are skipped unless the only modifier is a color.
    """
    backgrounds = vocab.classes("background") if backgrounds is None else tuple(backgrounds)
    color_only = set(labels) - {"object"} == {"color"}
    items = []
    for template in templates:
        if template in COLOR_ONLY_TEMPLATES and not color_only:
            continue
        for background in (backgrounds if "bg" in template_slots(template) else (None,)):
            shown = {**labels, "background": background} if background else dict(labels)
            items.append((world_fill(template, combination_slots(labels, background)), shown))
    return items


def conditional_slots(attribute: str, label: str, background: str | None = None) -> dict[str, str]:
    """World slots of a conditional: {A} the concept phrase ("circle", "red shape", "Bobo"), {ctx}."""
    phrase = _display(attribute, label)
    if attribute in ("color", "style"):
        phrase = f"{phrase} {_GENERIC_OBJECT}"
    slots = {"A": phrase}
    if background is not None:
        slots["ctx"] = f"on {background_phrase(background)}"
    return slots


def conditional_items(templates: Sequence[str], attribute: str, label: str,
                      background: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(prompt, judge labels) of a world concept in each template, on `background` when the template has {ctx}."""
    items = []
    for template in templates:
        bg = background if "ctx" in template_slots(template) else None
        shown = {attribute: label, "background": bg} if bg else {attribute: label}
        items.append((world_fill(template, conditional_slots(attribute, label, bg)), shown))
    return items


def alternatives(attribute: str, label: str) -> tuple[str, ...]:
    """The other labels of an attribute, in vocabulary order (the character head's 'none' excluded)."""
    return tuple(c for c in vocab.classes(attribute) if c not in (label, vocab.NO_CHARACTER))  # type: ignore[arg-type]


def swapped_labels(labels: Mapping[str, str], keep: Sequence[str]) -> list[dict[str, str]]:
    """Variants of a combination that keep the `keep` attributes and change every other one.

    Variant j takes the j-th alternative of each changed attribute (cycling the shorter lists),
    so every alternative of every changed attribute appears: "red circle" keeping color gives
    red square, red triangle, ...
    """
    changed = [a for a in labels if a not in keep]
    options = {a: alternatives(a, labels[a]) for a in changed}
    n = max((len(v) for v in options.values()), default=0)
    return [{a: (options[a][j % len(options[a])] if a in options else v) for a, v in labels.items()}
            for j in range(n)]


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
