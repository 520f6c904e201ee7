"""The LoRA engine: reference = adapters off (bit for bit), gradients only in the adapter, exact
`Edit.from_peft` factors, summed edits, resume, and the pipeline left as it was."""

from __future__ import annotations

import pytest
import torch

from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.methods.finetune import encode_prompts
from erasurelab.methods.lora_engine import LoraTuner, attention_targets, check_rank
from tiny_bert_pipeline import noise_prediction, same_state, tiny_bert_pipeline, unet_state


@pytest.fixture
def pipe():
    return tiny_bert_pipeline(0)


def _inputs(pipe, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([500, 300][:n]), encode_prompts(pipe, ["red"] * n)


def _randomise_b(tuner, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tuner.params.items():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


class SquareTrainer:
    """A toy objective: push the adapted prediction at fixed inputs towards zero, seeded per step."""

    def __init__(self, tuner, pipe):
        self.tuner, self.pipe = tuner, pipe
        self.cond = encode_prompts(pipe, ["red"])

    def train_step(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(1, 4, 8, 8, generator=g)
        loss = self.tuner.predict(x, torch.tensor([400]), self.cond).pow(2).mean()
        self.tuner.step(loss)
        return {"loss": loss.item()}

    def state(self):
        return {}, {}

    def load_state(self, state, tensors):
        return None


def test_targets_are_attn1_projections(pipe):
    targets = attention_targets(pipe.unet)
    assert targets and all(".attn1." in t for t in targets)
    assert {t.rsplit("attn1.", 1)[1] for t in targets} == {"to_q", "to_k", "to_v", "to_out.0"}


def test_rank_larger_than_layer_is_one_line_error(pipe):
    targets = attention_targets(pipe.unet)
    width = min(pipe.unet.get_submodule(targets[0]).in_features, pipe.unet.get_submodule(targets[0]).out_features)
    check_rank(pipe.unet, targets, width)
    with pytest.raises(ErasureLabError, match="larger than layer") as info:
        check_rank(pipe.unet, targets, width + 1)
    assert "\n" not in str(info.value)


def test_reference_is_base_unet_bit_for_bit_and_gradients_reach_only_lora(pipe):
    x, t, cond = _inputs(pipe)
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3) as tuner:
        _randomise_b(tuner)
        assert torch.equal(tuner.reference(x, t, cond), base)
        adapted = tuner.predict(x, t, cond)
        assert not torch.allclose(adapted, base)
        adapted.pow(2).mean().backward()
        grads = {n for n, p in pipe.unet.named_parameters() if p.grad is not None}
        assert grads and grads == set(tuner.params)
        assert all(".lora_" in n for n in grads)


def test_pipeline_restored_on_exit_and_on_error(pipe):
    before = unet_state(pipe)
    names = [n for n, _ in pipe.unet.named_parameters()]
    with pytest.raises(RuntimeError, match="boom"), LoraTuner(pipe, attention_targets(pipe.unet), 4, 1e-3) as tuner:
        _randomise_b(tuner)
        raise RuntimeError("boom")
    assert same_state(before, unet_state(pipe))
    assert [n for n, _ in pipe.unet.named_parameters()] == names
    assert not getattr(pipe.unet, "peft_config", None)


def test_from_peft_is_exact_and_saved_lora_loads_in_diffusers(pipe, tmp_path):
    with LoraTuner(pipe, attention_targets(pipe.unet), rank=4, lr=1e-3, alpha=8) as tuner:
        _randomise_b(tuner)
        with torch.no_grad():
            adapted = noise_prediction(pipe)
        edit = tuner.edit()
    assert all(isinstance(d, LowRank) and d.rank == 4 for d in edit.deltas.values())
    edit.apply(pipe)
    assert torch.allclose(noise_prediction(pipe), adapted, atol=1e-5)
    edit.revert(pipe)
    edit.save(tmp_path / "lora", format="lora")
    loaded = tiny_bert_pipeline(0)
    loaded.load_lora_weights(str(tmp_path / "lora"))
    assert torch.allclose(noise_prediction(loaded), adapted, atol=1e-4)
    full = tiny_bert_pipeline(0)
    edit.save(tmp_path / "full", format="full", base=tiny_bert_pipeline(0))
    Edit.load(tmp_path / "full").apply(full)
    assert torch.allclose(noise_prediction(full), adapted, atol=1e-4)


def test_two_summed_loras_equal_both_adapters_active(pipe):
    from peft import LoraConfig

    targets = attention_targets(pipe.unet)
    edits = []
    for k in range(2):
        with LoraTuner(pipe, targets, rank=4, lr=1e-3, seed=k) as tuner:
            _randomise_b(tuner, seed=10 + k)
            edits.append(tuner.edit())
    both = edits[0] + edits[1]
    assert all(d.rank == 8 for d in both.deltas.values())
    # peft with two adapters, weights [1, 1]: load each factor pair into its own adapter
    ref = tiny_bert_pipeline(0)
    for name, edit in zip(("a", "b"), edits, strict=True):
        ref.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets), adapter_name=name)
        with torch.no_grad():
            for key, delta in edit.deltas.items():
                module = ref.unet.get_submodule(key.removesuffix(".weight"))
                module.lora_A[name].weight.copy_(delta.A.float())
                module.lora_B[name].weight.copy_(delta.B.float())
    ref.unet.set_adapters(["a", "b"], [1.0, 1.0])
    with torch.no_grad():
        expected = noise_prediction(ref)
    both.apply(pipe)
    assert torch.allclose(noise_prediction(pipe), expected, atol=1e-5)
    assert not torch.allclose(noise_prediction(pipe), noise_prediction(tiny_bert_pipeline(0)), atol=1e-4)


def test_resume_equals_uninterrupted_run(pipe, tmp_path):
    targets = attention_targets(pipe.unet)

    def train(steps, folder):
        with LoraTuner(pipe, targets, rank=4, lr=1e-2, seed=3, checkpoint_dir=folder, checkpoint_every=2,
                       key={"toy": 1}) as tuner:
            tuner.run(SquareTrainer(tuner, pipe), steps)
            return tuner.edit(), tuner.resumed_from

    straight, _ = train(5, None)
    train(3, tmp_path / "ck")  # interrupted after step 3 (checkpoint at 2 and 3)
    resumed, start = train(5, tmp_path / "ck")
    assert start == 3
    for key, delta in straight.deltas.items():
        assert torch.equal(delta.B, resumed.deltas[key].B) and torch.equal(delta.A, resumed.deltas[key].A)
    assert any(d.B.abs().max() > 0 for d in straight.deltas.values())


def test_existing_adapter_is_refused(pipe):
    from peft import LoraConfig

    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), adapter_name="user")
    with pytest.raises(ErasureLabError, match="already carries a LoRA"):
        LoraTuner(pipe, attention_targets(pipe.unet), rank=2, lr=1e-3)
