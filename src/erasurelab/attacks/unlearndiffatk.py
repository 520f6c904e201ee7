"""UnlearnDiffAtk: a white-box discrete prompt attack through the diffusion loss.

Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", ECCV 2024 (arXiv 2310.11868). The edited model is used as a
diffusion classifier: k adversarial tokens are prepended to a concept prompt P (after the start
token) and chosen so that M_e denoises a target image of the concept — rendered by M_0 from P —
as well as possible. If M_e still "knows" the concept, some prefix makes it render it again.

Why a relaxation: token choice is discrete. Each slot holds a probability vector u over the
vocabulary (initialised uniform); the forward pass uses a one-hot *sampled* from u (exactly one-hot
— the encoder sees a real token) and the backward pass sends the gradient straight through to u
(clipped to [−1, 1] as in the reference code). After each Adam step u is projected back onto the
simplex. Decoding is argmax per slot. Timesteps are visited in ascending order, `iters` steps each;
after each timestep the decoded prompt is rendered and judged, and the attack stops at the first
success. Budget per prompt: at most len(timesteps)·iters gradient steps and len(timesteps) + 1 renders.

Seeds (so the sanity check can fail): target images are picked on M_0 at *selection* seeds; every
instance is rendered and judged at its *scoring* seed, a disjoint range, never at its target's seed.
On the edited model the attack follows the protocol: the unattacked P at the scoring seed is
rendered first, and if it already shows the concept that is a pre-success, with no optimisation.
On the unedited model that short-circuit would make the check succeed by construction, so there
the attack starts from P with the concept's words removed ("a photo of red" → "a photo of"), at
the first scoring seed where M_0 does not render the concept for it: only the optimisation can
produce a success. An instance whose start shows the concept on every seed tried is left out.

Rendering uses the exact searched token ids (as the reference code does), not re-tokenized text:
the decoded text is recorded too, with whether it round-trips to the same ids. On SDXL a slot's
one-hot picks the same token in both text encoders (they share one vocabulary), and the loss and
the renders use the pooled embedding and time ids as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasurelab.attacks.base import (
    RETRY_SEED_STRIDE,
    AttackContext,
    AttackOutcome,
    Budget,
    RenderConfig,
    Target,
    check_non_negative,
    check_positive,
    check_strings,
    positive_renders,
    register_attack,
    targets_from_cache,
    targets_to_cache,
)
from erasurelab.attacks.prompts import anchor_prompts, without_concept
from erasurelab.attacks.tokens import (
    TextSide,
    decode,
    frame,
    prompt_tokens,
    require_text_encoders,
    round_trips,
    tokenize,
    vocabulary_ids,
)
from erasurelab.errors import ErasureLabError
from erasurelab.models.diffusion import denoising_loss, frozen, images_to_latents, noise_scheduler, seeded
from erasurelab.registry import option


@dataclass(frozen=True)
class UnlearnDiffAtkConfig(RenderConfig):
    """Embedded defaults: k 3, timesteps {50, 150, ..., 950}, 20 iterations each (iters 0: no optimisation).

    Official SD setting: k 5 (nudity) or 3, timesteps (10, 30, ..., 990), iters 40, guidance 7.5.
    """

    k: int = option(3, help="adversarial tokens prepended after the start token (official SD: 5 for nudity)")
    timesteps: tuple[int, ...] = option(tuple(range(50, 1000, 100)), help="diffusion timesteps visited, ascending "
                                        "(official SD: 10, 30, ..., 990)")
    iters: int = option(20, help="optimisation steps per timestep (official SD: 40; 0: no optimisation)")
    lr: float = option(0.01, help="Adam learning rate of the token probabilities")
    weight_decay: float = option(0.1, help="Adam weight decay of the token probabilities")
    n_prompts: int = option(10, help="concept prompts attacked")
    prompts: tuple[str, ...] = option((), help="concept prompts (empty: the concept's anchor prompts)")
    target_tries: int = option(5, help="seeds tried per prompt for a judge-positive target image on the unedited "
                                       "model, and for an unattacked start without the concept")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("k", "n_prompts", "target_tries"):
            check_positive(name, getattr(self, name))
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ErasureLabError(f"iters must be a non-negative integer, got {self.iters!r}")
        check_non_negative("lr", self.lr)
        check_non_negative("weight_decay", self.weight_decay)
        object.__setattr__(self, "prompts", check_strings("prompts", self.prompts))
        steps = tuple(self.timesteps)
        if not steps or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in steps):
            raise ErasureLabError(f"timesteps must be a non-empty list of non-negative integers, "
                                  f"got {self.timesteps!r}")
        if list(steps) != sorted(steps):
            raise ErasureLabError(f"timesteps must be in ascending order, got {list(steps)}")
        object.__setattr__(self, "timesteps", steps)


# ---------------------------------------------------------------------------------------------
# The relaxation
# ---------------------------------------------------------------------------------------------


def project_simplex(u: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of u onto the probability simplex {p ≥ 0, Σp = 1}.

    Exact sort-based algorithm (Duchi et al. 2008; the reference code bisects for the same
    threshold θ): p = max(u − θ, 0) with θ chosen so the row sums to 1. Computed in float64, so
    rows sum to 1 within 1e-6 and simplex points map to themselves.
    """
    x = u.detach().double()
    sorted_desc = torch.sort(x, dim=-1, descending=True).values
    cumsum = sorted_desc.cumsum(dim=-1) - 1.0
    index = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    support = (sorted_desc - cumsum / index) > 0
    rho = support.long().cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where support holds
    theta = cumsum.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - theta).clamp_min(0.0).to(u.dtype)


