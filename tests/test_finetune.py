"""The shared fine-tuning engine: parameter subsets, frozen predictions, masked Adam, exact deltas,
checkpoints and the promise that the caller's pipeline comes back unmodified."""

from __future__ import annotations

import pytest
import torch

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods import finetune as ft
from tiny_bert_pipeline import tiny_bert_pipeline, unet_state
from tiny_pipelines import tiny_sd15_pipeline


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


def _inputs(pipe, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([500, 300][:n]), ft.encode_prompts(pipe, ["red"] * n)


# --- randomness ------------------------------------------------------------------------------------


def test_step_generator_is_a_function_of_seed_stream_and_index():
    draw = lambda *k: torch.rand(3, generator=ft.step_generator(*k))  # noqa: E731
    assert torch.equal(draw(0, 1, 5), draw(0, 1, 5))
    assert not torch.equal(draw(0, 1, 5), draw(0, 1, 6))
    assert not torch.equal(draw(0, 1, 5), draw(0, 2, 5))
    assert not torch.equal(draw(0, 1, 5), draw(1, 1, 5))
    t = ft.sample_timesteps(ft.step_generator(0, 1, 0), 100, 1000)
    assert t.min() >= 0 and t.max() < 1000


# --- parameter subsets (esd.md §5) -----------------------------------------------------------------


def test_parameter_subsets_on_a_diffusers_unet():
    unet = tiny_sd15_pipeline(0).unet
    every = [n for n, _ in unet.named_parameters()]
    x = set(ft.select_parameters(unet, "esd-x"))
    u = set(ft.select_parameters(unet, "esd-u"))
    strict = set(ft.select_parameters(unet, "esd-x-strict"))
    trust = set(ft.select_parameters(unet, "trust"))
    assert x == {n for n in every if ".attn2." in n}
    assert {n.rsplit(".", 1)[0].split("attn2.")[1] for n in x} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert not x & u
    excluded = {n for n in every if n.split(".")[0] in ft.ESD_U_EXCLUDED}
    assert excluded and x | u | excluded == set(every)
    assert strict < x and all(".to_k." in n or ".to_v." in n for n in strict)
    assert trust < x and all(n.endswith(".weight") and n.split(".")[-2] in ("to_q", "to_k", "to_v") for n in trust)
    assert set(ft.select_parameters(unet, "esd-all")) == set(every)
    with pytest.raises(ErasureLabError, match="unknown parameter subset"):
        ft.select_parameters(unet, "esd-z")


# --- masked updates --------------------------------------------------------------------------------


def test_masked_adam_never_moves_entries_outside_the_mask():
    """Adam with stale moments would move every entry; confinement keeps them bit-identical."""
    param = torch.nn.Parameter(torch.randn(6, 5))
    opt = torch.optim.Adam([param], lr=0.1)
    params = {"w": param}
    (param ** 2).sum().backward()
    ft.apply_masked_update(opt, params)                       # moments everywhere
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:2] = True
    for _ in range(3):
        before = param.detach().clone()
        moments = {k: v.clone() for k, v in opt.state[param].items() if k.startswith("exp_avg")}
        opt.zero_grad()
        (param ** 3).sum().backward()
        ft.apply_masked_update(opt, params, {"w": mask})
        assert torch.equal(param.detach()[~mask], before[~mask])
        assert all(torch.equal(opt.state[param][k][~mask], v[~mask]) for k, v in moments.items())
        assert not torch.equal(param.detach()[mask], before[mask])


def test_exact_delta_reproduces_trained_weights_bit_for_bit():
    original = torch.randn(50, 40)
    trained = original + 1e-3 * torch.randn(50, 40)
    trained[0, 0] = -original[0, 0] * 1e-9                    # a sign change far from Sterbenz's range
    delta = ft.exact_delta(trained, original)
    assert torch.equal((original.double() + delta.double()).float(), trained)


# --- the engine ------------------------------------------------------------------------------------


def test_frozen_predictions_equal_the_original_model_while_training(pipe):
    x, t, cond = _inputs(pipe)
    with torch.no_grad():
        reference = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
    names = ft.select_parameters(pipe.unet, "esd-x")
    with ft.FineTuner(pipe, names, lr=1e-2) as tuner:
        for _ in range(2):
            tuner.step(ft.noise_mse(tuner.predict(x, t, cond), torch.zeros_like(x)))
        assert not torch.equal(tuner.predict(x, t, cond), reference)
        assert torch.equal(tuner.frozen(x, t, cond), reference)
        assert all(o.grad is None and not o.requires_grad for o in tuner.originals.values())
        assert all(not p.requires_grad for n, p in pipe.unet.named_parameters() if n not in names)


