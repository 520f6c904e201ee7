"""TRuST (trust.md §6, erasurelab reconstruction): the mask rules, confinement of every update to the
mask, the CSR estimator and CIP shrink, dynamic re-selection, exact resume and the saved Edit."""

from __future__ import annotations

import warnings

import pytest
import torch

import erasurelab as el
from erasurelab.concepts import concept
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.methods import finetune as ft
from erasurelab.methods import trust
from erasurelab.methods.base import MethodWarning
from erasurelab.methods.trust import TrustConfig
from tiny_bert_pipeline import same_state, tiny_bert_pipeline, unet_state

from conftest import needs_assets

SPEC = ConceptSpec(name="red", category="color", forget=("a photo of red", "red"), retain=("a photo of blue",),
                   synonyms=("red",))
FAST = dict(steps=3, n_forget=2, sample_steps=3, batch_size=2, saliency_prompts=1, lr=1e-3)


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


def _expected_fraction(pipe, fraction):
    sizes = [p.numel() for n, p in pipe.unet.named_parameters() if n in ft.select_parameters(pipe.unet, "trust")]
    return sum(max(1, round(fraction * n)) for n in sizes) / sum(sizes)


# --- mask rules ------------------------------------------------------------------------------------


def test_zscore_mask_selects_exactly_the_planted_outliers():
    grad = torch.ones(64, 64)
    planted = [(0, 0), (3, 7), (10, 10), (40, 2), (63, 63)]
    for i, j in planted:
        grad[i, j] = -100.0 if i == 3 else 100.0           # the sign does not matter: |g| is scored
    mask = trust.zscore_mask(grad, 2.0)
    assert int(mask.sum()) == 5 and all(mask[i, j] for i, j in planted)


def test_zscore_mask_of_a_flat_gradient_is_empty_not_nan():
    mask = trust.zscore_mask(torch.full((8, 8), 3.0), 2.0)
    assert mask.dtype == torch.bool and not mask.any()


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 1.0])
def test_fraction_mask_covers_the_requested_fraction(fraction):
    grad = torch.randn(37, 23)
    mask = trust.fraction_mask(grad, fraction)
    k = max(1, round(fraction * grad.numel()))
    assert int(mask.sum()) == k
    assert grad.abs()[mask].min() >= grad.abs()[~mask].max() if k < grad.numel() else mask.all()


# --- regularisers ----------------------------------------------------------------------------------


def test_csr_estimate_is_exact_for_a_linear_map_and_unbiased_for_the_jacobian_norm():
    torch.manual_seed(0)
    jac = torch.randn(5, 12)
    theta = torch.randn(12)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 4, 5, 9]] = True

    def fn(over):
        return jac @ over["w"]

    base = fn({"w": theta})
    g = torch.Generator().manual_seed(0)
    r = trust.csr_estimate(fn, {"w": theta}, {"w": mask}, base, g)
    v = trust.rademacher(theta.shape, torch.Generator().manual_seed(0))
    exact = (jac @ (mask.float() * v)).pow(2).sum()
    assert float(r) * base.numel() == pytest.approx(float(exact), rel=1e-3)
    draws = [float(trust.csr_estimate(fn, {"w": theta}, {"w": mask}, base, g)) * base.numel() for _ in range(4000)]
    frobenius = float(jac[:, mask].pow(2).sum())
    assert sum(draws) / len(draws) == pytest.approx(frobenius, rel=0.05)
    empty = torch.zeros(12, dtype=torch.bool)
    assert float(trust.csr_estimate(fn, {"w": theta}, {"w": empty}, base, g)) == 0.0


def test_cip_shrink_is_soft_thresholding_on_the_mask_only():
    param = torch.tensor([0.5, -0.5, 0.01, -0.02, 3.0, 0.7])
    mask = torch.tensor([True, True, True, True, False, True])
    grad_abs = torch.tensor([1.0, 1.0, 1.0, 1.0, 50.0, 2.0])    # mean over the mask: 1.2
    kappa_w = 0.06
    out = trust.proximal_shrink(param, mask, grad_abs, kappa_w)
    thresholds = kappa_w * grad_abs / 1.2
    assert out[2] == 0 and out[3] == 0                          # |θ| <= κ_W ĝ: exactly zero
    for i in (0, 1, 5):
        assert float(out[i].abs()) == pytest.approx(float(param[i].abs() - thresholds[i]), abs=1e-7)
        assert out[i].sign() == param[i].sign()
    assert out[4] == param[4]                                   # outside M: untouched


