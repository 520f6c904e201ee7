"""Activation capture (pure.md §2, §5): hook placement, CFG half, pooling, hook removal, determinism."""

from __future__ import annotations

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models.capture import CaptureConfig, ToOutInputRecorder, capture_activations, stack_rows
from erasurelab.models.conditioning import encode
from erasurelab.models.layers import cross_attention_layers
from tiny_bert_pipeline import tiny_bert_pipeline

torch.set_num_threads(1)

SHORT = CaptureConfig(steps=3, seeds=(0, 1), batch_size=8)


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def _no_hooks(pipe) -> bool:
    return all(not layer.module.to_out[0]._forward_pre_hooks for layer in cross_attention_layers(pipe.unet))


def test_hook_captures_attention_output_before_to_out(pipe) -> None:
    """The recorded tensor is softmax(QKᵀ/√d)V with heads concatenated, shape (B, N, d)."""
    layers = cross_attention_layers(pipe.unet)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [layer.module.register_forward_pre_hook(
        lambda m, args, kwargs, name=layer.name: seen.__setitem__(name, (args[0], kwargs["encoder_hidden_states"])),
        with_kwargs=True) for layer in layers]
    context = encode(pipe, ["a photo of red", "a blue circle"]).embeds
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        with ToOutInputRecorder(layers) as rec, torch.no_grad():
            pipe.unet(latents, torch.tensor(300), encoder_hidden_states=context)
            captured = dict(rec.latest)
    finally:
        for h in handles:
            h.remove()
    for layer in layers:
        attn = layer.module
        x, ctx = seen[layer.name]
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        b, n, _ = q.shape
        hd = layer.inner_dim // layer.heads
        q, k, v = (t.view(b, -1, layer.heads, hd).transpose(1, 2) for t in (q, k, v))
        reference = (torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        assert captured[layer.name].shape == (2, n, layer.inner_dim)
        assert torch.allclose(captured[layer.name], reference, atol=1e-5)
        assert not torch.allclose(attn.to_out[0](reference), reference, atol=1e-3)  # after to_out is another space
    assert _no_hooks(pipe)


def test_shapes_and_conditional_half(pipe) -> None:
    """Each row is the mean over spatial queries of the conditional half at that step."""
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    acts = capture_activations(pipe, ["a photo of red", ""], SHORT)
    layers = cross_attention_layers(pipe.unet)
    assert set(acts) == {layer.name for layer in layers}
    for layer in layers:
        assert acts[layer.name].shape == (2, 2, 3, layer.inner_dim) and acts[layer.name].dtype == torch.float64
    assert stack_rows(acts)[layers[0].name].shape == (12, layers[0].inner_dim)
    # Step 0 of prompt 0, seed 1, recomputed with the conditional branch alone.
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(3)
    t0 = scheduler.timesteps[0]
    latent = randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(1)) * scheduler.init_noise_sigma
    with ToOutInputRecorder(layers) as rec, torch.no_grad():
        pipe.unet(scheduler.scale_model_input(latent, t0), t0,
                  encoder_hidden_states=encode(pipe, ["a photo of red"]).embeds)
        for layer in layers:
            expected = rec.latest[layer.name][0].double().mean(dim=0)
            assert torch.allclose(acts[layer.name][0, 1, 0], expected, atol=1e-5)
    # Had the unconditional half been kept, both prompts would give the same first step.
    assert not torch.allclose(acts[layers[0].name][0, :, 0], acts[layers[0].name][1, :, 0], atol=1e-4)


def test_hooks_removed_after_capture_and_on_error(pipe, monkeypatch) -> None:
    capture_activations(pipe, ["red"], SHORT)
    assert _no_hooks(pipe)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipe.unet, "forward", explode)
    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(pipe, ["red"], SHORT)
    monkeypatch.undo()
    assert _no_hooks(pipe)


def test_deterministic_and_batch_independent(pipe) -> None:
    prompts = ["a photo of red", "a blue circle", "striped"]
    a = capture_activations(pipe, prompts, SHORT)
    b = capture_activations(pipe, prompts, SHORT)
    c = capture_activations(pipe, prompts, CaptureConfig(steps=3, seeds=(0, 1), batch_size=1))
    for name in a:
        assert torch.equal(a[name], b[name])
        assert torch.allclose(a[name], c[name], atol=1e-5)


def test_nan_activations_raise() -> None:
    broken = tiny_bert_pipeline(2)
    with torch.no_grad():
        cross_attention_layers(broken.unet)[-1].module.to_v.weight.fill_(float("inf"))
    with pytest.raises(ErasureLabError, match="NaN/inf"):
        capture_activations(broken, ["red"], SHORT)
    assert _no_hooks(broken)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"steps": 0}, "steps"), ({"seeds": ()}, "seed"), ({"batch_size": 0}, "batch size"),
])
def test_bad_config(kwargs, needle) -> None:
    with pytest.raises(ErasureLabError, match=needle):
        CaptureConfig(**kwargs)


def test_empty_prompt_list(pipe) -> None:
    acts = capture_activations(pipe, [], SHORT)
    assert all(a.shape[0] == 0 for a in acts.values())


def test_sdxl_capture() -> None:
    """SDXL's U-Net needs pooled text embeddings and time ids; capture supplies them like the pipeline."""
    from tiny_pipelines import tiny_sdxl_pipeline

    xl = tiny_sdxl_pipeline(0)
    acts = capture_activations(xl, ["a photo of red", "a blue circle"],
                               CaptureConfig(steps=2, seeds=(0,), latent_size=8))
    layers = cross_attention_layers(xl.unet)
    assert len(acts) == len(layers) == 12
    assert all(acts[layer.name].shape == (2, 1, 2, layer.inner_dim) for layer in layers)
    assert all(torch.isfinite(a).all() for a in acts.values())
    assert _no_hooks(xl)
