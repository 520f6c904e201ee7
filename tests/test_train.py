"""Training of the embedded world: seeded, resumable, and stage outputs in the pipeline layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erasurelab.world import train
from erasurelab.world.train import TrainConfig, train_world

TINY = TrainConfig(n_images=48, vae_steps=4, vae_batch=4, judge_steps=4, judge_batch=8, unet_steps=4, unet_batch=4,
                   unet_warmup=2, checkpoint_every=2, log_every=1)


class _Interrupt(Exception):
    pass


def _interrupting_steps(stop_at: int):
    """A replacement for train._steps that dies at step `stop_at` of the U-Net stage."""
    original = train._steps

    def steps(stage: str, start: int, total: int, quiet: bool):
        for step in original(stage, start, total, quiet):
            if stage == "unet" and step == stop_at:
                raise _Interrupt
            yield step

    return steps


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    straight = train_world(tmp_path / "a", TINY, quiet=True)

    monkeypatch.setattr(train, "_steps", _interrupting_steps(stop_at=3))
    with pytest.raises(_Interrupt):
        train_world(tmp_path / "b", TINY, quiet=True)
    assert (tmp_path / "b" / "checkpoints" / "unet.pt").exists()
    assert not (tmp_path / "b" / "shapes" / "unet").exists()
    monkeypatch.undo()
    resumed = train_world(tmp_path / "b", TINY, quiet=True)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for component in ("vae", "judge", "scheduler"):
        assert (resumed / component).is_dir()


def test_a_run_folder_refuses_a_different_config(tmp_path: Path) -> None:
    train_world(tmp_path, TINY, stages=("vae",), quiet=True)
    with pytest.raises(ValueError, match="different config"):
        train_world(tmp_path, TrainConfig(**{**TINY.__dict__, "seed": 1}), stages=("vae",), quiet=True)


def test_vae_scaling_factor_normalises_latents(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from erasurelab.world.dataset import render_dataset

    final = train_world(tmp_path, TINY, stages=("vae",), quiet=True)
    vae = AutoencoderKL.from_pretrained(final / "vae")
    data = render_dataset(TINY.n_images, TINY.seed, TINY.character_rate)
    latents = train.encode_posteriors(vae, data)[0] * vae.config.scaling_factor
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)


def test_learning_rate_schedule() -> None:
    assert train.lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert train.lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert train.lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_min_snr_weights_cap_high_snr_steps() -> None:
    scheduler = train.architecture.train_scheduler()
    weights = train.min_snr_weights(scheduler, torch.tensor([0, 500, 999]), gamma=5.0)
    assert weights[0] < 0.01  # near-clean timesteps carry little weight
    assert weights[2] == pytest.approx(1.0)  # noisy timesteps (SNR < gamma) keep full weight
