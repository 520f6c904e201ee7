"""Attack sanity checks on the trained embedded model (attacks.md §1-§2); skipped until its weights exist.

These need a model that actually renders concepts: on random tiny pipelines the quantities are noise.
"""

from __future__ import annotations

import pytest
import torch

from erasurelab.attacks import run_attack
from erasurelab.attacks.diffusion import denoising_loss, images_to_latents, noise_scheduler, seeded
from erasurelab.attacks.tokens import encode_ids, tokenize, vocabulary_ids
from erasurelab.models import generate

from conftest import needs_assets

pytestmark = [pytest.mark.slow, needs_assets]

UNRELATED = ("a blue square", "a green star", "a yellow triangle", "a purple heart", "a cyan cross")


def test_learned_token_renders_the_concept_on_the_unedited_model(builtin_pipe, shapes_judge) -> None:
    result = run_attack("textual-inversion", builtin_pipe, "red", builtin_pipe, shapes_judge, n_images=16,
                        train_steps=150, eval_seeds=2)
    prompts = [p for p in UNRELATED for _ in range(4)]
    images = generate(builtin_pipe, prompts, list(range(len(prompts))))
    false_positive = float(shapes_judge.present(images, "red").float().mean())
    assert result.asr.value >= false_positive + 0.3, (result.asr, false_positive)


def test_diffusion_classifier_prefers_the_true_prompt(builtin_pipe, shapes_judge) -> None:
    """UnlearnDiffAtk's premise: on M_0 the target image is denoised best under its own prompt."""
    prompt = "a red circle"
    seed = next(s for s in range(20) if bool(shapes_judge.present(generate(builtin_pipe, [prompt], [s]), "red")[0]))
    latents = images_to_latents(builtin_pipe, generate(builtin_pipe, [prompt], [seed]))
    vocab = vocabulary_ids(builtin_pipe.tokenizer, builtin_pipe.text_encoder)
    g = torch.Generator().manual_seed(0)
    random_prompt = builtin_pipe.tokenizer.decode(vocab[torch.randint(len(vocab), (4,), generator=g)].tolist())
    scheduler = noise_scheduler(builtin_pipe)

    def loss(text: str) -> float:
        total = 0.0
        with torch.no_grad():
            context = encode_ids(builtin_pipe.text_encoder, *tokenize(builtin_pipe.tokenizer, [text]))
            for t in range(50, 1000, 100):
                for r in range(4):
                    noise = torch.randn(latents.shape, generator=seeded(1, t, r))
                    total += float(denoising_loss(builtin_pipe, scheduler, latents, noise, torch.tensor([t]), context))
        return total

    assert loss(prompt) < loss(random_prompt)
    assert loss(prompt) < loss("a blue square")
