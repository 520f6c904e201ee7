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
    if name in {"load_judge", "available_judges"}:
        from erasurelab import judges

        return getattr(judges, name)
    raise AttributeError(f"module 'erasurelab' has no attribute {name!r}")


__all__ = ["__version__", "available_judges", "cross_attention_layers", "generate", "load_judge", "load_pipeline"]
