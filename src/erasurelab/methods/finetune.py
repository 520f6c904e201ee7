"""The shared fine-tuning engine of the training-based methods (ESD, TRuST, and later ones).

Why one engine: every fine-tuning method needs the same machinery — choose trainable U-Net
parameters by name, predict with the trained and with the original weights, Adam steps confined
to a mask, seeded per-step randomness, checkpoint/resume, a progress bar — and must hand back an
`Edit` while leaving the caller's pipeline exactly as it was. A method module then only holds its
loss and its schedule of what to train (a `Trainer`).

Design choices:
- **Frozen predictions without a frozen copy.** The U-Net is trained in place and the original
  values of the *trainable* tensors are kept; frozen predictions run the same module through
  `torch.func.functional_call` with those originals swapped in. That is bit-identical to a frozen
  copy (same code, same weights) and costs memory only for the trained subset instead of a second
  U-Net. On exit (also on error or Ctrl-C) the originals are copied back and requires_grad flags,
  `.grad` and train/eval mode are restored, so the pipeline is left unmodified.
- **Masked full-weight updates.** Gradients are multiplied by a per-parameter mask and, after the
  optimiser step, entries where the mask is 0 are restored from their pre-step values: Adam's
  stale moments can then never move a weight outside the mask (TRuST's update confinement).
  Moments are kept for every trainable entry.
- **Determinism and resume.** Every random draw of step s comes from a CPU generator seeded by
  (seed, stream, s); nothing carries random state from one step to the next. A checkpoint
  (trained tensors, Adam state and the method's own tensors in safetensors, step and logs in JSON)
  therefore resumes to the same final weights as an uninterrupted run.
- **Training latents (ESD).** The paper recipe samples x_t per step by partially denoising noise
  with the *current* model (`sample_with="trained"`), on average N/2 extra CFG U-Net calls per step.
  The default here is cheaper: `sample_with="pool"` caches, once at the start, a pool of full DDIM
  trajectories of the forget prompts from the frozen model (every intermediate latent kept) and
  draws a (trajectory, step) pair per training step. It is the official code's later choice of
  sampling with the frozen base, with a finite pool of start noises; the per-step recipes
  (`trained`, `frozen`) remain available. TRuST trains on x_0 latents its
  forget prompts generate under the original model (its D_f), generated once the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from erasurelab.concepts.spec import ConceptSpec, mention_pattern, mentions
from erasurelab.edits import Dense, Edit, fingerprint
from erasurelab.errors import ErasureLabError
from erasurelab.models.sampling import seeded
from erasurelab.runinfo import write_json_atomic

# ---------------------------------------------------------------------------------------------
# Per-step randomness
# ---------------------------------------------------------------------------------------------

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


def noise_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (prediction - target)^2, in float32 (the loss of ESD and TRuST)."""
    return (prediction.float() - target.float()).pow(2).mean()


def negative_guidance(eps_concept: torch.Tensor, eps_base: torch.Tensor, eta: float) -> torch.Tensor:
    """y = ε_base − η (ε_c − ε_base): the base prediction pushed away from the concept.

    ESD's target with base ∅; TRuST's L_prev target with base = the guide anchor.
    """
    return eps_base - eta * (eps_concept - eps_base)


# ---------------------------------------------------------------------------------------------
# Trainable-parameter selection by name
# ---------------------------------------------------------------------------------------------

#: Top-level modules ESD-u leaves out besides cross-attention (the original ESD code's list).
ESD_U_EXCLUDED: tuple[str, ...] = ("time_embedding", "conv_norm_out", "conv_out")


def _in_attn2(name: str) -> bool:
    return "attn2" in name.split(".")


def _attn2_projection(name: str, projections: Sequence[str]) -> bool:
    parts = name.split(".")
    return any(parts[i] == "attn2" and parts[i + 1] in projections for i in range(len(parts) - 1))


SUBSETS: dict[str, Callable[[str], bool]] = {
    "esd-x": _in_attn2,
    "esd-x-strict": lambda n: _attn2_projection(n, ("to_k", "to_v")),
    "esd-u": lambda n: not _in_attn2(n) and n.split(".")[0] not in ESD_U_EXCLUDED,
    "esd-all": lambda n: True,
    "trust": lambda n: _attn2_projection(n, ("to_q", "to_k", "to_v")) and n.endswith(".weight"),
}


