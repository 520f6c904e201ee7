"""`load_pipeline(spec)`: one entry point from a model spec to a diffusers pipeline.

Why one function: every command (erase, generate, attack, evaluate, bench) takes `--model`, and
all of them must accept the same specs and fail the same way. A spec is `builtin:shapes` (the
embedded world), a local diffusers pipeline folder, or a single-file `.safetensors` checkpoint.

Why so strict: a model is untrusted input. Only safetensors are read (pickled `.ckpt`/`.bin`
files can execute code), no custom pipeline code is ever imported, nothing is fetched from a
hub, and nothing is written. Every weight file is validated before loading, so a truncated
download gives a one-line "corrupt weights" error instead of a traceback from deep inside
diffusers.

Named sources: a spec `NAME:ARG` (or a bare NAME) is resolved through `MODEL_SOURCES`, where
`register_model_source` puts loaders; `builtin:shapes` is one, registered by the embedded world,
and third-party packages add theirs through the `erasurelab.model_sources` entry points. The
spec a pipeline was loaded from is recorded in erasurelab.models.provenance, not on the pipeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError
from erasurelab.models.provenance import record_source
from erasurelab.registry import Entry, Registry

#: Named model sources: `NAME:ARG` -> loader(ARG, dtype=...) (parametric) or `NAME` -> loader(None, dtype=...).
MODEL_SOURCES: Registry[Callable[..., Any]] = Registry("model source", entry_point_group="erasurelab.model_sources")
#: Pickle-based checkpoint formats that are refused: unpickling can run arbitrary code.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
#: Libraries a model_index.json may name for its components (plus diffusers' pipeline modules,
#: e.g. "stable_diffusion" for the safety checker); anything else could be custom code.
ALLOWED_LIBRARIES = frozenset({"diffusers", "transformers"})
#: Tensor-name prefixes that identify an original (non-diffusers) SD checkpoint and SDXL in it.
SD_UNET_PREFIX = "model.diffusion_model."
SDXL_MARKER = "conditioner.embedders.1."

_EXPECTED = "expected builtin:shapes, a diffusers folder or a .safetensors file"


def register_model_source(name: str, loader: Callable[..., Any], parametric: bool = True, summary: str = "",
                          aliases: tuple[str, ...] = ()) -> Entry[Callable[..., Any]]:
    """Make `load_pipeline("NAME:ARG")` return `loader(ARG, dtype=dtype)` (or `NAME` -> `loader(None, dtype=dtype)`).

    The loader returns a diffusers pipeline with a UNet2DConditionModel `unet`, on any device;
    load_pipeline moves it to the requested device and records its source. Bad arguments should
    raise a one-line ErasureLabError.
    """
    return MODEL_SOURCES.add(name, loader, aliases=aliases, summary=summary, parametric=parametric)


def _register_builtin_sources() -> None:
    """Load the plugins (erasurelab.plugins), which register their model sources (the world's builtin:shapes)."""
    from erasurelab.plugins import load_plugins

    load_plugins()


def _named_source(text: str) -> tuple[Entry[Callable[..., Any]], str | None] | None:
    """The registered source a spec names, or None for a path.

    A registered `NAME:` prefix (or bare NAME) wins over the file system; an unregistered prefix
    is looked up in third-party plugins only when no file or folder of that name exists.
    """
    _register_builtin_sources()
    prefix, sep, _ = text.partition(":")
    known = text in MODEL_SOURCES or (sep and prefix.strip().lower() in {e.name for e in MODEL_SOURCES.entries()
                                                                        if e.parametric})
    if not known and (not sep or len(prefix) < 2 or Path(text).expanduser().exists()):
        return None  # a path (a one-letter prefix is a Windows drive)
    if not known:
        try:
            return MODEL_SOURCES.lookup(text)
        except ErasureLabError:
            return None  # not a plugin either: reported as a missing model
    return MODEL_SOURCES.lookup(text)


def load_pipeline(spec: str | os.PathLike[str], dtype: Any = None, device: Any = "cpu",
                  config: str | os.PathLike[str] | None = None) -> Any:
    """The diffusers pipeline named by `spec`, on `device`, its source recorded (models.provenance.source_of).

    spec: "builtin:shapes" (or another registered model source), a local diffusers pipeline folder
    (with model_index.json) or a single-file checkpoint "*.safetensors" (SD1.x/2.x or SDXL, detected
    from its tensor names).
    dtype: torch dtype of the weights (default: as stored / float32).
    config: for single-file checkpoints only, a local diffusers folder of the same model family
    whose component configs (and tokenizers) to use, since there is no hub to fetch them from.
    Raises ErasureLabError (one line) for an unknown spec, a refused format or corrupt weights.
    The pipeline's own settings (e.g. its progress bar) are left as diffusers made them.
    """
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    named = _named_source(text)
    if named is not None:
        if config is not None:
            raise ErasureLabError(f"config= applies to single-file checkpoints only, not to {text}")
        entry, argument = named
        pipe = entry.factory(argument, dtype=dtype)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ErasureLabError(f"model not found: {text} ({_EXPECTED})")
        if path.is_dir():
            from erasurelab.edits import is_run_folder, load_run

            if is_run_folder(path):  # a saved erasure run: its base model with the edit applied
                return load_run(path, load_pipeline, dtype=dtype, device=device)
            if config is not None:
                raise ErasureLabError(f"config= applies to single-file checkpoints only, but {text} is a folder")
            pipe = _load_folder(path, dtype)
        elif path.suffix.lower() == ".safetensors":
            pipe = _load_single_file(path, dtype, config)
        elif path.suffix.lower() in PICKLE_SUFFIXES:
            raise ErasureLabError(
                f"refusing to load pickle checkpoint {text}: only .safetensors weights are loaded "
                "(pickles can run code); convert it to safetensors first")
        else:
            raise ErasureLabError(f"unsupported model file {text} ({_EXPECTED})")
    if device is not None:
        pipe.to(device)
    return record_source(pipe, text)


def _reason(exc: BaseException) -> str:
    """The first non-empty line of an exception's message: keeps our errors to one line."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "these files cannot be loaded" rather than a bug in erasurelab."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError, SafetensorError,
            SingleFileComponentError)


def check_safetensors(path: Path) -> list[str]:
    """Tensor names in a .safetensors file, after checking its header covers the whole file.

    Why read the header first: safetensors verifies that the header is valid JSON and that the
    tensors it describes fit the file, so truncated or garbage files fail here with a clear
    message, without reading the (possibly gigabytes of) tensor data.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except _load_errors() as exc:
        raise ErasureLabError(f"corrupt weights in {path}: {_reason(exc)}") from exc


def _check_model_index(folder: Path) -> dict[str, Any]:
    """model_index.json of a diffusers folder, refused unless it names only stock diffusers classes.

    Why: DiffusionPipeline.from_pretrained imports code for a `_class_name` given as
    [file, class] and for components from other libraries; a downloaded folder must not be
    able to run its own Python here.
    """
    import diffusers
    from diffusers import DiffusionPipeline, pipelines

    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ErasureLabError(
            f"no model_index.json in {folder}: not a diffusers pipeline folder ({_EXPECTED})")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ErasureLabError(f"corrupt model_index.json in {folder}: {_reason(exc)}") from exc
    if not isinstance(index, dict):
        raise ErasureLabError(f"corrupt model_index.json in {folder}: expected a JSON object")
    class_name = index.get("_class_name")
    pipeline_class = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
        raise ErasureLabError(
            f"unsupported pipeline class {class_name!r} in {index_path}: expected a diffusers pipeline such as "
            "StableDiffusionPipeline or StableDiffusionXLPipeline (custom pipeline code is never loaded)")
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, list | tuple) or len(entry) != 2:
            continue
        library = entry[0]
        if library is None:
            continue
        if not isinstance(library, str) or (library not in ALLOWED_LIBRARIES and not hasattr(pipelines, library)):
            raise ErasureLabError(
                f"unsupported component {component}={entry} in {index_path}: only diffusers and transformers "
                "classes are loaded (custom component code is never run)")
    unet_entry = index.get("unet")
    if not (isinstance(unet_entry, list | tuple) and list(unet_entry) == ["diffusers", "UNet2DConditionModel"]):
        raise ErasureLabError(
            f"unsupported pipeline {class_name} in {folder}: erasurelab needs a UNet2DConditionModel `unet` "
            f"(Stable Diffusion 1.x/2.x/XL), found unet={unet_entry}")
    return index


