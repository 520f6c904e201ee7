"""ESD (esd.md §5): the target and its conventions, the loss at initialisation, sampling of x_t,
confinement to the parameter subset, exact resume, the untouched pipeline and the saved Edit."""

from __future__ import annotations

import pytest
import torch

import erasurelab as el
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.methods import esd
from erasurelab.methods import finetune as ft
from erasurelab.methods.esd import EsdConfig
from tiny_bert_pipeline import assert_lora_round_trip, same_state, tiny_bert_pipeline, unet_state
from tiny_pipelines import tiny_sdxl_pipeline

from conftest import needs_assets

SPEC = ConceptSpec(name="red", category="color", forget=("a photo of red", "red"), retain=("a photo of blue",),
                   synonyms=("red",))
#: A few steps on the tiny pipeline: fast, and enough to move the weights.
FAST = dict(steps=3, pool_size=2, sample_steps=3, lr=1e-3)


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


# --- the math --------------------------------------------------------------------------------------


def test_target_formula_on_synthetic_tensors():
    eps_c, eps_0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(esd.esd_target(eps_c, eps_0, 0.0), eps_0)
    assert torch.allclose(esd.esd_target(eps_c, eps_0, 1.0), 2 * eps_0 - eps_c)
    # equivalent form y = ε_c − (1 + η)(ε_c − ε_∅)
    assert torch.allclose(esd.esd_target(eps_c, eps_0, 2.0), eps_c - 3.0 * (eps_c - eps_0), atol=1e-6)


def test_negative_guidance_of_the_official_script_converts_to_eta():
    assert esd.eta_from_negative_guidance(2.0) == 1.0
    for eta in (0.0, 1.0, 2.5):
        assert esd.eta_from_negative_guidance(esd.negative_guidance_from_eta(eta)) == eta
    eps_c, eps_0 = torch.randn(3), torch.randn(3)
    ng = 3.0
    converted = esd.esd_target(eps_c, eps_0, esd.eta_from_negative_guidance(ng))
    assert torch.allclose(eps_c - ng * (eps_c - eps_0), converted)


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.0])
def test_loss_at_initialisation_is_one_plus_eta_squared_times_the_guidance_energy(pipe, eta):
    config = EsdConfig(variant="x", eta=eta, **FAST)
    tuner, settings, forget, retain = esd.setup(pipe, [SPEC], config)
    with tuner:
        trainer = esd.make_trainer(tuner, settings, forget, retain)
        x_t, t, prompts = trainer.sample(0)
        loss = trainer.loss(x_t, t, prompts).item()
    cond, empty = ft.encode_prompts(pipe, [forget[i] for i in prompts]), ft.encode_empty(pipe)
    with torch.no_grad():
        eps_c = pipe.unet(x_t, t, encoder_hidden_states=cond.embeds).sample
        eps_0 = pipe.unet(x_t, t, encoder_hidden_states=empty.embeds.expand(len(prompts), -1, -1)).sample
    expected = (1 + eta) ** 2 * float((eps_c - eps_0).pow(2).mean())
    assert expected > 0
    assert loss == pytest.approx(expected, rel=1e-5)
    first = el.erase(pipe, SPEC, "esd", variant="x", eta=eta, **{**FAST, "steps": 1}).meta["loss"][0]
    assert first == pytest.approx(expected, rel=1e-5)


def test_a_small_gradient_step_lowers_the_loss_on_the_same_sample(pipe):
    tuner, settings, forget, retain = esd.setup(pipe, [SPEC], EsdConfig(variant="x", **FAST))
    with tuner:
        trainer = esd.make_trainer(tuner, settings, forget, retain)
        x_t, t, prompts = trainer.sample(0)
        loss = trainer.loss(x_t, t, prompts)
        params = list(tuner.params.values())
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 1e-4 * g / norm
        assert trainer.loss(x_t, t, prompts).item() < loss.item()


# --- sampling x_t ----------------------------------------------------------------------------------


