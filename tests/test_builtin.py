"""The embedded pipeline: loads offline, round-trips through diffusers, renders what it is asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.models import cross_attention_layers, generate
from erasurelab.models.provenance import record_source, source_of
from erasurelab.world import captions
from erasurelab.world.builtin import load_builtin_pipeline

from conftest import needs_assets

pytestmark = needs_assets


def test_it_is_a_stable_diffusion_pipeline(builtin_pipe) -> None:
    from diffusers import StableDiffusionPipeline

    assert isinstance(builtin_pipe, StableDiffusionPipeline)
    assert type(builtin_pipe.text_encoder).__name__ == "BertModel"
    assert builtin_pipe.text_encoder.config.use_attention_mask is True


def test_cross_attention_layers_of_the_embedded_unet(builtin_pipe) -> None:
    layers = cross_attention_layers(builtin_pipe.unet)
    names = [n for n, _ in builtin_pipe.unet.named_modules() if n.endswith("attn2")]
    assert [layer.name for layer in layers] == names and len(names) == 6
    assert all(layer.context_dim == 384 and layer.inner_dim == 128 for layer in layers)


def test_save_pretrained_round_trip_gives_identical_images(builtin_pipe, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    builtin_pipe.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    prompts, seeds = ["a striped red heart", "a blue moon on a white background"], [3, 4]
    a = generate(builtin_pipe, prompts, seeds, steps=8)
    record_source(reloaded, source_of(builtin_pipe))  # same defaults
    b = generate(reloaded, prompts, seeds, steps=8)
    assert torch.equal(a, b)


def test_an_image_does_not_depend_on_its_batch(builtin_pipe) -> None:
    alone = generate(builtin_pipe, ["a green star"], [11], steps=6)
    batched = generate(builtin_pipe, ["a pink cross", "a green star", "a red square"], [1, 11, 2], steps=6)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)


def test_corrupt_assets_give_a_one_line_error(builtin_pipe, tmp_path: Path) -> None:
    import shutil

    from erasurelab.world.builtin import assets_dir

    shutil.copytree(assets_dir(), tmp_path / "shapes")
    weights = tmp_path / "shapes" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ErasureLabError, match="corrupt") as err:
        load_builtin_pipeline(tmp_path / "shapes")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_embedded_model_renders_the_requested_object_and_color(builtin_pipe, shapes_judge) -> None:
    suite = [p for p in captions.canonical_suite() if "style" not in p.labels][::2]  # 32 plain prompts
    images = generate(builtin_pipe, [p.prompt for p in suite], list(range(len(suite))), batch_size=32)
    predicted = shapes_judge.predict(images)
    both = sum(p["object"] == s.labels["object"] and p["color"] == s.labels["color"]
               for p, s in zip(predicted, suite, strict=True))
    assert both / len(suite) >= 0.7, both
    # and a different request gives a different concept: the text conditioning is used
    requested = {s.labels["color"] for s in suite}
    assert len({p["color"] for p in predicted} & requested) >= len(requested) - 1
