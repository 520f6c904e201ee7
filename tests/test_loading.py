"""load_pipeline: round trips of SD1.5- and SDXL-shaped folders, and one-line errors for bad specs.

Why tiny random pipelines: the loader must work on the real SD/SDXL pipeline classes, and those
can be built from configs in a second (tests/tiny_pipelines.py); no hub, no trained weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from erasurelab.errors import ErasureLabError
from erasurelab.models import is_sdxl_checkpoint, load_pipeline
from erasurelab.models.provenance import source_of
from tiny_pipelines import original_sd_state_dict, run, tiny_sd15_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> tuple[object, Path]:
    pipe = tiny_sd15_pipeline()
    folder = tmp_path_factory.mktemp("sd15")
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory) -> tuple[object, Path]:
    pipe = tiny_sdxl_pipeline()
    folder = tmp_path_factory.mktemp("sdxl")
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder


def one_line_error(spec, **kwargs) -> str:
    """The message of the ErasureLabError load_pipeline raises; asserts it is a single line."""
    with pytest.raises(ErasureLabError) as info:
        load_pipeline(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# --- diffusers folders -------------------------------------------------------------------------


def test_sd15_folder_round_trip_renders_identical_images(sd15):
    from diffusers import StableDiffusionPipeline

    pipe, folder = sd15
    loaded = load_pipeline(folder)
    assert type(loaded) is StableDiffusionPipeline
    assert source_of(loaded) == str(folder)
    expected, got = run(pipe, seed=3), run(loaded, seed=3)
    assert got.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sdxl_folder_round_trip_renders_identical_images(sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe, folder = sdxl
    loaded = load_pipeline(str(folder))
    assert type(loaded) is StableDiffusionXLPipeline
    assert source_of(loaded) == str(folder)
    np.testing.assert_allclose(run(loaded, seed=5), run(pipe, seed=5), atol=1e-5)


def test_loading_writes_nothing(sd15):
    _, folder = sd15
    before = snapshot(folder)
    load_pipeline(folder)
    assert snapshot(folder) == before


def test_dtype_is_applied(sd15):
    _, folder = sd15
    loaded = load_pipeline(folder, dtype=torch.bfloat16)
    assert loaded.unet.dtype == torch.bfloat16


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    message = one_line_error(tmp_path)
    assert "model_index.json" in message and str(tmp_path) in message


def test_truncated_unet_in_folder_is_corrupt(sd15, tmp_path):
    _, folder = sd15
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = one_line_error(copy)
    assert "corrupt" in message and str(weights) in message


def test_custom_pipeline_code_is_never_imported(sd15, tmp_path):
    _, folder = sd15
    copy = tmp_path / "custom"
    shutil.copytree(folder, copy)
    marker = tmp_path / "code-ran"
    (copy / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = ["evil", "EvilPipeline"]
    (copy / "model_index.json").write_text(json.dumps(index))
    assert "custom pipeline code" in one_line_error(copy)
    assert not marker.exists()


def test_custom_component_library_is_refused(sd15, tmp_path):
    _, folder = sd15
    copy = tmp_path / "component"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["unet"] = ["evil_lib", "EvilUNet"]
    (copy / "model_index.json").write_text(json.dumps(index))
    assert "unet" in one_line_error(copy)


# --- single files and specs ----------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    message = one_line_error(missing)
    assert message == (f"model not found: {missing} "
                       "(expected builtin:shapes, a diffusers folder or a .safetensors file)")


def test_unknown_builtin():
    message = one_line_error("builtin:nope")
    assert "builtin:nope" in message and "builtin:shapes" in message
    assert "did you mean: shapes" in one_line_error("builtin:shape")


def test_builtin_without_assets_is_one_line_error(tmp_path, monkeypatch):
    from erasurelab.world import builtin

    monkeypatch.setattr(builtin, "ASSETS", tmp_path)
    assert "erasurelab world train" in one_line_error("builtin:shapes")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    message = one_line_error(path)
    assert "pickle" in message and ".safetensors" in message and str(path) in message


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    assert "unsupported model file" in one_line_error(path)


def test_truncated_single_file_is_corrupt(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.randn(32, 4, 3, 3)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = one_line_error(path)
    assert "corrupt" in message and str(path) in message


def test_non_stable_diffusion_safetensors_is_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"unet.down.lora_A.weight": torch.zeros(2, 2)}, str(path))
    assert "not a single-file Stable Diffusion checkpoint" in one_line_error(path)


def test_single_file_without_local_configs_asks_for_config(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    assert "config=" in one_line_error(path)


def test_single_file_with_config_but_missing_components(sd15, tmp_path):
    _, folder = sd15
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    message = one_line_error(path, config=folder)
    assert str(path) in message and str(folder) in message


def test_single_file_config_must_be_a_diffusers_folder(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    assert "model_index.json" in one_line_error(path, config=tmp_path / "nothing")


def test_sdxl_is_detected_from_tensor_names():
    sd = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"]
    xl = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.transformer.x",
          "conditioner.embedders.1.model.ln_final.weight"]
    assert not is_sdxl_checkpoint(sd)
    assert is_sdxl_checkpoint(xl)


def test_single_file_checkpoint_with_local_config_renders_identical_images(sd15, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe, folder = sd15
    path = tmp_path / "tiny-sd15.safetensors"
    save_file(original_sd_state_dict(pipe), str(path))
    before = snapshot(tmp_path)
    loaded = load_pipeline(path, config=folder)
    assert snapshot(tmp_path) == before
    assert type(loaded) is StableDiffusionPipeline
    assert source_of(loaded) == str(path)
    np.testing.assert_allclose(run(loaded, seed=7), run(pipe, seed=7), atol=1e-5)


def test_config_is_only_for_single_files(sd15):
    _, folder = sd15
    assert "single-file" in one_line_error(folder, config=folder)
