"""Shared test set-up: offline, two threads at most, and a skip marker for missing trained weights."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Two threads at most, split between pytest-xdist workers so that `-n 2` on two cores never oversubscribes them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))
# Tests never share the on-disk cache with a user's runs (or a previous test session).
if "ERASURELAB_CACHE" not in os.environ:
    import tempfile

    os.environ["ERASURELAB_CACHE"] = tempfile.mkdtemp(prefix="erasurelab-test-cache-")


def _assets_present() -> bool:
    from erasurelab.world.builtin import assets_dir

    return (assets_dir() / "unet" / "config.json").exists() and (assets_dir() / "judge" / "judge.safetensors").exists()


needs_assets = pytest.mark.skipif(not _assets_present(), reason="embedded weights not trained yet")


@pytest.fixture(scope="session")
def builtin_pipe():
    """The embedded pipeline, loaded once per test session (read-only: tests must not edit it)."""
    from erasurelab.models import load_pipeline

    return load_pipeline("builtin:shapes")


@pytest.fixture(scope="session")
def shapes_judge():
    from erasurelab.judges import load_judge

    return load_judge("shapes")


def yaml_error(folder, text: str) -> tuple[str, str]:
    """(message, path) of the one-line ErasureLabError that loading `text` as a concept YAML raises."""
    from erasurelab.concepts import ConceptSpec
    from erasurelab.errors import ErasureLabError

    path = folder / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ErasureLabError) as info:
        ConceptSpec.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    return message, str(path)