def test_pool_holds_frozen_trajectories_from_their_start_noise(pipe):
    tuner, settings, forget, retain = esd.setup(pipe, [SPEC], EsdConfig(variant="x", **FAST))
    with tuner:
        trainer = esd.make_trainer(tuner, settings, forget, retain)
        pool, scheduler = trainer.pool, trainer.scheduler
        assert pool.shape == (2, 3, 4, 8, 8)
        for j in range(2):
            noise = ft.start_noise(pipe.unet, scheduler, ft.step_generator(0, ft.STREAM_POOL, j))
            assert torch.equal(pool[j, 0], noise[0])
        g = ft.step_generator(0, ft.STREAM_TRAIN, 5)
        traj, index = torch.randint(0, 2, (1,), generator=g), torch.randint(0, 3, (1,), generator=g)
        x_t, t, prompts = trainer.sample(5)
        assert torch.equal(x_t, pool[traj, index])
        assert torch.equal(t, scheduler.timesteps[index])          # the noise level x_t sits at
        assert prompts == [int(traj) % 2]                          # the anchor its trajectory was sampled with


def test_sampling_with_the_trained_model_starts_where_the_frozen_one_does(pipe):
    samples = {}
    for mode in ("trained", "frozen"):
        tuner, settings, forget, retain = esd.setup(pipe, [SPEC], EsdConfig(variant="x", sample_with=mode, **FAST))
        with tuner:
            trainer = esd.make_trainer(tuner, settings, forget, retain)
            samples[mode] = [trainer.sample(step) for step in range(3)]
    for (x_a, t_a, p_a), (x_b, t_b, p_b) in zip(samples["trained"], samples["frozen"], strict=True):
        assert torch.equal(x_a, x_b) and torch.equal(t_a, t_b) and p_a == p_b


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(lr=0), "lr must be > 0"), (dict(lr=-1e-4), "lr must be > 0"),
    (dict(steps=0), "steps must be a positive integer"), (dict(steps=-5), "steps must be a positive integer"),
    (dict(variant="esd-z"), "unknown ESD variant"), (dict(eta=-1.0), "eta must be"),
    (dict(sample_with="model"), "unknown sample_with"), (dict(batch_size=0), "batch_size"),
])
def test_bad_options_are_one_line_errors(pipe, options, message):
    with pytest.raises(ErasureLabError, match=message) as info:
        el.erase(pipe, SPEC, "esd", **options)
    assert "\n" not in str(info.value)


def test_variant_names_and_defaults(pipe):
    assert EsdConfig(variant="ESD-x").variant == "x"
    settings = EsdConfig().resolve(pipe, [SPEC])
    assert (settings["variant"], settings["lr"], settings["steps"], settings["sample_steps"]) == ("u", 1e-5, 1000, 50)
    style = ConceptSpec(name="dotted", category="style", forget=("dotted",))
    assert EsdConfig().resolve(pipe, [style])["variant"] == "x"
    assert (EsdConfig().eta, EsdConfig().batch_size, EsdConfig().start_guidance) == (1.0, 1, 3.0)
    assert EsdConfig(lr="1e-4").lr == 1e-4                       # what `-o lr=1e-4` gives (YAML reads it as text)
    with pytest.raises(ErasureLabError, match="lr must be a number"):
        EsdConfig(lr="fast")


# --- training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["x", "u"])
def test_training_touches_only_the_subset_and_leaves_the_pipeline_unmodified(pipe, variant):
    before = unet_state(pipe)
    subset = set(ft.select_parameters(pipe.unet, f"esd-{variant}"))
    tuner, settings, forget, retain = esd.setup(pipe, [SPEC], EsdConfig(variant=variant, **FAST))
    with tuner:
        tuner.run(esd.make_trainer(tuner, settings, forget, retain), settings["steps"])
        during = dict(pipe.unet.named_parameters())
        assert all(torch.equal(during[n], before[n]) for n in before if n not in subset)
        assert any(not torch.equal(during[n], before[n]) for n in subset)
    assert same_state(unet_state(pipe), before)
    edit = el.erase(pipe, SPEC, "esd", variant=variant, **FAST)
    assert edit.deltas and set(edit.deltas) <= subset
    assert same_state(unet_state(pipe), before)
    assert edit.meta["method"] == "esd" and edit.meta["subset"] == f"esd-{variant}"
    assert len(edit.meta["loss"]) == 3


