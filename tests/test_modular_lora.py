"""Benign fine-tuning and Modular LoRA on a tiny SD1.5 pipeline: merge equivalence, isolation,
linearity, identical data order, exact resume and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasurelab.caption_data import CaptionData
from erasurelab.concepts import ConceptSpec
from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.finetuning import FinetuneConfig, finetune, merge
from erasurelab.finetuning.denoise import DenoisingObjective
from erasurelab.finetuning.modular import edit_hash
from erasurelab.finetuning.reemergence import variant_merge
from tiny_pipelines import tiny_sd15_pipeline

CONFIG = FinetuneConfig(steps=4, rank=2, lr=1e-3, batch_size=2, snapshot_every=2)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd15_pipeline()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 64, 64, generator=generator) * 255).to(torch.uint8)
    captions = [f"a photo of a {w}" for w in ("dog", "bird", "tree", "house", "boat", "car")]
    return CaptionData(tmp_path_factory.mktemp("data"), images, captions, [f"{i}.png" for i in range(6)])


@pytest.fixture(scope="module")
def safety(pipe):
    import erasurelab as el

    return el.erase(pipe, ConceptSpec.from_words("cat", "object", ["cat"], ["dog"]), method="uce")


def unet_out(pipe, prompt: str = "a photo of a cat") -> torch.Tensor:
    """One U-Net forward pass at a fixed noisy latent (no sampler steps to accumulate rounding)."""
    tokens = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            return_tensors="pt")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        context = pipe.text_encoder(tokens.input_ids)[0]
        return pipe.unet(x, 500, encoder_hidden_states=context).sample


def state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_modular_trains_exactly_the_control_adapter_and_never_touches_safety(pipe, data, safety):
    before_weights, before_hash = state(pipe), edit_hash(safety)
    control = finetune(pipe, data, "control", None, CONFIG)
    modular = finetune(pipe, data, "modular", safety, CONFIG)
    plain = finetune(pipe, data, "plain", safety, CONFIG)
    # Isolation: the modular adapter was trained on the base alone, so it is the control's, bit for bit.
    for key in control.ft.deltas:
        torch.testing.assert_close(modular.ft.deltas[key].B, control.ft.deltas[key].B, atol=0, rtol=0)
        torch.testing.assert_close(modular.ft.deltas[key].A, control.ft.deltas[key].A, atol=0, rtol=0)
    # Baseline (b) trains through the safety edit, so its adapter differs.
    assert any(not torch.equal(plain.ft.deltas[k].B, control.ft.deltas[k].B) for k in control.ft.deltas)
    assert edit_hash(safety) == before_hash == modular.safety_hash
    after = state(pipe)
    assert before_weights.keys() == after.keys() and all(torch.equal(before_weights[k], after[k]) for k in after)
    assert not hasattr(pipe.unet, "peft_config") or not pipe.unet.peft_config
    assert sorted(modular.snapshots) == [2, 4] and modular.merged.meta["components"] == ["safety", "ft"]


def test_identical_data_order_across_variants(pipe, data):
    a = DenoisingObjective(pipe, data, lambda *x: None, batch_size=2, seed=0)
    b = DenoisingObjective(pipe, data, lambda *x: None, batch_size=2, seed=0)
    assert all(torch.equal(a.batch_indices(s), b.batch_indices(s)) for s in range(9))
    epoch = torch.cat([a.batch_indices(s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(6))  # every image once per epoch


def test_two_live_adapters_equal_the_folded_merge(pipe, data, safety, tmp_path):
    ft = finetune(pipe, data, "control", None, CONFIG).ft
    safety.save(tmp_path / "safety", format="lora", base=pipe)
    ft.save(tmp_path / "ft", format="lora", base=pipe)
    live = tiny_sd15_pipeline()
    live.load_lora_weights(str(tmp_path / "safety"), adapter_name="safety")
    live.load_lora_weights(str(tmp_path / "ft"), adapter_name="ft")
    live.set_adapters(["safety", "ft"], adapter_weights=[1.0, 1.0])
    folded = tiny_sd15_pipeline()
    merge(safety, ft).apply(folded)
    torch.testing.assert_close(unet_out(live), unet_out(folded), atol=1e-5, rtol=0)
    # Folding order does not matter.
    other = tiny_sd15_pipeline()
    ft.apply(other)
    safety.apply(other)
    torch.testing.assert_close(unet_out(other), unet_out(folded), atol=1e-5, rtol=0)


def test_linearity(pipe, safety):
    zero_ft = Edit({k: LowRank(torch.zeros(d.shape[0], 1, dtype=torch.float64),
                               torch.zeros(1, d.shape[1], dtype=torch.float64)) for k, d in safety.deltas.items()})
    a, b = tiny_sd15_pipeline(), tiny_sd15_pipeline()
    merge(safety, zero_ft).apply(a)
    safety.apply(b)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values(),
                                                 strict=True))
    assert merge(None, zero_ft) is zero_ft


def test_project_merge_applies_the_safety_operator_to_the_fine_tuning_delta(pipe):
    class Layer(torch.nn.Module):  # a to_k-shaped projection with out <= in, as on SD and the embedded model
        def __init__(self) -> None:
            super().__init__()
            self.to_k = torch.nn.Linear(16, 6, bias=False)

    torch.manual_seed(0)
    layer = Layer()
    w0 = layer.to_k.weight.detach().double()
    v = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    projector = torch.eye(6, dtype=torch.float64) - v @ v.T  # E = I − V Vᵀ
    safety = Edit({"to_k.weight": LowRank(-v, v.T @ w0)}).bind_source(layer)  # E W0 − W0
    d_ft = torch.randn(6, 16, dtype=torch.float64) * 0.01
    ft = Edit({"to_k.weight": LowRank(d_ft, torch.eye(16, dtype=torch.float64))})
    merged = merge(safety, ft, "project", base=layer)
    torch.testing.assert_close(merged.dense("to_k.weight", base=layer), projector @ (w0 + d_ft) - w0,
                               atol=1e-10, rtol=0)
    # The fine-tuning delta keeps no component along the removed directions: Vᵀ(W* − E W0) = Vᵀ E ΔW_ft = 0,
    # while the plain sum keeps all of it.
    ft_part = merged.dense("to_k.weight", base=layer) - (projector @ w0 - w0)
    torch.testing.assert_close(v.T @ ft_part, torch.zeros(2, 16, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (v.T @ d_ft).abs().max() > 1e-4
    # The experiment's Modular variants merge exactly so: "modular-project" projects, "modular" sums.
    projected = variant_merge("modular-project", safety, layer)(ft).dense("to_k.weight", base=layer)
    torch.testing.assert_close(projected, merged.dense("to_k.weight", base=layer), atol=0, rtol=0)
    summed = variant_merge("modular", safety, layer)(ft).dense("to_k.weight", base=layer)
    torch.testing.assert_close(summed, projector @ w0 - w0 + d_ft, atol=1e-10, rtol=0)
    with pytest.raises(ErasureLabError, match="unknown merge"):
        merge(safety, ft, "average")
    # A layer whose delta does not determine the operator (out > in) is refused, not guessed.
    key = next(n for n, _ in pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight"))
    wide = dict(pipe.unet.named_parameters())[key].detach().double()
    tall_safety = Edit({key: LowRank(torch.ones(wide.shape[0], 1, dtype=torch.float64) * 1e-3,
                                     torch.ones(1, wide.shape[1], dtype=torch.float64))}).bind_source(pipe)
    with pytest.raises(ErasureLabError, match="full row rank"):
        merge(tall_safety, Edit({key: tall_safety.deltas[key]}), "project", base=pipe)


def test_resume_equals_an_uninterrupted_run(pipe, data, tmp_path):
    whole = finetune(pipe, data, "control", None, CONFIG)
    short = FinetuneConfig(**{**CONFIG.to_dict(), "steps": 2})
    finetune(pipe, data, "control", None, short, checkpoint_dir=tmp_path / "ckpt")
    resumed = finetune(pipe, data, "control", None, CONFIG, checkpoint_dir=tmp_path / "ckpt")
    for key, entry in whole.ft.deltas.items():
        torch.testing.assert_close(resumed.ft.deltas[key].B, entry.B, atol=0, rtol=0)
    assert sorted(resumed.snapshots) == [2, 4]
    np.testing.assert_allclose([x["loss"] for x in resumed.logs], [x["loss"] for x in whole.logs], rtol=0, atol=0)


def test_bad_input(pipe, data, safety):
    with pytest.raises(ErasureLabError, match="steps must be a positive"):
        FinetuneConfig(steps=0)
    with pytest.raises(ErasureLabError, match="unknown fine-tuning variant"):
        finetune(pipe, data, "modulr", safety, CONFIG)
    with pytest.raises(ErasureLabError, match="needs a safety edit"):
        finetune(pipe, data, "plain", None, CONFIG)
    safety.apply(pipe)
    try:
        with pytest.raises(ErasureLabError, match="already applied"):
            finetune(pipe, data, "modular", safety, CONFIG)
    finally:
        safety.revert(pipe)


def _recorded_batches(monkeypatch):
    """Record, per training run, every step's batch rows, seed and first noise value (the data order)."""
    runs: list[list[tuple[int, tuple[int, ...], int]]] = []
    original_init, original_loss = DenoisingObjective.__init__, DenoisingObjective.loss

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        runs.append([])
        self._record = runs[-1]

    def loss(self, step):
        self._record.append((step, tuple(self.batch_indices(step).tolist()), self.seed))
        return original_loss(self, step)

    monkeypatch.setattr(DenoisingObjective, "__init__", init)
    monkeypatch.setattr(DenoisingObjective, "loss", loss)
    return runs


