"""Concepts: what to erase (ConceptSpec), YAML loading and the built-in world catalog."""

from erasurelab.concepts.catalog import catalog, concept, world_concept
from erasurelab.concepts.spec import (
    CATEGORIES,
    FORGET_TEMPLATES,
    STYLE_FORGET_TEMPLATES,
    ConceptSpec,
    combine,
    default_templates,
    expand,
    mentions,
)

__all__ = [
    "CATEGORIES",
    "FORGET_TEMPLATES",
    "STYLE_FORGET_TEMPLATES",
    "ConceptSpec",
    "catalog",
    "combine",
    "concept",
    "default_templates",
    "expand",
    "mentions",
    "world_concept",
]
