"""Training of the embedded world: VAE, judge, then the U-Net, seeded, resumable, with progress bars.

Why this order: the judge is trained on renders *and* on their VAE reconstructions, so it judges
the blur and artefacts the generator really produces; the U-Net trains on cached VAE latents.

Resumability: each stage checkpoints every `checkpoint_every` steps (weights, optimiser, EMA,
step) to `out/checkpoints/<stage>.pt`, and every random draw of step s comes from a generator
seeded by (seed, stage, s). A run that is killed and restarted therefore produces the same
final weights as one that never stopped. A finished stage leaves its weights under
`out/shapes/<component>/` and is skipped on the next call (`stage_done`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasurelab.world import architecture, captions, vocab
from erasurelab.world.dataset import WorldDataset, render_dataset
from erasurelab.world.judge_net import ShapesJudgeNet

STAGES = ("vae", "judge", "unet")
_STAGE_IDS = {name: i for i, name in enumerate(STAGES)}


@dataclass
class TrainConfig:
    """Every knob of `erasurelab world train`; stored next to the weights."""

    seed: int = 0
    n_images: int = 40_000
    character_rate: float = 0.08
    vae_steps: int = 1_000
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    judge_steps: int = 1_200
    judge_batch: int = 128
    judge_lr: float = 2e-3
    unet_steps: int = 5_000
    unet_batch: int = 64
    unet_lr: float = 3e-4
    unet_warmup: int = 200
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    checkpoint_every: int = 250
    log_every: int = 50


def step_generators(seed: int, stage: str, step: int) -> tuple[torch.Generator, np.random.Generator]:
    """Generators for one training step, independent of whether the run was resumed."""
    key = [seed, _STAGE_IDS[stage], step]
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    return gen, np.random.default_rng(key)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _Log:
    """Appends JSON lines to out/train.log so a background run can be followed with tail -f."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **record: object) -> None:
        record["time"] = round(time.time(), 1)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _resume(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore model and optimiser from a stage checkpoint; returns (next step, checkpoint or {})."""
    if not path.exists():
        return 0, {}
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return int(checkpoint["step"]), checkpoint


def _steps(stage: str, start: int, total: int, quiet: bool) -> Iterator[int]:
    return iter(tqdm(range(start, total), initial=start, total=total, desc=f"train {stage}", disable=quiet))


# --------------------------------------------------------------------------------------------- VAE

def train_vae(cfg: TrainConfig, data: WorldDataset, out: Path, log: _Log, quiet: bool) -> None:
    final = out / "shapes" / "vae"
    vae = architecture.new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path = out / "checkpoints" / "vae.pt"
    start, _ = _resume(ckpt_path, vae, opt)
    vae.train()
    for step in _steps("vae", start, cfg.vae_steps, quiet):
        gen, _ = step_generators(cfg.seed, "vae", step)
        idx = torch.randint(len(data), (cfg.vae_batch,), generator=gen)
        x = data.float_images(idx) * 2 - 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, 100)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        loss = mse + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            log(stage="vae", step=step, mse=round(mse.item(), 5), kl=round(kl.item(), 2))
        if (step + 1) % cfg.checkpoint_every == 0:
            _save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}, ckpt_path)
    vae.eval()
    latents, _ = encode_posteriors(vae, data)
    scaling = float(1.0 / latents.flatten().std())
    vae.register_to_config(scaling_factor=scaling)
    log(stage="vae", done=True, scaling_factor=round(scaling, 4))
    vae.save_pretrained(final, safe_serialization=True)


@torch.no_grad()
def encode_posteriors(vae: torch.nn.Module, data: WorldDataset, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, unscaled (the U-Net resamples from them each step)."""
    means, stds = [], []
    for start in range(0, len(data), batch):
        dist = vae.encode(data.float_images(slice(start, start + batch)) * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """VAE round trip of float images in [0, 1], clamped back to [0, 1]."""
    chunks = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch] * 2 - 1
        chunks.append(((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1))
    return torch.cat(chunks)


def _load_vae(out: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(out / "shapes" / "vae").eval()


# ------------------------------------------------------------------------------------------- judge

def train_judge(cfg: TrainConfig, data: WorldDataset, out: Path, log: _Log, quiet: bool) -> None:
    from safetensors.torch import save_file

    final = out / "shapes" / "judge"
    vae = _load_vae(out)
    recon = (reconstruct(vae, data.float_images()) * 255).round().to(torch.uint8)
    net = ShapesJudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.judge_lr, weight_decay=1e-4)
    ckpt_path = out / "checkpoints" / "judge.pt"
    start, _ = _resume(ckpt_path, net, opt)
    net.train()
    for step in _steps("judge", start, cfg.judge_steps, quiet):
        gen, _ = step_generators(cfg.seed, "judge", step)
        idx = torch.randint(len(data), (cfg.judge_batch,), generator=gen)
        use_recon = torch.rand(cfg.judge_batch, generator=gen) < 0.5
        x = torch.where(use_recon[:, None, None, None], recon[idx], data.images[idx]).float() / 255
        sigma = torch.rand(cfg.judge_batch, 1, 1, 1, generator=gen) * 0.04
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.judge_steps, cfg.judge_lr, 50)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[a], data.labels[a][idx]) for a in vocab.ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            log(stage="judge", step=step, loss=round(loss.item(), 4))
        if (step + 1) % cfg.checkpoint_every == 0:
            _save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}, ckpt_path)
    net.eval()
    final.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(final / "judge.safetensors"))
    classes = {a: list(vocab.classes(a)) for a in vocab.ATTRIBUTES}
    (final / "config.json").write_text(json.dumps({"name": "shapes", "classes": classes,
                                                   "threshold": 0.5, "image_size": 32}, indent=2))
    log(stage="judge", done=True)


