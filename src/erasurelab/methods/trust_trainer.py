"""TRuST's trainer: the forget set D_f, the saliency estimate and mask refresh, and one masked step.

One object holds what persists between steps (the current mask, its history, β and D_f), so a
checkpoint can save and restore it; the loss and mask rules are described in
erasurelab.methods.trust.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from erasurelab.methods.base import MethodWarning
from erasurelab.methods.finetune import FineTuner
from erasurelab.methods.training.diffusion import Cond, ddim_scheduler, denoise, start_noise
from erasurelab.methods.training.losses import negative_guidance, noise_mse, retain_draw
from erasurelab.methods.training.pools import frozen_pool
from erasurelab.methods.training.streams import (
    STREAM_DATA,
    STREAM_PROBE,
    STREAM_SALIENCY,
    STREAM_TRAIN,
    sample_timesteps,
    step_generator,
)
from erasurelab.methods.trust_masks import (
    csr_estimate,
    fraction_mask,
    jaccard,
    proximal_shrink,
    saliency_index,
    zscore_mask,
)
from erasurelab.models.sampling import noise_scheduler

#: β·R̂(θ0) = BETA_RATIO·L_prev(θ0): the CSR term starts at half the erase loss.
BETA_RATIO = 0.5
#: D_f latents generated per batch.
DATA_CHUNK = 32


def _batched(model: Any, x_t: torch.Tensor, t: torch.Tensor, conds: list[Cond]) -> tuple[torch.Tensor, ...]:
    """model at (x_t, t) under each of `conds` (same length as x_t), in one call; one output per cond."""
    k = len(conds)
    out = model(torch.cat([x_t] * k), torch.cat([t] * k), Cond.cat(conds) if k > 1 else conds[0])
    return out.chunk(k)


class TrustTrainer:
    """Saliency → mask → masked step (L_prev + CSR, or L_prev then CIP shrink)."""

    def __init__(self, tuner: FineTuner, forget: Cond, anchors: Cond, empty: Cond, retain: Cond | None,
                 settings: dict[str, Any]) -> None:
        self.tuner, self.forget, self.anchors, self.empty, self.retain = tuner, forget, anchors, empty, retain
        self.settings = settings
        self.sampler = ddim_scheduler(tuner.pipe, settings["sample_steps"])
        self.noise = noise_scheduler(tuner.pipe)
        self.rms = {n: float(w.double().pow(2).mean().sqrt()) for n, w in tuner.originals.items()}
        self.mask: dict[str, torch.Tensor] = {}
        self.grad_abs: dict[str, torch.Tensor] = {}
        self.union = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in tuner.params.items()}
        self.sizes: list[int] = []
        self.jaccards: list[float] = []
        self.refresh_steps: list[int] = []
        self.beta: float | None = settings["beta"]
        self.warned = False
        self.data, self.data_prompts, self.data_from_cache = self.build_forget_set()

    # -- D_f ------------------------------------------------------------------------------------
    def build_forget_set(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """n_forget x_0 latents from the original model (item j uses forget anchor j mod n), their anchor
        indices, and whether the latents came from the disk cache (`training.pools`)."""
        s = self.settings
        data, from_cache = frozen_pool("trust_forget", self.tuner, self.sampler, self.forget, self.empty, s["n_forget"],
                                       s["seed"], STREAM_DATA, DATA_CHUNK, s["guidance"], record=False)
        prompts = torch.tensor([j % len(self.forget) for j in range(s["n_forget"])], dtype=torch.long)
        return data, prompts, from_cache

    # -- saliency and mask ----------------------------------------------------------------------
    def saliency(self, step: int) -> dict[str, torch.Tensor]:
        """g = ∇_{Θ_A} S at a point of the current model's own trajectory for 1–4 forget prompts."""
        s, tuner = self.settings, self.tuner
        generator = step_generator(s["seed"], STREAM_SALIENCY, step)
        k = min(s["saliency_prompts"], len(self.forget))
        prompts = torch.randperm(len(self.forget), generator=generator)[:k]
        i = saliency_index(len(self.sampler.timesteps), s["saliency_window"], generator)
        cond = self.forget.take(prompts)
        z = denoise(tuner.predict, self.sampler, start_noise(tuner.unet, self.sampler, generator, k), cond,
                    self.empty, s["guidance"], i, unet=tuner.unet)
        t = self.sampler.timesteps[i]
        with torch.no_grad():
            eps_empty = tuner.predict(z, t, self.empty.repeat(k))
        score = noise_mse(tuner.predict(z, t, cond), eps_empty)
        names = list(tuner.params)
        grads = torch.autograd.grad(score, [tuner.params[n] for n in names], allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(tuner.params[n])).detach() for n, g in zip(names, grads,
                                                                                                       strict=True)}

    def refresh(self, step: int) -> None:
        grads = self.saliency(step)
        fraction = self.settings["mask_fraction"]
        mask = {n: fraction_mask(g, fraction) if fraction is not None else zscore_mask(g, self.settings["xi"])
                for n, g in grads.items()}
        size = sum(int(m.sum()) for m in mask.values())
        if size == 0 and not self.warned:
            warnings.warn(f"TRuST: the saliency mask is empty at step {step} (no entry has z-score > "
                          f"{self.settings['xi']}); nothing is updated until it is refreshed", MethodWarning,
                          stacklevel=2)
            self.warned = True
        if self.mask:
            self.jaccards.append(jaccard(self.mask, mask))
        self.mask, self.grad_abs = mask, {n: g.abs() for n, g in grads.items()}
        for n, m in mask.items():
            self.union[n] |= m
        self.sizes.append(size)
        self.refresh_steps.append(step)

    # -- losses ---------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, forget-prompt index) for this step: D_f items noised at t ~ U{0..T−1}."""
        generator = step_generator(self.settings["seed"], STREAM_TRAIN, step)
        n = self.settings["batch_size"]
        items = torch.randint(0, self.data.shape[0], (n,), generator=generator)
        t = sample_timesteps(generator, n, self.noise.config.num_train_timesteps)
        eps = torch.randn(self.data[items].shape, generator=generator).to(self.data.device, self.data.dtype)
        x_t = self.noise.add_noise(self.data[items], eps, t.to(self.data.device))
        return x_t, t.to(self.data.device), self.data_prompts[items]

    def predictions(self, step: int, x_t: torch.Tensor, t: torch.Tensor,
                    prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(L_prev, ε_θ(x_t, t, c_f), retain term or None).

        L_prev maps the forget prompt to the anchor's frozen prediction; with eta > 0 the target is
        pushed past the anchor, away from the concept: y = ε_θ0(c_a) − η·(ε_θ0(c_f) − ε_θ0(c_a))
        (ESD's negative guidance with the anchor as base). The retain term keeps ε_θ = ε_θ0 on the
        step's retain prompts at the same x_t. Why two batched calls (every frozen prediction in one,
        every trained one in another): at TRuST's small batches most of a U-Net call's cost is fixed,
        so stacking the predictions of one kind makes the retain term and η much cheaper.
        """
        s = self.settings
        forget, anchors = self.forget.take(prompts), self.anchors.take(prompts)
        retain = retain_draw(self.retain, x_t.shape[0], step, s["seed"]) if s["retain_weight"] > 0 else None
        frozen = [anchors] + ([forget] if s["eta"] > 0 else []) + ([retain] if retain is not None else [])
        targets = _batched(self.tuner.frozen, x_t, t, frozen)
        target = negative_guidance(targets[1], targets[0], s["eta"]) if s["eta"] > 0 else targets[0]
        trained = _batched(self.tuner.predict, x_t, t, [forget] + ([retain] if retain is not None else []))
        keep = noise_mse(trained[1], targets[-1]) if retain is not None else None
        return noise_mse(trained[0], target), trained[0], keep

    def csr(self, step: int, x_t: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor,
            pred: torch.Tensor) -> torch.Tensor:
        cond = self.forget.take(prompts)
        generator = step_generator(self.settings["seed"], STREAM_PROBE, step)
        return csr_estimate(lambda over: self.tuner.perturbed(over, x_t, t, cond), self.tuner.params, self.mask,
                            pred, generator)

    def train_step(self, step: int) -> dict[str, float]:
        if step % self.settings["refresh"] == 0 or not self.mask:
            self.refresh(step)
        x_t, t, prompts = self.batch(step)
        l_prev, pred, keep = self.predictions(step, x_t, t, prompts)
        loss, logs = l_prev, {"l_prev": l_prev.item(), "mask": float(sum(int(m.sum()) for m in self.mask.values()))}
        if self.settings["variant"] == "csr":
            reg = self.csr(step, x_t, t, prompts, pred)
            if self.beta is None:
                self.beta = BETA_RATIO * l_prev.item() / reg.item() if reg.item() > 0 else 0.0
            loss = loss + self.beta * reg
            logs["csr"] = reg.item()
        if keep is not None:
            loss = loss + self.settings["retain_weight"] * keep
            logs["retain"] = keep.item()
        self.tuner.step(loss, self.mask)
        if self.settings["variant"] == "cip":
            self.shrink()
        return {"loss": loss.item(), **logs}

    @torch.no_grad()
    def shrink(self) -> None:
        for name, param in self.tuner.params.items():
            kappa_w = self.settings["kappa"] * self.rms[name]
            param.copy_(proximal_shrink(param.detach(), self.mask[name], self.grad_abs[name], kappa_w))

    # -- checkpoint state -----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {}
        for name in self.tuner.params:
            tensors[f"union.{name}"] = self.union[name]
            if self.mask:
                tensors[f"mask.{name}"] = self.mask[name]
                tensors[f"gabs.{name}"] = self.grad_abs[name]
        return {"sizes": self.sizes, "jaccards": self.jaccards, "refresh_steps": self.refresh_steps,
                "beta": self.beta, "warned": self.warned}, tensors

    def load_state(self, state: Any, tensors: Any) -> None:
        self.sizes, self.jaccards = list(state["sizes"]), list(state["jaccards"])
        self.refresh_steps, self.beta, self.warned = list(state["refresh_steps"]), state["beta"], state["warned"]
        device = next(iter(self.tuner.params.values())).device
        for name in self.tuner.params:
            self.union[name] = tensors[f"union.{name}"].to(device)
            if f"mask.{name}" in tensors:
                self.mask[name] = tensors[f"mask.{name}"].to(device)
                self.grad_abs[name] = tensors[f"gabs.{name}"].to(device)

    def summary(self) -> dict[str, Any]:
        """What edit.meta records: mask union coverage, the history of mask sizes, whether D_f was cached."""
        total = sum(m.numel() for m in self.union.values())
        touched = sum(int(m.sum()) for m in self.union.values())
        return {"touched_fraction": touched / total if total else 0.0, "touched_entries": touched,
                "trainable_entries": total, "mask_sizes": self.sizes,
                "mask_fractions": [size / total for size in self.sizes], "mask_jaccard": self.jaccards,
                "mask_refresh_steps": self.refresh_steps, "beta": self.beta,
                "layers_touched_fraction": {n: float(m.float().mean()) for n, m in self.union.items()},
                "forget_set_from_cache": self.data_from_cache}
