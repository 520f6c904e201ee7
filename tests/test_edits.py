"""Edit objects: exact apply/revert, LoRA export with per-module ranks, full weights, manifests, errors."""

from __future__ import annotations

import json

import pytest
import torch

from erasurelab.api import erase
from erasurelab.edits import (
    FULL_WEIGHTS,
    LORA_WEIGHTS,
    Dense,
    Edit,
    LowRank,
    Replace,
    compress_low_rank,
    dense_to_low_rank,
    read_manifest,
)
from erasurelab.errors import ErasureLabError
from erasurelab.models.layers import cross_attention_layers
from tiny_bert_pipeline import noise_prediction, tiny_bert_pipeline

torch.set_num_threads(1)


def _keys(pipe) -> list[str]:
    return [f"{layer.name}.{p}.weight" for layer in cross_attention_layers(pipe.unet) for p in ("to_k", "to_v")]


def _varied_rank_edit(pipe, seed: int = 0) -> Edit:
    """A low-rank edit whose rank differs per module (1, 2, 3, ...)."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for i, key in enumerate(_keys(pipe)):
        w = pipe.unet.get_parameter(key)
        r = 1 + i % 4
        deltas[key] = LowRank(0.05 * torch.randn(w.shape[0], r, generator=gen, dtype=torch.float64),
                              torch.randn(r, w.shape[1], generator=gen, dtype=torch.float64))
    return Edit(deltas, {"method": "test"}).bind_source(pipe)


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def test_apply_revert_is_bit_exact(pipe) -> None:
    edit = _varied_rank_edit(pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit.apply(pipe)
    assert edit.is_applied(pipe)
    for key, entry in edit.deltas.items():
        assert torch.equal(pipe.unet.get_parameter(key), (before[key].double() + entry.delta()).float())
    with pytest.raises(ErasureLabError, match="already applied"):
        edit.apply(pipe)
    edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(ErasureLabError, match="not applied"):
        edit.revert(pipe)


def test_applied_context_reverts_also_when_the_block_raises(pipe) -> None:
    edit = _varied_rank_edit(pipe, seed=3)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with edit.applied(pipe) as edited:
        assert edited is pipe and edit.is_applied(pipe)
        assert not all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert not edit.is_applied(pipe)
    with pytest.raises(RuntimeError, match="measurement failed"), edit.applied(pipe):
        raise RuntimeError("measurement failed")
    assert not edit.is_applied(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_variable_rank_lora_loads_in_diffusers_exactly(tmp_path, pipe) -> None:
    edit = _varied_rank_edit(pipe)
    edit.apply(pipe)
    direct = noise_prediction(pipe)
    edit.revert(pipe)
    edit.save(tmp_path / "run", format="lora")
    manifest = read_manifest(tmp_path / "run")
    assert sorted(set(manifest["export"]["ranks"].values())) == [1, 2, 3, 4]
    assert manifest["export"]["max_relative_error"] == 0.0
    fresh = tiny_bert_pipeline(0)
    fresh.load_lora_weights(str(tmp_path / "run"))
    assert torch.allclose(noise_prediction(fresh), direct, atol=1e-4)
    # and our own loader merges the same weights
    merged = tiny_bert_pipeline(0)
    Edit.load(tmp_path / "run").apply(merged)
    assert torch.allclose(noise_prediction(merged), direct, atol=1e-5)
    assert not (tmp_path / "run.tmp").exists()


def test_dense_export_reports_truncation_error(tmp_path, pipe) -> None:
    key = _keys(pipe)[0]
    w = pipe.unet.get_parameter(key)
    delta = 0.01 * torch.randn(*w.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    edit = Edit({key: Dense(delta)}).bind_source(pipe)
    state, ranks, errors = edit.lora_state_dict(rank=4)
    module = key.removesuffix(".weight")
    product = state[f"{module}.lora_B.weight"].double() @ state[f"{module}.lora_A.weight"].double()
    true_error = float(torch.linalg.norm(delta - product) / torch.linalg.norm(delta))
    assert ranks[module] == 4 and abs(errors[module] - true_error) < 1e-5 and errors[module] > 0.1
    _, ranks, errors = edit.lora_state_dict()                       # no rank: numerical rank, exact
    assert ranks[module] == min(w.shape) and errors[module] < 1e-6
    edit.save(tmp_path / "dense", format="lora", rank=4)
    assert read_manifest(tmp_path / "dense")["export"]["max_relative_error"] == pytest.approx(true_error, abs=1e-5)


def test_low_rank_helpers() -> None:
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    a = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    b2, a2, err = compress_low_rank(torch.cat([b, b], 1), torch.cat([a, a], 0))     # rank 6 written as 12
    assert b2.shape[1] == 6 and err < 1e-12 and torch.allclose(b2 @ a2, 2 * b @ a, atol=1e-10)
    b3, a3, err3 = dense_to_low_rank(b @ a, rank=6)
    assert torch.allclose(b3 @ a3, b @ a, atol=1e-10) and err3 < 1e-12


def test_full_format_round_trip_is_bit_exact(tmp_path, pipe) -> None:
    edit = _varied_rank_edit(pipe)
    edit.save(tmp_path / "full", format="full")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "full" / FULL_WEIGHTS))
    assert set(stored) == set(edit.deltas)                          # only the changed tensors
    loaded = Edit.load(tmp_path / "full")
    assert all(isinstance(d, Replace) for d in loaded.deltas.values())
    a, b = tiny_bert_pipeline(0), tiny_bert_pipeline(0)
    edit.apply(a)
    loaded.apply(b)
    assert all(torch.equal(a.unet.get_parameter(k), b.unet.get_parameter(k)) for k in edit.deltas)
    # a plain torch user can load the same file without erasurelab
    c = tiny_bert_pipeline(0)
    c.unet.load_state_dict(stored, strict=False)
    assert all(torch.equal(a.unet.get_parameter(k), c.unet.get_parameter(k)) for k in edit.deltas)
    loaded.revert(b)
    assert all(torch.equal(b.unet.get_parameter(k), pipe.unet.get_parameter(k)) for k in edit.deltas)
    # a full-weights edit can be turned into an exact LoRA given its base
    _, ranks, errors = loaded.lora_state_dict(base=pipe)
    assert max(errors.values()) < 1e-6 and max(ranks.values()) <= 4


def test_full_format_needs_a_base(tmp_path) -> None:
    edit = Edit({"x.weight": Dense(torch.zeros(2, 2))})
    with pytest.raises(ErasureLabError, match="base model"):
        edit.save(tmp_path / "run", format="full")
    assert not list(tmp_path.iterdir())


def test_manifest_records_the_run(tmp_path, pipe) -> None:
    edit = erase(pipe, ["red", "circle"], "pure", steps=2, seeds=(0,))
    edit.save(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["kind"] == "erasurelab-edit" and m["method"] == "pure" and m["export"]["format"] == "lora"
    assert m["config"]["tau_forget"] == 0.95 and m["config"]["seeds"] == [0]
    assert [c["name"] for c in m["concepts"]] == ["red", "circle"] and len(m["concepts"][0]["sha256"]) == 64
    assert len(m["base"]["fingerprint"]) == 64 and m["base"]["unet_class"] == "UNet2DConditionModel"
    assert {"torch", "diffusers", "transformers", "peft"} <= set(m["versions"])
    assert m["wall_time_s"] > 0 and m["peak_rss_mb"] > 0
    assert all({"k_F", "k_R"} <= set(info) for info in m["layers"].values())
    assert m["export"]["files"][LORA_WEIGHTS]
    assert Edit.load(tmp_path / "run").meta["method"] == "pure"


def test_existing_folder_is_not_clobbered(tmp_path, pipe) -> None:
    edit = _varied_rank_edit(pipe)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ErasureLabError, match="exists"):
        edit.save(out)
    assert (out / "keep.txt").read_text() == "mine"
    edit.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", LORA_WEIGHTS]
    assert not (tmp_path / "run.tmp").exists() and not (tmp_path / "run.old").exists()


def test_failed_save_leaves_no_folder(tmp_path, pipe, monkeypatch) -> None:
    edit = _varied_rank_edit(pipe)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("erasurelab.edits.write_json_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        edit.save(tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.tmp").exists()


def test_edit_for_another_architecture_is_one_line_error(tmp_path, pipe) -> None:
    from diffusers import UNet2DConditionModel

    _varied_rank_edit(pipe).save(tmp_path / "run")
    other = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48, attention_head_dim=8, norm_num_groups=8)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ErasureLabError) as info:
        Edit.load(tmp_path / "run").apply(other)
    assert "another architecture" in str(info.value) and "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing half-applied
    missing = Edit({"down_blocks.9.attn2.to_k.weight": Dense(torch.zeros(2, 2))})
    with pytest.raises(ErasureLabError, match="has no parameter"):
        missing.apply(other)


def test_fingerprint_mismatch_warns(pipe) -> None:
    edit = erase(pipe, "red", "uce")
    other = tiny_bert_pipeline(5)
    with pytest.warns(UserWarning, match="fingerprint"):
        edit.apply(other)
    edit.revert(other)


@pytest.mark.parametrize(("setup", "needle"), [
    ("missing", "not found"), ("empty", "no edit in"), ("corrupt", "corrupt weights"),
    ("foreign", "unsupported LoRA"), ("manifest", "corrupt"),
])
def test_load_errors_are_one_line(tmp_path, setup: str, needle: str) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "run"
    if setup != "missing":
        folder.mkdir()
    if setup == "corrupt":
        (folder / LORA_WEIGHTS).write_bytes(b"\x00\x01 not safetensors")
    if setup == "foreign":
        save_file({"text_encoder.layer.lora_A.weight": torch.zeros(1, 2)}, str(folder / LORA_WEIGHTS))
    if setup == "manifest":
        (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ErasureLabError) as info:
        Edit.load(folder)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_format_and_empty_lora(tmp_path, pipe) -> None:
    with pytest.raises(ErasureLabError, match="did you mean: lora"):
        Edit().save(tmp_path / "x", format="loar")
    with pytest.raises(ErasureLabError, match="no LoRA to export"):
        Edit().save(tmp_path / "x", format="lora")
    Edit({}, {"method": "pure"}).save(tmp_path / "x", format="full")       # an empty run is still recorded
    assert Edit.load(tmp_path / "x").is_empty


def test_run_folder_reloads_on_its_base(tmp_path, monkeypatch) -> None:
    from erasurelab.edits import base_model_spec, is_run_folder, load_run
    from erasurelab.models.provenance import base_source_of, record_source, source_of

    base = tiny_bert_pipeline(0)
    record_source(base, "builtin:tiny")
    edit = erase(base, "red", "uce")
    edit.save(tmp_path / "run")
    assert is_run_folder(tmp_path / "run") and not is_run_folder(tmp_path)
    assert base_model_spec(tmp_path / "run") == "builtin:tiny"
    loaded = load_run(tmp_path / "run", lambda spec: tiny_bert_pipeline(0))
    edit.apply(base)
    assert torch.allclose(noise_prediction(loaded), noise_prediction(base), atol=1e-5)
    assert source_of(loaded) == str(tmp_path / "run") and base_source_of(loaded) == "builtin:tiny"
    anonymous = erase(tiny_bert_pipeline(0), "red", "uce")
    anonymous.save(tmp_path / "anon")
    with pytest.raises(ErasureLabError, match="does not name its base model"):
        base_model_spec(tmp_path / "anon")


def test_cli_helpers(pipe) -> None:
    from erasurelab.api import parse_options, summary

    assert parse_options(["tau_forget=0.9", "seeds=[0,1]", "projections=[to_v]", "guide=", "token-mode=last"]) == {
        "tau_forget": 0.9, "seeds": (0, 1), "projections": ("to_v",), "guide": "", "token_mode": "last"}
    with pytest.raises(ErasureLabError, match="key=value"):
        parse_options(["tau_forget"])
    line = summary(erase(pipe, "red", "uce"))
    assert line.startswith("uce erased [red]: 8 tensors") and "\n" not in line


def test_auto_format_picks_lora_only_when_every_delta_has_one(tmp_path, pipe) -> None:
    proj = cross_attention_layers(pipe.unet)[0].name + ".to_out.0"
    weight = pipe.unet.get_submodule(proj).weight
    low = Edit({f"{proj}.weight": LowRank(torch.ones(weight.shape[0], 1), torch.ones(1, weight.shape[1]))})
    with_bias = Edit({**low.deltas, f"{proj}.bias": Dense(torch.ones(weight.shape[0]))})
    assert low.lora_exportable() and not with_bias.lora_exportable() and not Edit().lora_exportable()
    with pytest.raises(ErasureLabError, match="1-D tensor"):
        with_bias.save(tmp_path / "lora", format="lora")
    assert not (tmp_path / "lora").exists()
    manifest = json.loads((low.save(tmp_path / "a", format="auto") / "manifest.json").read_text())
    assert manifest["export"]["format"] == "lora"
    manifest = json.loads((with_bias.save(tmp_path / "b", format="auto", base=pipe) / "manifest.json").read_text())
    assert manifest["export"]["format"] == "full"
