"""DUO (duo.md §6): log 2 and R = 0 at step 0, only B gets a gradient then, shared ε / independent t's,
the β coupling, the sign test, bad input, and a small end-to-end run on the embedded model."""

from __future__ import annotations

import math
import re

import pytest
import torch

from erasurelab.errors import ErasureLabError
from erasurelab.methods.duo import (
    STREAM_DUO,
    DuoConfig,
    DuoTrainer,
    coupled_lambda,
    coupled_lr,
    duo_loss,
    duo_terms,
    timestep_bounds,
)
from erasurelab.methods.finetune import encode_prompts
from erasurelab.methods.lora_engine import LoraTuner, attention_targets
from erasurelab.models.sampling import noise_scheduler, seeded
from tiny_bert_pipeline import tiny_bert_pipeline

SETTINGS = {"seed": 0, "batch_size": 3, "t_min": 0.0, "t_max": 0.75, "beta": 500.0, "lam_effective": 5e6,
            "retain_weight": 0.0, "anchor_weight": 0.0}


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


def _latents(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g)


def test_coupling_values():
    assert coupled_lr(500) == pytest.approx(6e-5) and coupled_lambda(500) == pytest.approx(5e6)
    assert coupled_lr(1000) == pytest.approx(3e-5) and coupled_lambda(1000) == pytest.approx(1e7)
    settings = DuoConfig(beta=1000).resolve(tiny_bert_pipeline(0))
    assert settings["lr_effective"] == pytest.approx(3e-5) and settings["lam_effective"] == pytest.approx(1e7)
    assert DuoConfig(beta=1000, lr=1e-3, lam=0).resolve(tiny_bert_pipeline(0))["lr_effective"] == 1e-3


@pytest.mark.parametrize("options,match", [({"beta": 0}, "beta"), ({"beta": -1}, "beta"), ({"rank": 0}, "rank"),
                                           ({"conditioning": "text"}, "conditioning"), ({"t_max": 2}, "t_max"),
                                           ({"t_min": 0.8}, "t_min"), ({"t_min": -0.1}, "t_min"),
                                           ({"layers": "mlp"}, "layers")])
def test_bad_config_is_one_line_error(options, match):
    with pytest.raises(ErasureLabError, match=match) as info:
        DuoConfig(**options)
    assert "\n" not in str(info.value)


