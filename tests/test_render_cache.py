"""RenderCache on disk: a second cache on the same model renders nothing and returns the same images;
a changed weight, a changed sampler setting or a changed request list misses; `disk=False` stays in memory.

Why the tiny SD1.5 pipeline: the cache logic is model-agnostic and a 2-step 64x64 render takes a
fraction of a second; the embedded model is exercised by the evaluation tests.
"""

from __future__ import annotations

import torch

from erasurelab import diskcache
from erasurelab.evaluation.rendering import RENDER_NAMESPACE, RenderCache, model_hash
from tiny_pipelines import tiny_sd15_pipeline

PROMPTS = ["a red circle", "a blue square", "a red circle"]
SEEDS = [0, 1, 2]


def _cache(**kw) -> RenderCache:
    return RenderCache(steps=2, guidance=3.0, batch_size=2, **kw)


def test_second_cache_loads_from_disk_and_renders_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path))
    pipe = tiny_sd15_pipeline()
    key = model_hash(pipe)
    first = _cache()
    a = first.render(pipe, key, PROMPTS, SEEDS)
    assert first.rendered == 3 and first.disk_hits == 0
    assert list((tmp_path / RENDER_NAMESPACE / key[:16]).glob("*.safetensors")), "nothing written to disk"
    second = _cache()
    b = second.render(pipe, key, PROMPTS, SEEDS)
    assert second.rendered == 0 and second.disk_hits == 3 and second.hits == 3
    assert torch.equal(a, b)
    # Stored as uint8: the float images are exact multiples of 1/255.
    assert torch.allclose((a * 255).round(), a * 255, atol=1e-3)
    entry = diskcache.load_tensors(f"{RENDER_NAMESPACE}/{key[:16]}",
                                   second._disk_key(key, second.sampler(pipe), [(key, p, s) for p, s in
                                                                                 zip(PROMPTS, SEEDS, strict=True)]))
    assert entry is not None and entry["images"].dtype == torch.uint8


def test_changed_weight_sampler_or_requests_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path))
    pipe = tiny_sd15_pipeline()
    key = model_hash(pipe)
    base = _cache().render(pipe, key, PROMPTS, SEEDS)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(0.5)
    changed_key = model_hash(pipe)
    assert changed_key != key
    edited = _cache()
    out = edited.render(pipe, changed_key, PROMPTS, SEEDS)
    assert edited.rendered == 3 and edited.disk_hits == 0
    assert not torch.equal(out, base)
    steps3 = RenderCache(steps=3, guidance=3.0, batch_size=2)
    steps3.render(pipe, changed_key, PROMPTS, SEEDS)
    assert steps3.rendered == 3
    forced = _cache(autocast=True)
    forced.render(pipe, changed_key, PROMPTS, SEEDS)
    assert forced.rendered == 3, "the autocast flag is part of the key"
    other = _cache()
    other.render(pipe, changed_key, PROMPTS, [0, 1, 3])
    assert other.rendered == 3  # one disk entry per request list: a new list is rendered again


def test_memory_only_and_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path))
    pipe = tiny_sd15_pipeline()
    key = model_hash(pipe)
    memory = _cache(disk=False)
    memory.render(pipe, key, PROMPTS, SEEDS)
    memory.render(pipe, key, PROMPTS, SEEDS)
    assert memory.rendered == 3 and memory.hits == 3 and memory.disk_hits == 0
    assert not (tmp_path / RENDER_NAMESPACE).exists()
    monkeypatch.setenv("ERASURELAB_CACHE", "off")
    _cache().render(pipe, key, PROMPTS, SEEDS)
    again = _cache()
    again.render(pipe, key, PROMPTS, SEEDS)
    assert again.rendered == 3


def test_corrupt_entry_is_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path))
    pipe = tiny_sd15_pipeline()
    key = model_hash(pipe)
    a = _cache().render(pipe, key, PROMPTS, SEEDS)
    for path in (tmp_path / RENDER_NAMESPACE).rglob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    again = _cache()
    b = again.render(pipe, key, PROMPTS, SEEDS)
    assert again.rendered == 3 and torch.equal(a, b)


def test_keys_that_are_not_a_model_hash_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path))
    pipe = tiny_sd15_pipeline()
    _cache().render(pipe, "k", PROMPTS[:1], SEEDS[:1])
    again = _cache()
    again.render(pipe, "k", PROMPTS[:1], SEEDS[:1])
    assert again.rendered == 1 and not (tmp_path / RENDER_NAMESPACE).exists()


def test_multi_process_launch_stays_in_memory(monkeypatch):
    cache = _cache()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cache._persist("a" * 64)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not cache._persist("a" * 64), "processes of one launch could disagree on a disk hit"


def test_model_hash_ignores_scheduler_bookkeeping_order():
    # diffusers builds "_use_default_values" from a set: its order differs between processes.
    from diffusers.configuration_utils import FrozenDict

    pipe = tiny_sd15_pipeline()
    before = model_hash(pipe)
    config = dict(pipe.scheduler.config)
    config["_use_default_values"] = [*reversed(config.get("_use_default_values", ["a", "b"])), "zz"]
    pipe.scheduler._internal_dict = FrozenDict(config)
    assert model_hash(pipe) == before
    config["beta_end"] = float(config["beta_end"]) * 2
    pipe.scheduler._internal_dict = FrozenDict(config)
    assert model_hash(pipe) != before, "a public scheduler setting must change the hash"
