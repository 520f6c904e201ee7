"""The embedded world's compound suites: combinations ("red+circle") and conditionals ("circle|white").

Why the world builds them: a compound target is judged part by part, and only the world knows
which attribute each part is and what its alternatives are ("red circle" kept as a part means
red squares, blue circles, ...). The suites are built from the *evaluation* templates, disjoint
from the training templates of every anchor (world/catalog.py); the metrics on them are generic
(`evaluation.compound`). `WorldSuites.build_compound` (world/suites.py) is the registered entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from erasurelab.concepts.spec import (
    ALONE_EVAL_TEMPLATES,
    COMBINATION_EVAL_TEMPLATES,
    CONDITIONAL_EVAL_TEMPLATES,
    PART_SLOTS,
    ConceptSpec,
)
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.compound import (
    CompoundSettings,
    CompoundSuites,
    check_compound_leakage,
    compound_suite,
    rotated,
)
from erasurelab.world import vocab
from erasurelab.world.catalog import (
    alternatives,
    combination_items,
    combination_labels,
    conditional_items,
    conditional_labels,
    swapped_labels,
)


def world_labels(spec: ConceptSpec) -> tuple[dict[str, str], str | None]:
    """(attribute -> label of the target, background of a conditional); one-line error outside the world."""
    if not spec.is_compound:
        raise ErasureLabError(f"concept {spec.name!r} is a single concept: use the single-concept suites")
    try:
        if spec.kind == "combination":
            return combination_labels(spec.parts), None
        attribute, background = conditional_labels(spec.parts[0], spec.context)
        return {attribute: spec.parts[0].lower()}, background
    except ErasureLabError as exc:
        raise ErasureLabError(f"no evaluation suites for {spec.kind} {spec.name!r}: suites exist only for "
                              f"embedded-world labels ({exc})") from None


def _combination_suites(spec: ConceptSpec, labels: dict[str, str], settings: CompoundSettings,
                        known: set[str]) -> CompoundSuites:
    forget = compound_suite("F_ev", spec, combination_items(COMBINATION_EVAL_TEMPLATES, labels), settings, known,
                            "all parts together, held-out templates; target = every part detected")
    retain, measure = [], {"F_ev": tuple(labels.values())}
    for letter, (attribute, part) in zip(PART_SLOTS, labels.items(), strict=False):
        grid = [combination_items(COMBINATION_EVAL_TEMPLATES, v)
                for v in swapped_labels(labels, (attribute,))]
        name = f"R_{letter}"
        retain.append(compound_suite(name, spec, rotated(grid, settings.retain_max), settings, known,
                                     f"{part} kept, every other part changed; rate = {part} detected"))
        measure[name] = (part,)
    grid = [combination_items(COMBINATION_EVAL_TEMPLATES, v) for v in swapped_labels(labels, ())]
    retain.append(compound_suite("R_U", spec, rotated(grid, settings.retain_max), settings, known,
                                 "every part changed; rate = all labels of the prompt detected"))
    measure["R_U"] = ()
    return CompoundSuites(spec.name, spec.kind, tuple(labels.values()), "", forget, tuple(retain), measure)


def _conditional_suites(spec: ConceptSpec, labels: dict[str, str], background: str, settings: CompoundSettings,
                        known: set[str]) -> CompoundSuites:
    (attribute, label), = labels.items()
    forget = compound_suite("F_ev", spec, conditional_items(CONDITIONAL_EVAL_TEMPLATES, attribute, label, background),
                            settings, known, f"{label} on {background}, held-out templates; target = {label} detected")
    contexts = [conditional_items(CONDITIONAL_EVAL_TEMPLATES, attribute, label, b)
                for b in vocab.classes("background") if b != background]
    others = [conditional_items(CONDITIONAL_EVAL_TEMPLATES, attribute, o, background)
              for o in alternatives(attribute, label)]
    retain = (
        compound_suite("R_ctx", spec, rotated(contexts, settings.retain_max), settings, known,
                       f"{label} on the other backgrounds; rate = {label} detected"),
        compound_suite("R_A", spec, conditional_items(ALONE_EVAL_TEMPLATES, attribute, label), settings, known,
                       f"{label} alone; rate = {label} detected"),
        compound_suite("R_B", spec, rotated(others, settings.retain_max), settings, known,
                       f"other {attribute}s on {background}; rate = {background} detected"),
    )
    measure = {"F_ev": (label,), "R_ctx": (label,), "R_A": (label,), "R_B": (background,)}
    return CompoundSuites(spec.name, spec.kind, (label,), background, forget, retain, measure)


def build_compound_suites(spec: ConceptSpec, judge_concepts: Iterable[str] | None = None,
                          settings: CompoundSettings | None = None, anchors: Iterable[str] = ()) -> CompoundSuites:
    """The fixed suites of a world combination or conditional (see the module docstring).

    judge_concepts: labels the judge can detect (default: every world label); every part and
    the context must be among them. anchors: the method's anchors (the spec's own are always
    checked too); an overlap with any suite prompt raises a one-line ErasureLabError.
    """
    settings = settings or CompoundSettings()
    labels, background = world_labels(spec)
    known = set(vocab.all_labels()) if judge_concepts is None else set(judge_concepts)
    needed = [*labels.values(), *([background] if background else [])]
    missing = [c for c in needed if c not in known]
    if missing:
        raise ErasureLabError(f"{spec.kind} {spec.name!r}: the judge cannot detect {', '.join(missing)}; "
                              "cannot measure it")
    if background is None:
        suites = _combination_suites(spec, labels, settings, known)
    else:
        suites = _conditional_suites(spec, labels, background, settings, known)
    check_compound_leakage(suites, [*spec.forget, *spec.retain, *anchors])
    return suites
