"""The re-emergence attack ("ft"): benign fine-tuning, curve per snapshot, weights untouched."""

from __future__ import annotations

import pytest
import torch

from erasurelab.errors import ErasureLabError

from conftest import needs_assets


def test_registered_with_a_validated_config():
    from erasurelab.attacks import available_attacks, get_attack, make_attack_config

    assert "ft" in available_attacks()
    entry = get_attack("reemergence")
    assert entry.name == "ft"
    with pytest.raises(ErasureLabError, match="train_steps"):
        make_attack_config(entry, {"train_steps": 0})


@needs_assets
@pytest.mark.slow
def test_fine_tuning_attack_on_an_erased_model(builtin_pipe, shapes_judge):
    import erasurelab as el
    from erasurelab.attacks import run_attack
    from erasurelab.models import load_pipeline

    edited = load_pipeline("builtin:shapes")
    el.erase(edited, "red", method="uce").apply(edited)
    before = {k: v.clone() for k, v in edited.unet.state_dict().items()}
    run = run_attack("ft", edited, "red", builtin_pipe, shapes_judge, train_steps=4, snapshot_every=2,
                     n_images=16, n_prompts=4, train_batch_size=8)
    assert run.asr.denominator == 4 and run.pre_asr is not None and run.reference_asr is not None
    curve = run.suite["edited_info"]["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4] and curve[0]["tp"] == run.pre_asr.value
    assert all(torch.equal(before[k], v) for k, v in edited.unet.state_dict().items())
    assert not getattr(edited.unet, "peft_config", None)
    # The curves reach the result: erased, Modular and the unerased control, anchor and paraphrase, with RR.
    curves = run.curves
    assert curves["kind"] == "reemergence" and curves["steps"] == [0, 2, 4]
    assert set(curves["tp"]) == {"erased", "modular", "control"}
    assert curves["counts"]["anchor"] == 4 and 0 < curves["counts"]["paraphrase"] <= 4
    assert run.suite["edited_info"]["paraphrases"] and not set(run.suite["edited_info"]["paraphrases"]) & set(
        run.prompts)
    for probes in curves["tp"].values():
        assert set(probes) == {"anchor", "paraphrase", "pooled"} and all(len(v) == 3 for v in probes.values())
        n_a, n_p = curves["counts"]["anchor"], curves["counts"]["paraphrase"]
        assert probes["pooled"] == pytest.approx([(a * n_a + p * n_p) / (n_a + n_p)
                                                  for a, p in zip(probes["anchor"], probes["paraphrase"], strict=True)])
    assert curves["tp"]["erased"]["anchor"] == [p["tp"] for p in curve]
    assert curves["tp"]["modular"]["anchor"][0] == curves["tp"]["erased"]["anchor"][0]  # same model at step 0
    assert curves["tp"]["control"]["anchor"][-1] == run.reference_asr.value  # the reference run is the control
    assert curves["tp_unaligned"]["anchor"] == curves["tp"]["control"]["anchor"][0]
    # The reference run reused the adapter the edited run trained on the reference model (for Modular).
    assert run.budget["edited"]["optimisation_steps"] == 8 and not run.budget["reference"].get("optimisation_steps")
    gap = curves["tp_unaligned"]["anchor"] - curves["tp_aligned"]["anchor"]
    if gap > 0:
        final = curves["tp"]["erased"]["anchor"][-1]
        assert curves["final_rr"]["erased"]["anchor"] == pytest.approx((final - curves["tp_aligned"]["anchor"]) / gap)
    else:
        assert curves["final_rr"]["erased"]["anchor"] is None
    assert run.to_dict()["curves"] == curves


def test_curves_record_and_ratio():
    from erasurelab.finetuning.curves import build_curves, final_rr, verdict

    curves = build_curves([0, 5, 10], {"erased": {"anchor": [0.1, 0.3, 0.5]}, "modular": {"anchor": [0.1, 0.1, 0.2]},
                                       "control": {"anchor": [0.9, 0.9, 0.8]}}, {"anchor": 10})
    assert curves["rr"]["erased"]["anchor"] == pytest.approx([0.0, 0.25, 0.5])
    assert final_rr(curves, "modular") == pytest.approx(0.125) and final_rr(curves, "control") == pytest.approx(0.875)
    assert verdict(curves).startswith("re-emergence observed")
    held = build_curves([0, 5], {"erased": {"anchor": [0.2, 0.1]}, "control": {"anchor": [0.9, 0.9]}}, {"anchor": 10})
    assert verdict(held).startswith("no re-emergence observed")
    # No control (the attack ran without its reference run), or nothing erased: RR is not defined.
    alone = build_curves([0, 5], {"erased": {"anchor": [0.1, 0.3]}}, {"anchor": 10})
    assert alone["rr"] == {} and final_rr(alone) is None and verdict(alone).startswith("RR not defined")
    nothing = build_curves([0, 5], {"erased": {"anchor": [0.9, 0.9]}, "control": {"anchor": [0.9, 1.0]}},
                           {"anchor": 10})
    assert final_rr(nothing) is None
    with pytest.raises(ValueError, match="step 0"):
        build_curves([5, 10], {"erased": {"anchor": [0.1, 0.2]}}, {"anchor": 10})
    with pytest.raises(ValueError, match="values for"):
        build_curves([0, 5], {"erased": {"anchor": [0.1]}}, {"anchor": 10})


def test_pooled_tp_counts_anchor_and_paraphrase_images_together():
    """The spec's ASR_ft: TP over every anchor and paraphrase image, so the larger probe weighs more; RR follows."""
    from erasurelab.finetuning.curves import POOLED, build_curves, final_rr

    curves = build_curves([0, 5], {"erased": {"anchor": [0.0, 0.1], "paraphrase": [0.2, 0.6]},
                                   "control": {"anchor": [1.0, 1.0], "paraphrase": [0.4, 0.4]}},
                          {"anchor": 30, "paraphrase": 10})
    assert curves["counts"][POOLED] == 40
    assert curves["tp"]["erased"][POOLED] == pytest.approx([2 / 40, 9 / 40])
    assert curves["tp"]["control"][POOLED] == pytest.approx([34 / 40, 34 / 40])
    assert final_rr(curves, "erased", POOLED) == pytest.approx((9 - 2) / (34 - 2))
    # One probe missing: nothing pooled rather than a rate over part of the images.
    anchor_only = build_curves([0, 5], {"erased": {"anchor": [0.0, 0.1]}}, {"anchor": 30})
    assert POOLED not in anchor_only["counts"] and POOLED not in anchor_only["tp"]["erased"]


def test_with_pooled_sums_numerators_and_denominators():
    from erasurelab.evaluation.types import Rate
    from erasurelab.finetuning.curves import POOLED, with_pooled

    rates = with_pooled({"anchor": Rate(3, 192), "paraphrase": Rate(23, 160)})
    assert rates[POOLED] == Rate(26, 352)
    assert POOLED not in with_pooled({"task": Rate(5, 8)})


@needs_assets
def test_target_probes_repeat_each_paraphrase_at_distinct_seeds(builtin_pipe, shapes_judge):
    from erasurelab.concepts import concept
    from erasurelab.finetuning.reemergence import target_probes

    spec, known = concept("dotted"), set(shapes_judge.concepts())
    anchor, paraphrase = target_probes(spec, builtin_pipe, known)
    anchor4, paraphrase4 = target_probes(spec, builtin_pipe, known, anchor_seeds=16, paraphrase_seeds=4)
    assert len(anchor4.prompts) == 4 * len(anchor.prompts) and len(paraphrase4.prompts) == 4 * len(paraphrase.prompts)
    assert sorted(set(paraphrase4.prompts)) == sorted(set(paraphrase.prompts))  # the same held-out prompts
    assert len(set(zip(paraphrase4.prompts, paraphrase4.seeds, strict=True))) == len(paraphrase4.prompts)
