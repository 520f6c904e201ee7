"""The standard denoising objective on an image-and-caption dataset, as a LoRA-engine trainer.

Why its own trainer: benign fine-tuning (the downstream task a user runs after an erasure) is
ordinary text-to-image training, L = E ‖target − ε_θ(x_t, t, c)‖² with the model's own noise
schedule and prediction type (ε or v), not an erasure objective. Latents are the VAE posterior
means, encoded once; captions are encoded once; both stay fixed for the run.

Identical data order across variants: the batch of step s is drawn from a generator seeded by
(seed, stream, epoch) as a permutation of the dataset, and the noise and timesteps from (seed,
stream, s). Two runs with the same seed and dataset (control, plain, Modular) therefore see the
same images, captions, noise and timesteps at every step, whatever weights they start from; that
is what makes their curves comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from erasurelab.caption_data import CaptionData
from erasurelab.errors import ErasureLabError
from erasurelab.methods.training.diffusion import Cond, encode_prompts
from erasurelab.methods.training.losses import noise_mse
from erasurelab.methods.training.streams import sample_timesteps, step_generator
from erasurelab.models.diffusion import prediction_target
from erasurelab.models.sampling import noise_scheduler

#: Random streams of the trainer (see the module docstring).
ORDER_STREAM, NOISE_STREAM = 101, 102
#: Images encoded by the VAE per call.
ENCODE_BATCH = 32


@torch.no_grad()
def encode_images(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """VAE posterior means of uint8 (or [0, 1] float) images, scaled as the U-Net expects (float32)."""
    vae = pipe.vae
    scale = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    out = []
    for start in range(0, len(pixels), ENCODE_BATCH):
        chunk = pixels[start:start + ENCODE_BATCH].to(vae.device, vae.dtype) * 2 - 1
        out.append(((vae.encode(chunk).latent_dist.mean - shift) * scale).float())
    return torch.cat(out).to(pipe.unet.device)


class DenoisingObjective:
    """The denoising loss of step s on a batch of (latent, caption) pairs through `predict`.

    predict: the trainable model (x_t, t, cond) -> prediction, e.g. `LoraTuner.predict`.
    """

    def __init__(self, pipe: Any, data: CaptionData,
                 predict: Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor], batch_size: int = 16,
                 seed: int = 0) -> None:
        if len(data) == 0:
            raise ErasureLabError("the dataset has no usable image")
        if batch_size <= 0:
            raise ErasureLabError(f"batch size must be positive, got {batch_size}")
        self.predict = predict
        self.batch_size, self.seed = min(int(batch_size), len(data)), int(seed)
        self.latents = encode_images(pipe, data.images)
        self.cond = encode_prompts(pipe, data.captions)
        self.scheduler = noise_scheduler(pipe)
        self.n = len(data)

    def batch_indices(self, step: int) -> torch.Tensor:
        """The dataset rows of step `step`: consecutive slices of a per-epoch seeded permutation."""
        per_epoch = self.n // self.batch_size
        epoch, slot = divmod(step, per_epoch)
        order = torch.randperm(self.n, generator=step_generator(self.seed, ORDER_STREAM, epoch))
        return order[slot * self.batch_size:(slot + 1) * self.batch_size]

    def loss(self, step: int) -> torch.Tensor:
        index = self.batch_indices(step)
        x0 = self.latents[index.to(self.latents.device)]
        generator = step_generator(self.seed, NOISE_STREAM, step)
        t = sample_timesteps(generator, len(index), self.scheduler.config.num_train_timesteps)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = t.to(x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = prediction_target(self.scheduler, x0, noise, t)
        return noise_mse(self.predict(x_t, t, self.cond.take(index)), target)


class DenoisingTrainer:
    """The engines' Trainer protocol over a DenoisingObjective.

    step_fn: the optimiser step (e.g. `LoraTuner.step`); on_step(k) runs after step k (1-based), e.g.
    to snapshot the adapter for a re-emergence curve.
    """

    def __init__(self, objective: DenoisingObjective, step_fn: Callable[[torch.Tensor], float],
                 on_step: Callable[[int], None] | None = None) -> None:
        self.objective, self.step_fn, self.on_step = objective, step_fn, on_step
        self.extra_state: Callable[[], tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None
        self.extra_load: Callable[[Mapping[str, Any], Mapping[str, torch.Tensor]], None] | None = None

    def train_step(self, step: int) -> dict[str, float]:
        loss = self.objective.loss(step)
        norm = self.step_fn(loss)
        if self.on_step is not None:
            self.on_step(step + 1)
        return {"loss": float(loss.detach()), "grad_norm": norm}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return self.extra_state() if self.extra_state is not None else ({}, {})

    def load_state(self, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        if self.extra_load is not None:
            self.extra_load(state, tensors)
