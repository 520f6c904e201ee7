"""One registry shape for every kind of plugin: methods, attacks, judges, concept providers, model sources.

Why one shape: the CLI, the Python API and the bench name plugins by string, and a third-party
package must be able to add one the same way the built-ins do. Each entry maps a name (plus
aliases) to a factory, an optional config dataclass whose fields carry their help, and a one-line
summary. A registry may also hold *parametric* entries, named `prefix:ARGUMENT` (e.g.
`clip:/path/to/folder`, `builtin:shapes`), whose factory receives the argument.

Third-party plugins register through the entry-point group `erasurelab.<kind>s` (e.g.
`erasurelab.methods`): each entry point names a module (or callable) that registers itself when
loaded, exactly as the built-in modules do. Entry points are loaded the first time a registry is
asked for a name it does not hold, so `import erasurelab` stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from erasurelab.errors import ErasureLabError, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])


def option(default: Any = dataclasses.MISSING, *, help: str = "", sd_default: Any = dataclasses.MISSING,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text and, when it differs, its SD-family default (`erasurelab methods NAME`)."""
    metadata: dict[str, Any] = {"help": help}
    if sd_default is not dataclasses.MISSING:
        metadata["sd_default"] = sd_default
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionInfo:
    """One config field as a user sees it: name, type, default(s) and help."""

    name: str
    type: str
    default: Any
    help: str
    sd_default: Any = None


def describe_config(config_cls: type | None) -> list[OptionInfo]:
    """Every field of a config dataclass with its type, default and help (empty for no config)."""
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return []
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(OptionInfo(f.name, str(type_name), default, str(f.metadata.get("help", "")),
                              f.metadata.get("sd_default")))
    return out


@dataclass(frozen=True)
class Entry(Generic[F]):
    """A registered plugin: the factory to call, its config class (if any), aliases and a summary."""

    name: str
    factory: F
    config_cls: type | None = None
    aliases: tuple[str, ...] = ()
    summary: str = ""
    parametric: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> list[OptionInfo]:
        return describe_config(self.config_cls)


def _normalise(name: str) -> str:
    return str(name).strip().lower()


class Registry(Generic[F]):
    """Name -> Entry for one kind of plugin, with aliases, parametric `prefix:ARG` names and entry points.

    kind: singular noun used in errors ("method", "attack", "judge", ...). Names are matched
    case-insensitively; aliases resolve to the canonical entry.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group if entry_point_group is not None else f"erasurelab.{kind}s"
        self._entries: dict[str, Entry[F]] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points_loaded = False

    # -- registration -----------------------------------------------------------------------------
    def add(self, name: str, factory: F, config_cls: type | None = None, aliases: tuple[str, ...] | list[str] = (),
            summary: str = "", parametric: bool = False, **extra: Any) -> Entry[F]:
        """Register `factory` under `name`; registering a different factory under a taken name is an error."""
        key = _normalise(name)
        existing = self._entries.get(key)
        if existing is not None and existing.factory is not factory:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        doc = (getattr(factory, "__doc__", None) or "").strip()
        entry = Entry(key, factory, config_cls, tuple(_normalise(a) for a in aliases),
                      summary or (doc.splitlines()[0] if doc else ""), parametric, dict(extra))
        self._entries[key] = entry
        for alias in entry.aliases:
            owner = self._aliases.get(alias)
            if owner is not None and owner != key:
                raise ValueError(f"{self.kind} alias {alias!r} already names {owner!r}")
            self._aliases[alias] = key
        return entry

    def register(self, name: str, config_cls: type | None = None, aliases: tuple[str, ...] | list[str] = (),
                 summary: str = "", parametric: bool = False, **extra: Any) -> Callable[[F], F]:
        """Decorator form of `add`."""

        def decorate(factory: F) -> F:
            self.add(name, factory, config_cls, aliases, summary, parametric, **extra)
            return factory

        return decorate

    # -- lookup -----------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Import this registry's third-party entry points now, once (listings then show plugins too)."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the built-ins
                import warnings

                warnings.warn(f"could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)
                continue
            if callable(loaded) and not isinstance(loaded, type):
                loaded()  # a `register()` hook; a module registers itself on import instead

    def _resolve(self, name: str) -> tuple[Entry[F] | None, str | None]:
        key = _normalise(name)
        key = self._aliases.get(key, key)
        if key in self._entries and not self._entries[key].parametric:
            return self._entries[key], None
        prefix, sep, argument = str(name).strip().partition(":")
        entry = self._entries.get(_normalise(prefix))
        if sep and entry is not None and entry.parametric:
            return entry, argument
        if key in self._entries:  # a parametric entry named without its argument
            return self._entries[key], ""
        return None, None

    def get(self, name: str) -> Entry[F]:
        """The entry for a name, alias or `prefix:ARG`; unknown names give a one-line error with close matches."""
        entry, _ = self.lookup(name)
        return entry

    def lookup(self, name: str) -> tuple[Entry[F], str | None]:
        """(entry, argument) — argument is the text after `prefix:` for parametric entries, else None."""
        entry, argument = self._resolve(name)
        if entry is None:
            self.load_entry_points()
            entry, argument = self._resolve(name)
        if entry is None:
            known = [*self._entries, *self._aliases]
            raise ErasureLabError(f"unknown {self.kind} {name!r}{did_you_mean(_normalise(name), known)}; "
                                  f"available: {', '.join(self.names()) or 'none'}")
        if entry.parametric and not argument:
            raise ErasureLabError(f"{self.kind} {entry.name!r} needs an argument: {entry.name}:ARGUMENT")
        return entry, argument

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        entry, argument = self._resolve(name)
        return entry is not None and (not entry.parametric or bool(argument))

    def names(self) -> list[str]:
        """Canonical names, parametric ones shown as `prefix:ARGUMENT`."""
        return sorted(f"{e.name}:ARGUMENT" if e.parametric else e.name for e in self._entries.values())

    def entries(self) -> Iterator[Entry[F]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))
