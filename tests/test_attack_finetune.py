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
