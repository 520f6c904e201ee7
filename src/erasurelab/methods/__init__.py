"""Erasure methods: one module per method, all behind one registry.

Importing this package registers the built-in methods; a new method module registers itself
with `@register_method(name, ConfigDataclass)` and is imported below.
"""

from erasurelab.methods import duo as _duo  # noqa: F401  (registers "duo")
from erasurelab.methods import esd as _esd  # noqa: F401  (registers "esd")
from erasurelab.methods import pure as _pure  # noqa: F401  (registers "pure")
from erasurelab.methods import trust as _trust  # noqa: F401  (registers "trust")
from erasurelab.methods import uce as _uce  # noqa: F401  (registers "uce")
from erasurelab.methods.base import (
    MethodEntry,
    MethodWarning,
    available_methods,
    get_method,
    make_config,
    register_method,
)

__all__ = ["MethodEntry", "MethodWarning", "available_methods", "get_method", "make_config", "register_method"]
