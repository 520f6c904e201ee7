"""Plugin loading: the built-in plugin modules and the `erasurelab.plugins` entry points, imported once.

Why one loader: a plugin (the embedded shapes world, a concept provider, a third-party package)
registers its pieces — concept providers, prompt grammars, suite builders, judges, model sources —
through the same registries, by being imported. No other module imports a plugin; each registry
lookup that may need one calls `load_plugins()` first, so `import erasurelab` stays cheap and the
first lookup pays for the imports once.

Built-ins are named here as strings, so they load without reinstalling the package; installed
packages add theirs under `[project.entry-points."erasurelab.plugins"]`: a module (registers on
import) or a callable (called once with no arguments).

Command groups (`erasurelab world ...`) are declared apart, as `name -> "module:attribute"` strings
(built-ins here, others under `[project.entry-points."erasurelab.cli"]`), because the command line
must list them without importing a plugin (and torch): the module is imported only when the
group runs or its help is shown.
"""

from __future__ import annotations

import functools
import logging
import pkgutil
import threading
import warnings
from importlib import import_module

logger = logging.getLogger(__name__)

#: Built-in plugin modules, in load order (each registers itself on import).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "erasurelab.concepts.yaml_spec",
    "erasurelab.concepts.library",
    "erasurelab.world.plugin",
)
#: The entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "erasurelab.plugins"
#: Built-in command groups: `erasurelab NAME ...` -> the `typer.Typer` at "module:attribute".
BUILTIN_CLI_APPS: dict[str, str] = {"world": "erasurelab.world.cli:world_app"}
#: The entry-point group third-party command groups register under (value "module:attribute").
CLI_ENTRY_POINT_GROUP = "erasurelab.cli"

_lock = threading.RLock()
_state = {"started": False}
_loaded: list[str] = []


def load_plugins() -> None:
    """Import every built-in plugin and every `erasurelab.plugins` entry point, once per process.

    A built-in that fails to import is a bug and raises; a broken third-party plugin only warns,
    so it cannot take the built-ins down with it. Re-entrant: a plugin whose import triggers
    another lookup sees the registries as filled so far.
    """
    with _lock:
        if _state["started"]:
            return
        _state["started"] = True
        try:
            for name in BUILTIN_PLUGINS:
                if name not in _loaded:
                    import_module(name)
                    _loaded.append(name)
                    logger.info("loaded built-in plugin %s", name)
        except BaseException:
            _state["started"] = False  # the next lookup retries (and raises again) instead of running half-loaded
            raise
        _load_entry_points()


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _loaded:  # the built-in world, when the package is installed with its entry point
            continue
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:  # a broken third-party plugin must not break the built-ins
            warnings.warn(f"could not load erasurelab plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=3)
            continue
        _loaded.append(ep.value)
        logger.info("loaded plugin %s (%s)", ep.name, ep.value)


def loaded_plugins() -> list[str]:
    """Modules (or entry-point values) loaded so far, in load order."""
    return list(_loaded)


@functools.cache
def cli_apps() -> dict[str, str]:
    """Plugin command groups, name -> "module:attribute", without importing any of them (built-ins win).

    Read once per process: the root command asks for it on every lookup of a name it does not own.
    """
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=CLI_ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN_CLI_APPS}


def load_cli_app(name: str) -> object | None:
    """Import one plugin command group (a `typer.Typer`); None, with a warning, when a third-party one is broken."""
    target = cli_apps()[name]
    try:
        return pkgutil.resolve_name(target)
    except Exception as exc:
        if name in BUILTIN_CLI_APPS:
            raise  # a broken built-in is a bug
        warnings.warn(f"could not load erasurelab command group {name!r} ({target}): {exc}", stacklevel=2)
        return None