def _load_folder(folder: Path, dtype: Any) -> Any:
    """A diffusers pipeline folder: validate model_index.json and every weight file, then load."""
    from diffusers import DiffusionPipeline

    _check_model_index(folder)
    for weights in sorted(folder.rglob("*.safetensors")):
        check_safetensors(weights)
    kwargs: dict[str, Any] = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), **kwargs)
    except _load_errors() as exc:
        raise ErasureLabError(f"corrupt or incomplete pipeline in {folder}: {_reason(exc)}") from exc
    _check_unet(pipe, folder)
    return pipe


def _check_unet(pipe: Any, source: Path) -> None:
    from diffusers import UNet2DConditionModel

    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
        raise ErasureLabError(
            f"unsupported pipeline {type(pipe).__name__} from {source}: erasurelab needs a UNet2DConditionModel "
            "`unet` (Stable Diffusion 1.x/2.x/XL)")


def is_sdxl_checkpoint(keys: list[str]) -> bool:
    """True for an original-layout SDXL checkpoint: it has a second (OpenCLIP bigG) text embedder."""
    return any(key.startswith(SDXL_MARKER) for key in keys)


def _load_single_file(path: Path, dtype: Any, config: str | os.PathLike[str] | None) -> Any:
    """An original-layout SD1.x/2.x/SDXL checkpoint, with its configs from a local diffusers folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = check_safetensors(path)
    if not any(key.startswith(SD_UNET_PREFIX) for key in keys):
        raise ErasureLabError(
            f"{path} is not a single-file Stable Diffusion checkpoint (no {SD_UNET_PREFIX}* tensors); "
            "give a diffusers pipeline folder instead")
    pipeline_class = StableDiffusionXLPipeline if is_sdxl_checkpoint(keys) else StableDiffusionPipeline
    kwargs: dict[str, Any] = dict(local_files_only=True)
    if config is not None:
        config_dir = Path(config).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ErasureLabError(
                f"config folder {config} has no model_index.json: pass a local diffusers pipeline folder "
                f"of the same model family as {path.name}")
        kwargs["config"] = str(config_dir)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = pipeline_class.from_single_file(str(path), **kwargs)
    except _load_errors() as exc:
        if config is None:
            raise ErasureLabError(
                f"cannot load {path} offline without its component configs ({_reason(exc)}); pass config= a local "
                f"diffusers folder of the same model family ({pipeline_class.__name__})") from exc
        raise ErasureLabError(f"cannot load {path} with the configs in {config}: {_reason(exc)}") from exc
    _check_unet(pipe, path)
    return pipe
