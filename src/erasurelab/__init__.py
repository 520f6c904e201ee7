"""erasurelab: erase concepts from text-to-image diffusion models, and prove it."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erasurelab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

#: Public name -> module that defines it. Lazy, so `import erasurelab` does not import torch.
_LAZY = {
    "load_pipeline": "erasurelab.models", "generate": "erasurelab.models",
    "cross_attention_layers": "erasurelab.models",
    "concept": "erasurelab.concepts", "ConceptSpec": "erasurelab.concepts",
    "erase": "erasurelab.api", "Edit": "erasurelab.edits", "available_methods": "erasurelab.methods",
    "attack": "erasurelab.api", "available_attacks": "erasurelab.attacks",
    "evaluate": "erasurelab.evaluation",
    "load_judge": "erasurelab.judges", "available_judges": "erasurelab.judges",
    # method configs, for `erase(pipe, "red", UceConfig(lam=1.0))`
    "PureConfig": "erasurelab.methods.pure", "UceConfig": "erasurelab.methods.uce",
    "EsdConfig": "erasurelab.methods.esd", "TrustConfig": "erasurelab.methods.trust",
    "DuoConfig": "erasurelab.methods.duo",
}
#: Other spellings of public names (the papers' acronyms in capitals).
_ALIASES = {"UCEConfig": "UceConfig", "ESDConfig": "EsdConfig", "DUOConfig": "DuoConfig"}


def __getattr__(name: str) -> object:
    target = _ALIASES.get(name, name)
    if target in _LAZY:
        if _LAZY[target].startswith("erasurelab.methods."):
            import_module("erasurelab.methods")  # registers every method, so a config always finds its method
        return getattr(import_module(_LAZY[target]), target)
    raise AttributeError(f"module 'erasurelab' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_LAZY), *sorted(_ALIASES)]
