"""Single-file exports: a kohya/A1111 LoRA and an original-layout checkpoint reload through diffusers."""

from __future__ import annotations

import pytest
import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.export import kohya_lora_state_dict, save_checkpoint, save_kohya_lora
from tiny_pipelines import tiny_sd15_pipeline, tiny_sdxl_pipeline

SPEC = ConceptSpec.from_words("cat", "object", ["cat"], ["dog", "bird"])


def latents(pipe, prompt: str = "a photo of a cat") -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(3)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=2, output_type="latent", height=64, width=64,
                    generator=generator).images


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def edited(request):
    import erasurelab as el

    build = tiny_sd15_pipeline if request.param == "sd15" else tiny_sdxl_pipeline
    pipe = build()
    edit = el.erase(pipe, SPEC, method="uce")
    edit.apply(pipe)
    return request.param, build, pipe, edit


def test_kohya_keys_alpha_and_ranks(edited):
    _, _, _, edit = edited
    state = kohya_lora_state_dict(edit)
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") and "." not in k.split(".")[0][10:] for k in downs)
    for key in downs:
        module = key.removesuffix(".lora_down.weight")
        rank = state[key].shape[0]
        assert state[f"{module}.lora_up.weight"].shape[1] == rank
        assert float(state[f"{module}.alpha"]) == rank  # alpha / rank = 1: the LoRA adds exactly B·A


def test_kohya_file_reloads_in_diffusers_to_the_same_latents(edited, tmp_path):
    _, build, pipe, edit = edited
    path = save_kohya_lora(edit, tmp_path / "cat.safetensors")
    fresh = build()
    before = latents(fresh)
    fresh.load_lora_weights(str(path))
    after = latents(fresh)
    assert (after - before).abs().max() > 1e-4  # the LoRA does something
    torch.testing.assert_close(after, latents(pipe), atol=1e-4, rtol=0)


def test_checkpoint_reloads_with_from_single_file_to_the_same_latents(tmp_path):
    import erasurelab as el
    from erasurelab.models import load_pipeline

    pipe = tiny_sd15_pipeline()
    folder = tmp_path / "base"
    pipe.save_pretrained(folder, safe_serialization=True)
    el.erase(pipe, SPEC, method="uce").apply(pipe)
    path = save_checkpoint(pipe, tmp_path / "edited.safetensors")
    loaded = load_pipeline(path, config=folder)
    torch.testing.assert_close(latents(loaded), latents(pipe), atol=1e-5, rtol=0)


def test_bad_outputs_give_one_line_errors_and_write_nothing(edited, tmp_path):
    kind, _, pipe, edit = edited
    with pytest.raises(ErasureLabError, match=r"\.safetensors"):
        save_kohya_lora(edit, tmp_path / "cat.pt")
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(ErasureLabError, match="exists"):
        save_kohya_lora(edit, tmp_path / "taken.safetensors")
    with pytest.raises(ErasureLabError, match="does not exist"):
        save_kohya_lora(edit, tmp_path / "missing" / "cat.safetensors")
    if kind == "sdxl":
        with pytest.raises(ErasureLabError, match=r"SD1\.x"):
            save_checkpoint(pipe, tmp_path / "xl.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]
