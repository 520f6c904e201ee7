"""`erasurelab world dataset` and `erasurelab finetune` (plain and --modular) end to end on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

from test_cli import run_cli

from conftest import needs_assets

pytestmark = [needs_assets, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A benign dataset for erased red and a UCE erasure run of red."""
    from erasurelab.world.benign import write_benign_dataset

    root = tmp_path_factory.mktemp("ft")
    write_benign_dataset("red", root / "data", n=16, seed=0)
    import erasurelab as el

    pipe = el.load_pipeline("builtin:shapes")
    el.erase(pipe, "red", method="uce").save(root / "run")
    return root


def test_world_dataset_command(tmp_path, capsys):
    code, _, err = run_cli(["world", "dataset", "--concept", "red+circle", "--out", str(tmp_path / "d"),
                              "--n", "8"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not any(r["labels"]["color"] == "red" and r["labels"]["object"] == "circle"
                                      for r in rows)


def _finetune_run(world, variant: str, capsys):
    """`erasurelab finetune --model RUN --<variant>` for a few steps; the run folder, its manifest checked."""
    out = world / variant
    code, stdout, err = run_cli(["finetune", "--model", str(world / "run"), "--data", str(world / "data"),
                                 "--out", str(out), f"--{variant}", "--steps", "2", "--batch-size", "4",
                                 "--checkpoint-every", "2", "-q"], capsys)
    assert code == 0, err
    assert f"fine-tuning ({variant})" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == variant and manifest["components"] == ["safety", "ft"]
    return out


def test_modular_run_loads_with_safety_and_fine_tuning(world, capsys):
    from erasurelab.edits import Edit
    from erasurelab.models import load_pipeline

    out = _finetune_run(world, "modular", capsys)
    merged, safety = Edit.load(out), Edit.load(world / "run")
    # The merged run holds the safety edit unchanged plus the adapter: its attn2 to_k/to_v deltas contain safety's.
    key = next(iter(safety.deltas))
    assert merged.deltas[key].delta().shape == safety.deltas[key].delta().shape
    pipe = load_pipeline(out)
    base = load_pipeline("builtin:shapes")
    assert not torch.equal(dict(pipe.unet.named_parameters())[key], dict(base.unet.named_parameters())[key])


def test_full_variant_trains_full_rank_through_the_safety_edit(world, capsys):
    """--full is baseline (a): full-rank deltas on the attention projections, the safety edit kept in the run."""
    from erasurelab.edits import Edit

    out = _finetune_run(world, "full", capsys)
    merged, safety = Edit.load(out), Edit.load(world / "run")
    assert set(safety.deltas) < set(merged.deltas)
    from erasurelab.models import load_pipeline

    key = next(k for k in merged.deltas if ".attn1.to_q." in k)  # no safety edit touches self-attention
    tuned, base = load_pipeline(out), load_pipeline("builtin:shapes")
    delta = dict(tuned.unet.named_parameters())[key] - dict(base.unet.named_parameters())[key]
    assert type(merged.deltas[key]).__name__ != "LowRank" and torch.linalg.matrix_rank(delta.detach()) > 4


def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ["finetune", "--model", str(world / "run"), "--data", str(world / "data"), "--out", str(out), "--steps", "0"],
        ["finetune", "--model", str(world / "run"), "--data", str(tmp_path / "nodata"), "--out", str(out)],
        ["finetune", "--model", "builtin:shapes", "--data", str(world / "data"), "--out", str(out), "--modular"],
        ["finetune", "--model", "builtin:shapes", "--data", str(world / "data"), "--out", str(out), "--full"],
        ["finetune", "--model", str(world / "run"), "--data", str(world / "data"), "--out", str(out), "--full",
         "--modular"],
    ]
    for args in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1, (args, err)
    assert not out.exists() and not (tmp_path / "out.ckpt").exists()


def test_safety_run_of_another_base_is_refused(world, tmp_path, capsys):
    from tiny_pipelines import tiny_sd15_pipeline

    folder = tmp_path / "tiny"
    tiny_sd15_pipeline().save_pretrained(folder, safe_serialization=True)
    code, _, err = run_cli(["finetune", "--model", str(folder), "--safety", str(world / "run"), "--data",
                            str(world / "data"), "--out", str(tmp_path / "o"), "--modular"], capsys)
    assert code == 2 and ("another base" in err or "does not fit" in err), err
    assert not (tmp_path / "o").exists()
