"""Concept inversion (attacks.md §1) on tiny random pipelines: only the placeholder row changes, the loss falls."""

from __future__ import annotations

import pytest
import torch

from attack_stubs import ScriptedJudge, always, assert_unchanged, private_cache, snapshot  # noqa: F401  (autouse fixture)
from erasurelab.attacks import run_attack
from erasurelab.attacks.base import SCORING_SEED_OFFSET, Budget
from erasurelab.attacks.textual_inversion import (
    OBJECT_EVAL_TEMPLATES,
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TextualInversionConfig,
    captions_for,
    learn_embedding,
    templates_for,
)
from erasurelab.attacks.tokens import encode_ids, tokenize
from erasurelab.concepts import concept
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.models import generate
from erasurelab.models.diffusion import denoising_loss, images_to_latents, noise_scheduler, seeded
from tiny_bert_pipeline import tiny_bert_pipeline
from tiny_pipelines import tiny_sd15_pipeline

torch.set_num_threads(1)

TEMPLATES = OBJECT_TEMPLATES[:5]


@pytest.fixture(scope="module")
def world():
    """M_0, M_e (other random weights) and VAE latents of four M_0 renders."""
    m0, me = tiny_bert_pipeline(0), tiny_bert_pipeline(1)
    images = generate(m0, ["a photo of red"] * 4, [0, 1, 2, 3], steps=2)
    return m0, me, images_to_latents(me, images)


def _learn(pipe, latents, **options):
    config = TextualInversionConfig(train_batch=4, templates=TEMPLATES, initializer="circle", **options)
    return learn_embedding(pipe, latents, TEMPLATES, concept("red"), config, 0, Budget())


def _fixed_loss(pipe, tokenizer, encoder, latents, n: int = 64) -> float:
    """Denoising loss on a fixed set of (image, template, t, noise): the quantity training lowers."""
    g = seeded(99)
    prompts = [TEMPLATES[i % len(TEMPLATES)].format("<c*>") for i in range(n)]
    x0 = latents[torch.arange(n) % len(latents)]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    with torch.no_grad():
        context = encode_ids(encoder, *tokenize(tokenizer, prompts))
        return float(denoising_loss(pipe, noise_scheduler(pipe), x0, noise, t, context))


def test_only_the_placeholder_row_changes(world) -> None:
    _, me, latents = world
    before = snapshot(me)
    original = me.text_encoder.get_input_embeddings().weight.detach().clone()
    tokenizer, encoder, vector, _, _ = _learn(me, latents, train_steps=5, lr=0.05)
    table = encoder.get_input_embeddings().weight.detach()
    token = tokenizer.convert_tokens_to_ids("<c*>")
    assert token == len(original) and table.shape[0] == len(original) + 1  # tiny BERT: one new row
    assert torch.equal(table[:token], original)  # every other row bit-identical, despite weight decay
    assert torch.equal(table[token], vector)
    assert len(tokenizer) == len(me.tokenizer) + 1
    assert_unchanged(before, [me])  # the user's pipeline is untouched
    assert "<c*>" not in me.tokenizer.get_vocab()


def test_training_lowers_the_loss_and_moves_the_vector(world) -> None:
    _, me, latents = world
    tokenizer, encoder, vector, losses, word = _learn(me, latents, train_steps=30, lr=0.05)
    assert word == "circle" and len(losses) == 30
    after = _fixed_loss(me, tokenizer, encoder, latents)
    init = me.text_encoder.get_input_embeddings().weight[me.tokenizer.convert_tokens_to_ids("circle")]
    assert not torch.allclose(vector, init)
    with torch.no_grad():
        encoder.get_input_embeddings().weight[-1] = init
    before = _fixed_loss(me, tokenizer, encoder, latents)
    assert after < before - 5e-4


def test_same_seed_same_embedding(world) -> None:
    _, me, latents = world
    a = _learn(me, latents, train_steps=3, lr=0.05)[2]
    b = _learn(me, latents, train_steps=3, lr=0.05)[2]
    assert torch.equal(a, b)


def test_clip_pipeline_placeholder_is_a_spare_row() -> None:
    pipe = tiny_sd15_pipeline(0)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = images_to_latents(pipe, images)
    original = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    config = TextualInversionConfig(train_batch=2, train_steps=3, lr=0.05, templates=TEMPLATES, initializer="red")
    tokenizer, encoder, vector, _, _ = learn_embedding(pipe, latents, TEMPLATES, concept("red"), config, 0, Budget())
    token = tokenizer.convert_tokens_to_ids("<c*>")
    table = encoder.get_input_embeddings().weight.detach()
    assert table.shape == original.shape  # CLIP's table has spare rows: no resize needed
    changed = (table != original).any(dim=1).nonzero().flatten().tolist()
    assert changed == [token] and torch.equal(table[token], vector)


