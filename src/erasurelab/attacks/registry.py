"""The attack registry: attacks by name (built-in and entry-point plugins), with their config classes.

Why a registry: the CLI, the benchmark and the evaluator name attacks by string, exactly as they
name methods (the same `erasurelab.registry.Registry` shape; third-party attacks register through
the entry-point group `erasurelab.attacks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from erasurelab.configs import entry_for_config, make_config, merge_options
from erasurelab.registry import Entry, Registry

#: Every attack: name -> a class with `prepare` and `attack`, with its config class.
ATTACKS: Registry[type] = Registry("attack", "erasurelab.attacks")
#: A registry entry; `entry.factory` is the attack class.
AttackEntry = Entry


def register_attack(name: str, config: type, summary: str = "",
                    aliases: Sequence[str] = ()) -> Callable[[type], type]:
    """Class decorator: add an attack (with `prepare` and `attack`) and its config dataclass to the registry."""
    return ATTACKS.register(name, config, tuple(aliases), summary)


def available_attacks() -> list[str]:
    """Registered attack names, third-party plugins included."""
    ATTACKS.load_entry_points()
    return ATTACKS.names()


def get_attack(name: str) -> Entry[type]:
    """The registry entry for a name or alias ("ring_a_bell" = "ring-a-bell"); unknown names: one-line error."""
    return ATTACKS.get(str(name).strip().replace("_", "-"))


def attack_for_config(config: Any) -> Entry[type]:
    """The attack whose config class `config` is an instance of; one-line error for any other object."""
    return entry_for_config(ATTACKS, config)


def make_attack_config(entry: Entry[type], options: Mapping[str, Any]) -> Any:
    """The attack's config from keyword options; unknown keys or bad values -> one-line error."""
    return make_config(entry.config_cls, options, f"attack {entry.name}")


def attack_config(name: Any, options: Mapping[str, Any]) -> tuple[Entry[type], Any]:
    """(entry, config) from an attack name plus keyword options, or from a config object.

    A config object names its attack; keyword options beside it may only repeat its values
    (a differing one is a one-line error).
    """
    if isinstance(name, str):
        entry = get_attack(name)
        return entry, make_attack_config(entry, options)
    entry = attack_for_config(name)
    return entry, merge_options(name, options, f"attack {entry.name}")