def test_full_fine_tuning_baseline_has_the_same_data_and_leaves_the_model_and_safety_untouched(
        pipe, data, safety, monkeypatch):
    from erasurelab.edits import Dense
    from erasurelab.finetuning.modular import ft_targets

    runs = _recorded_batches(monkeypatch)
    before_weights, before_hash = state(pipe), edit_hash(safety)
    control = finetune(pipe, data, "control", None, CONFIG)
    plain = finetune(pipe, data, "plain", safety, CONFIG)
    full = finetune(pipe, data, "full", safety, CONFIG)
    # Identical data order, seeds and steps across the variants (baseline a included).
    assert len(runs) == 3 and runs[0] == runs[1] == runs[2] and len(runs[0]) == CONFIG.steps
    assert sorted(full.snapshots) == sorted(plain.snapshots) == sorted(control.snapshots) == [2, 4]
    # Baseline (a) trains the same projections at full rank: dense deltas, no adapter left behind.
    assert set(full.ft.deltas) == {f"{t}.weight" for t in ft_targets(pipe.unet)}
    assert all(isinstance(d, Dense) for d in full.ft.deltas.values())
    assert any(bool(d.delta().abs().max() > 0) for d in full.ft.deltas.values())
    assert edit_hash(safety) == before_hash == full.safety_hash
    after = state(pipe)
    assert all(torch.equal(before_weights[k], after[k]) for k in after)
    assert not hasattr(pipe.unet, "peft_config") or not pipe.unet.peft_config
    assert full.merged.meta["components"] == ["safety", "ft"] and full.merged.meta["variant"] == "full"
    # The merged edit on the base is the erased model with the full-rank update on top.
    merged, stacked = tiny_sd15_pipeline(), tiny_sd15_pipeline()
    full.merged.apply(merged)
    safety.apply(stacked)
    full.ft.apply(stacked)
    torch.testing.assert_close(unet_out(merged), unet_out(stacked), atol=1e-5, rtol=0)
    # Its learning rate is its own: a larger full_lr moves the weights further in the same two steps.
    faster = finetune(pipe, data, "full", safety, FinetuneConfig(**{**CONFIG.to_dict(), "steps": 2, "full_lr": 1e-3}))
    key = next(iter(full.ft.deltas))
    assert faster.ft.deltas[key].delta().norm() > full.snapshots[2].deltas[key].delta().norm()