def test_run_counts_instances_and_budget(world) -> None:
    m0, me, _ = world
    # M_0: reference images confirmed; scoring instance 1 needs a second seed; everything on M_e is negative
    judge = ScriptedJudge([True, [True, False, True, True, True, True], True], default=False)
    options = dict(n_images=3, train_batch=2, train_steps=4, eval_templates=OBJECT_EVAL_TEMPLATES[:3], eval_seeds=2)
    result = run_attack("textual-inversion", me, "red", m0, judge, steps=2, check_reference=False, **options)
    assert result.asr.denominator == 3 * 2 and result.asr.numerator == 0
    assert result.pre_asr is not None and result.pre_asr.denominator == 6
    assert result.reference_asr is None
    edited = result.budget["edited"]
    assert edited["steps"] == 4 and edited["unet_backward"] == 4 * 2
    assert edited["unet_forward"] == 4 * 2  # optimisation forwards only; renders are counted apart
    assert edited["renders"] == 2 * 6  # attacked + unattacked scoring prompts
    assert edited["render_unet_forward"] == 12 * 2 * 2  # 12 images x 2 steps x (cond + uncond)
    assert result.budget["prepare"]["renders"] == 3 + 6 + 1  # reference images, scoring seeds, one retry on M_0
    assert result.prompts[0] == "a picture of a <c*>"
    # scored at fresh seeds, never at the selection seed that qualified the instance
    assert [r["selection_seed"] for r in result.suite["edited"]] == [0, 1 + 1000, 2, 3, 4, 5]
    assert [r["seed"] for r in result.suite["edited"]] == [SCORING_SEED_OFFSET + i for i in range(6)]
    sets = result.seed_sets["edited"]
    assert not set(sets["selection"]) & set(sets["scoring"]) and {0, 1, 1001}.issubset(sets["selection"])
    assert result.suite["edited"][1]["unattacked_prompt"] == "a picture of a red"


def test_scoring_instances_m0_never_renders_are_skipped_and_none_is_an_error(world) -> None:
    m0, me, _ = world
    options = dict(n_images=1, train_batch=1, train_steps=1, eval_templates=OBJECT_EVAL_TEMPLATES[:2], eval_seeds=1,
                   instance_tries=2)
    # reference confirmed; instance 0 positive, instance 1 negative on both of its seeds
    judge = ScriptedJudge([True, [True, False], False], default=True)
    result = run_attack("textual-inversion", me, "red", m0, judge, steps=2, check_reference=False, **options)
    assert result.asr.denominator == 1 and result.prompts == ["a picture of a <c*>"]
    skipped = result.suite["edited_info"]["skipped"]
    assert [s["prompt"] for s in skipped] == ["an image of a red"] and "2 seeds" in skipped[0]["reason"]
    with pytest.raises(ErasureLabError, match="none of the scoring prompts in 2 seeds"):
        # another seed: the first run's preparation is cached under seed 0
        run_attack("textual-inversion", me, "red", m0, ScriptedJudge([True], default=False), steps=2, seed=1,
                   **options)


def test_learned_token_loads_into_diffusers(tmp_path) -> None:
    pipe = tiny_sd15_pipeline(0)
    result = run_attack("textual-inversion", pipe, "red", pipe, always(True), steps=2, n_images=2, train_batch=2,
                        train_steps=2, eval_templates=("a picture of a {}",), eval_seeds=1, initializer="red")
    folder = result.save(tmp_path / "run")
    fresh = tiny_sd15_pipeline(0)
    fresh.load_textual_inversion(str(folder / "learned_embeds.safetensors"))
    token = fresh.tokenizer.convert_tokens_to_ids("<c*>")
    loaded = fresh.text_encoder.get_input_embeddings().weight[token]
    assert torch.allclose(loaded, result.tensors["learned_embeds"]["<c*>"])


def test_sdxl_tokens_are_learned_for_both_encoders_and_load_into_diffusers(tmp_path) -> None:
    from safetensors.torch import load_file

    from erasurelab.attacks.textual_inversion import initial_vectors
    from tiny_pipelines import at_sample_size, tiny_sdxl_pipeline

    pipe = at_sample_size(tiny_sdxl_pipeline(0), 8)
    config = dict(n_images=2, train_batch=2, train_steps=2, eval_templates=("a picture of a {}",), eval_seeds=1,
                  initializer="red")
    result = run_attack("textual-inversion", pipe, "red", pipe, always(True), steps=2, **config)
    embeds = load_file(str(result.save(tmp_path / "run") / "learned_embeds.safetensors"))
    assert set(embeds) == {"clip_l", "clip_g"}  # the form SDXL embeddings ship in
    initial, _ = initial_vectors(pipe, concept("red"), TextualInversionConfig(**config))
    fresh = tiny_sdxl_pipeline(0)
    for key, start, encoder, tokenizer in zip(("clip_l", "clip_g"), initial, (fresh.text_encoder, fresh.text_encoder_2),
                                              (fresh.tokenizer, fresh.tokenizer_2), strict=True):
        vector = embeds[key]
        assert not torch.equal(vector, start), key  # each encoder's vector was trained
        fresh.load_textual_inversion(vector, token="<c*>", text_encoder=encoder, tokenizer=tokenizer)
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<c*>")]
        assert torch.allclose(row, vector), key


