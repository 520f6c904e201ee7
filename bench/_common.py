"""Shared bench plumbing: provenance of every result file, a markdown table, atomic JSON output.

Every bench JSON goes through `write_json`, which adds what makes its numbers traceable:
{"provenance": commit, dirty flag, command, UTC time, versions, machine; "model_hash": of the
pipeline the bench used; "judge": {"id", "accuracy" (when known)}; "settings": the bench's
knobs}. Any bench script (also ones other people add) should call it the same way.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from erasurelab.runinfo import machine_facts, peak_rss_mb, provenance  # noqa: F401  (re-exported for the benches)

RESULTS = Path(__file__).resolve().parent / "results"
#: Where a shipped judge's measured accuracy is read from (bench_world.py writes it).
JUDGE_ACCURACY_FILE = RESULTS / "world.json"


def environment() -> dict:
    """Library versions and machine facts (kept for benches that record them separately)."""
    from erasurelab.runinfo import library_versions

    return {**library_versions(), **machine_facts()}


@functools.cache
def builtin_model_hash() -> str:
    """evaluation.rendering.model_hash of a freshly loaded builtin:shapes, computed once per process."""
    from erasurelab.evaluation.rendering import model_hash
    from erasurelab.models import load_pipeline

    return model_hash(load_pipeline("builtin:shapes"))


def pipeline_hash(pipe: Any | None) -> str:
    """model_hash of the pipeline a bench used; None means the unedited builtin:shapes."""
    if pipe is None:
        return builtin_model_hash()
    from erasurelab.evaluation.rendering import model_hash

    return model_hash(pipe)


def judge_info(judge: Any | str | None, accuracy: dict | None = None) -> dict | None:
    """{"id", "accuracy", "accuracy_source"} of a judge (instance or id; a dict is taken as already built).

    accuracy: a measured accuracy to record; otherwise the per-attribute accuracy on renders that
    bench_world.py measured for the same judge id, if that file holds it.
    """
    if judge is None or isinstance(judge, dict):
        return judge
    judge_id = judge if isinstance(judge, str) else getattr(judge, "id", type(judge).__name__)
    info: dict[str, Any] = {"id": judge_id, "accuracy": accuracy, "accuracy_source": "this run" if accuracy else None}
    if accuracy is None and JUDGE_ACCURACY_FILE.exists():
        world = json.loads(JUDGE_ACCURACY_FILE.read_text())
        if world.get("judge_id") == judge_id and "judge_accuracy" in world:
            info["accuracy"] = world["judge_accuracy"]
            info["accuracy_source"] = f"bench/results/{JUDGE_ACCURACY_FILE.name}"
    return info


def table(rows: list[dict], columns: list[str]) -> str:
    """The rows' columns as a markdown table (erasurelab.demo.markdown: floats to 3 decimals)."""
    from erasurelab.demo import markdown

    return markdown([{c: row[c] for c in columns} for row in rows]).rstrip("\n")


def result_payload(payload: dict, *, pipe: Any | None = None, judge: Any | str | None = None,
                   settings: dict | None = None, command: str | None = None, model_hash: str | None = None) -> dict:
    """payload plus provenance, model_hash, judge and settings (existing keys of payload win for settings).

    model_hash: for a bench that renders nothing and summarises other result files, the hash those files
    record (so no pipeline is loaded just to hash it); otherwise the hash of `pipe`.
    """
    out = dict(payload)
    out["provenance"] = provenance(command)
    out["model_hash"] = model_hash or pipeline_hash(pipe)
    out["judge"] = judge_info(judge if judge is not None else payload.get("judge"))
    out["settings"] = settings if settings is not None else payload.get("settings", {})
    return out


def write_json(name: str, payload: dict, *, pipe: Any | None = None, judge: Any | str | None = None,
               settings: dict | None = None, command: str | None = None, model_hash: str | None = None) -> Path:
    """Write bench/results/NAME.json atomically, with the provenance keys of `result_payload`.

    pipe: the (unedited) pipeline the bench used, None for builtin:shapes; judge: instance or id.
    """
    from erasurelab.runinfo import write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    full = result_payload(payload, pipe=pipe, judge=judge, settings=settings, command=command, model_hash=model_hash)
    return write_json_atomic(RESULTS / f"{name}.json", full)


def last_json(stdout: str) -> Any:
    """The JSON value a worker printed on its last line (earlier lines are its logs)."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_worker(script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run `python script *args` in a fresh process (os.environ plus `env`) and return the JSON it prints last.

    Why a fresh process: a measurement's peak resident memory (and its timing, free of the
    parent's caches) is then its own.
    """
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout
    return last_json(out)


def verdict_difference(preds_a: list[dict[str, str]], preds_b: list[dict[str, str]], images_a: Any, images_b: Any,
                       attributes: list[str] | tuple[str, ...], limit: float = 0.01) -> dict:
    """How often a judge's verdict per attribute differs between two renders of the same prompts and seeds.

    Why shared: every "faster render path" (bf16 autocast, fewer sampler steps) is held to the same
    rule before it may become a default: each attribute changes on under `limit` of the images.
    """
    n = len(preds_a)
    changed = {attr: sum(x[attr] != y[attr] for x, y in zip(preds_a, preds_b, strict=True)) for attr in attributes}
    any_changed = sum(any(x[attr] != y[attr] for attr in attributes) for x, y in zip(preds_a, preds_b, strict=True))
    diff = (images_a - images_b).abs()
    return {"images": n, "verdict_changes": changed, "verdict_change_rate": {k: v / n for k, v in changed.items()},
            "images_with_any_change": any_changed, "any_change_rate": any_changed / n,
            "max_rate": max(changed.values()) / n, "rule": f"a default only if every attribute < {limit}",
            "passes": max(changed.values()) / n < limit,
            "pixel_mean_abs_diff": float(diff.mean()), "pixel_max_abs_diff": float(diff.max())}


def canonical_requests(seeds_per_prompt: int, first_seed: int = 1000) -> tuple[list[str], list[int], int]:
    """(prompts, seeds, number of distinct prompts): the world's canonical prompts, each at seeds first_seed.. .

    Why shared: every verdict check on a faster render path compares renders of exactly these requests.
    """
    from erasurelab.world.captions import canonical_suite

    suite = canonical_suite()
    prompts = [p.prompt for p in suite for _ in range(seeds_per_prompt)]
    seeds = [first_seed + k for _ in suite for k in range(seeds_per_prompt)]
    return prompts, seeds, len(suite)


def judged_render(pipe: Any, judge: Any, prompts: list[str], seeds: list[int],
                  **options: Any) -> tuple[Any, list, float]:
    """(images, the judge's per-attribute verdicts, CPU seconds of the render) at batch 64; `options` go to generate."""
    import time

    from erasurelab.models import generate

    start = time.process_time()
    images = generate(pipe, prompts, seeds, batch_size=64, **options)
    return images, judge.predict(images), time.process_time() - start


def to_channels_last(pipe: Any) -> Any:
    """The U-Net and VAE in torch.channels_last memory format (oneDNN's preferred layout), in place; returns pipe."""
    import torch

    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=torch.channels_last)
    return pipe