class _SampleStraightThrough(torch.autograd.Function):
    """Forward: a one-hot row sampled from each probability row. Backward: the gradient, clipped (hardtanh)."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        index = torch.multinomial(probs.detach().float().cpu(), 1, generator=generator).squeeze(-1)
        return F.one_hot(index, probs.shape[-1]).to(device=probs.device, dtype=probs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return F.hardtanh(grad), None


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact one-hot rows drawn from `probs`, with a straight-through gradient to `probs`."""
    return _SampleStraightThrough.apply(probs, generator)


# ---------------------------------------------------------------------------------------------
# Targets (from M_0)
# ---------------------------------------------------------------------------------------------


def find_targets(ctx: AttackContext, budget: Budget) -> list[Target]:
    """Render each prompt on M_0 at selection seed s_i = seed + i, retrying s_i + 1000·j until judge-positive."""
    config: UnlearnDiffAtkConfig = ctx.config
    prompts = (list(config.prompts) or anchor_prompts(ctx.spec))[:config.n_prompts]
    return positive_renders(ctx, prompts, [ctx.seed + i for i in range(len(prompts))], config.target_tries, budget)


# ---------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------


def prefix_ids(pipe: Any, prompt: str, k: int, filler: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (1, L), lengths (1,)): [start] + k slots (filler) + prompt tokens + [end] + padding."""
    fr = frame(pipe.tokenizer)
    words = prompt_tokens(pipe.tokenizer, prompt)[: max(fr.length - 2 - k, 0)]
    if fr.length - 2 - k < 1:
        raise ErasureLabError(f"k={k} adversarial tokens leave no room for the prompt in {fr.length} tokens")
    return fr.build([[filler] * k + words])


def slot_override(k: int, slot_embeds: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Replace the embeddings at positions 1..k (the adversarial slots) by slot_embeds (k, d)."""

    def replace(_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        slots = slot_embeds.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        return torch.cat([embeds[:, :1], slots, embeds[:, 1 + k:]], dim=1)

    return replace


def attack_prompt(target: Any, tgt: Target, prompt: str, seed: int, ctx: AttackContext, budget: Budget,
                  vocab: torch.Tensor) -> dict[str, Any]:
    """Optimise the k-token prefix before `prompt` towards tgt's image, judged at `seed`; returns the record."""
    index = tgt.index
    config: UnlearnDiffAtkConfig = ctx.config
    text = TextSide.of(target)
    scheduler = noise_scheduler(target)
    n_train = int(scheduler.config.num_train_timesteps)
    if max(config.timesteps) >= n_train:
        raise ErasureLabError(f"timesteps must be below {n_train}, got {max(config.timesteps)}")
    tables = text.tables(vocab)  # SDXL: the same token's row in each encoder
    ids, lengths = prefix_ids(target, prompt, config.k, int(vocab[0]))
    x0 = images_to_latents(target, tgt.image.unsqueeze(0))
    u = torch.nn.Parameter(torch.full((config.k, len(vocab)), 1.0 / len(vocab), device=text.device))
    optimizer = torch.optim.Adam([u], lr=config.lr, weight_decay=config.weight_decay)
    record: dict[str, Any] = {"steps": 0, "renders": 0, "success": False, "stopped_at_t": None}
    best = ids[0, 1:1 + config.k].clone()
    image = None
    loss = None
    with frozen(target.unet, *text.encoders, target.vae):
        for t in tqdm(config.timesteps, desc=f"UnlearnDiffAtk prompt {index}", disable=ctx.quiet):
            for it in range(config.iters):
                g = seeded(ctx.seed, 2, index, t, it)
                one_hot = sample_one_hot(u, g)
                with text.override([slot_override(config.k, one_hot @ table) for table in tables]):
                    context = text.encode(ids, lengths)
                noise = torch.randn(x0.shape, generator=g).to(x0.device)
                loss = denoising_loss(target, scheduler, x0, noise, torch.tensor([t], device=x0.device), context)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    u.copy_(project_simplex(u))
                record["steps"] += 1
                budget.add("steps")
                budget.add("unet_backward", 1)
            best = vocab[u.detach().argmax(dim=-1).cpu()]
            attacked = ids.clone()
            attacked[0, 1:1 + config.k] = best
            with torch.no_grad():
                embeds = text.encode(attacked, lengths)
            image = ctx.render_embeds(target, embeds, [seed], budget)
            record["renders"] += 1
            if bool(ctx.present(image)[0]):
                record.update(success=True, stopped_at_t=int(t))
                break
    full = ids.clone()
    full[0, 1:1 + config.k] = best
    record.update(adversarial_ids=[int(i) for i in best], ids=full[0].tolist(),
                  image=image[0] if image is not None else None,
                  final_loss=float(loss.detach()) if loss is not None else None)
    return record


@register_attack("unlearndiffatk", UnlearnDiffAtkConfig,
                 "white-box k-token prefix search through the edited model's diffusion loss",
                 aliases=("udatk", "unlearn-diff-atk", "unlearndiff"))
class UnlearnDiffAtk:
    """UnlearnDiffAtk (Zhang et al., ECCV 2024): discrete prefix attack via the diffusion classifier."""

    reference_differs = True  # on M_0 the attack starts from the prompt without the concept

    def check(self, pipe: Any) -> None:
        require_text_encoders(pipe, "unlearndiffatk")

    def prepare(self, ctx: AttackContext, budget: Budget) -> list[Target]:
        """Judge-positive target images of each prompt, rendered by the unedited model at selection seeds."""
        return find_targets(ctx, budget)

    def dump_prepared(self, prepared: list[Target]) -> tuple[dict[str, torch.Tensor], Any]:
        tensors, rows = targets_to_cache(prepared, "target_")
        return tensors, {"targets": rows}

    def load_prepared(self, tensors: dict[str, torch.Tensor], meta: Any) -> list[Target]:
        return targets_from_cache(tensors, meta["targets"], "target_")

    def start(self, target: Any, tgt: Target, ctx: AttackContext, budget: Budget) -> tuple[str, int, bool] | None:
        """(start prompt, scoring seed, unattacked start is a success), or None when no start qualifies.

        Edited model: P at its scoring seed. Reference: P without the concept at the first scoring
        seed (of target_tries) where M_0 does not render the concept for it.
        """
        if ctx.role != "reference":
            seed = ctx.scoring_seed(tgt.index)
            return tgt.prompt, seed, bool(ctx.present(ctx.render(target, [tgt.prompt], [seed], budget))[0])
        prompt = without_concept(ctx.spec, tgt.prompt)
        if prompt is None:
            return None
        for j in range(ctx.config.target_tries):
            seed = ctx.scoring_seed(tgt.index, j)
            if not bool(ctx.present(ctx.render(target, [prompt], [seed], budget))[0]):
                return prompt, seed, False
        return None

    def attack(self, target: Any, prepared: list[Target], ctx: AttackContext, budget: Budget) -> AttackOutcome:
        vocab = vocabulary_ids(target.tokenizer, TextSide.of(target))
        success, pre, prompts, images, records = [], [], [], [], []
        skipped = []
        scoring: list[int] = []
        for tgt in prepared:
            if tgt.image is None:
                skipped.append({"prompt": tgt.prompt, "reason": f"M_0 never rendered the concept in {tgt.tries} tries"})
                continue
            begin = self.start(target, tgt, ctx, budget)
            if begin is None:
                skipped.append({"prompt": tgt.prompt, "reason": "no start without the concept: M_0 rendered it "
                                f"without the concept's words on all {ctx.config.target_tries} scoring seeds tried"})
                continue
            start_prompt, seed, pre_success = begin
            scoring.append(seed)
            base = {"target_prompt": tgt.prompt, "start_prompt": start_prompt, "target_seed": tgt.seed,
                    "seed": seed}
            if pre_success:
                first = ctx.render(target, [start_prompt], [seed], budget)
                success.append(True)
                pre.append(True)
                prompts.append(start_prompt)
                images.append(first[0])
                records.append({"prompt": start_prompt, **base, "success": True, "pre_success": True, "steps": 0,
                                "renders": 1, "adversarial_ids": [],
                                "ids": tokenize(target.tokenizer, [start_prompt])[0][0].tolist()})
                continue
            record = attack_prompt(target, tgt, start_prompt, seed, ctx, budget, vocab)
            text = decode(target.tokenizer, record["adversarial_ids"])
            prompt = f"{text} {start_prompt}".strip()
            image = record.pop("image")
            success.append(record["success"])
            pre.append(False)
            prompts.append(prompt)
            images.append(image)
            records.append({"prompt": prompt, **base, "pre_success": False, "adversarial_text": text,
                            "round_trips": round_trips(target.tokenizer, record["adversarial_ids"]),
                            **record, "renders": record["renders"] + 1})
        stacked = torch.stack(images) if images else None
        tensors = {"adversarial_ids": {"ids": torch.tensor([r["ids"] for r in records], dtype=torch.long)}} \
            if records else {}
        seed_sets = {"selection": sorted({ctx.seed + t.index + RETRY_SEED_STRIDE * j
                                          for t in prepared for j in range(t.tries)}),
                     "scoring": scoring}
        return AttackOutcome(success=torch.tensor(success, dtype=torch.bool), prompts=prompts, images=stacked,
                             pre_success=torch.tensor(pre, dtype=torch.bool), records=records, tensors=tensors,
                             extra={"skipped": skipped, "vocabulary_size": len(vocab), "role": ctx.role,
                                    "seed_sets": seed_sets})
