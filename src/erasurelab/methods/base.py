"""The one method registry, and what every erasure method shares.

Why a registry: the CLI, the benchmark and the Python API name methods by string
("pure", "uce", later "esd", ...). Each method module registers a function
`erase(pipe, specs, config, quiet) -> Edit` together with its config dataclass, so keyword
options are validated against the dataclass fields before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError, did_you_mean

EraseFn = Callable[[Any, list[ConceptSpec], Any, bool], Any]


class MethodWarning(UserWarning):
    """A method ran but part of it could not do what was asked (e.g. a layer it cannot edit)."""


@dataclass(frozen=True)
class MethodEntry:
    name: str
    fn: EraseFn
    config_cls: type
    summary: str


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, config: type, summary: str = "") -> Callable[[EraseFn], EraseFn]:
    """Decorator: add `fn(pipe, specs, config, quiet) -> Edit` to the registry under `name`."""

    def add(fn: EraseFn) -> EraseFn:
        if name in _METHODS and _METHODS[name].fn is not fn:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = MethodEntry(name, fn, config, summary or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return add


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    """The registry entry; unknown names give a one-line error with close matches."""
    key = str(name).strip().lower()
    if key not in _METHODS:
        raise ErasureLabError(f"unknown method {name!r}{did_you_mean(key, _METHODS)}; "
                              f"available: {', '.join(available_methods())}")
    return _METHODS[key]


def make_config(config_cls: type, options: Mapping[str, Any], method: str) -> Any:
    """Instantiate a method's config from keyword options; unknown keys -> one-line error."""
    fields = [f.name for f in dataclasses.fields(config_cls)]
    for key in options:
        if key not in fields:
            raise ErasureLabError(f"unknown option {key!r} for method {method}{did_you_mean(key, fields)}; "
                                  f"valid: {', '.join(fields)}")
    try:
        return config_cls(**options)
    except TypeError as exc:
        raise ErasureLabError(f"bad options for method {method}: {exc}") from exc


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-ready view of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def resolve_defaults(config: Any, pipe: Any, defaults: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """config_dict(config) with every None among `defaults` replaced by its (SD, embedded) default.

    Why one rule: the fine-tuning methods take each such option's value from a pair, one for
    SD-family models and one for the embedded model, where a short CPU run needs larger steps.
    """
    from erasurelab.models.sampling import is_embedded

    k = 1 if is_embedded(pipe) else 0
    settings = config_dict(config)
    return {**settings, **{key: pair[k] for key, pair in defaults.items() if settings[key] is None}}


def check_fraction(name: str, value: float) -> None:
    """Energy thresholds live in (0, 1]; anything else is a one-line error."""
    if not isinstance(value, int | float) or not 0.0 < float(value) <= 1.0:
        raise ErasureLabError(f"{name} must be in (0, 1], got {value!r}")


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


def check_number(config: Any, name: str, minimum: float = 0.0, strict: bool = True) -> None:
    """None, or a finite number > minimum (>= with strict=False); anything else is a one-line error."""
    value = as_number(config, name)
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        raise ErasureLabError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_count(config: Any, name: str) -> None:
    """None, or a positive integer."""
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ErasureLabError(f"{name} must be a positive integer, got {value!r}")


def as_specs(specs: ConceptSpec | Sequence[ConceptSpec]) -> list[ConceptSpec]:
    if isinstance(specs, ConceptSpec):
        return [specs]
    out = list(specs)
    for spec in out:
        if not isinstance(spec, ConceptSpec):
            raise ErasureLabError(f"expected ConceptSpec objects, got {type(spec).__name__}")
    return out


def check_unwrapped(layers: Sequence[Any]) -> None:
    """Refuse layers whose to_k/to_v carry an unmerged peft LoRA.

    Why: the methods read W from the base Linear, so an attached adapter would be ignored when
    computing the edit and then stacked on top of it.
    """
    for layer in layers:
        for proj in ("to_k", "to_v"):
            if hasattr(getattr(layer.module, proj), "base_layer"):
                raise ErasureLabError(f"{layer.name}.{proj} carries an unmerged LoRA adapter: merge it first "
                                      "(pipe.fuse_lora(); pipe.unload_lora_weights())")