def test_l_prev_is_zero_at_initialisation_when_the_anchor_is_the_forget_prompt(pipe):
    tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(**FAST))
    with tuner:
        trainer = trust.make_trainer(tuner, settings, pairs, retain)
        x_t, t, prompts = trainer.batch(0)
        first = trainer.predictions(0, x_t, t, prompts)[0].item()
        assert first > 0   # anchor "a photo of" differs from "a photo of red"
        trainer.anchors = trainer.forget
        # Zero up to float rounding: the frozen and trained predictions run as differently sized batches.
        assert trainer.predictions(0, x_t, t, prompts)[0].item() < 1e-9 * first


def test_negative_guidance_scales_the_initial_l_prev_by_one_plus_eta_squared(pipe):
    """At θ0 the target with η is ε(c_a) − η(ε(c_f) − ε(c_a)), so L_prev(η) = (1 + η)² L_prev(0) exactly-ish."""
    losses = {}
    for eta in (0.0, 2.0):
        tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(eta=eta, **FAST))
        with tuner:
            trainer = trust.make_trainer(tuner, settings, pairs, retain)
            losses[eta] = trainer.predictions(0, *trainer.batch(0))[0].item()
    assert losses[0.0] > 0
    assert losses[2.0] == pytest.approx(9.0 * losses[0.0], rel=1e-4)


def test_batched_predictions_equal_the_separate_loss_terms(pipe):
    """One frozen call and one trained call per step give the same L_prev and retain term as separate calls."""
    tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(retain_weight=1.0, **FAST))
    with tuner:
        trainer = trust.make_trainer(tuner, settings, pairs, retain)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # move off θ0, so the retain term is not zero on both sides
            for param in tuner.params.values():
                param.add_(0.05 * param.abs().mean() * torch.randn(param.shape, generator=generator))
        x_t, t, prompts = trainer.batch(1)
        l_prev, pred, keep = trainer.predictions(1, x_t, t, prompts)
        forget, anchors = trainer.forget.take(prompts), trainer.anchors.take(prompts)
        target = ft.negative_guidance(tuner.frozen(x_t, t, forget), tuner.frozen(x_t, t, anchors), settings["eta"])
        alone = tuner.predict(x_t, t, forget)
        assert torch.allclose(pred, alone, atol=1e-5)
        assert l_prev.item() == pytest.approx(ft.noise_mse(alone, target).item(), rel=1e-4)
        separate = ft.retain_term(tuner, x_t, t, trainer.retain, 1, settings["seed"])
        assert keep is not None and separate.item() > 0
        assert keep.item() == pytest.approx(separate.item(), rel=1e-4)


@pytest.mark.parametrize(("window", "low", "high"), [("late", 20, 30), ("early", 0, 10)])
def test_saliency_step_lies_in_its_third_of_the_trajectory(window, low, high):
    generator = torch.Generator().manual_seed(0)
    steps = {trust.saliency_index(30, window, generator) for _ in range(200)}
    assert steps == set(range(low, high))


# --- saliency and the dynamic mask -----------------------------------------------------------------


def test_saliency_lives_on_q_k_v_of_cross_attention_and_follows_the_current_weights(pipe):
    tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(mask_fraction=0.05, **FAST))
    with tuner:
        trainer = trust.make_trainer(tuner, settings, pairs, retain)
        grads = trainer.saliency(0)
        assert set(grads) == set(ft.select_parameters(pipe.unet, "trust"))
        assert all(n.split(".")[-2] != "to_out" for n in grads)
        assert all(float(g.abs().sum()) > 0 for g in grads.values())
        trainer.refresh(0)
        first = {n: m.clone() for n, m in trainer.mask.items()}
        with torch.no_grad():                                   # a large synthetic update
            for p in tuner.params.values():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * p.abs().mean())
        trainer.refresh(0)                                      # same step: same noise, new weights
        assert trust.jaccard(first, trainer.mask) < 1.0
        assert trainer.refresh_steps == [0, 0]


def test_mask_covers_the_requested_fraction_and_changes_over_training(pipe):
    edit = el.erase(pipe, SPEC, "trust", mask_fraction=0.05, refresh=1, **{**FAST, "steps": 4})
    expected = _expected_fraction(pipe, 0.05)
    assert len(edit.meta["mask_sizes"]) == 4
    assert all(f == pytest.approx(expected) for f in edit.meta["mask_fractions"])
    assert abs(expected - 0.05) < 0.005
    assert min(edit.meta["mask_jaccard"]) < 1.0                # the salient set moves
    assert expected < edit.meta["touched_fraction"] <= 4 * expected


def test_refresh_period_sets_how_often_the_mask_is_estimated(pipe):
    edit = el.erase(pipe, SPEC, "trust", mask_fraction=0.05, refresh=2, **{**FAST, "steps": 5})
    assert edit.meta["mask_refresh_steps"] == [0, 2, 4]


