"""Attacks on erased models: one module per attack, all behind one registry (the attack protocol).

Importing this package registers the built-in attacks; `run_attack(name, edited, spec, reference,
judge, **options)` runs one against the edited model and, as a sanity check, the unedited one.
"""

from erasurelab.attacks import finetune_attack as _finetune_attack  # noqa: F401  (registers "ft")
from erasurelab.attacks import ring_a_bell as _ring_a_bell  # noqa: F401  (registers "ring-a-bell")
from erasurelab.attacks import textual_inversion as _textual_inversion  # noqa: F401  (registers "textual-inversion")
from erasurelab.attacks import unlearndiffatk as _unlearndiffatk  # noqa: F401  (registers "unlearndiffatk")
from erasurelab.attacks.base import (
    AttackEntry,
    AttackOutcome,
    AttackRun,
    Budget,
    available_attacks,
    get_attack,
    make_attack_config,
    register_attack,
    run_attack,
)

__all__ = ["AttackEntry", "AttackOutcome", "AttackRun", "Budget", "available_attacks", "get_attack",
           "make_attack_config", "register_attack", "run_attack"]
