"""An on-disk cache for work that depends only on inputs we can hash (the unedited model, a concept).

Why: the reference renders, Ring-A-Bell's text-side prompt search and textual inversion's reference
images depend only on the unedited model, the concept and the settings. A second run, or a second
method compared against the same reference, should load them instead of recomputing them.

Where: `$ERASURELAB_CACHE` if set, else `~/.cache/erasurelab`. `ERASURELAB_CACHE=off` disables it
(every lookup misses, nothing is written). Entries are safetensors (tensors) or JSON (anything
else) written to a temporary file and renamed, so a killed run never leaves a half-written entry;
a corrupt entry is treated as a miss and overwritten. Keys are sha256 digests of canonical JSON of
everything the cached value depends on, so a changed input can never return a stale value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Bump when the layout of cached entries changes: it is part of every key.
CACHE_VERSION = "1"


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off (`ERASURELAB_CACHE=off`)."""
    value = os.environ.get("ERASURELAB_CACHE", "")
    if value.strip().lower() in {"off", "0", "false", "none"}:
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "erasurelab"


def cache_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of parts (plus the cache version): a stable, collision-safe key."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(namespace: str, key: str, suffix: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / namespace / f"{key}{suffix}"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_tensors(namespace: str, key: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors under (namespace, key), or None on a miss (or a corrupt entry)."""
    path = _path(namespace, key, ".safetensors")
    if path is None or not path.exists():
        logger.debug("cache miss %s/%s", namespace, key)
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        logger.info("cache hit %s", path)
        return tensors
    except Exception as exc:  # a damaged entry is a miss; it is rewritten on the next save
        logger.warning("ignoring corrupt cache entry %s: %s", path, str(exc).splitlines()[0])
        return None


def save_tensors(namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Store tensors under (namespace, key) atomically; a no-op when caching is off or the disk refuses."""
    path = _path(namespace, key, ".safetensors")
    if path is None:
        return
    from safetensors.torch import save_file

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        _atomic_write(path, lambda tmp: save_file(data, str(tmp)))
    except OSError as exc:  # a cache is an optimisation: never fail the run for it
        logger.warning("could not write cache entry %s: %s", path, exc)
        return
    logger.info("cached %s", path)


def load_json(namespace: str, key: str) -> Any | None:
    """The cached JSON value under (namespace, key), or None on a miss (or a corrupt entry)."""
    path = _path(namespace, key, ".json")
    if path is None or not path.exists():
        logger.debug("cache miss %s/%s", namespace, key)
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        logger.info("cache hit %s", path)
        return value
    except (OSError, ValueError) as exc:
        logger.warning("ignoring corrupt cache entry %s: %s", path, exc)
        return None


def save_json(namespace: str, key: str, value: Any) -> None:
    """Store a JSON-serialisable value under (namespace, key) atomically; a no-op when caching is off."""
    path = _path(namespace, key, ".json")
    if path is None:
        return
    text = json.dumps(value, sort_keys=True)
    try:
        _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        logger.warning("could not write cache entry %s: %s", path, exc)
        return
    logger.info("cached %s", path)