@pytest.mark.parametrize("variant", ["csr", "cip"])
def test_every_update_stays_inside_the_current_mask(pipe, variant):
    before = unet_state(pipe)
    tuner, settings, pairs, retain = trust.setup(pipe, [SPEC], TrustConfig(variant=variant, mask_fraction=0.05,
                                                                           **FAST))
    with tuner:
        trainer = trust.make_trainer(tuner, settings, pairs, retain)
        for step in range(3):
            previous = {n: p.detach().clone() for n, p in tuner.params.items()}
            state = tuner.optimizer.state
            moments = {n: {k: v.clone() for k, v in state[p].items() if k.startswith("exp_avg")}
                       for n, p in tuner.params.items() if state.get(p)}
            trainer.train_step(step)
            for name, param in tuner.params.items():
                outside = ~trainer.mask[name]
                assert torch.equal(param.detach()[outside], previous[name][outside])
                for key, old in moments.get(name, {}).items():  # trust.md §2: moments kept outside M
                    assert torch.equal(state[param][key][outside], old[outside])
            assert any(not torch.equal(p, previous[n]) for n, p in tuner.params.items())
        for name, param in tuner.params.items():
            assert torch.equal(param.detach()[~trainer.union[name]], before[name][~trainer.union[name]])
        current = dict(pipe.unet.named_parameters())
        assert all(torch.equal(current[n], before[n]) for n in before if n not in tuner.params)
    assert same_state(unet_state(pipe), before)


def test_csr_weight_is_calibrated_at_initialisation(pipe):
    edit = el.erase(pipe, SPEC, "trust", variant="csr", **FAST)
    assert edit.meta["beta"] > 0
    fixed = el.erase(pipe, SPEC, "trust", variant="csr", beta=0.0, **FAST)
    assert fixed.meta["beta"] == 0.0


def test_an_empty_mask_warns_and_changes_nothing(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit = el.erase(pipe, SPEC, "trust", xi=1e9, **FAST)
    assert any(issubclass(w.category, MethodWarning) and "mask is empty" in str(w.message) for w in caught)
    assert edit.is_empty and edit.meta["touched_fraction"] == 0.0


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(mask_fraction=0.0), "mask_fraction must be in"), (dict(mask_fraction=1.5), "mask_fraction must be in"),
    (dict(mask_fraction=-0.1), "mask_fraction must be in"), (dict(lr=0), "lr must be > 0"),
    (dict(steps=0), "steps must be a positive integer"), (dict(refresh=0), "refresh must be a positive integer"),
    (dict(variant="hard"), "unknown TRuST variant"), (dict(beta=-1.0), "beta must be >= 0"),
    (dict(eta=-1.0), "eta must be >= 0"), (dict(saliency_window="middle"), "saliency_window must be one of"),
])
def test_bad_options_are_one_line_errors(pipe, options, message):
    with pytest.raises(ErasureLabError, match=message) as info:
        el.erase(pipe, SPEC, "trust", **options)
    assert "\n" not in str(info.value)


def test_defaults_follow_the_spec(pipe):
    config = TrustConfig()
    assert (config.variant, config.xi, config.guidance, config.mask_fraction) == ("csr", 2.0, 7.5, None)
    assert config.saliency_window == "early"  # a measured departure (docstring)
    sd = config.resolve(pipe, [SPEC])
    assert (sd["eta"], sd["retain_weight"]) == (2.0, 0.0)  # η: a measured departure; no retain term (spec α)
    # The sibling anchor and R_A/R_B suffice (η 0); combinations keep their parts with a stronger retain term.
    combination = config.resolve(pipe, [concept("red+circle")])
    assert (combination["eta"], combination["retain_weight"]) == (0.0, 7.0)
    mixed = config.resolve(pipe, [concept("red+circle"), concept("circle|white")])
    assert (mixed["eta"], mixed["retain_weight"]) == (0.0, 5.0)  # any conditional: the conditional's weight
    assert config.resolve(pipe, [SPEC, concept("red+circle")])["retain_weight"] == 0.0  # not all compound: single
    assert TrustConfig(retain_weight=2.0).resolve(pipe, [SPEC])["retain_weight"] == 2.0  # given: kept
    assert TrustConfig(eta=1.0, retain_weight=0.0).resolve(pipe, [concept("red+circle")])["eta"] == 1.0
    assert (sd["lr"], sd["refresh"], sd["batch_size"], sd["steps"], sd["kappa"], sd["n_forget"],
            sd["sample_steps"]) == (1e-5, 1, 2, 300, 1e-3, 800, 25)
    assert TrustConfig(variant="cip").resolve(pipe)["steps"] == 1000


