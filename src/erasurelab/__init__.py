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
    "evaluate": "erasurelab.evaluation",
    "load_judge": "erasurelab.judges", "available_judges": "erasurelab.judges",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'erasurelab' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_LAZY)]