# -------------------------------------------------------------------------------------------- unet

def min_snr_weights(scheduler: object, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): faster convergence."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(cfg: TrainConfig, data: WorldDataset, out: Path, log: _Log, quiet: bool) -> None:
    final = out / "shapes" / "unet"
    vae = _load_vae(out)
    lat_mean, lat_std = encode_posteriors(vae, data)
    scaling = vae.config.scaling_factor
    encoder, tokenizer = architecture.load_text_encoder()
    noise_scheduler = architecture.train_scheduler()

    unet = architecture.new_unet()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    ckpt_path = out / "checkpoints" / "unet.pt"
    start, checkpoint = _resume(ckpt_path, unet, opt)
    ema = checkpoint.get("ema", ema)
    unet.train()
    for step in _steps("unet", start, cfg.unet_steps, quiet):
        gen, rng = step_generators(cfg.seed, "unet", step)
        idx = torch.randint(len(data), (cfg.unet_batch,), generator=gen)
        texts = [captions.train_caption(data.scenes[i], rng) for i in idx.tolist()]
        states = architecture.encode_prompts(encoder, tokenizer, texts)
        latents = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.unet_warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = unet(noisy, timesteps, encoder_hidden_states=states).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(noise_scheduler, timesteps, cfg.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, value in unet.state_dict().items():
                if value.dtype.is_floating_point:
                    ema[name].mul_(decay).add_(value, alpha=1 - decay)
                else:
                    ema[name].copy_(value)
        if step % cfg.log_every == 0:
            log(stage="unet", step=step, loss=round(loss.item(), 5), mse=round(per_sample.mean().item(), 5))
        if (step + 1) % cfg.checkpoint_every == 0:
            _save_atomic({"model": unet.state_dict(), "optimizer": opt.state_dict(), "ema": ema,
                          "step": step + 1}, ckpt_path)
    unet.load_state_dict(ema)
    unet.eval()
    unet.save_pretrained(final, safe_serialization=True)
    architecture.sample_scheduler().save_pretrained(out / "shapes" / "scheduler")
    log(stage="unet", done=True)


def train_world(out: Path, cfg: TrainConfig | None = None, stages: tuple[str, ...] = STAGES,
                quiet: bool = False) -> Path:
    """Train (or resume) every requested stage; returns the folder with the final weights."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != asdict(cfg):
        raise ValueError(f"{out} holds a run with a different config; use a new --out folder or the same options")
    config_path.write_text(json.dumps(asdict(cfg), indent=2))
    log = _Log(out / "train.log")
    runners = {"vae": train_vae, "judge": train_judge, "unet": train_unet}
    todo = [stage for stage in STAGES if stage in stages and not stage_done(out, stage)]
    if todo:  # rendering costs a minute: only when a stage still has work
        data = render_dataset(cfg.n_images, cfg.seed, cfg.character_rate, progress=not quiet)
    for stage in todo:
        t0 = time.time()
        runners[stage](cfg, data, out, log, quiet)
        log(stage=stage, wall_seconds=round(time.time() - t0, 1))
    return out / "shapes"


def stage_done(out: Path, stage: str) -> bool:
    """Whether a stage's final weights exist (its runner would return at once)."""
    marker = {"vae": "vae/config.json", "judge": "judge/judge.safetensors", "unet": "unet/config.json"}[stage]
    return (out / "shapes" / marker).exists()


def install_assets(final: Path) -> Path:
    """Copy a finished run's weights into the package assets (what `builtin:shapes` loads)."""
    import shutil

    from erasurelab.world.builtin import assets_dir, check_assets

    check_assets(final)
    target = assets_dir()
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(final, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target