def select_parameters(unet: torch.nn.Module, subset: str) -> list[str]:
    """Names of the U-Net parameters in `subset` (see SUBSETS), in named_parameters order."""
    if subset not in SUBSETS:
        raise ErasureLabError(f"unknown parameter subset {subset!r}; valid: {', '.join(SUBSETS)}")
    names = [n for n, _ in unet.named_parameters() if SUBSETS[subset](n)]
    if not names:
        raise ErasureLabError(f"the U-Net has no parameters in subset {subset} (no cross-attention attn2 layers?)")
    wrapped = [n for n in names if ".base_layer." in n or ".lora_" in n]
    if wrapped:
        raise ErasureLabError(f"{wrapped[0]} belongs to an unmerged LoRA adapter: merge it first "
                              "(pipe.fuse_lora(); pipe.unload_lora_weights())")
    return names


# ---------------------------------------------------------------------------------------------
# Conditioning and U-Net calls
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cond:
    """Encoded prompts as the U-Net takes them: token states and, for SDXL, added conditioning."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def take(self, index: Sequence[int] | torch.Tensor) -> Cond:
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        added = None if self.added is None else {k: v[idx.to(v.device)] for k, v in self.added.items()}
        return Cond(self.embeds[idx.to(self.embeds.device)], added)

    def repeat(self, n: int) -> Cond:
        """All rows, n times over (n copies of a single prompt's row for the "" branch)."""
        return self.take([i for _ in range(n) for i in range(len(self))])

    @staticmethod
    def cat(parts: Sequence[Cond]) -> Cond:
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}  # type: ignore[index]
        return Cond(torch.cat([p.embeds for p in parts]), added)


def latent_size(unet: torch.nn.Module) -> int:
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> Cond:
    """The positive-branch conditioning of prompts, exactly as the pipeline builds it."""
    from erasurelab.models.conditioning import encode, is_sdxl

    out = encode(pipe, list(prompts))
    return _as_cond(pipe, out.embeds, out.pooled) if is_sdxl(pipe) else Cond(out.embeds.to(pipe.unet.dtype))


def encode_empty(pipe: Any) -> Cond:
    """The "" (negative) branch as the pipeline builds it for classifier-free guidance."""
    from erasurelab.models.conditioning import encode_unconditional, is_sdxl

    out = encode_unconditional(pipe)
    return _as_cond(pipe, out.embeds, out.pooled) if is_sdxl(pipe) else Cond(out.embeds.to(pipe.unet.dtype))


def _as_cond(pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor) -> Cond:
    from erasurelab.models.conditioning import sdxl_time_ids

    unet = pipe.unet
    height = latent_size(unet) * int(getattr(pipe, "vae_scale_factor", 8))
    n = int(embeds.shape[0])
    ids = sdxl_time_ids(pipe, height, height, n, unet.dtype, int(pooled.shape[-1]))
    return Cond(embeds.to(unet.dtype), {"text_embeds": pooled.to(unet.dtype), "time_ids": ids})