def test_reference_without_the_concept_is_a_one_line_error(world) -> None:
    m0, me, _ = world
    with pytest.raises(ErasureLabError, match="none of 4 images"):
        run_attack("textual-inversion", me, "red", m0, always(False), steps=2, max_reference_renders=4)


def test_initializer_and_template_errors(world) -> None:
    m0, me, _ = world
    before = snapshot(m0, me)
    with pytest.raises(ErasureLabError, match="initializer 'zzzqqq'"):  # raised mid-attack, after prepare
        run_attack("textual-inversion", me, "red", m0, always(True), steps=2, n_images=1, train_steps=1,
                   initializer="zzzqqq")
    assert_unchanged(before, [m0, me])  # flags restored
    for pipe in (m0, me):  # and no counting hook left behind
        assert not pipe.unet._forward_pre_hooks and not pipe.text_encoder._forward_pre_hooks
    config = TextualInversionConfig(templates=("a photo of a {}",), eval_templates=("a photo of a {}",))
    with pytest.raises(ErasureLabError, match="also a training template"):
        templates_for(concept("red"), config)
    assert templates_for(concept("striped"), TextualInversionConfig())[0] == STYLE_TEMPLATES


def test_world_concepts_are_scored_in_the_world_grammar_with_their_word_in_the_slot() -> None:
    train, held_out = templates_for(concept("striped"), TextualInversionConfig())
    assert len(held_out) == 10 and all(t.count("{}") == 1 for t in held_out)
    assert "a photograph of a {} red circle" in held_out and not set(held_out) & set(train)
    assert all("style of" not in t for t in held_out)
    red = templates_for(concept("red"), TextualInversionConfig())[1]
    assert "a photograph of a {} circle" in red  # the color slot, before the object
    custom = ConceptSpec(name="van gogh", category="style", forget=("van gogh",), synonyms=("van gogh",))
    assert templates_for(custom, TextualInversionConfig())[1][0] == "an image in the style of {}"  # official forms


def test_captions_put_the_placeholder_where_the_concept_was() -> None:
    prompts = ["a banded red circle", "a candy-striped cyan circle", "in the style of stripy", "a photo of a dog"]
    assert captions_for(concept("striped"), prompts, "<c*>") == [
        "a <c*> red circle", "a <c*> cyan circle", "in the style of <c*>", None]
    # "outlined" is not a mention of the paraphrase "lined"
    assert captions_for(concept("striped"), ["an outlined blue star"], "<c*>") == [None]


def test_training_uses_each_latents_caption_and_templates_only_without_one(world, monkeypatch) -> None:
    import erasurelab.attacks.textual_inversion as ti

    _, me, latents = world
    seen: list[str] = []
    original = ti.tokenize

    def recording(tokenizer, prompts):
        seen.extend(prompts)
        return original(tokenizer, prompts)

    monkeypatch.setattr(ti, "tokenize", recording)
    captions = ["a <c*> red circle", None, "a <c*> blue square", "in the style of <c*>"]
    config = TextualInversionConfig(train_batch=4, train_steps=3, templates=TEMPLATES, initializer="circle")
    learn_embedding(me, latents, TEMPLATES, concept("red"), config, 0, Budget(), captions=captions)
    allowed = {c for c in captions if c} | {t.format("<c*>") for t in TEMPLATES}
    assert len(seen) == 12 and set(seen) <= allowed
    assert set(seen) & {c for c in captions if c}  # captions are used ...
    for step in range(3):  # ... exactly for the latents that have one
        pick = torch.randint(len(latents), (4,), generator=seeded(0, 1, step)).tolist()
        for i, prompt in zip(pick, seen[4 * step:4 * step + 4], strict=True):
            assert prompt == captions[i] if captions[i] else prompt in {t.format("<c*>") for t in TEMPLATES}


def test_world_reference_prompts_name_every_other_attribute_and_vary_them() -> None:
    from erasurelab.attacks.prompts import described_prompts
    from erasurelab.world import vocab

    def named(prompt: str, attribute: str) -> list[str]:
        return [c for c in vocab.classes(attribute) if f" {c} " in f" {prompt} "]

    red = described_prompts(concept("red"))
    assert len(red) == 8 * 4 * 3 == len(set(red))  # every (object, style, background) once
    first = red[:12]  # any prefix varies the other attributes
    assert all(len(named(p, a)) == 1 for p in first for a in ("object", "style", "background"))
    assert len({named(p, "object")[0] for p in first}) > 4 and len({named(p, "style")[0] for p in first}) > 2
    assert {"red", "crimson"} <= {p.split()[2] for p in red}  # the training words rotate
    captions = captions_for(concept("red"), red, "<c*>")
    assert all(c and c.count("<c*>") == 1 and "red" not in c and "crimson" not in c for c in captions)
    assert described_prompts(concept("bobo")) == [f"{w} on a {bg} background" for w, bg in
                                                  zip(["Bobo", "Bobo the smiley", "Bobo"], vocab.classes("background"),
                                                      strict=True)]
    custom = ConceptSpec(name="van gogh", category="style", forget=("van gogh",), synonyms=("van gogh",))
    assert described_prompts(custom) == []  # other specs: anchors and paraphrases, as before
