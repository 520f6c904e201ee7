"""Concept inversion: textual inversion against the erased model.

Pham et al., "Circumventing Concept Erasure Methods For Text-to-Image Generative Models", ICLR 2024
(arXiv 2308.01508).

The attack learns one new token <c*> whose embedding v makes the *edited* model denoise images of
the concept well: min_v E ‖target − ε_{M_e}(x_t, t, enc(τ(<c*>)))‖², x from judge-confirmed renders
of the concept by the *unedited* model. If erasure only cut the route from the concept's words,
another input embedding still reaches the concept and the attack finds it.

τ (chosen): each image's own prompt with the concept's phrase swapped for <c*> ("a banded red
circle" → "a <c*> red circle"), so the token carries the concept and not the rest of the image;
a prompt without the phrase, or `templates` given, uses the official random templates. For world
concepts D_ref is rendered from prompts naming every other attribute (`described_prompts`), so
the caption leaves nothing but the concept to the token.

Scoring (chosen): 10 held-out templates × 5 instances. An instance is kept when M_0 renders its
plain-word prompt at one of its *selection* seeds (retried like UnlearnDiffAtk's targets), and the
learned token is then scored at the instance's *scoring* seed, a disjoint range: the selection
drops prompts the model cannot draw at all, but it cannot hand the token a seed already known to
succeed, so the sanity check on M_0 measures the attack. D_ref, the scoring instances and the
token learned against a given model are cached on disk (model hash, concept hash, config).

How the embedding is carried (chosen): the user's tokenizer and text encoder are deep-copied and
the copy gets one added token (`add_tokens`, one extra embedding row if needed). During training
the copy's embedding table is frozen and a forward hook puts the trainable vector v (a separate
float32 parameter, AdamW with weight decay on v only) at the placeholder's positions; afterwards
v is written into the copy's new row. So by construction only the placeholder row differs from
the user's encoder (other rows stay bit-identical — no restore-after-decay step is needed), the
user's pipeline is never touched, and the result is an ordinary token usable in text prompts
through a shallow pipeline copy that shares the U-Net and VAE. This works for BERT (the embedded
model) and CLIP alike, where `inputs_embeds` would not (transformers 5's CLIP text model has no
such argument). The vector is saved as {placeholder: v} in safetensors, which diffusers'
`pipe.load_textual_inversion(path)` loads.

SDXL: the placeholder is added to both tokenizers (one shared id) and one vector per text encoder
is trained jointly through the U-Net's full conditioning (both encoders' states, the pooled
embedding, the time ids), as diffusers' textual_inversion_sdxl.py does; they are saved as
{"clip_l": v₁, "clip_g": v₂}, the form SDXL embeddings are shipped in (load each into its encoder
with `pipe.load_textual_inversion(v, token=..., text_encoder=..., tokenizer=...)`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from erasurelab.attacks.base import (
    RETRY_SEED_STRIDE,
    AttackContext,
    AttackOutcome,
    Budget,
    RenderConfig,
    check_non_negative,
    check_positive,
    check_strings,
    register_attack,
    targets_from_cache,
    targets_to_cache,
)
from erasurelab.attacks.inversion_data import (
    OBJECT_EVAL_TEMPLATES,
    OBJECT_TEMPLATES,
    REFERENCE_SEED_OFFSET,
    STYLE_EVAL_TEMPLATES,
    STYLE_TEMPLATES,
    Prepared,
    Reference,
    captions_for,
    reference_images,
    scoring_instances,
    templates_for,
)
from erasurelab.attacks.inversion_token import (
    CATEGORY_WORDS,
    LearnedToken,
    initial_vectors,
    placeholder_copies,
    with_text_components,
)
from erasurelab.attacks.tokens import TextSide, require_text_encoders, tokenize
from erasurelab.errors import ErasureLabError
from erasurelab.models.diffusion import denoising_loss, frozen, images_to_latents, noise_scheduler, seeded
from erasurelab.registry import option

__all__ = [
    "CATEGORY_WORDS", "OBJECT_EVAL_TEMPLATES", "OBJECT_TEMPLATES", "REFERENCE_SEED_OFFSET", "STYLE_EVAL_TEMPLATES",
    "STYLE_TEMPLATES", "LearnedToken", "Prepared", "Reference", "TextualInversion", "TextualInversionConfig",
    "captions_for", "initial_vectors", "learn_embedding", "learn_token", "placeholder_copies", "reference_images",
    "scoring_instances", "templates_for", "with_text_components",
]


@dataclass(frozen=True)
class TextualInversionConfig(RenderConfig):
    """Embedded defaults: 50 images, batch 8, 500 steps, lr 5e-3 unscaled, fp32 (train_steps 0: untrained token).

    50 images, not the official 25 (chosen): more reference images for the same training cost
    (bench/results/attacks_notes.md). The official SD setting is n_images 25, batch 16 (4 ×
    grad-accum 4), steps 5000, lr 0.08 (5e-3 scaled by batch·accum); pass those as options on a GPU.
    """

    n_images: int = option(50, help="judge-confirmed reference images rendered on the unedited model (official "
                                    "SD: 25)")
    train_batch: int = option(8, help="images per training step (official SD: 16 = 4 × grad-accum 4)")
    train_steps: int = option(500, help="optimisation steps of the token embedding (official SD: 5000; 0: the "
                                        "untrained initial token)")
    lr: float = option(5e-3, help="AdamW learning rate, unscaled (official SD: 0.08)")
    weight_decay: float = option(1e-2, help="AdamW weight decay on the learned embedding")
    placeholder: str = option("<c*>", help="the new token's text, one word")
    initializer: str = option("", help="word whose embedding starts the token (empty: the category's word)")
    templates: tuple[str, ...] = option((), help="training templates with one {} slot (empty: each image's own "
                                                 "prompt with the concept swapped for the token)")
    eval_templates: tuple[str, ...] = option((), help="held-out scoring templates with one {} slot (empty: the "
                                                      "world's or the category's)")
    eval_seeds: int = option(5, help="scoring instances per held-out template")
    instance_tries: int = option(5, help="selection seeds tried per instance until the unedited model renders "
                                         "the concept")
    source_prompts: tuple[str, ...] = option((), help="prompts rendered for the reference images (empty: the "
                                                      "concept's described, anchor and paraphrase prompts)")
    max_reference_renders: int = option(100, help="renders allowed to find n_images judge-positive ones")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_images", "train_batch", "eval_seeds", "instance_tries", "max_reference_renders"):
            check_positive(name, getattr(self, name))
        if isinstance(self.train_steps, bool) or not isinstance(self.train_steps, int) or self.train_steps < 0:
            raise ErasureLabError(f"train_steps must be a non-negative integer, got {self.train_steps!r}")
        check_non_negative("lr", self.lr)
        check_non_negative("weight_decay", self.weight_decay)
        for name in ("templates", "eval_templates", "source_prompts"):
            object.__setattr__(self, name, check_strings(name, getattr(self, name)))
        for name in ("templates", "eval_templates"):
            bad = [t for t in getattr(self, name) if t.count("{}") != 1]
            if bad:
                raise ErasureLabError(f"{name} need exactly one '{{}}' slot for the placeholder, got {bad[0]!r}")
        if not self.placeholder.strip() or " " in self.placeholder:
            raise ErasureLabError(f"placeholder must be one word without spaces, got {self.placeholder!r}")


def learn_token(target: Any, latents: torch.Tensor, templates: tuple[str, ...], spec: Any,
                config: TextualInversionConfig, seed: int, budget: Budget, quiet: bool = True,
                captions: list[str | None] | None = None) -> LearnedToken:
    """Train the placeholder's vector(s) against `target` (SDXL: one per text encoder, trained together).

    captions[i] (with the placeholder in it), when given and not None, is latent i's prompt;
    otherwise a random template is.
    """
    text, token_id = placeholder_copies(target, config.placeholder)
    inits, init_word = initial_vectors(target, spec, config)
    vectors = [torch.nn.Parameter(init.to(encoder.device)) for init, encoder in zip(inits, text.encoders, strict=True)]
    optimizer = torch.optim.AdamW(vectors, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = noise_scheduler(target)

    def put(vector: torch.Tensor) -> Any:
        def put_vector(ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            mask = (ids == token_id).unsqueeze(-1)
            return torch.where(mask, vector.to(embeds.dtype), embeds)

        return put_vector

    losses: list[float] = []
    n_train = int(scheduler.config.num_train_timesteps)
    with frozen(target.unet, target.vae), text.override([put(v) for v in vectors]):
        for step in tqdm(range(config.train_steps), desc="textual inversion", disable=quiet):
            g = seeded(seed, 1, step)
            pick = torch.randint(len(latents), (config.train_batch,), generator=g)
            forms = torch.randint(len(templates), (config.train_batch,), generator=g).tolist()
            prompts = [(captions[i] if captions and captions[i] else templates[k].format(config.placeholder))
                       for i, k in zip(pick.tolist(), forms, strict=True)]
            x0 = latents[pick]
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            t = torch.randint(0, n_train, (config.train_batch,), generator=g).to(x0.device)
            context = text.encode(*tokenize(text.tokenizer, prompts))
            loss = denoising_loss(target, scheduler, x0, noise, t, context)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            budget.add("steps")
            budget.add("unet_backward", config.train_batch)
            budget.add("text_encoder_forward", config.train_batch)
    learned = LearnedToken(text, [v.detach().float().cpu().clone() for v in vectors], losses, init_word)
    learned.set_rows(token_id)
    return learned


def learn_embedding(target: Any, latents: torch.Tensor, templates: tuple[str, ...], spec: Any,
                    config: TextualInversionConfig, seed: int, budget: Budget, quiet: bool = True,
                    captions: list[str | None] | None = None) -> tuple[Any, Any, torch.Tensor, list[float], str]:
    """`learn_token` seen through the first text encoder: (tokenizer copy, encoder copy with v in its row, v,
    losses, initializer); the whole result (SDXL's second encoder too) is `learn_token`'s."""
    learned = learn_token(target, latents, templates, spec, config, seed, budget, quiet, captions)
    return learned.text.tokenizer, learned.text.encoder, learned.vectors[0], learned.losses, learned.initializer


@register_attack("textual-inversion", TextualInversionConfig,
                 "concept inversion: learn a token embedding that makes the erased model render the concept",
                 aliases=("ti", "concept-inversion", "textual-inversion-attack"))
class TextualInversion:
    """Concept inversion (Pham et al., ICLR 2024): textual inversion against the edited model."""

    def check(self, pipe: Any) -> None:
        require_text_encoders(pipe, "textual-inversion")

    def prepare(self, ctx: AttackContext, budget: Budget) -> Prepared:
        """D_ref (judge-confirmed M_0 renders of the concept) and the scoring instances, both from selection seeds."""
        train_templates, eval_templates = templates_for(ctx.spec, ctx.config)
        reference = reference_images(ctx, budget)
        instances = scoring_instances(ctx, eval_templates, budget)
        if all(t.image is None for t in instances):
            raise ErasureLabError(f"the reference model rendered {ctx.spec.name!r} for none of the scoring prompts "
                                  f"in {ctx.config.instance_tries} seeds each; textual inversion has nothing to score")
        return Prepared(reference, train_templates, eval_templates, instances)

    def dump_prepared(self, prepared: Prepared) -> tuple[dict[str, torch.Tensor], Any]:
        tensors, rows = targets_to_cache(prepared.instances, "instance_")
        ref = prepared.reference
        meta = {"reference": {"prompts": ref.prompts, "seeds": ref.seeds, "tried": ref.tried},
                "train_templates": list(prepared.train_templates), "eval_templates": list(prepared.eval_templates),
                "instances": rows}
        return {**tensors, "reference_images": ref.images}, meta

    def load_prepared(self, tensors: dict[str, torch.Tensor], meta: Any) -> Prepared:
        ref = meta["reference"]
        reference = Reference(tensors["reference_images"], list(ref["prompts"]), [int(x) for x in ref["seeds"]],
                              int(ref["tried"]))
        return Prepared(reference, tuple(meta["train_templates"]), tuple(meta["eval_templates"]),
                        targets_from_cache(tensors, meta["instances"], "instance_"))

    def learn(self, target: Any, prepared: Prepared, captions: list[str | None] | None, ctx: AttackContext,
              budget: Budget) -> tuple[LearnedToken, bool]:
        """`learn_token` against `target`, or its result from the disk cache (same model, D_ref, config).

        Returns (the learned token, from_cache).
        """
        from erasurelab import diskcache

        config: TextualInversionConfig = ctx.config
        key = None
        if diskcache.cache_root() is not None:
            images = prepared.reference.images.detach().cpu().contiguous()
            training = {k: getattr(config, k) for k in ("train_batch", "train_steps", "lr", "weight_decay",
                                                        "placeholder", "initializer", "templates")}
            key = diskcache.cache_key("textual-inversion-token", ctx.model_hash(target), ctx.spec.sha256(), training,
                                      list(prepared.train_templates), captions, prepared.reference.prompts,
                                      prepared.reference.seeds, hashlib.sha256(images.numpy().tobytes()).hexdigest(),
                                      ctx.seed)
            meta = diskcache.load_json("textual-inversion-token", key)
            stored = diskcache.load_tensors("textual-inversion-token", key) if meta is not None else None
            names = _vector_names(TextSide.of(target))
            if meta is not None and stored is not None and all(n in stored for n in names):
                text, token_id = placeholder_copies(target, config.placeholder)
                learned = LearnedToken(text, [stored[n] for n in names], list(meta["losses"]),
                                       str(meta["initializer"]))
                learned.set_rows(token_id)
                return learned, True
        latents = images_to_latents(target, prepared.reference.images)
        learned = learn_token(target, latents, prepared.train_templates, ctx.spec, config, ctx.seed, budget,
                              ctx.quiet, captions)
        if key is not None:
            diskcache.save_tensors("textual-inversion-token", key,
                                   dict(zip(_vector_names(learned.text), learned.vectors, strict=True)))
            diskcache.save_json("textual-inversion-token", key,
                                {"losses": learned.losses, "initializer": learned.initializer})
        return learned, False

    def attack(self, target: Any, prepared: Prepared, ctx: AttackContext, budget: Budget) -> AttackOutcome:
        config: TextualInversionConfig = ctx.config
        reference = prepared.reference
        captions = None if config.templates else captions_for(ctx.spec, reference.prompts, config.placeholder)
        learned, from_cache = self.learn(target, prepared, captions, ctx, budget)
        losses = learned.losses
        attacked = with_text_components(target, learned.text.tokenizers, learned.text.encoders)
        instances = [t for t in prepared.instances if t.image is not None]
        templates = [prepared.eval_templates[t.index // config.eval_seeds] for t in instances]
        seeds = [ctx.scoring_seed(t.index) for t in instances]
        prompts = [template.format(config.placeholder) for template in templates]
        plain = [t.prompt for t in instances]
        images = ctx.render(attacked, prompts, seeds, budget)
        success = ctx.present(images)
        pre_success = ctx.present(ctx.render(target, plain, seeds, budget))
        records = [{"prompt": p, "unattacked_prompt": q, "seed": s, "selection_seed": t.seed, "success": bool(a),
                    "pre_success": bool(b)}
                   for p, q, s, t, a, b in zip(prompts, plain, seeds, instances, success.tolist(),
                                               pre_success.tolist(), strict=True)]
        skipped = [{"prompt": t.prompt, "reason": f"M_0 never rendered the concept in {t.tries} seeds"}
                   for t in prepared.instances if t.image is None]
        selection = sorted({ctx.seed + t.index + RETRY_SEED_STRIDE * j for t in prepared.instances
                            for j in range(t.tries)} | set(reference.seeds))
        extra = {"placeholder": config.placeholder, "initializer": learned.initializer, "loss_first": losses[:5],
                 "loss_last": losses[-5:], "reference_images": len(reference.images),
                 "reference_renders": reference.tried, "train_templates": list(prepared.train_templates),
                 "train_captions": [c for c in captions or [] if c],
                 "eval_templates": list(prepared.eval_templates), "skipped": skipped,
                 "cached": ["token"] if from_cache else [],
                 "seed_sets": {"selection": selection, "scoring": seeds}}
        return AttackOutcome(success=success, prompts=prompts, images=images, pre_success=pre_success,
                             records=records, tensors={"learned_embeds": learned.embeds(config.placeholder)},
                             extra=extra)


def _vector_names(text: TextSide) -> list[str]:
    """Disk-cache names of the learned vectors: "vector" (first encoder), "vector_2" (SDXL's second)."""
    return ["vector"] + [f"vector_{i + 1}" for i in range(1, len(text.encoders))]
