"""Shared bench plumbing: environment facts, a markdown table, atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from erasurelab.runinfo import peak_rss_mb  # noqa: F401  (re-exported for the benches)

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def table(rows: list[dict], columns: list[str]) -> str:
    """The rows' columns as a markdown table (erasurelab.demo.markdown: floats to 3 decimals)."""
    from erasurelab.demo import markdown

    return markdown([{c: row[c] for c in columns} for row in rows]).rstrip("\n")


def write_json(name: str, payload: dict) -> Path:
    from erasurelab.runinfo import write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(RESULTS / f"{name}.json", payload)


def run_worker(script: str, *args: str) -> dict:
    """Run `python script *args` in a fresh process and return the JSON dict it prints last.

    Why a fresh process: a measurement's peak resident memory (and its timing, free of the
    parent's caches) is then its own.
    """
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