def test_rank_larger_than_layer_errors_before_any_work(pipe, tmp_path):
    from erasurelab import erase

    with pytest.raises(ErasureLabError, match="larger than layer"):
        erase(pipe, "red", "duo", rank=10_000, checkpoint_dir=str(tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("layers,blocks", [("self", {"attn1"}), ("cross", {"attn2"}),
                                           ("attention", {"attn1", "attn2"})])
def test_layers_option_chooses_the_trained_attention_blocks(pipe, layers, blocks, monkeypatch):
    """The LoRA's factors sit exactly on the chosen blocks' q/k/v/out projections (pairs stubbed: no rendering)."""
    from erasurelab import erase
    from erasurelab.methods import duo
    from erasurelab.methods.pairs import Pairs

    def fake_pairs(pipe, spec, judge, settings, safe_prompt, prompts, quiet=True):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(4, 3, 32, 32, generator=g)
        return Pairs(images, images.flip(-1), ["a red circle"] * 4, ["a circle"] * 4, {"cache_key": "stub"})

    monkeypatch.setattr(duo, "build_pairs", fake_pairs)
    edit = erase(pipe, "red", "duo", layers=layers, steps=1, rank=2, judge="shapes")
    trained = {re.search(r"\.(attn\d)\.", name).group(1) for name in edit.meta["lora_targets"]}
    assert trained == blocks
    assert {re.sub(r".*\.attn\d\.", "", name) for name in edit.meta["lora_targets"]} == \
        {"to_q", "to_k", "to_v", "to_out.0"}


def test_step_zero_log2_and_zero_regulariser_and_only_b_gradients(pipe):
    z_u, z_s = _latents()
    empty = encode_prompts(pipe, [""])
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        trainer = DuoTrainer(tuner, z_u, z_s, None, empty, SETTINGS)
        terms = trainer.terms(0)
        assert abs(terms["dpo"].item() - math.log(2)) < 1e-6
        assert terms["reg"].item() == 0.0
        (terms["dpo"] + terms["reg"]).backward()
        grads = {n: p.grad for n, p in tuner.params.items()}
        assert all(g is not None for g in grads.values())
        assert all(g.abs().max() == 0 for n, g in grads.items() if ".lora_A." in n)
        assert any(g.abs().max() > 0 for n, g in grads.items() if ".lora_B." in n)
        assert all(p.grad is None for n, p in pipe.unet.named_parameters() if ".lora_" not in n)


def test_batch_shares_eps_and_draws_independent_timesteps_below_t_max(pipe):
    z_u, z_s = _latents()
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        trainer = DuoTrainer(tuner, z_u, z_s, None, encode_prompts(pipe, [""]), {**SETTINGS, "batch_size": 64})
        index, eps, t_u, t_s = trainer.batch(0)
        again = trainer.batch(0)
    assert torch.equal(eps, again[1]) and torch.equal(t_u, again[2])
    assert eps.shape == (64, 4, 8, 8)  # one ε per pair, used for both members
    assert sorted(index[:4].tolist()) == [0, 1, 2, 3] and int(index.max()) < 4  # every pair before repeats
    assert t_u.min() >= 0 and t_u.max() < 750 and t_s.max() < 750 and not torch.equal(t_u, t_s)
    assert timestep_bounds(noise_scheduler(pipe)) == (0, 750, 999)


def test_t_min_raises_the_lowest_dpo_timestep_and_keeps_the_default_stream(pipe):
    """t_min 0 draws exactly what the spec's [0, t_max·T) draws; t_min > 0 moves every draw into [t_min·T, t_max·T)."""
    z_u, z_s = _latents()
    empty = encode_prompts(pipe, [""])
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        spec = DuoTrainer(tuner, z_u, z_s, None, empty, {**SETTINGS, "batch_size": 64}).batch(3)
        high = DuoTrainer(tuner, z_u, z_s, None, empty, {**SETTINGS, "batch_size": 64, "t_min": 0.5,
                                                         "t_max": 1.0}).batch(3)
    generator = seeded(SETTINGS["seed"], STREAM_DUO, 3)  # the spec's draw, written out
    torch.randperm(4, generator=generator)
    torch.randint(0, 4, (60,), generator=generator)
    torch.randn((64, 4, 8, 8), generator=generator)
    assert torch.equal(spec[2], torch.randint(0, 750, (64,), generator=generator))
    assert torch.equal(spec[0], high[0]) and torch.equal(spec[1], high[1])  # same pairs and ε
    assert high[2].min() >= 500 and high[2].max() < 1000 and high[3].min() >= 500
    assert spec[2].min() < 500  # the spec's range reaches below it
    assert timestep_bounds(noise_scheduler(pipe), 1.0, 0.5) == (500, 1000, 999)


def test_sign_one_sgd_step_lowers_safe_minus_unsafe(pipe):
    """A small step on L_DPO lowers Δ⁺ − Δ⁻ on the same batch (swapped roles would raise it)."""
    z_u, z_s = _latents()
    empty = encode_prompts(pipe, [""])
    scheduler = noise_scheduler(pipe)
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    t_u, t_s = torch.tensor([100, 300, 500, 700]), torch.tensor([200, 400, 600, 50])
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        with torch.no_grad():  # move off B = 0 so Δ is not identically zero
            for n, p in tuner.params.items():
                if ".lora_B." in n:
                    p.normal_(0, 1e-3, generator=g)
        args = (scheduler, z_u, z_s, eps, t_u, t_s, 999, empty.repeat(4), empty.repeat(4), empty, 500.0)
        before = duo_terms(tuner, *args)
        before["dpo"].backward()
        with torch.no_grad():
            for p in tuner.params.values():
                p.sub_(1e-2 * p.grad)
        after = duo_terms(tuner, *args)
    margin = lambda t: (t["d_safe"] - t["d_unsafe"]).mean().item()  # noqa: E731
    assert margin(after) < margin(before)
    assert after["dpo"].item() < before["dpo"].item()


def test_retain_term_is_zero_at_start_and_measures_the_retain_predictions(pipe):
    """The retain block is x_t⁻ under the retain prompts: 0 while B = 0, and after the weights move it
    equals the policy/reference distance computed there by hand; the DPO terms do not change with it."""
    z_u, z_s = _latents()
    empty = encode_prompts(pipe, [""])
    retain = encode_prompts(pipe, ["a blue square", "a green star"])
    scheduler = noise_scheduler(pipe)
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    t_u, t_s = torch.tensor([100, 600]), torch.tensor([300, 20])
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        args = (scheduler, z_u[:2], z_s[:2], eps, t_u, t_s, 999, empty.repeat(2), empty.repeat(2), empty, 500.0)
        assert duo_terms(tuner, *args, retain=retain)["retain"].item() == 0.0
        with torch.no_grad():
            for n, p in tuner.params.items():
                if ".lora_B." in n:
                    p.normal_(0, 1e-2, generator=g)
            with_retain, without = duo_terms(tuner, *args, retain=retain), duo_terms(tuner, *args)
            x_t = scheduler.add_noise(z_u[:2], eps, t_u)
            by_hand = (tuner.predict(x_t, t_u, retain).float() - tuner.reference(x_t, t_u, retain).float()).pow(2)
    assert without["retain"].item() == 0.0 and with_retain["retain"].item() > 0
    assert with_retain["retain"].item() == pytest.approx(by_hand.mean().item(), rel=1e-4)
    assert torch.allclose(with_retain["d_safe"], without["d_safe"], atol=1e-6)
    assert with_retain["dpo"].item() == pytest.approx(without["dpo"].item(), rel=1e-5)


def test_anchor_term_is_zero_at_start_then_mean_abs_safe_delta_weighted_by_mu_beta(pipe):
    """The anchor term holds the safe member's fit at the reference's: 0 while B = 0 (so the loss is
    log 2 whatever μ); after the weights move it is mean |Δ⁺| by hand, and the step's loss is
    L_DPO + μ·β·anchor + λ·R (L_DPO + λ·R at μ 0)."""
    z_u, z_s = _latents()
    empty = encode_prompts(pipe, [""])
    settings = {**SETTINGS, "anchor_weight": 3.0}
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner, torch.no_grad():
        trainer = DuoTrainer(tuner, z_u, z_s, None, empty, settings)
        start = trainer.terms(0)
        assert start["anchor"].item() == 0.0
        assert duo_loss(start, settings).item() == pytest.approx(math.log(2), abs=1e-6)
        g = torch.Generator().manual_seed(7)
        for n, p in tuner.params.items():
            if ".lora_B." in n:
                p.normal_(0, 1e-2, generator=g)
        moved = trainer.terms(0)
    assert moved["anchor"].item() > 0
    assert moved["anchor"].item() == pytest.approx(moved["d_safe"].abs().mean().item(), rel=1e-6)
    expected = moved["dpo"] + 3.0 * SETTINGS["beta"] * moved["anchor"] + SETTINGS["lam_effective"] * moved["reg"]
    assert duo_loss(moved, settings).item() == pytest.approx(expected.item(), rel=1e-6)
    assert duo_loss(moved, SETTINGS).item() == pytest.approx((moved["dpo"] + 5e6 * moved["reg"]).item(), rel=1e-6)


@pytest.mark.slow
def test_end_to_end_on_embedded_model_lowers_anchor_rate(builtin_pipe, shapes_judge, tmp_path):
    from erasurelab import erase
    from erasurelab.edits import Edit
    from erasurelab.models.sampling import generate

    prompts = ["a red circle", "a red square", "a photo of red", "a red star"] * 4
    seeds = list(range(100, 116))
    before = shapes_judge.present(generate(builtin_pipe, prompts, seeds), "red").float().mean().item()
    edit = erase(builtin_pipe, "red", "duo", n_pairs=16, steps=100, pair_attempts=4)
    assert edit.meta["per_concept"][0]["pairs"]["kept"] > 0
    edit.save(tmp_path / "run", format="lora")
    loaded = Edit.load(tmp_path / "run")
    loaded.apply(builtin_pipe)
    try:
        after = shapes_judge.present(generate(builtin_pipe, prompts, seeds), "red").float().mean().item()
    finally:
        loaded.revert(builtin_pipe)
    assert after < before