def _timesteps(t: torch.Tensor | int, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(n) if t.dim() == 0 else t.to(device)


def unet_output(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | int, cond: Cond,
                params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The U-Net's prediction at (x, t, cond); with `params`, those tensors replace the module's own."""
    kwargs = {"encoder_hidden_states": cond.embeds, "added_cond_kwargs": cond.added}
    args = (x.to(unet.device, unet.dtype), _timesteps(t, x.shape[0], unet.device))
    if params is None:
        return unet(*args, **kwargs).sample
    return torch.func.functional_call(unet, dict(params), args, kwargs).sample


ModelFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A DDIM copy of the pipeline's noise schedule with `steps` timesteps (the pipeline's own is untouched).

    Why DDIM: deterministic and stateless between steps, so x_t depends only on its start noise.
    """
    import warnings

    from diffusers import DDIMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(int(steps), device=pipe.unet.device)
    return scheduler


@torch.no_grad()
def denoise(model: ModelFn, scheduler: Any, latents: torch.Tensor, cond: Cond, empty: Cond, guidance: float,
            n_steps: int, record: bool = False) -> torch.Tensor:
    """Run the first `n_steps` CFG sampler steps from `latents` (which sit at timesteps[0]).

    Returns the latents after n_steps (at timesteps[n_steps], or x_0 when n_steps = len(timesteps)),
    or with record=True every latent before each step, shape (n_steps, B, ...).
    """
    n = latents.shape[0]
    both = Cond.cat([empty.repeat(n), cond])
    seen = []
    for t in scheduler.timesteps[:n_steps]:
        if record:
            seen.append(latents)
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        uncond, conditional = model(model_in, t, both).chunk(2)
        latents = scheduler.step(uncond + guidance * (conditional - uncond), t, latents).prev_sample
    return torch.stack(seen) if record else latents


def start_noise(unet: torch.nn.Module, scheduler: Any, generator: torch.Generator, n: int = 1) -> torch.Tensor:
    """x_T for n samples (scaled by the sampler's init_noise_sigma), drawn on the CPU."""
    shape = (n, int(unet.config.in_channels), latent_size(unet), latent_size(unet))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (noise * scheduler.init_noise_sigma).to(unet.device, unet.dtype)


# ---------------------------------------------------------------------------------------------
# Masked updates and exact deltas
# ---------------------------------------------------------------------------------------------


def apply_masked_update(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter],
                        masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """optimizer.step() confined to the masks: entries with mask 0 keep their value and their moments.

    Why: multiplying the gradient by the mask keeps new gradient out, restoring the value keeps
    stale moments (and Adam's bias correction) from moving an entry outside the mask, and restoring
    the moments keeps zero gradients from decaying them (first moment ×0.9 per step). With a mask
    re-drawn often (TRuST's masks overlap only partly between refreshes) decayed moments would
    leave an entry re-entering the mask only a fraction of a step; TRuST keeps them.
    """
    if not masks:
        optimizer.step()
        return
    before = {}
    for name, param in params.items():
        mask = masks.get(name)
        if mask is None:
            continue
        if param.grad is not None:
            param.grad.mul_(mask.to(param.grad.dtype))
        moments = {k: v.clone() for k, v in optimizer.state.get(param, {}).items() if k.startswith("exp_avg")}
        before[name] = (param.detach().clone(), moments)
    optimizer.step()
    with torch.no_grad():
        for name, (old, moments) in before.items():
            param, keep = params[name], masks[name] != 0
            param.copy_(torch.where(keep, param, old))
            state = optimizer.state[param]
            for key, value in moments.items():
                state[key].copy_(torch.where(keep, state[key], value))


def exact_delta(trained: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """trained − original such that original + delta (in float64, cast back) reproduces trained bit for bit.

    float32 when that is exact (nearly always for fine-tuning steps, by Sterbenz's lemma), else float64.
    """
    trained, original = trained.detach().cpu(), original.detach().cpu()
    wide = trained.double() - original.double()
    narrow = wide.float()
    if torch.equal((original.double() + narrow.double()).to(trained.dtype), trained):
        return narrow
    return wide


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

LATEST = "latest.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat safetensors-ready tensors {"<index>.<key>"} plus JSON-ready param groups."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().clone()  # never alias the live moments
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class Checkpointer:
    """Checkpoints in a folder: `step-NNNNNNN/` (safetensors + state.json) and `latest.json` pointing at it.

    Why a folder per step and a pointer written last: a crash mid-save leaves the previous
    checkpoint intact; only the newest complete checkpoint is kept.
    """

    def __init__(self, directory: str | Path, every: int, run_key: str) -> None:
        self.directory = Path(directory)
        self.every = int(every)
        self.run_key = run_key

    def latest(self) -> Path | None:
        pointer = self.directory / LATEST
        if not pointer.exists():
            return None
        try:
            info = json.loads(pointer.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ErasureLabError(f"corrupt checkpoint pointer {pointer}: {exc}") from exc
        if info.get("run_key") != self.run_key:
            raise ErasureLabError(f"checkpoint in {self.directory} belongs to another run (different method, "
                                  "config, concepts or base weights); use another checkpoint_dir")
        return self.directory / str(info["folder"])

    def save(self, step: int, groups: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> Path:
        from safetensors.torch import save_file

        name = f"step-{step:07d}"
        final, tmp = self.directory / name, self.directory / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for group, tensors in groups.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{group}.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "run_key": self.run_key})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_json_atomic(self.directory / LATEST, {"folder": name, "step": step, "run_key": self.run_key})
        for old in self.directory.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """(step, tensor groups, state) of the latest checkpoint, or None when there is none."""
        from safetensors.torch import load_file

        folder = self.latest()
        if folder is None:
            return None
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            groups = {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}
        except Exception as exc:  # missing or truncated files of a damaged checkpoint
            raise ErasureLabError(f"corrupt checkpoint {folder}: {str(exc).splitlines()[0]}") from exc
        return int(state["step"]), groups, state


def run_key(payload: Mapping[str, Any], unet: torch.nn.Module, names: Sequence[str]) -> str:
    """Identity of a training run: method, config, prompts and the base weights being trained."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256((text + fingerprint(unet, names)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class Trainer(Protocol):
    """What a method supplies: one training step, and its own state for checkpoints."""

    def train_step(self, step: int) -> dict[str, float]: ...

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...

    def load_state(self, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None: ...


class CheckpointedLoop:
    """The training loop both engines share: steps with a progress bar, checkpoints, exact resume.

    Subclasses hold `params` (trained tensors by name), `optimizer`, `checkpointer` (or None),
    `seed`, `quiet`, `logs` and `resumed_from`; a Trainer supplies each step and its own state.
    """

    default_desc = "fine-tuning"
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    checkpointer: Checkpointer | None
    seed: int
    quiet: bool
    logs: list[dict[str, float]]
    resumed_from: int

    def restore(self) -> None:  # pragma: no cover - every engine defines it
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def run(self, trainer: Trainer, steps: int, desc: str | None = None) -> list[dict[str, float]]:
        """Train steps [start, steps), resuming from the checkpoint folder when it holds one."""
        start = self._resume(trainer, steps)
        bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc or self.default_desc,
                   disable=self.quiet)
        for step in bar:
            logs = trainer.train_step(step)
            self.logs.append({k: float(v) for k, v in logs.items()})
            if "loss" in logs:
                bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)
            done = step + 1
            if self.checkpointer is not None and (done % self.checkpointer.every == 0 or done == steps):
                self._save(trainer, done)
        return self.logs

    def _save(self, trainer: Trainer, step: int) -> None:
        assert self.checkpointer is not None and self.optimizer is not None
        opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
        method_state, method_tensors = trainer.state()
        groups = {"weights": {n: p.detach() for n, p in self.params.items()}, "optimizer": opt_tensors,
                  "method": method_tensors}
        self.checkpointer.save(step, groups, {"seed": self.seed, "optimizer": opt_meta, "method": method_state,
                                              "logs": self.logs})

    def _resume(self, trainer: Trainer, steps: int) -> int:
        if self.checkpointer is None:
            return 0
        loaded = self.checkpointer.load()
        if loaded is None:
            return 0
        step, groups, state = loaded
        if step > steps:
            raise ErasureLabError(f"the checkpoint in {self.checkpointer.directory} is at step {step}, "
                                  f"beyond steps={steps}; use another checkpoint_dir")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(groups["weights"][name])
        assert self.optimizer is not None
        load_optimizer_tensors(self.optimizer, groups.get("optimizer", {}), state["optimizer"])
        trainer.load_state(state.get("method", {}), groups.get("method", {}))
        self.logs = [dict(entry) for entry in state.get("logs", [])]
        self.resumed_from = step
        return step


class FineTuner(CheckpointedLoop):
    """Trains a named subset of `pipe.unet` in place with Adam and restores the pipeline on exit.

    Use as a context manager: `with FineTuner(pipe, names, lr) as tuner: tuner.run(trainer, steps)`,
    then `tuner.edit(meta)` (inside the block) for the trained − original deltas.
    """

    def __init__(self, pipe: Any, names: Sequence[str], lr: float, seed: int = 0, quiet: bool = True,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50,
                 key: Mapping[str, Any] | None = None) -> None:
        self.pipe, self.unet = pipe, pipe.unet
        self.names = list(names)
        self.lr, self.seed, self.quiet = float(lr), int(seed), quiet
        all_params = dict(self.unet.named_parameters())
        missing = [n for n in self.names if n not in all_params]
        if missing:
            raise ErasureLabError(f"the U-Net has no parameter {missing[0]}")
        self.params = {n: all_params[n] for n in self.names}
        not_fp32 = [n for n, p in self.params.items() if p.dtype != torch.float32]
        if not_fp32:
            raise ErasureLabError(f"fine-tuning needs float32 weights but {not_fp32[0]} is "
                                  f"{self.params[not_fp32[0]].dtype}; load the pipeline in float32")
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}
        self.checkpointer = None
        if checkpoint_dir is not None:
            self.checkpointer = Checkpointer(checkpoint_dir, checkpoint_every,
                                             run_key(key or {}, self.unet, self.names))
        self.logs: list[dict[str, float]] = []
        self.resumed_from = 0
        self._saved: dict[str, Any] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FineTuner:
        every = list(self.unet.named_parameters())
        self._saved = {"flags": {n: p.requires_grad for n, p in every}, "grads": {n: p.grad for n, p in every},
                       "training": self.unet.training}
        for _, p in every:
            p.requires_grad_(False)
            p.grad = None
        for p in self.params.values():
            p.requires_grad_(True)
        self.unet.eval()
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr)
        return self

    def restore(self) -> None:
        """Put back the original weights, flags, gradients and mode (idempotent)."""
        if not self._saved:
            return
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.originals[name])
        for name, param in self.unet.named_parameters():
            param.requires_grad_(self._saved["flags"].get(name, param.requires_grad))
            param.grad = self._saved["grads"].get(name)
        self.unet.train(self._saved["training"])
        self._saved = {}

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_θ with the weights being trained (gradients reach the trainable tensors)."""
        return unet_output(self.unet, x, t, cond)

    @torch.no_grad()
    def frozen(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond) -> torch.Tensor:
        """ε_* with the original weights: bit-identical to an untouched copy of the U-Net."""
        return unet_output(self.unet, x, t, cond, self.originals)

    def perturbed(self, overrides: Mapping[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor | int,
                  cond: Cond) -> torch.Tensor:
        """ε at weights `overrides` (e.g. θ + δ·v); gradients flow through the override tensors."""
        return unet_output(self.unet, x, t, cond, overrides)

    # -- updates ----------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Backward and one Adam step, confined to `masks` when given."""
        assert self.optimizer is not None, "use FineTuner as a context manager"
        if not torch.isfinite(loss):
            raise ErasureLabError(f"the training loss became {float(loss)}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        apply_masked_update(self.optimizer, self.params, masks)

    # -- the result -------------------------------------------------------------------------------
    def deltas(self) -> dict[str, Dense]:
        """Dense trained − original for every trainable tensor that changed."""
        out = {}
        for name, param in self.params.items():
            if not torch.equal(param.detach(), self.originals[name]):
                out[name] = Dense(exact_delta(param, self.originals[name]))
        return out

    def edit(self, meta: Mapping[str, Any] | None = None) -> Edit:
        losses = [entry["loss"] for entry in self.logs if "loss" in entry]
        info = {"trainable_tensors": len(self.names),
                "trainable_parameters": int(sum(p.numel() for p in self.params.values())),
                "steps_run": len(self.logs), "resumed_from_step": self.resumed_from,
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "loss": losses}
        return Edit(self.deltas(), {**info, **dict(meta or {})})


# ---------------------------------------------------------------------------------------------
# Prompts shared by the methods
# ---------------------------------------------------------------------------------------------


#: Settings that do not change what a run computes, so they stay out of its checkpoint identity.
_NOT_IN_RUN_KEY: tuple[str, ...] = ("steps", "checkpoint_dir", "checkpoint_every")


def tuner_for(pipe: Any, method: str, names: Sequence[str], settings: Mapping[str, Any], config: Any,
              quiet: bool, **prompts: Any) -> FineTuner:
    """A FineTuner whose checkpoints are tied to this method, its settings and its prompts.

    Why the steps are left out of the key: a run extended to more steps may resume from the
    checkpoints of a shorter one.
    """
    key = {"method": method, **{k: v for k, v in settings.items() if k not in _NOT_IN_RUN_KEY}, **prompts}
    return FineTuner(pipe, names, settings["lr"], settings["seed"], quiet, config.checkpoint_dir,
                     config.checkpoint_every, key)


def retain_conditioning(pipe: Any, retain: Sequence[str], weight: float) -> Cond | None:
    """Encoded retain prompts, or None when there are none or the retain term is off."""
    return encode_prompts(pipe, retain) if retain and weight > 0 else None


def _replace_words(text: str, word: str, by: str) -> str:
    """`text` with every whole-word occurrence of `word` (case-insensitive) replaced by `by`."""
    return re.sub(mention_pattern(word.strip()), by, text, flags=re.IGNORECASE)


def anchor_prompt(anchor: str, target_words: Sequence[str], guide: str) -> str:
    """The anchor with its target words replaced by the guide ("a photo of red" -> "a photo of" for guide "").

    When no target phrase occurs but one has as many words as the guide, the words that differ are
    swapped one by one: a combination "child beer" with guide "child juice" turns "a child
    drinking beer" into "a child drinking juice" (TRuST's anchor c_a). Otherwise: the guide itself.
    """
    out = anchor
    for word in sorted(target_words, key=len, reverse=True):
        if word.strip() and mentions(out, word):
            out = _replace_words(out, word, guide)
    if out == anchor:
        for word in target_words:
            pairs = list(zip(word.split(), guide.split(), strict=False))
            if len(word.split()) == len(guide.split()) > 1 and all(mentions(anchor, a) for a, _ in pairs):
                for a, b in pairs:
                    out = _replace_words(out, a, b) if a.lower() != b.lower() else out
                break
    out = " ".join(out.split())
    return guide if out == " ".join(anchor.split()) else out


def forget_pairs(specs: Sequence[ConceptSpec], guide: str | None = None) -> list[tuple[str, str]]:
    """(forget anchor, anchor prompt) for every concept, in order, without duplicate anchors."""
    pairs: dict[str, str] = {}
    for spec in specs:
        target = spec.guide if guide is None else guide
        for anchor in spec.forget:
            pairs.setdefault(anchor, anchor_prompt(anchor, spec.target_words, target))
    if not pairs:
        raise ErasureLabError(f"nothing to erase: concept {specs[0].name if specs else '?'} has no forget anchors")
    return list(pairs.items())


def retain_term(tuner: FineTuner, x_t: torch.Tensor, t: torch.Tensor, retain: Cond | None, step: int,
                seed: int) -> torch.Tensor | None:
    """Preservation loss ‖ε_θ(x_t, t, c_r) − ε_*(x_t, t, c_r)‖² on retain anchors, at the same x_t.

    Retain prompts are drawn per sample from the (seed, step) retain stream.
    """
    if retain is None or len(retain) == 0:
        return None
    generator = step_generator(seed, STREAM_RETAIN, step)
    index = torch.randint(0, len(retain), (x_t.shape[0],), generator=generator)
    cond = retain.take(index)
    return noise_mse(tuner.predict(x_t, t, cond), tuner.frozen(x_t, t, cond))


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def guidance_direction(pipe: Any, prompts: Sequence[str], latents: torch.Tensor,
                       timesteps: torch.Tensor) -> torch.Tensor:
    """ε(x, t, c) − ε(x, t, ∅) for each prompt at fixed (latents[j], timesteps[j]): the concept's pull.

    Alignment of an edited model with the original is ⟨d_edit, d_orig⟩ / ⟨d_orig, d_orig⟩: 1 before
    erasure, −η where ESD has converged.
    """
    cond, empty = encode_prompts(pipe, prompts), encode_empty(pipe)
    out = []
    for j in range(latents.shape[0]):
        n = len(cond)
        x = latents[j:j + 1].expand(n, *latents.shape[1:])
        t = timesteps[j]
        out.append(unet_output(pipe.unet, x, t, cond) - unet_output(pipe.unet, x, t, empty.repeat(n)))
    return torch.stack(out).float()


def alignment(direction: torch.Tensor, reference: torch.Tensor) -> float:
    """⟨d, d_ref⟩ / ⟨d_ref, d_ref⟩ over all elements."""
    return float((direction.double() * reference.double()).sum() / reference.double().pow(2).sum())

