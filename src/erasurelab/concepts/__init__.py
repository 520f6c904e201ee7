"""Concepts: what to erase (ConceptSpec), YAML loading and the built-in world catalog.

Names: a world label ("red"), a combination "red+circle" or a conditional "circle|white"
(see `catalog` for the syntax and aliases), or a concept YAML file.
"""

from erasurelab.concepts.catalog import (
    catalog,
    compound_catalog,
    concept,
    parse_compound,
    world_combination,
    world_concept,
    world_conditional,
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
    "conditional_spec",
    "default_templates",
    "expand",
    "mentions",
    "parse_compound",
    "world_combination",
    "world_concept",
    "world_conditional",
]
