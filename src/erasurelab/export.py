"""Formats users load elsewhere: a single-file kohya/A1111 LoRA and a single-file SD checkpoint.

Why: a diffusers LoRA folder is what `pipe.load_lora_weights` reads, but A1111 and ComfyUI users
load one `.safetensors` file in the kohya key layout (`lora_unet_<module>.lora_down.weight`,
`.lora_up.weight`, `.alpha`), and many tools load whole models only as original-layout single
files. Both are written here from an Edit (or an edited pipeline) with diffusers' own key
conversion, to a temporary file that is renamed into place, and both reload through diffusers
(`load_lora_weights(file)`, `from_single_file`) to the same latents (tested).

Scale: every module's alpha equals its rank, so alpha / rank = 1 and the LoRA adds exactly B·A.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from erasurelab.errors import ErasureLabError

#: Written into the safetensors header so a reader can tell where a file came from.
FORMAT_METADATA = {"format": "pt", "producer": "erasurelab"}


def kohya_lora_state_dict(edit: Any, rank: int | None = None, base: Any = None) -> dict[str, torch.Tensor]:
    """The edit as kohya-layout tensors (diffusers module names, '_'-joined, alpha = rank per module)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    state, _, _ = edit.lora_state_dict(rank, base)
    if not state:
        raise ErasureLabError("the edit changes no weights: there is no LoRA to export")
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in state.items()})
    return {key: value.float().contiguous() if key.endswith(".weight") else value.float().reshape(())
            for key, value in kohya.items()}


def save_kohya_lora(edit: Any, path: str | os.PathLike[str], rank: int | None = None, base: Any = None,
                    overwrite: bool = False) -> Path:
    """Write the edit as one kohya/A1111 LoRA `.safetensors` file (atomically); returns its path."""
    path = _output_file(path, overwrite)
    tensors = kohya_lora_state_dict(edit, rank, base)
    metadata = {**FORMAT_METADATA, "ss_network_module": "networks.lora",
                "erasurelab_method": str(edit.meta.get("method", ""))}
    _write(path, tensors, metadata)
    return path


def save_checkpoint(pipe: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write an SD1.x pipeline (edit applied or not) as one original-layout `.safetensors` checkpoint.

    Only SD1.x-shaped pipelines (one CLIP text encoder) have a converter here; SD2's OpenCLIP
    layout, SDXL's two encoders and the embedded model's MiniLM encoder get a one-line error.
    """
    from erasurelab.models.original_layout import original_sd_state_dict

    encoder = type(getattr(pipe, "text_encoder", None)).__name__
    if getattr(pipe, "text_encoder_2", None) is not None or encoder != "CLIPTextModel" \
            or getattr(pipe.unet.config, "prediction_type", None) == "v_prediction" \
            or getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction":
        raise ErasureLabError(f"single-file checkpoints are written for SD1.x pipelines only (this one has "
                              f"{encoder}{' + a second encoder' if getattr(pipe, 'text_encoder_2', None) else ''}); "
                              "save the edit as a LoRA or as full weights instead")
    path = _output_file(path, overwrite)
    _write(path, original_sd_state_dict(pipe), dict(FORMAT_METADATA))
    return path


def _output_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ErasureLabError(f"single-file outputs are .safetensors files, got {path.name}")
    if path.exists() and not overwrite:
        raise ErasureLabError(f"output file exists: {path} (choose another path or overwrite it)")
    if not path.parent.is_dir():
        raise ErasureLabError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