def test_pipeline_is_restored_even_when_training_fails(pipe):
    before = unet_state(pipe)
    pipe.unet.train()
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    x, t, cond = _inputs(pipe)
    with pytest.raises(RuntimeError, match="boom"), ft.FineTuner(pipe, ft.select_parameters(pipe.unet, "esd-u"),
                                                                 lr=1e-2) as tuner:
        tuner.step(ft.noise_mse(tuner.predict(x, t, cond), torch.zeros_like(x)))
        raise RuntimeError("boom")
    after = unet_state(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.unet.training
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_non_float32_weights_are_refused(pipe):
    pipe.unet.to(torch.float64)
    with pytest.raises(ErasureLabError, match="float32"):
        ft.FineTuner(pipe, ft.select_parameters(pipe.unet, "trust"), lr=1e-3)


def test_denoise_records_the_start_noise_and_the_scheduler_timesteps(pipe):
    scheduler = ft.ddim_scheduler(pipe, 4)
    noise = ft.start_noise(pipe.unet, scheduler, torch.Generator().manual_seed(0), 2)
    cond, empty = ft.encode_prompts(pipe, ["red", "blue"]), ft.encode_empty(pipe)
    model = lambda x, t, c: ft.unet_output(pipe.unet, x, t, c)  # noqa: E731
    trajectory = ft.denoise(model, scheduler, noise, cond, empty, 3.0, 4, record=True)
    assert trajectory.shape == (4, 2, 4, 8, 8)
    assert torch.equal(trajectory[0], noise)
    assert torch.equal(trajectory[2], ft.denoise(model, scheduler, noise, cond, empty, 3.0, 2))


def test_optimizer_state_round_trips_through_safetensors_tensors():
    param = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([param], lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        (param ** 2).sum().backward()
        opt.step()
    tensors, meta = ft.optimizer_tensors(opt)
    clone = torch.nn.Parameter(param.detach().clone())
    opt2 = torch.optim.Adam([clone], lr=0.5)
    ft.load_optimizer_tensors(opt2, tensors, meta)
    for p, o in ((param, opt), (clone, opt2)):
        o.zero_grad()
        (p ** 2).sum().backward()
        o.step()
    assert torch.equal(param, clone)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ft.Checkpointer(tmp_path, 1, "run-a").save(1, {"weights": {"w": torch.ones(2)}}, {})
    assert ft.Checkpointer(tmp_path, 1, "run-a").load()[0] == 1
    with pytest.raises(ErasureLabError, match="another run"):
        ft.Checkpointer(tmp_path, 1, "run-b").load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-0000001"]


def test_deltas_make_an_edit_that_reproduces_training(pipe):
    x, t, cond = _inputs(pipe)
    names = ft.select_parameters(pipe.unet, "esd-x-strict")
    with ft.FineTuner(pipe, names, lr=1e-2) as tuner:
        tuner.step(ft.noise_mse(tuner.predict(x, t, cond), torch.zeros_like(x)))
        trained = {n: p.detach().clone() for n, p in tuner.params.items()}
        edit = tuner.edit({"method": "test"})
    assert set(edit.deltas) == set(names)
    assert isinstance(edit, Edit) and edit.meta["method"] == "test"
    edit.apply(pipe)
    params = dict(pipe.unet.named_parameters())
    assert all(torch.equal(params[n], trained[n]) for n in names)


# --- prompts ---------------------------------------------------------------------------------------


def test_anchor_prompts_replace_the_target_words_by_the_guide():
    assert ft.anchor_prompt("a photo of red", ["red"], "") == "a photo of"
    assert ft.anchor_prompt("a photo of Red", ["red"], "grey") == "a photo of grey"
    assert ft.anchor_prompt("a crimson heart", ["red"], "grey") == "grey"          # no target word: the guide
    assert ft.anchor_prompt("a red circle", ["red circle", "red"], "blue") == "a blue"
    spec = ConceptSpec(name="red", forget=("a photo of red", "red"), synonyms=("red",), guide="")
    assert ft.forget_pairs([spec]) == [("a photo of red", "a photo of"), ("red", "")]
    assert ft.forget_pairs([spec], guide="grey")[0] == ("a photo of red", "a photo of grey")
    with pytest.raises(ErasureLabError, match="nothing to erase"):
        ft.forget_pairs([ConceptSpec(name="empty")])


def test_alignment_is_one_for_the_reference_and_minus_eta_for_the_esd_target():
    d = torch.randn(3, 2, 4, 8, 8)
    assert ft.alignment(d, d) == pytest.approx(1.0)
    assert ft.alignment(-2.0 * d, d) == pytest.approx(-2.0)
