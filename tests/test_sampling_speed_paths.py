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


@pytest.mark.parametrize("native", [True, False])
def test_autocast_warns_only_where_bf16_is_emulated(monkeypatch, native):
    """bf16 on a CPU without AVX512-BF16/AMX is emulated and several times slower: say so, once per call."""
    import warnings

    from erasurelab.models import sampling

    monkeypatch.setattr(sampling, "cpu_bf16_capable", lambda: native)
    pipe = tiny_sd15_pipeline()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(pipe, ["a red circle"], [0], steps=2, autocast=True)
        generate(pipe, ["a red circle"], [0], steps=2, autocast=False)
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


@pytest.mark.parametrize("build", ["sd15", "sdxl"])
@pytest.mark.parametrize("negative", [None, "a blue star"])
def test_each_distinct_prompt_encoded_once_same_images(build, negative):
    """generate() encodes repeated prompts once (plus one negative) and renders exactly what the pipeline
    renders from the raw prompts: the embeddings come from the pipeline's own encode_prompt."""
    from tiny_pipelines import tiny_sdxl_pipeline

    pipe = tiny_sd15_pipeline() if build == "sd15" else tiny_sdxl_pipeline()
    prompts, seeds = ["a red circle", "a blue square", "a red circle", "a red circle"], [1, 2, 3, 4]
    encoded = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda _m, args: encoded.append(int(args[0].shape[0])))
    try:
        images = generate(pipe, prompts, seeds, steps=2, guidance=5.0, batch_size=4, negative_prompt=negative)
    finally:
        handle.remove()
    assert sum(encoded) == 2 + 1, f"expected 2 distinct prompts and 1 negative encoded, got batches {encoded}"
    with torch.no_grad():
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        direct = pipe(prompt=prompts, negative_prompt=[negative] * 4 if negative else None, generator=generators,
                      num_inference_steps=2, guidance_scale=5.0, output_type="pt").images
    # Equal up to float rounding: the encoder sees batches of 2 and 1 instead of 4 (SDXL differs by ~1e-6).
    torch.testing.assert_close(images, direct.float(), atol=1e-5, rtol=0)
