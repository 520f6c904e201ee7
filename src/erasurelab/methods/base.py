"""The method registry, and what every erasure method shares.

Why a registry: the CLI, the benchmark and the Python API name methods by string
("pure", "uce", "esd", ...). Each method module registers a function
`erase(pipe, specs, config, quiet) -> Edit` together with its config dataclass, so keyword
options are validated against the dataclass fields before any work starts, a config object
names its method (`erase(pipe, "red", UceConfig(lam=1.0))`), and `erasurelab methods NAME`
prints every option with its help. The registry is an `erasurelab.registry.Registry`; third-party
methods register through the entry-point group `erasurelab.methods` (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.configs import as_number as as_number
from erasurelab.configs import check_count as check_count
from erasurelab.configs import check_fraction as check_fraction
from erasurelab.configs import check_number as check_number
from erasurelab.configs import config_dict, entry_for_config
from erasurelab.configs import make_config as _make_config
from erasurelab.errors import ErasureLabError
from erasurelab.registry import Entry, Registry

EraseFn = Callable[[Any, list[ConceptSpec], Any, bool], Any]


class MethodWarning(UserWarning):
    """A method ran but part of it could not do what was asked (e.g. a layer it cannot edit)."""


#: Every erasure method: name -> `erase(pipe, specs, config, quiet) -> Edit` with its config class.
METHODS: Registry[EraseFn] = Registry("method", "erasurelab.methods")
#: A registry entry; `entry.factory` is the method's erase function.
MethodEntry = Entry


def register_method(name: str, config: type, summary: str = "",
                    aliases: Sequence[str] = ()) -> Callable[[EraseFn], EraseFn]:
    """Decorator: add `fn(pipe, specs, config, quiet) -> Edit` to the registry under `name`."""
    return METHODS.register(name, config, tuple(aliases), summary)


def available_methods() -> list[str]:
    """Registered method names, third-party plugins included."""
    METHODS.load_entry_points()
    return METHODS.names()


def get_method(name: str) -> Entry[EraseFn]:
    """The registry entry for a name or alias; unknown names give a one-line error with close matches."""
    return METHODS.get(name)


def method_for_config(config: Any) -> Entry[EraseFn]:
    """The method whose config class `config` is an instance of; one-line error for any other object."""
    return entry_for_config(METHODS, config)


def make_config(config_cls: type, options: Mapping[str, Any], method: str) -> Any:
    """Instantiate a method's config from keyword options; unknown keys -> one-line error."""
    return _make_config(config_cls, options, f"method {method}")


def resolve_defaults(config: Any, pipe: Any, defaults: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """config_dict(config) with every None among `defaults` replaced by its (SD, embedded) default.

    Why one rule: the fine-tuning methods take each such option's value from a pair, one for
    SD-family models and one for the embedded model, where a short CPU run needs larger steps.
    """
    from erasurelab.models.sampling import is_embedded

    k = 1 if is_embedded(pipe) else 0
    settings = config_dict(config)
    return {**settings, **{key: pair[k] for key, pair in defaults.items() if settings[key] is None}}


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
