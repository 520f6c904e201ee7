"""Config plumbing shared by methods and attacks: options -> config dataclass, JSON view, validators, help rows.

Why one module: methods and attacks both take keyword options (Python API, CLI `--option`,
bench YAML) that are checked against a frozen config dataclass before any work starts, and both
record the validated config in their results. One implementation keeps the error messages, the
list -> tuple rule and the validators identical everywhere.

Model-dependent defaults: a config field whose default is None (or "auto") and is resolved per
model family names its (SD-family, embedded) pair in the class attribute `model_defaults`;
`option_rows` shows both beside the field's help (`erasurelab methods NAME`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.registry import Entry, Registry, describe_config


def config_fields(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)]


def _check_keys(config_cls: type, options: Mapping[str, Any], owner: str) -> None:
    fields = config_fields(config_cls)
    for key in options:
        if key not in fields:
            raise ErasureLabError(f"unknown option {key!r} for {owner}{did_you_mean(key, fields)}; "
                                  f"valid: {', '.join(fields)}")


def _tuples(options: Mapping[str, Any]) -> dict[str, Any]:
    """Lists become tuples: configs are frozen and hashable, and YAML / JSON give lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def make_config(config_cls: type, options: Mapping[str, Any], owner: str) -> Any:
    """Instantiate `config_cls` from keyword options; unknown keys or bad values -> one-line error.

    owner: what the options belong to, for messages ("method uce", "attack ring-a-bell").
    """
    _check_keys(config_cls, options, owner)
    try:
        return config_cls(**_tuples(options))
    except TypeError as exc:
        raise ErasureLabError(f"bad options for {owner}: {exc}") from exc


def merge_options(config: Any, options: Mapping[str, Any], owner: str) -> Any:
    """`config` itself when keyword options only repeat its values; a differing option -> one-line error.

    Why not override: a config object and a keyword option that disagree are two answers to one
    question, and silently preferring either hides a mistake.
    """
    if not options:
        return config
    _check_keys(type(config), options, owner)
    try:
        candidate = dataclasses.replace(config, **_tuples(options))
    except TypeError as exc:
        raise ErasureLabError(f"bad options for {owner}: {exc}") from exc
    for key in options:
        if getattr(candidate, key) != getattr(config, key):
            raise ErasureLabError(f"option {key}={options[key]!r} conflicts with the given "
                                  f"{type(config).__name__}({key}={getattr(config, key)!r}); "
                                  "set it in the config or as a keyword option, not both")
    return config


def entry_for_config(registry: Registry[Any], config: Any) -> Entry[Any]:
    """The entry whose config class `config` is an instance of (its most specific one); one-line error otherwise.

    Why: `erase(pipe, "red", UceConfig(lam=1.0))` names its method by its config, so a config
    object and a name are two spellings of the same choice.
    """
    for attempt in range(2):
        matches = [e for e in registry.entries()
                   if isinstance(e.config_cls, type) and isinstance(config, e.config_cls)]
        if matches:  # a subclass config belongs to the subclass's entry, not its base's
            return max(matches, key=lambda e: len(e.config_cls.__mro__))
        if attempt == 0:
            registry.load_entry_points()
    raise ErasureLabError(f"{type(config).__name__} is not the config of any registered {registry.kind}; "
                          f"pass a {registry.kind} name ({', '.join(registry.names())}) or its config")


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-ready view of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


# ---------------------------------------------------------------------------------------------
# Validators: one-line ErasureLabErrors naming the option
# ---------------------------------------------------------------------------------------------


def as_number(config: Any, name: str) -> Any:
    """The option's value, with a numeric string ("1e-4", which YAML reads as text) stored as a float."""
    value = getattr(config, name)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ErasureLabError(f"{name} must be a number, got {value!r}") from None
        object.__setattr__(config, name, value)
    return value


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_number(config: Any, name: str, minimum: float = 0.0, strict: bool = True) -> None:
    """None, or a finite number > minimum (>= with strict=False); anything else is a one-line error."""
    value = as_number(config, name)
    if value is None:
        return
    if not _is_real(value) or (value <= minimum if strict else value < minimum):
        raise ErasureLabError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """A positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ErasureLabError(f"{name} must be a positive integer, got {value!r}")


def check_count(config: Any, name: str) -> None:
    """None, or a positive integer."""
    value = getattr(config, name)
    if value is not None:
        check_positive(name, value)


def check_non_negative(name: str, value: Any) -> None:
    """A finite number >= 0."""
    if not _is_real(value) or value < 0:
        raise ErasureLabError(f"{name} must be a non-negative number, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    """Energy thresholds and fractions live in (0, 1]."""
    if not _is_real(value) or not 0.0 < float(value) <= 1.0:
        raise ErasureLabError(f"{name} must be in (0, 1], got {value!r}")


def check_probability(name: str, value: Any) -> None:
    """A probability in [0, 1]."""
    if not _is_real(value) or not 0.0 <= float(value) <= 1.0:
        raise ErasureLabError(f"{name} must be in [0, 1], got {value!r}")


def check_strings(name: str, value: Any) -> tuple[str, ...]:
    """A list of strings (a bare string is refused: it would be read as its characters)."""
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ErasureLabError(f"{name} must be a list of strings, got {value!r}")
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# What `erasurelab methods NAME` prints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionRow:
    """One option as printed: name, type, embedded default, SD-family default ("" when the same), help."""

    name: str
    type: str
    embedded: str
    sd: str
    help: str


def format_value(value: Any) -> str:
    """A default as a user would type it in `--option key=value` (lists in brackets, "" for empty text)."""
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def option_rows(config_cls: type | None) -> list[OptionRow]:
    """Every field of a config with its help and defaults; model-resolved ones as "None: <value>" per family."""
    model_defaults: Mapping[str, tuple[Any, Any]] = getattr(config_cls, "model_defaults", None) or {}
    rows = []
    for info in describe_config(config_cls):
        literal = format_value(info.default)
        if info.name in model_defaults:
            sd_value, embedded_value = model_defaults[info.name]
            embedded, sd = f"{literal}: {format_value(embedded_value)}", f"{literal}: {format_value(sd_value)}"
        else:
            embedded = literal
            sd = literal if info.sd_default is None else format_value(info.sd_default)
        rows.append(OptionRow(info.name, info.type.replace(" ", ""), embedded, "" if sd == embedded else sd,
                              info.help))
    return rows


def format_options(config_cls: type | None) -> list[str]:
    """`option_rows` as aligned text lines with a header; ["(no options)"] for a config without fields."""
    rows = option_rows(config_cls)
    if not rows:
        return ["(no options)"]
    table = [("option", "type", "embedded default", "SD default", "help"),
             *((r.name, r.type, r.embedded, r.sd, r.help) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]]).rstrip()
            for row in table]
