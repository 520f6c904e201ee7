"""A real-model user's path end to end: a diffusers folder, a concept YAML and a CLIP judge folder
(all made offline): `erasurelab erase` with every method, then `erasurelab evaluate --judge clip:DIR`."""

from __future__ import annotations

import json

import pytest

import test_contract  # noqa: F401  (registers the test-coin judge DUO filters its pairs with)
from test_cli import run_cli
from test_clip_judge import make_clip_folder
from tiny_pipelines import at_sample_size, tiny_sd15_pipeline, tiny_sdxl_pipeline

pytestmark = pytest.mark.slow

CONCEPT = """\
name: teapot
category: object
words: [teapot]
neighbours: [kettle, mug, vase]
paraphrases: [a pot for brewing tea, a porcelain vessel with a spout for tea, the thing you pour tea from]
"""
METHODS = [("pure", "lora", ["-o", "steps=2", "-o", "seeds=[0]"]), ("uce", "lora", []),
           ("esd", "full", ["-o", "steps=2", "-o", "pool_size=2", "-o", "sample_steps=2"]),
           ("trust", "full", ["-o", "steps=2", "-o", "n_forget=2", "-o", "sample_steps=2"]),
           # DUO builds its pairs with a judge that must see the concept in the tiny model's renders; a
           # random CLIP model sees nothing, so its pairs are filtered by the contract suite's coin judge.
           ("duo", "auto", ["-o", "steps=2", "-o", "batch_size=2", "-o", "n_pairs=2", "-o", "rank=2",
                            "-o", "pair_steps=2", "-o", "judge=test-coin"])]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    (root / "teapot.yaml").write_text(CONCEPT)
    make_clip_folder(root / "clip")
    for name, build in (("sd15", tiny_sd15_pipeline), ("sdxl", tiny_sdxl_pipeline)):
        # 8x8 latents (saved in the U-Net's config, as a real folder's sample_size is): the path, at 1/16 the cost
        at_sample_size(build(), 8).save_pretrained(root / name, safe_serialization=True)
    return root


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize(("method", "fmt", "options"), METHODS, ids=[m[0] for m in METHODS])
def test_erase_then_evaluate_with_a_clip_judge(world, family, method, fmt, options, capsys):
    run, report = world / f"{family}-{method}", world / f"{family}-{method}-report"
    code, _, err = run_cli(["erase", "--model", str(world / family), "--method", method, "--concept",
                            str(world / "teapot.yaml"), "--out", str(run), "--format", fmt, "-q", *options], capsys)
    assert code == 0, err
    code, out, err = run_cli(["evaluate", "--model", str(run), "--concept", str(world / "teapot.yaml"), "--judge",
                              f"clip:{world / 'clip'}", "--out", str(report), "--preset", "quick", "--steps", "2",
                              "-q"], capsys)
    assert code == 0, err
    metrics = json.loads((report / "metrics.json").read_text())
    assert (report / "index.html").exists()
    assert metrics["judge"]["id"].startswith("clip-v1-")
    concept = metrics["concepts"][0]
    assert concept["concept"] == "teapot" and concept["suites"]["anchor"]["images"] > 0
    assert "teapot" in out
