"""The embedded shapes world as one plugin: everything it adds to erasurelab, registered in one place.

Why a plugin: the world is how this project proves its numbers where ground truth exists, but it
must not be what the rest of the code assumes. Nothing outside `world/` imports it; it plugs
into the same registries a third-party package would use, and `erasurelab.plugins.load_plugins`
imports this module (by name, or through the `erasurelab.plugins` entry point `world`):
- model source `builtin:shapes` (world/builtin.py registers it) and its sampler defaults;
- concept provider "shapes": world labels and compound names, with the dev / test split;
- judges "shapes" (the CNN, world/judge.py) and "pixels" (the rule-based cross-check);
- prompt grammar "shapes" (world/grammar.py): attack prompts, `generate --request`, benign data;
- suite builder "shapes" (world/suites.py): evaluation suites and judge accuracy on ground truth.
"""

from __future__ import annotations

from erasurelab.concepts.grammar import register_prompt_grammar
from erasurelab.concepts.providers import register_concept_provider
from erasurelab.evaluation.suites import register_suite_builder
from erasurelab.models.sampling import register_sampling_defaults
from erasurelab.world import builtin as _builtin  # noqa: F401  (registers the model source "builtin:shapes")
from erasurelab.world import judge as _judge  # noqa: F401  (registers the judge "shapes")
from erasurelab.world import pixel_judge as _pixel_judge  # noqa: F401  (registers the judge "pixels")
from erasurelab.world.architecture import DEFAULT_GUIDANCE, DEFAULT_STEPS
from erasurelab.world.catalog import (
    DEV_CONCEPTS,
    TEST_CONCEPTS,
    catalog,
    compound_catalog,
    world_spec,
    world_split,
)
from erasurelab.world.grammar import MODELS, WorldGrammar
from erasurelab.world.suites import WorldSuites

NAME = "shapes"

for _model in MODELS:
    register_sampling_defaults(_model, DEFAULT_STEPS, DEFAULT_GUIDANCE)
register_concept_provider(NAME, world_spec, names=catalog, compound_names=compound_catalog, split=world_split,
                          sets={"dev": DEV_CONCEPTS, "test": TEST_CONCEPTS},
                          summary="the embedded shapes world's labels and compounds (red, red+circle, circle|white)")
register_prompt_grammar(NAME, WorldGrammar, summary="the embedded shapes world's caption grammar")
register_suite_builder(NAME, WorldSuites, summary="the embedded shapes world's suites and ground-truth judge accuracy")
