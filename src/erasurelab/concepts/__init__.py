"""Concepts: what to erase (ConceptSpec), YAML loading and the registry of concept providers.

Names: whatever a registered concept provider understands — the embedded world's labels ("red"),
combinations ("red+circle") and conditionals ("circle|white"), the shipped library ("lib:snoopy")
— or a concept YAML file. This package knows no world: providers register themselves
(`erasurelab.concepts.providers`, loaded through `erasurelab.plugins`).
"""

from erasurelab.concepts.providers import (
    catalog,
    compound_catalog,
    concept,
    concept_set,
    concept_split,
    register_concept_provider,
)
from erasurelab.concepts.spec import (
    ALONE_EVAL_TEMPLATES,
    ALONE_TRAIN_TEMPLATES,
    CATEGORIES,
    COMBINATION_EVAL_TEMPLATES,
    COMBINATION_TRAIN_TEMPLATES,
    CONDITIONAL_EVAL_TEMPLATES,
    CONDITIONAL_TRAIN_TEMPLATES,
    FORGET_TEMPLATES,
    KINDS,
    STYLE_FORGET_TEMPLATES,
    ConceptSpec,
    combination_spec,
    combine,
    conditional_spec,
    default_templates,
    expand,
    mentions,
)

__all__ = [
    "ALONE_EVAL_TEMPLATES",
    "ALONE_TRAIN_TEMPLATES",
    "CATEGORIES",
    "COMBINATION_EVAL_TEMPLATES",
    "COMBINATION_TRAIN_TEMPLATES",
    "CONDITIONAL_EVAL_TEMPLATES",
    "CONDITIONAL_TRAIN_TEMPLATES",
    "FORGET_TEMPLATES",
    "KINDS",
    "STYLE_FORGET_TEMPLATES",
    "ConceptSpec",
    "catalog",
    "combination_spec",
    "combine",
    "compound_catalog",
    "concept",
    "concept_set",
    "concept_split",
    "conditional_spec",
    "default_templates",
    "expand",
    "mentions",
    "register_concept_provider",
]