def test_full_fine_tuning_resumes_exactly(pipe, data, safety, tmp_path):
    whole = finetune(pipe, data, "full", safety, CONFIG)
    short = FinetuneConfig(**{**CONFIG.to_dict(), "steps": 2})
    finetune(pipe, data, "full", safety, short, checkpoint_dir=tmp_path / "ckpt")
    resumed = finetune(pipe, data, "full", safety, CONFIG, checkpoint_dir=tmp_path / "ckpt")
    for key, entry in whole.ft.deltas.items():
        torch.testing.assert_close(resumed.ft.deltas[key].delta(), entry.delta(), atol=0, rtol=0)
    assert sorted(resumed.snapshots) == [2, 4]
    for key, entry in whole.snapshots[2].deltas.items():  # the snapshot taken before the interruption
        torch.testing.assert_close(resumed.snapshots[2].deltas[key].delta(), entry.delta(), atol=0, rtol=0)
    with pytest.raises(ErasureLabError, match="needs a safety edit"):
        finetune(pipe, data, "full", None, CONFIG)
    with pytest.raises(ErasureLabError, match="full_lr must be positive"):
        FinetuneConfig(full_lr=0.0)


def test_experiment_refuses_an_unknown_variant_before_any_work(pipe, data):
    from erasurelab.finetuning.reemergence import EXPERIMENT_VARIANTS, run_experiment

    assert "full" in EXPERIMENT_VARIANTS  # baseline (a) can join (b) and Modular on the same data and seeds
    spec = ConceptSpec.from_words("cat", "object", ["cat"], ["dog"])
    with pytest.raises(ErasureLabError, match="unknown experiment variant 'fulll'"):
        run_experiment(pipe, {}, spec, data, judge=None, variants=("fulll",))


def test_experiment_refuses_a_projection_merge_it_cannot_do_before_any_work(pipe, data, safety):
    from erasurelab.finetuning.reemergence import run_experiment

    # The tiny pipeline's cross-attention K/V map 32 text features to 64 outputs (out > in): E is not
    # recoverable from ΔW_safe there, so the projection merge is refused before the control trains
    # (judge=None would fail at the first render, so reaching the message proves nothing ran).
    spec = ConceptSpec.from_words("cat", "object", ["cat"], ["dog"])
    with pytest.raises(ErasureLabError, match="full row rank"):
        run_experiment(pipe, {"uce": safety}, spec, data, judge=None, variants=("modular-project",))
