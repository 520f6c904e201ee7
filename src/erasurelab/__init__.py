"""erasurelab: erase concepts from text-to-image diffusion models, and prove it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erasurelab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"


def __getattr__(name: str) -> object:
    """Lazy public API: `import erasurelab` stays fast and does not import torch until needed."""
    if name in {"load_pipeline", "cross_attention_layers", "generate"}:
        from erasurelab import models

        return getattr(models, name)
    if name == "evaluate":
        from erasurelab.evaluation import evaluate

        return evaluate
    if name == "erase":
        from erasurelab.api import erase

        return erase
    if name in {"concept", "ConceptSpec"}:
        from erasurelab import concepts

        return getattr(concepts, name)
    if name == "Edit":
        from erasurelab.edits import Edit

        return Edit
    if name == "available_methods":
        from erasurelab.methods import available_methods

        return available_methods
    if name in {"load_judge", "available_judges"}:
        from erasurelab import judges

        return getattr(judges, name)
    raise AttributeError(f"module 'erasurelab' has no attribute {name!r}")


__all__ = ["ConceptSpec", "Edit", "__version__", "available_judges", "available_methods", "concept",
           "cross_attention_layers", "erase", "evaluate", "generate", "load_judge", "load_pipeline"]
