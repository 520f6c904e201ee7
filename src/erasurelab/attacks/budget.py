"""Budget accounting for one phase of an attack: U-Net and text-encoder samples, renders, time, memory.

Why budgets are counted by hooks: "U-Net forward passes" is what makes attacks comparable across
methods and hardware. A forward pre-hook on the U-Net counts every sample it sees (a batch of 8
is 8; classifier-free guidance counts both halves), split into optimisation and rendering.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from erasurelab.runinfo import peak_rss_mb


class Budget:
    """Counters for one phase of an attack: steps, U-Net/text-encoder samples, renders, time, memory.

    Keys: steps (optimiser steps or GA generations), unet_forward / unet_backward (samples during
    optimisation), render_unet_forward (samples while rendering for scoring), text_encoder_forward
    (samples outside rendering), renders (images), wall_time_s, peak_rss_mb.
    """

    def __init__(self) -> None:
        self.counts: dict[str, float] = {"steps": 0, "unet_forward": 0, "unet_backward": 0,
                                         "render_unet_forward": 0, "text_encoder_forward": 0, "renders": 0}
        self.rendering = False

    def add(self, key: str, n: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    @contextmanager
    def render_phase(self) -> Iterator[None]:
        """U-Net calls inside count as rendering, not optimisation."""
        previous, self.rendering = self.rendering, True
        try:
            yield
        finally:
            self.rendering = previous

    @contextmanager
    def track(self, pipe: Any) -> Iterator[None]:
        """Count U-Net and text-encoder samples of `pipe`, time the block and record peak memory."""
        def unet_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs.get("sample")
            self.add("render_unet_forward" if self.rendering else "unet_forward", int(sample.shape[0]))

        def encoder_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = args[0] if args else kwargs.get("input_ids")
            if ids is not None and not self.rendering:
                self.add("text_encoder_forward", int(ids.shape[0]))

        unet_hook.erasurelab_budget = True  # type: ignore[attr-defined]
        encoder_hook.erasurelab_budget = True  # type: ignore[attr-defined]
        handles = [pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True)]
        if getattr(pipe, "text_encoder", None) is not None:
            handles.append(pipe.text_encoder.register_forward_pre_hook(encoder_hook, with_kwargs=True))
        start = time.perf_counter()
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.add("wall_time_s", time.perf_counter() - start)
            self.counts["peak_rss_mb"] = peak_rss_mb()
            if torch.cuda.is_available():
                self.counts["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counts.items()}


def strip_budget_hooks(module: torch.nn.Module) -> torch.nn.Module:
    """Remove budget-counting hooks from a deep copy (deepcopy copies hooks; a copy must not count twice)."""
    for sub in module.modules():
        for key, hook in list(sub._forward_pre_hooks.items()):
            if getattr(hook, "erasurelab_budget", False):
                del sub._forward_pre_hooks[key]
                sub._forward_pre_hooks_with_kwargs.pop(key, None)
    return module