def test_retain_anchors_add_a_preservation_term(pipe):
    edit = el.erase(pipe, SPEC, "esd", variant="x", retain_weight=1.0, **FAST)
    assert edit.meta["retain"] == ["a photo of blue"]
    plain = el.erase(pipe, SPEC, "esd", variant="x", **FAST)
    assert edit.meta["loss"][0] == plain.meta["loss"][0]        # θ = θ0: the preservation term is 0
    assert edit.meta["loss"][1:] != plain.meta["loss"][1:]
    assert any(not torch.equal(edit.deltas[k].value, plain.deltas[k].value) for k in plain.deltas)


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(pipe, tmp_path, monkeypatch):
    options = dict(variant="x", sample_with="trained", steps=5, sample_steps=3, lr=1e-3, checkpoint_every=2)
    full = el.erase(pipe, SPEC, "esd", checkpoint_dir=str(tmp_path / "a"), **options)
    original_step = esd.EsdTrainer.train_step

    def failing(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original_step(self, step)

    monkeypatch.setattr(esd.EsdTrainer, "train_step", failing)
    with pytest.raises(KeyboardInterrupt):
        el.erase(pipe, SPEC, "esd", checkpoint_dir=str(tmp_path / "b"), **options)
    monkeypatch.undo()
    resumed = el.erase(pipe, SPEC, "esd", checkpoint_dir=str(tmp_path / "b"), **options)
    assert resumed.meta["resumed_from_step"] == 2
    assert resumed.meta["loss"] == full.meta["loss"]
    assert resumed.deltas.keys() == full.deltas.keys()
    assert all(torch.equal(resumed.deltas[k].value, full.deltas[k].value) for k in full.deltas)
    with pytest.raises(ErasureLabError, match="another run"):
        el.erase(pipe, SPEC, "esd", checkpoint_dir=str(tmp_path / "b"), **{**options, "eta": 2.0})


def test_lora_export_needs_two_dimensional_deltas(pipe, tmp_path):
    edit = el.erase(pipe, SPEC, "esd", variant="x", **FAST)          # esd-x trains to_out.0.bias too
    with pytest.raises(ErasureLabError, match="format='full'"):
        edit.save(tmp_path / "lora", format="lora")
    strict = el.erase(pipe, SPEC, "esd", variant="x-strict", **FAST)
    assert_lora_round_trip(strict, pipe, tmp_path / "strict")


def test_runs_on_sdxl_conditioning():
    pipe = tiny_sdxl_pipeline(0)
    before = unet_state(pipe)
    edit = el.erase(pipe, SPEC, "esd", variant="x-strict", steps=2, pool_size=1, sample_steps=2, lr=1e-3)
    assert edit.deltas and all(".attn2.to_" in k for k in edit.deltas)
    assert same_state(unet_state(pipe), before)


# --- end to end on the embedded model ---------------------------------------------------------------


@needs_assets
@pytest.mark.slow
def test_short_esd_run_lowers_the_concepts_noise_prediction_alignment(builtin_pipe):
    from erasurelab.concepts import concept

    after = alignment_after_edit(builtin_pipe, concept("red"), "esd", variant="x", steps=25, pool_size=4,
                                 sample_steps=10)
    assert after < 0.7, after


def alignment_after_edit(pipe, spec, method, **options):
    """Alignment of the edited model's guidance direction with the unedited one on the concept's own
    trajectory (1 = unchanged); the edit is reverted afterwards."""
    prompts = list(spec.forget[:4])
    latents, timesteps = _trajectory_points(pipe, prompts[0])
    reference = ft.guidance_direction(pipe, prompts, latents, timesteps)
    edit = el.erase(pipe, spec, method, **options)
    edit.apply(pipe)
    try:
        return ft.alignment(ft.guidance_direction(pipe, prompts, latents, timesteps), reference)
    finally:
        edit.revert(pipe)


def _trajectory_points(pipe, prompt):
    """Latents of the original model's own trajectory for `prompt` at three noise levels."""
    scheduler = ft.ddim_scheduler(pipe, 10)
    model = lambda x, t, c: ft.unet_output(pipe.unet, x, t, c)  # noqa: E731
    noise = ft.start_noise(pipe.unet, scheduler, torch.Generator().manual_seed(123))
    trajectory = ft.denoise(model, scheduler, noise, ft.encode_prompts(pipe, [prompt]), ft.encode_empty(pipe), 5.0,
                            10, record=True)
    index = [2, 5, 8]
    return trajectory[index, 0], scheduler.timesteps[index]


def test_manifest_eta_reads_settings_the_new_key_and_the_old_key():
    assert esd.manifest_eta({"settings": {"eta": 3.0}, "negative_guidance": 9.0}) == 3.0
    assert esd.manifest_eta({"negative_guidance": 2.0}) == 1.0
    assert esd.manifest_eta({"negative_guidance_2025": 4.0}) == 3.0  # runs saved before the rename
    assert esd.manifest_eta({}) is None
