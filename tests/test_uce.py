"""UCE (uce.md §5): closed-form identities, optimality, token alignment, and the method on tiny pipelines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from erasurelab.api import erase
from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.methods import MethodWarning
from erasurelab.methods.uce import (
    _token_rows,
    edit_transform,
    factor_transform,
    layer_factors,
    pair_tokens,
    solve_direct,
)
from erasurelab.models.conditioning import last_word_indices
from erasurelab.models.layers import cross_attention_layers
from tiny_bert_pipeline import MAX_TOKENS, tiny_bert_pipeline

from conftest import needs_assets

torch.set_num_threads(1)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _objective(w, w0, c_e, c_g, c_p, lam, s_e, s_p):
    v_star = c_g @ w0.T
    return (s_e * ((c_e @ w.T - v_star) ** 2).sum() + s_p * ((c_p @ w.T - c_p @ w0.T) ** 2).sum()
            + lam * ((w - w0) ** 2).sum())


# --- closed form -------------------------------------------------------------------------------


def test_sherman_morrison_identities() -> None:
    w0, c, c_star = _randn(32, 16, seed=0), _randn(1, 16, seed=1), _randn(1, 16, seed=2)
    lam, s_e = 0.5, 1.0
    w = solve_direct(w0, c, c_star, torch.zeros(0, 16, dtype=torch.float64), lam, s_e, 0.0)
    x = _randn(16, 5, seed=3)
    x = x - c.T @ (c @ x) / (c @ c.T)                                    # x ⊥ c
    assert torch.allclose(w @ x, w0 @ x, atol=1e-10)
    v_star = w0 @ c_star.T
    norm2 = float(c @ c.T)
    mix = (lam * w0 @ c.T + s_e * norm2 * v_star) / (lam + s_e * norm2)
    assert torch.allclose(w @ c.T, mix, atol=1e-10)


def test_large_lambda_leaves_weights_alone() -> None:
    w0 = _randn(32, 16, seed=0)
    w = solve_direct(w0, _randn(3, 16, seed=1), _randn(3, 16, seed=2), _randn(4, 16, seed=3), 1e9, 1.0, 0.1)
    assert torch.linalg.norm(w - w0) / torch.linalg.norm(w0) < 1e-6


def test_large_preserve_scale_keeps_preserved_and_meets_erase_map() -> None:
    w0 = _randn(32, 16, seed=0)
    c_e, c_g, c_p = _randn(3, 16, seed=1), _randn(3, 16, seed=2), _randn(5, 16, seed=3)   # 3 + 5 <= 16
    w = solve_direct(w0, c_e, c_g, c_p, 1e-6, 1.0, 1e6)
    for c in c_p:
        assert torch.linalg.norm(w @ c - w0 @ c) < 1e-4 * torch.linalg.norm(w0 @ c)
    assert torch.allclose(c_e @ w.T, c_g @ w0.T, atol=1e-4)


def test_guide_equal_to_erase_is_exact_noop() -> None:
    w0, c_e, c_p = _randn(32, 16, seed=0), _randn(4, 16, seed=1), _randn(6, 16, seed=2)
    assert torch.allclose(solve_direct(w0, c_e, c_e, c_p, 0.5, 1.0, 0.1), w0, atol=1e-10)
    g, _ = edit_transform(c_e, c_e, c_p, 0.5, 1.0, 0.1)
    assert factor_transform(g)[0].shape[1] == 0


def test_optimality_gradient_and_lstsq() -> None:
    w0 = _randn(24, 16, seed=0)
    c_e, c_g, c_p = _randn(5, 16, seed=1), _randn(5, 16, seed=2), _randn(9, 16, seed=3)
    lam, s_e, s_p = 0.5, 1.0, 0.1
    w = solve_direct(w0, c_e, c_g, c_p, lam, s_e, s_p).requires_grad_(True)
    _objective(w, w0, c_e, c_g, c_p, lam, s_e, s_p).backward()
    assert torch.linalg.norm(w.grad) / torch.linalg.norm(w0) < 1e-8
    # The same problem as one stacked weighted least-squares system, solved by lstsq.
    rows = torch.cat([s_e ** 0.5 * c_e, s_p ** 0.5 * c_p, lam ** 0.5 * torch.eye(16, dtype=torch.float64)])
    targets = torch.cat([s_e ** 0.5 * c_g @ w0.T, s_p ** 0.5 * c_p @ w0.T, lam ** 0.5 * w0.T])
    w_lstsq = torch.linalg.lstsq(rows, targets).solution.T
    assert torch.allclose(w.detach(), w_lstsq, atol=1e-10)


def test_shared_transform_and_factors_are_exact_and_low_rank() -> None:
    w0 = _randn(24, 16, seed=0)
    c_e, c_g, c_p = _randn(3, 16, seed=1), _randn(3, 16, seed=2), _randn(9, 16, seed=3)
    w_star = solve_direct(w0, c_e, c_g, c_p, 0.5, 1.0, 0.1)
    g, m = edit_transform(c_e, c_g, c_p, 0.5, 1.0, 0.1)
    assert torch.allclose(w0 + w0 @ g, w_star, atol=1e-12)
    b, a = layer_factors(w0, *factor_transform(g))
    assert b.shape[1] <= 3 and torch.linalg.matrix_rank(w_star - w0) <= 3                # rank <= n_e
    assert torch.linalg.norm(w0 + b.float().double() @ a.float().double() - w_star) / torch.linalg.norm(w_star) < 1e-6
    assert torch.allclose(m, m.T)


def test_singular_system_is_a_clear_error() -> None:
    with pytest.raises(ErasureLabError, match="singular"):
        edit_transform(_randn(2, 16, seed=1), _randn(2, 16, seed=2), torch.zeros(0, 16, dtype=torch.float64),
                       0.0, 1.0, 0.1)


# --- token alignment -----------------------------------------------------------------------


def test_tail_alignment_with_clip_tokenizer() -> None:
    from tiny_pipelines import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    fake = SimpleNamespace(tokenizer=tokenizer)
    erase_p, guide_p = "a photo of van gogh", "art"
    k_e, k_g = last_word_indices(fake, [erase_p, guide_p])
    ids = tokenizer([erase_p, guide_p], padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[0][k_e + 1] == tokenizer.eos_token_id and ids[1][k_g + 1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[0][k_e]) == "h</w>"                     # last token of "gogh"
    length = tokenizer.model_max_length
    states_e, states_g = _randn(length, 8, seed=0), _randn(length, 8, seed=1)
    c_e, c_g = pair_tokens(states_e, states_g, k_e, k_g, "tail")
    assert c_e.shape == c_g.shape == (length - max(k_e, k_g), 8)
    assert torch.equal(c_e[0], states_e[k_e]) and torch.equal(c_g[0], states_g[k_g])


def test_all_mode_pairs_every_position_with_bert() -> None:
    pipe = tiny_bert_pipeline(0)
    c_e, c_g, c_p = _token_rows(pipe, [("a photo of red", "a photo of"), ("red", "")], ["a photo of blue"], "all")
    assert c_e.shape == c_g.shape == (2 * MAX_TOKENS, 32) and c_p.shape == (MAX_TOKENS, 32)
    c_e, c_g, c_p = _token_rows(pipe, [("a photo of red", "")], ["a photo of blue"], "last")
    assert c_e.shape == c_g.shape == c_p.shape == (1, 32)


# --- the method ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def test_defaults_on_bert_and_scope(pipe) -> None:
    edit = erase(pipe, "red", "uce")
    assert edit.meta["token_mode"] == "all" and edit.meta["preserve_scale"] == 0.1
    assert [p for p, _ in edit.meta["pairs"]] != ["a photo of red"]
    assert ["photo of red", "photo of"] in edit.meta["pairs"]
    assert "" in edit.meta["preserve"] and not any("red" in p for p in edit.meta["preserve"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit.apply(pipe)
    try:
        changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(before[k], v)}
        assert changed == set(edit.deltas)
        assert changed and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)
    finally:
        edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_multi_concept_targets_come_from_original_weights(pipe) -> None:
    edit = erase(pipe, ["red", "circle", "striped"], "uce")
    pairs = [tuple(p) for p in edit.meta["pairs"]]
    c_e, c_g, c_p = _token_rows(pipe, pairs, edit.meta["preserve"], "all")
    for layer in cross_attention_layers(pipe.unet):
        for proj in ("to_k", "to_v"):
            w0 = getattr(layer.module, proj).weight.detach().double()
            reference = solve_direct(w0, c_e, c_g, c_p, 0.5, 1.0, 0.1)
            entry = edit.deltas[f"{layer.name}.{proj}.weight"]
            assert torch.linalg.norm(w0 + entry.delta() - reference) / torch.linalg.norm(reference) < 1e-6
            assert entry.rank <= min(c_e.shape[0], 32)


def test_without_preservation_erase_tokens_map_to_guide(pipe) -> None:
    edit = erase(pipe, "red", "uce", preserve_scale=0.0, token_mode="last", preserve=())
    c_e, c_g, _ = _token_rows(pipe, [tuple(p) for p in edit.meta["pairs"]], [], "last")
    for layer in cross_attention_layers(pipe.unet):
        w0 = layer.module.to_k.weight.detach().double()
        w = w0 + edit.deltas[f"{layer.name}.to_k.weight"].delta()
        got, want = c_e @ w.T, c_g @ w0.T
        assert torch.linalg.norm(got - want) / torch.linalg.norm(want) < 0.1


def test_guide_equal_to_concept_gives_empty_edit(pipe) -> None:
    spec = ConceptSpec("red", "color", forget=("red",), guide="red")
    edit = erase(pipe, spec, "uce")
    assert edit.is_empty or all(float(d.delta().abs().max()) < 1e-10 for d in edit.deltas.values())


def test_empty_erase_set_is_a_noop(pipe) -> None:
    with pytest.warns(MethodWarning, match="empty"):
        edit = erase(pipe, ConceptSpec("nothing"), "uce")
    assert edit.is_empty


def test_ill_conditioned_system_warns(pipe) -> None:
    with pytest.warns(MethodWarning, match="ill-conditioned"):
        erase(pipe, "red", "uce", lam=1e-9, token_mode="last", preserve=())


@pytest.mark.parametrize(("options", "needle"), [
    ({"token_mode": "head"}, "token_mode"), ({"lam": -1.0}, "lam"), ({"erase_scale": 0.0}, "erase_scale"),
    ({"lamb": 0.1}, "did you mean: lam"),
])
def test_bad_options_one_line(pipe, options, needle) -> None:
    with pytest.raises(ErasureLabError) as info:
        erase(pipe, "red", "uce", **options)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_clip_pipeline_uses_tail() -> None:
    """The CLIP token mode; its LoRA round trip through diffusers is in the contract suite (test_contract.py)."""
    from tiny_pipelines import tiny_sd15_pipeline

    edit = erase(tiny_sd15_pipeline(0), "red", "uce")
    assert edit.meta["token_mode"] == "tail" and edit.meta["preserve_scale"] == 0.1
    assert ["photo of red", ""] in edit.meta["pairs"]                                    # bare guide, as official


def test_sdxl_uce_edits_every_layer() -> None:
    from tiny_pipelines import tiny_sdxl_pipeline

    xl = tiny_sdxl_pipeline(0)
    edit = erase(xl, ["red", "bobo"], "uce")
    layers = cross_attention_layers(xl.unet)
    assert edit.meta["token_mode"] == "tail" and len(edit) == 2 * len(layers)
    assert all(entry.shape[1] == layers[0].context_dim for entry in edit.deltas.values())   # 64 = both encoders


def test_unmerged_lora_is_refused(tmp_path, pipe) -> None:
    erase(pipe, "red", "uce").save(tmp_path / "adapter")
    wrapped = tiny_bert_pipeline(0)
    wrapped.load_lora_weights(str(tmp_path / "adapter"))
    with pytest.raises(ErasureLabError, match="unmerged LoRA"):
        erase(wrapped, "red", "uce")


@needs_assets
@pytest.mark.slow
def test_default_options_erase_circle_on_the_embedded_model(builtin_pipe, shapes_judge) -> None:
    from test_pure import anchor_rate

    reference = anchor_rate(builtin_pipe, shapes_judge, "circle")
    edit = erase(builtin_pipe, "circle", "uce")
    edit.apply(builtin_pipe)
    try:
        edited = anchor_rate(builtin_pipe, shapes_judge, "circle")
    finally:
        edit.revert(builtin_pipe)
    assert reference >= 0.5, reference
    assert edited <= 0.2 * reference, (reference, edited)
