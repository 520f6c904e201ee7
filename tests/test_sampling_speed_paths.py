"""generate()'s speed paths: bf16 autocast is chosen by a documented rule, is deterministic run to run,
stays close to float32, and is recorded (sampler_info) so caches and results can tell the two apart.
"""

from __future__ import annotations

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models.sampling import AUTOCAST_ENV, cpu_bf16_capable, generate, resolve_autocast, sampler_info
from tiny_pipelines import tiny_sd15_pipeline

from conftest import needs_assets


def test_explicit_and_environment_choices(monkeypatch):
    pipe = tiny_sd15_pipeline()
    monkeypatch.delenv(AUTOCAST_ENV, raising=False)
    assert resolve_autocast(pipe) is False, "auto must leave non-embedded pipelines in float32"
    assert resolve_autocast(pipe, True) is True and resolve_autocast(pipe, False) is False
    monkeypatch.setenv(AUTOCAST_ENV, "on")
    assert resolve_autocast(pipe) is True and sampler_info(pipe)["autocast"] == "bf16"
    assert resolve_autocast(pipe, False) is False, "an explicit argument beats the environment"
    monkeypatch.setenv(AUTOCAST_ENV, "off")
    assert sampler_info(pipe) == {"autocast": "off", "dtype": "float32"}
    monkeypatch.setenv(AUTOCAST_ENV, "sometimes")
    with pytest.raises(ErasureLabError, match=AUTOCAST_ENV):
        resolve_autocast(pipe)


@needs_assets
def test_auto_keeps_float32_on_embedded(builtin_pipe, monkeypatch):
    # bf16 failed the <1% verdict rule on the canonical prompts (bench_generation.py), so auto stays float32.
    monkeypatch.delenv(AUTOCAST_ENV, raising=False)
    assert resolve_autocast(builtin_pipe) is False
    assert isinstance(cpu_bf16_capable(), bool)


@needs_assets
@pytest.mark.slow
def test_autocast_deterministic_and_close_to_fp32(builtin_pipe):
    prompts, seeds = ["a red circle", "a striped blue square on a white background"], [3, 4]
    bf16_a = generate(builtin_pipe, prompts, seeds, steps=4, autocast=True)
    bf16_b = generate(builtin_pipe, prompts, seeds, steps=4, autocast=True)
    fp32 = generate(builtin_pipe, prompts, seeds, steps=4, autocast=False)
    assert torch.equal(bf16_a, bf16_b), "autocast must be deterministic run to run"
    assert bf16_a.dtype == torch.float32 and bf16_a.shape == fp32.shape
    assert not torch.equal(bf16_a, fp32), "autocast=True had no effect"
    assert (bf16_a - fp32).abs().mean() < 0.02