# --- runs ------------------------------------------------------------------------------------------


def test_resume_gives_the_uninterrupted_weights_and_mask_history(pipe, tmp_path):
    options = dict(variant="cip", mask_fraction=0.05, refresh=2, checkpoint_every=3, **{**FAST, "steps": 6})
    full = el.erase(pipe, SPEC, "trust", checkpoint_dir=str(tmp_path / "a"), **options)
    el.erase(pipe, SPEC, "trust", checkpoint_dir=str(tmp_path / "b"), **{**options, "steps": 3})
    resumed = el.erase(pipe, SPEC, "trust", checkpoint_dir=str(tmp_path / "b"), **options)
    assert resumed.meta["resumed_from_step"] == 3                # mid-period: the mask comes from the checkpoint
    assert resumed.deltas.keys() == full.deltas.keys()
    assert all(torch.equal(resumed.deltas[k].value, full.deltas[k].value) for k in full.deltas)
    for key in ("loss", "mask_sizes", "mask_jaccard", "mask_refresh_steps", "touched_fraction"):
        assert resumed.meta[key] == full.meta[key], key


def test_pipeline_is_unmodified_and_the_edit_round_trips_through_full_weights(pipe, tmp_path):
    before = unet_state(pipe)
    edit = el.erase(pipe, SPEC, "trust", mask_fraction=0.05, **FAST)
    assert same_state(unet_state(pipe), before)
    assert edit.deltas and set(edit.deltas) <= set(ft.select_parameters(pipe.unet, "trust"))
    assert edit.meta["label"] == "TRuST (erasurelab reconstruction)"
    edit.save(tmp_path / "run", format="full")
    fresh = tiny_bert_pipeline(0)
    Edit.load(tmp_path / "run").apply(fresh)
    edit.apply(pipe)
    assert same_state(unet_state(fresh), unet_state(pipe))
    edit.revert(pipe)
    assert same_state(unet_state(pipe), before)


def test_combination_concepts_use_their_forget_and_retain_anchors(pipe):
    combo = ConceptSpec(name="red circle", forget=("a red circle", "a photo of a red circle"),
                        retain=("a red square", "a blue circle"), guide="a red square")
    edit = el.erase(pipe, combo, "trust", mask_fraction=0.05, retain_weight=0.5, **FAST)
    assert [p[0] for p in edit.meta["pairs"]] == ["a red circle", "a photo of a red circle"]
    assert edit.meta["retain"] == ["a red square", "a blue circle"]
    assert edit.deltas


# --- end to end on the embedded model ---------------------------------------------------------------


@needs_assets
@pytest.mark.slow
def test_short_trust_run_lowers_the_concepts_noise_prediction_alignment(builtin_pipe):
    from erasurelab.concepts import concept
    from test_esd import alignment_after_edit

    after = alignment_after_edit(builtin_pipe, concept("red"), "trust", steps=30, refresh=5, n_forget=16,
                                 saliency_prompts=2, mask_fraction=0.05, lr=5e-4)
    assert after < 0.8, after


@needs_assets
def test_single_concepts_keep_their_neighbours_on_the_embedded_model_only(builtin_pipe, pipe):
    from erasurelab.concepts import concept
    from erasurelab.methods.trust import RETAIN_WEIGHT

    red = concept("red")
    embedded = TrustConfig().resolve(builtin_pipe, [red])
    assert embedded["retain_weight"] == RETAIN_WEIGHT["single"][1] > 0  # the retain prompts name red's neighbours
    assert TrustConfig().resolve(pipe, [red])["retain_weight"] == 0.0  # SD-family: the spec's α
    assert TrustConfig().resolve(builtin_pipe, [concept("red+circle")])["retain_weight"] == RETAIN_WEIGHT[
        "combination"][1]


@needs_assets
def test_retain_prompts_are_never_evaluation_prompts(builtin_pipe, shapes_judge):
    """TRuST trains on a concept's retain prompts, so retention must be measured on other prompts.

    Every evaluation already refuses a method's anchors in its held-out suites (`check_leakage`); this
    also covers the anchor and unrelated suites, for every catalog concept, before anything renders.
    """
    from erasurelab.concepts import catalog, concept
    from erasurelab.evaluation.generic_suites import concept_suites
    from erasurelab.evaluation.types import EvaluationSettings

    known = set(shapes_judge.concepts())
    for name in catalog():
        spec = concept(name)
        built = concept_suites(spec, builtin_pipe, known, lambda _, s=spec: s.category, EvaluationSettings())
        evaluated = {prompt for suite in built.all() for prompt in suite.prompts}
        assert spec.retain and not set(spec.retain) & evaluated, name
