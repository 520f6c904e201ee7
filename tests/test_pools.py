"""Trajectory pools on disk (ESD's x_t pool, TRuST's D_f): a second run loads what the first built, bit for bit;
other weights, other prompts or a disabled cache build again."""

from __future__ import annotations

import pytest
import torch

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.methods import esd, trust
from erasurelab.methods.esd import EsdConfig
from erasurelab.methods.training import pools
from erasurelab.methods.trust import TrustConfig
from tiny_bert_pipeline import tiny_bert_pipeline

SPEC = ConceptSpec(name="red", category="color", forget=("a photo of red", "red"), retain=("a photo of blue",),
                   synonyms=("red",))
OTHER = ConceptSpec(name="blue", category="color", forget=("a photo of blue", "blue"), retain=("a photo of red",),
                    synonyms=("blue",))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _counting(monkeypatch, module) -> list[int]:
    calls: list[int] = []
    real = module.denoise

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "denoise", counted)
    return calls


def _esd_pool(pipe, spec=SPEC) -> torch.Tensor:
    tuner, settings, forget, retain = esd.setup(pipe, [spec], EsdConfig(variant="x", steps=1, pool_size=3,
                                                                        sample_steps=3))
    with tuner:
        trainer = esd.make_trainer(tuner, settings, forget, retain)
        return trainer.pool.clone(), trainer.pool_from_cache


def _trust_data(pipe) -> torch.Tensor:
    tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(steps=1, n_forget=3, sample_steps=3,
                                                                           batch_size=2, saliency_prompts=1))
    with tuner:
        trainer = trust.make_trainer(tuner, settings, pairs, retain)
        return trainer.data.clone(), trainer.data_from_cache


def test_esd_pool_is_built_once_and_reloaded_bit_for_bit(cache, monkeypatch):
    calls = _counting(monkeypatch, pools)
    pipe = tiny_bert_pipeline(0)
    first, hit = _esd_pool(pipe)
    built = len(calls)
    assert built > 0 and not hit and any((cache / "trajectories").iterdir())
    again, hit = _esd_pool(pipe)
    assert hit and len(calls) == built and torch.equal(first, again)
    assert not _esd_pool(pipe, OTHER)[1]        # other prompts: a miss
    assert len(calls) > built


def test_other_weights_miss_the_cache(cache, monkeypatch):
    calls = _counting(monkeypatch, pools)
    first, _ = _esd_pool(tiny_bert_pipeline(0))
    built = len(calls)
    other, hit = _esd_pool(tiny_bert_pipeline(1))
    assert not hit and len(calls) == 2 * built and not torch.equal(first, other)


def test_trust_forget_set_is_reloaded_and_a_disabled_cache_builds_every_time(cache, monkeypatch):
    calls = _counting(monkeypatch, pools)
    pipe = tiny_bert_pipeline(0)
    first, hit = _trust_data(pipe)
    built = len(calls)
    again, hit_again = _trust_data(pipe)
    assert built > 0 and not hit and hit_again and torch.equal(again, first) and len(calls) == built
    monkeypatch.setenv("ERASURELAB_CACHE", "off")
    third, hit = _trust_data(pipe)
    assert not hit and torch.equal(third, first) and len(calls) == 2 * built
