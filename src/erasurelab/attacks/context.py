"""What an attack sees and returns: its render settings, the shared `AttackContext`, targets, the outcome.

Why two seed sets: a reference ASR must measure the attack, not the selection. Whatever an attack
picks on M_0 (target images, seed prompts, scoring instances) is picked on *selection seeds*; every
instance is scored on *scoring seeds* (`AttackContext.scoring_seed`), a disjoint range, and the
result records both. Within one run a (model, prompt, seed) image is rendered once
(`AttackContext.render` memo).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from erasurelab.attacks.budget import Budget
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.configs import check_positive
from erasurelab.errors import ErasureLabError
from erasurelab.registry import option

#: Scoring seeds are ctx.seed + SCORING_SEED_OFFSET + i: disjoint from every selection seed (which stay
#: below it: retries are spaced by RETRY_SEED_STRIDE, reference images and pairs use offsets < 100 000).
SCORING_SEED_OFFSET = 500_000


class _SamplerDefaults:
    """`RenderConfig.model_defaults`, read when asked from the defaults `sampling.default_sampling` uses
    (the embedded model's are registered by its plugin, which nothing here imports)."""

    def __get__(self, obj: Any, owner: type | None = None) -> dict[str, tuple[Any, Any]]:
        from erasurelab.models.sampling import sampling_defaults

        sd, embedded = sampling_defaults(None), sampling_defaults("builtin:shapes")
        return {"steps": (sd[0], embedded[0]), "guidance": (sd[1], embedded[1])}


@dataclass(frozen=True)
class RenderConfig:
    """Rendering settings every attack shares; None means the model's defaults (sampling.default_sampling)."""

    steps: int | None = option(None, help="sampler steps of every render (None: the model's default)")
    guidance: float | None = option(None, help="classifier-free guidance scale of every render (None: the "
                                               "model's default)")
    batch_size: int = option(16, help="images per sampler batch when rendering")

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        if self.steps is not None:
            check_positive("steps", self.steps)
        if self.guidance is not None and not isinstance(self.guidance, int | float):
            raise ErasureLabError(f"guidance must be a number, got {self.guidance!r}")


#: (SD-family, embedded) values of the None defaults, as `sampling.default_sampling` picks them; set after the
#: class is made, because the dataclass decorator reads class attributes and these are read only when asked.
RenderConfig.model_defaults = _SamplerDefaults()  # type: ignore[attr-defined]


@dataclass
class AttackContext:
    """Inputs shared by both runs of an attack: the concept, the judge, the config, M_0, seeds."""

    spec: ConceptSpec
    judge: Any
    config: Any
    reference: Any
    seed: int = 0
    quiet: bool = True
    role: str = "edited"  # "reference" while the attack runs against M_0 as the sanity check
    memo: dict[tuple[int, str, int], torch.Tensor] = field(default_factory=dict, repr=False)
    pinned: dict[int, Any] = field(default_factory=dict, repr=False)
    hashes: dict[int, str] = field(default_factory=dict, repr=False)

    def model_hash(self, pipe: Any) -> str:
        """`models.identity.model_hash` of a pipeline, computed once per run (weights do not change in a run)."""
        from erasurelab.models.identity import model_hash

        if id(pipe) not in self.hashes:
            self.pinned[id(pipe)] = pipe
            self.hashes[id(pipe)] = model_hash(pipe)
        return self.hashes[id(pipe)]

    def scoring_seed(self, index: int, retry: int = 0) -> int:
        """The scoring seed of instance `index` (retry j: + RETRY_SEED_STRIDE·j), never a selection seed."""
        return self.seed + SCORING_SEED_OFFSET + int(index) + RETRY_SEED_STRIDE * int(retry)

    def render(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], budget: Budget) -> torch.Tensor:
        """Render text prompts with the protocol's sampler (one CPU generator per image), counted as rendering.

        A (pipeline, prompt, seed) already rendered in this run is taken from the memo, not rendered
        again (counted as renders_reused). The pipeline is pinned so its id cannot be reused.
        """
        from erasurelab.models.sampling import generate

        self.pinned[id(pipe)] = pipe
        keys = [(id(pipe), str(p), int(s)) for p, s in zip(prompts, seeds, strict=True)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if missing:
            with budget.render_phase():
                images = generate(pipe, [k[1] for k in missing], [k[2] for k in missing], steps=self.config.steps,
                                  guidance=self.config.guidance, batch_size=self.config.batch_size, quiet=True)
            budget.add("renders", len(images))
            self.memo.update(zip(missing, images, strict=True))
        if len(keys) > len(missing):
            budget.add("renders_reused", len(keys) - len(missing))
        if not keys:
            return torch.zeros(0)
        return torch.stack([self.memo[k] for k in keys])

    def render_embeds(self, pipe: Any, embeds: Any, seeds: Sequence[int], budget: Budget) -> torch.Tensor:
        """Render from prompt embeddings (searched token ids), same seeding rule as `generate`.

        embeds: token states (n, L, d), or a `tokens.Encoded` (SDXL: with its pooled embeddings).
        """
        from erasurelab.models.sampling import default_sampling

        default_steps, default_guidance = default_sampling(pipe)
        steps = self.config.steps or default_steps
        guidance = default_guidance if self.config.guidance is None else self.config.guidance
        embeds, pooled = (embeds.embeds, embeds.pooled) if hasattr(embeds, "embeds") else (embeds, None)
        out = []
        with budget.render_phase(), torch.no_grad():
            for start in range(0, len(embeds), self.config.batch_size):
                chunk = slice(start, start + self.config.batch_size)
                generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[chunk]]
                extra = {} if pooled is None else {"pooled_prompt_embeds": pooled[chunk].to(pipe.unet.device,
                                                                                          pipe.unet.dtype)}
                result = pipe(prompt_embeds=embeds[chunk].to(pipe.unet.device, pipe.unet.dtype), generator=generators,
                              num_inference_steps=steps, guidance_scale=guidance, output_type="pt", **extra)
                images = result.images if isinstance(result.images, torch.Tensor) else torch.as_tensor(result.images)
                out.append(images.float().cpu())
        images = torch.cat(out)
        budget.add("renders", len(images))
        return images

    def present(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's verdict for this concept, as a bool CPU tensor."""
        return torch.as_tensor(self.judge.present(images, self.spec.name), dtype=torch.bool).cpu()


#: Seed retries are spaced by this much so they never collide with other instances' seeds.
RETRY_SEED_STRIDE = 1000


@dataclass
class Target:
    """A prompt with its judge-positive M_0 render at the selection seed `seed` (image None: never rendered)."""

    prompt: str
    index: int
    seed: int
    image: torch.Tensor | None
    tries: int


def targets_to_cache(targets: Sequence[Target], prefix: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(tensors, JSON rows) of targets for the disk cache; images under f"{prefix}{index}"."""
    tensors = {f"{prefix}{n}": t.image for n, t in enumerate(targets) if t.image is not None}
    rows = [{"prompt": t.prompt, "index": t.index, "seed": t.seed, "tries": t.tries} for t in targets]
    return tensors, rows


def targets_from_cache(tensors: Mapping[str, torch.Tensor], rows: Sequence[Mapping[str, Any]],
                       prefix: str) -> list[Target]:
    """Inverse of targets_to_cache."""
    return [Target(r["prompt"], int(r["index"]), int(r["seed"]), tensors.get(f"{prefix}{n}"), int(r["tries"]))
            for n, r in enumerate(rows)]


def positive_renders(ctx: AttackContext, prompts: Sequence[str], seeds: Sequence[int], tries: int,
                     budget: Budget) -> list[Target]:
    """Render prompt i on M_0 at seeds[i] + RETRY_SEED_STRIDE·j, j < tries, until the judge finds the concept.

    Why: an attack instance the unedited model does not render even unattacked tests the model's
    sampler, not the attack (UnlearnDiffAtk's target images; textual inversion's scoring seeds).
    """
    targets = [Target(p, i, int(s), None, 0) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
    for j in range(tries):
        pending = [t for t in targets if t.image is None]
        if not pending:
            break
        retry_seeds = [int(seeds[t.index]) + RETRY_SEED_STRIDE * j for t in pending]
        images = ctx.render(ctx.reference, [t.prompt for t in pending], retry_seeds, budget)
        for t, s, image, ok in zip(pending, retry_seeds, images, ctx.present(images).tolist(), strict=True):
            t.tries += 1
            t.seed = s
            if ok:
                t.image = image
    return targets


@dataclass
class AttackOutcome:
    """One attack against one model, scored on that model.

    success: per instance (n_eval = 1: one image each). pre_success: the unattacked counterpart of
    each instance on the same model (None when it does not apply). prompts/images: aligned with the
    instances. records: per-instance JSON (ids, seeds, steps used). tensors: safetensors payloads
    by file stem (e.g. a learned embedding).
    """

    success: torch.Tensor
    prompts: list[str]
    images: torch.Tensor | None
    pre_success: torch.Tensor | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Attack(Protocol):
    def prepare(self, ctx: AttackContext, budget: Budget) -> Any: ...

    def attack(self, target: Any, prepared: Any, ctx: AttackContext, budget: Budget) -> AttackOutcome: ...
