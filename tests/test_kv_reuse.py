"""Cross-attention key/value reuse across sampler steps: same images bit for bit, fewer projections computed,
nothing reused where it would be wrong (another or a modified input, autograd on), modules restored on exit."""

from __future__ import annotations

import pytest
import torch

from erasurelab.models.kv_reuse import KV_REUSE_ENV, cross_attention_projections, reuse_cross_attention_kv
from erasurelab.models.sampling import generate
from tiny_pipelines import tiny_sd15_pipeline, tiny_sdxl_pipeline

from conftest import needs_assets


def _count_computations(monkeypatch, modules: list[torch.nn.Module]) -> dict[str, int]:
    """Counts computations (not calls) of these Linear modules: a forward hook would also see reused calls, so
    this patches the class's forward, which the reuse context's wrapper calls only when it computes."""
    counts, ids, original = {"n": 0}, {id(m) for m in modules}, torch.nn.Linear.forward

    def counted(self, x):
        counts["n"] += id(self) in ids
        return original(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counted)
    return counts


@pytest.mark.parametrize("build", [tiny_sd15_pipeline, tiny_sdxl_pipeline])
def test_images_bit_identical_and_projections_computed_once_per_call(build, monkeypatch):
    pipe = build()
    projections = cross_attention_projections(pipe.unet)
    assert projections, "the tiny pipeline has cross-attention layers"
    prompts, seeds, steps = ["a red circle", "a blue square", "a red circle"], [0, 1, 2], 4
    plain = generate(pipe, prompts, seeds, steps=steps, guidance=5.0, batch_size=3)
    with reuse_cross_attention_kv(pipe.unet):
        nested = generate(pipe, prompts, seeds, steps=steps, guidance=5.0, batch_size=3)
    assert torch.equal(plain, nested)

    counts = _count_computations(monkeypatch, projections)
    again = generate(pipe, prompts, seeds, steps=steps, guidance=5.0, batch_size=3)
    assert torch.equal(plain, again)
    # generate() reuses on its own: each projection computed once per pipeline call, not once per step.
    assert counts["n"] == len(projections), (counts["n"], len(projections), steps)


def test_reuse_only_for_the_same_unmodified_input_without_autograd():
    pipe = tiny_sd15_pipeline()
    to_k = cross_attention_projections(pipe.unet)[0]
    self_attention_k = next(m.to_k for m in pipe.unet.modules() if getattr(m, "is_cross_attention", None) is False)
    x = torch.randn(2, 7, to_k.in_features)
    with reuse_cross_attention_kv(pipe.unet), torch.no_grad():
        assert "forward" not in vars(self_attention_k), "self-attention must not be touched"
        first = to_k(x)
        assert to_k(x) is first, "same tensor, same weights: the first output is reused"
        other = to_k(x.clone())
        assert other is not first and torch.equal(other, first)
        x.mul_(2)
        doubled = to_k(x)
        assert doubled is not first and torch.allclose(doubled, 2 * first, atol=1e-6), "an in-place change recomputes"
    with reuse_cross_attention_kv(pipe.unet):
        y = torch.randn(2, 7, to_k.in_features, requires_grad=True)
        a, b = to_k(y), to_k(y)
        assert a is not b and b.requires_grad, "with autograd on, every call computes (training is unaffected)"
        b.sum().backward()
        assert y.grad is not None
    assert all("forward" not in vars(m) for m in cross_attention_projections(pipe.unet)), "modules restored"


def test_no_unet_or_no_cross_attention_is_a_no_op():
    with reuse_cross_attention_kv(None):
        pass
    plain = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with reuse_cross_attention_kv(plain):
        assert "forward" not in vars(plain[0])


def test_environment_switch_turns_reuse_off_and_rejects_other_values(monkeypatch):
    from erasurelab.errors import ErasureLabError
    pipe = tiny_sd15_pipeline()
    to_k = cross_attention_projections(pipe.unet)[0]
    x = torch.randn(1, 3, to_k.in_features)
    monkeypatch.setenv(KV_REUSE_ENV, "off")
    with reuse_cross_attention_kv(pipe.unet), torch.no_grad():
        assert "forward" not in vars(to_k) and to_k(x) is not to_k(x)
    monkeypatch.setenv(KV_REUSE_ENV, "sometimes")
    with pytest.raises(ErasureLabError, match=KV_REUSE_ENV), reuse_cross_attention_kv(pipe.unet):
        pass


@needs_assets
def test_embedded_model_images_bit_identical_with_and_without_reuse(builtin_pipe, monkeypatch):
    prompts, seeds = ["a striped red circle on a white background", "Kiki on a black background"], [5, 6]
    monkeypatch.setenv(KV_REUSE_ENV, "off")
    plain = generate(builtin_pipe, prompts, seeds, steps=6)
    monkeypatch.setenv(KV_REUSE_ENV, "on")
    assert torch.equal(plain, generate(builtin_pipe, prompts, seeds, steps=6))
