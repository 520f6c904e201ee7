"""Seeded per-step randomness for training: every draw of step s comes from its own generator.

Why: nothing carries random state from one step to the next, so a run resumed from a checkpoint
at step s draws exactly what the uninterrupted run drew, and each kind of draw has its own stream,
so adding a draw to one never shifts another.
"""

from __future__ import annotations

import torch

from erasurelab.models.sampling import seeded

#: Random streams: each kind of draw has its own, so adding a draw to one never shifts another.
STREAM_TRAIN, STREAM_POOL, STREAM_DATA, STREAM_SALIENCY, STREAM_RETAIN, STREAM_PROBE = 1, 2, 3, 4, 5, 6


def step_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU generator for draw `index` (a step, a trajectory) of one random stream.

    Why per (seed, stream, index): a run resumed at step s draws exactly what the uninterrupted run drew.
    """
    return seeded(seed, stream, index)


def sample_timesteps(generator: torch.Generator, n: int, num_train_timesteps: int) -> torch.Tensor:
    """n training timesteps uniform over {0, ..., T-1} (diffusers' indexing of t ~ U{1..T})."""
    return torch.randint(0, int(num_train_timesteps), (n,), generator=generator)
