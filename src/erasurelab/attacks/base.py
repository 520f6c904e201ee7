"""The attack protocol's public names in one place, re-exported from the modules that hold them.

Why a module of re-exports: attacks and their users import the protocol from here, while each
piece lives where it has one job: `budget` (counting), `context` (what an attack sees and
returns), `registry` (attacks by name) and `run` (`run_attack` and its `AttackRun`).
"""

from __future__ import annotations

from erasurelab.attacks.budget import Budget, strip_budget_hooks
from erasurelab.attacks.context import (
    RETRY_SEED_STRIDE,
    SCORING_SEED_OFFSET,
    Attack,
    AttackContext,
    AttackOutcome,
    RenderConfig,
    Target,
    positive_renders,
    targets_from_cache,
    targets_to_cache,
)
from erasurelab.attacks.registry import (
    ATTACKS,
    AttackEntry,
    attack_config,
    attack_for_config,
    available_attacks,
    get_attack,
    make_attack_config,
    register_attack,
)
from erasurelab.attacks.run import AttackRun, prepare_key, resolve_spec, run_attack
from erasurelab.configs import check_non_negative, check_positive, check_probability, check_strings
from erasurelab.results import REFERENCE_MIN_ASR, AttackResult, Rate

__all__ = [
    "ATTACKS", "REFERENCE_MIN_ASR", "RETRY_SEED_STRIDE", "SCORING_SEED_OFFSET", "Attack", "AttackContext",
    "AttackEntry", "AttackOutcome", "AttackResult", "AttackRun", "Budget", "Rate", "RenderConfig", "Target",
    "attack_config", "attack_for_config", "available_attacks", "check_non_negative", "check_positive",
    "check_probability", "check_strings", "get_attack", "make_attack_config", "positive_renders", "prepare_key",
    "register_attack", "resolve_spec", "run_attack", "strip_budget_hooks", "targets_from_cache", "targets_to_cache",
]
