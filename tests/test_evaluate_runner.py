"""evaluate() on tiny random pipelines with a stub judge (evaluation.md §6).

Identity edit, determinism, the seed rule, run folders with the default (reverted) reference,
attacks, and bad inputs (one-line errors, checked before rendering, no report folder left behind).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import evaluate
from erasurelab.evaluation.rendering import RenderCache, model_hash
from erasurelab.evaluation.types import AttackResult, EvaluationSettings, Rate
from erasurelab.models.provenance import current_edit, record_source
from erasurelab.models.sampling import generate
from stub_judge import StubJudge
from tiny_bert_pipeline import tiny_bert_pipeline

torch.set_num_threads(1)

SMALL = EvaluationSettings(steps=2, anchor_seeds=2, paraphrase_max=8, neighbour_k=3, neighbour_templates=2,
                           neighbour_seeds=2, min_neighbour_rate=0.0, unrelated_max=8, selective_max=6,
                           judge_accuracy_n=40)
KEY = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _edit(scale: float = 3.0, meta: dict | None = None) -> Edit:
    g = torch.Generator().manual_seed(7)
    B = torch.randn(64, 2, generator=g, dtype=torch.float64) * scale
    A = torch.randn(2, 32, generator=g, dtype=torch.float64)
    return Edit({KEY: LowRank(B, A)}, meta or {"method": "test-edit", "wall_time_s": 1.5, "peak_rss_mb": 123.0})


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


@pytest.fixture(scope="module")
def edited_pipe():
    p = tiny_bert_pipeline(0)
    _edit().apply(p)
    return p


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A saved run (LoRA + manifest) whose base is a tiny pipeline saved as a diffusers folder."""
    from erasurelab.api import base_description
    from erasurelab.concepts import concept

    root = tmp_path_factory.mktemp("runs")
    base = tiny_bert_pipeline(0)
    base.save_pretrained(root / "base", safe_serialization=True)
    record_source(base, str(root / "base"))
    edit = _edit(meta={"method": "test-edit", "wall_time_s": 1.5, "peak_rss_mb": 123.0,
                       "concepts": [concept("red").manifest_entry()]})
    edit.meta["base"] = base_description(base, edit.deltas)
    edit.save(root / "run", format="lora")
    return root


def _one_line(info: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(info.value)


# -- Identity edit and determinism ----------------------------------------------------------------------

def test_identity_edit_keeps_everything(pipe) -> None:
    """Evaluating the unedited model as if edited: every ratio is 1, so f = 0 and H = 0 (no credit for no edit)."""
    settings = EvaluationSettings(**{**SMALL.to_dict(), "measure_overhead": True})
    result = evaluate(pipe, "blue", reference=pipe, judge=StubJudge(), settings=settings)
    c = result.concept("blue")
    assert c.neighbours and all(n["rho"] == 1.0 for n in c.neighbours)
    assert c.quality["q"] == 1.0 and c.quality["fd_edited"] == c.quality["fd_floor"]
    for suite in ("anchor", "paraphrase", "selective"):
        assert c.target[suite]["edited"] == c.target[suite]["reference"]
    assert any(d["counted"] for d in c.forget.values())
    assert all(d["ratio"] == 1.0 for d in c.forget.values() if d["counted"])
    assert c.selective["edited"] == c.selective["reference"]
    assert c.unrelated["edited"] == c.unrelated["reference"]
    assert c.unrelated["attributes"] and all(v["edited"] == v["reference"] for v in c.unrelated["attributes"].values())
    assert c.terms["r"] == 1.0 and c.terms["a"] == 1.0
    assert c.terms["f"] == 0.0 and c.terms_reference["f"] == 0.0
    assert c.h == 0.0 and c.h_reference == 0.0
    assert result.model_hash == result.reference_hash
    assert math.isfinite(result.efficiency["inference_overhead"])
    assert any("no attacks run" in n for n in c.notes)
    assert result.summary()[0].startswith("blue: H ")


def test_identical_copies_share_renders(pipe) -> None:
    copy = tiny_bert_pipeline(0)
    assert model_hash(copy) == model_hash(pipe)
    result = evaluate(copy, "red", reference=pipe, judge=StubJudge(), settings=SMALL)
    assert result.timings["cache_hits"] > 0
    assert result.concept("red").quality["q"] == 1.0


def test_same_call_twice_gives_identical_metrics(pipe, edited_pipe) -> None:
    first = evaluate(edited_pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL)
    second = evaluate(edited_pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL)
    assert first.metrics() == second.metrics()
    assert first.model_hash != first.reference_hash
    assert first.concept("red").quality["fd_edited"] != first.concept("red").quality["fd_floor"]


def test_several_concepts_share_reference_renders(pipe, edited_pipe) -> None:
    result = evaluate(edited_pipe, ["red", "blue"], reference=pipe, judge=StubJudge(), settings=SMALL)
    assert [c.concept for c in result.concepts] == ["red", "blue"]
    assert result.timings["cache_hits"] > 0  # unrelated prompts without red or blue are rendered once
    assert len({c.suites["unrelated"]["sha256"] for c in result.concepts}) == 2


# -- Seed rule ----------------------------------------------------------------------------------------------

def test_a_prompt_renders_the_same_alone_or_in_a_batch(pipe) -> None:
    prompts = ["a red circle", "a blue square", "a green star"]
    batch = generate(pipe, prompts, [1, 2, 3], steps=2, guidance=5.0)
    alone = generate(pipe, prompts[1:2], [2], steps=2, guidance=5.0)
    # Not bitwise on CPU: batch composition changes float rounding in torch's kernels (~1e-6).
    assert torch.allclose(batch[1], alone[0], atol=1e-5)
    cached = RenderCache(steps=2, guidance=5.0).render(pipe, "k", prompts, [1, 2, 3])
    single = RenderCache(steps=2, guidance=5.0).render(pipe, "k", prompts[1:2], [2])
    assert (cached[1] - single[0]).abs().max() <= 1 / 255 + 1e-6


# -- Run folders and the default reference ---------------------------------------------------------------------

def test_run_folder_is_evaluated_against_its_reverted_base(run_folder) -> None:
    from erasurelab.models import load_pipeline

    result = evaluate(str(run_folder / "run"), "red", judge=StubJudge(), settings=SMALL)
    assert "edit reverted" in result.reference
    assert result.method == "test-edit"
    eff = result.efficiency
    assert eff["edit_wall_time_s"] == 1.5 and eff["edit_peak_rss_mb"] == 123.0
    assert eff["tensors_changed"] == 1 and eff["parameters_changed"] == 64 * 32
    assert eff["delta_parameters"] == 2 * (64 + 32) and eff["delta_bytes_on_disk"] > 0
    edited = load_pipeline(run_folder / "run")
    assert result.model_hash == model_hash(edited)
    current_edit(edited).revert(edited)
    assert result.reference_hash == model_hash(edited)  # the reference is exactly the unedited weights


def test_pipeline_with_its_edit_is_restored_after_evaluation(run_folder) -> None:
    from erasurelab.models import load_pipeline

    edited = load_pipeline(run_folder / "run")
    before = model_hash(edited)
    evaluate(edited, "red", judge=StubJudge(), settings=SMALL)
    assert model_hash(edited) == before
    assert current_edit(edited).is_applied(edited)


# -- Attacks and judge accuracy ---------------------------------------------------------------------------------

def test_attacks_set_the_attack_term(pipe, edited_pipe) -> None:
    attacks = [AttackResult("ti", "red", Rate(3, 10), Rate(1, 10), Rate(9, 10), ["<c*> circle"]),
               AttackResult("ring", "red", Rate(6, 10), None, Rate(0, 10))]
    result = evaluate(edited_pipe, "red", reference=pipe, judge=StubJudge(), attacks=attacks, settings=SMALL)
    c = result.concept("red")
    assert c.terms["a"] == pytest.approx(0.4)
    assert [row["name"] for row in c.attacks] == ["ti", "ring"]
    assert not c.attacks[1]["meaningful"]
    assert any("fails on the unedited model" in n for n in c.notes)


def test_judge_accuracy_is_measured_or_taken_as_given(pipe) -> None:
    result = evaluate(pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL)
    accuracy = result.judge["accuracy"]
    assert set(accuracy) == {"color", "background"} and accuracy["color"].denominator == 40
    given = evaluate(pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL, judge_accuracy={"color": 0.97})
    assert given.judge["accuracy"] == {"color": 0.97} and given.judge["accuracy_source"] == "given"
    assert result.judge["id"] == StubJudge().id


# -- Bad inputs ---------------------------------------------------------------------------------------------------

def _fails(tmp_path, match: str, *args, **kwargs) -> None:
    out = tmp_path / "report"
    kwargs = {"judge": StubJudge(), "settings": SMALL, "out": out, **kwargs}
    with pytest.raises(ErasureLabError, match=match) as info:
        evaluate(*args, **kwargs)
    _one_line(info)
    assert not out.exists() and not out.with_name("report.tmp").exists()


def test_folder_without_manifest_needs_a_reference(tmp_path, run_folder) -> None:
    _fails(tmp_path, "no manifest.json", str(run_folder / "base"), "red")
    _fails(tmp_path, "not an erasure run", "builtin:shapes", "red")


def test_pipeline_without_edit_needs_a_reference(tmp_path, pipe) -> None:
    _fails(tmp_path, "no default reference", pipe, "red")


def test_concept_unknown_to_the_judge(tmp_path, pipe) -> None:
    _fails(tmp_path, "unknown to judge", pipe, "circle", reference=pipe)
    _fails(tmp_path, "unknown concept", pipe, "reed", reference=pipe)


def test_empty_suite(tmp_path, pipe) -> None:
    settings = EvaluationSettings(**{**SMALL.to_dict(), "paraphrase_max": 0})
    _fails(tmp_path, "paraphrase suite .* is empty", pipe, "red", reference=pipe, settings=settings)


def test_unwritable_report_folder(tmp_path, pipe) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ErasureLabError, match="cannot write report") as info:
        evaluate(pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL, out=blocker / "report")
    _one_line(info)
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ErasureLabError, match="report folder exists"):
        evaluate(pipe, "red", reference=pipe, judge=StubJudge(), settings=SMALL, out=existing)


def test_attack_for_another_concept(tmp_path, pipe) -> None:
    _fails(tmp_path, "not evaluated here", pipe, "red", reference=pipe,
           attacks=[AttackResult("ti", "blue", Rate(1, 2))])


def test_leaking_anchors_are_refused(tmp_path, pipe) -> None:
    from erasurelab.concepts import concept
    from erasurelab.world.captions import paraphrase_prompts

    leaked = next(iter(paraphrase_prompts("red"))).prompt
    entry = {**concept("red").manifest_entry(), "retain": [leaked]}
    p = tiny_bert_pipeline(0)
    edit = _edit(meta={"method": "leaky", "concepts": [entry]})
    edit.apply(p)
    _fails(tmp_path, "leakage", p, "red")
    assert edit.is_applied(p)


# -- Several processes --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_give_the_same_metrics_as_one(tmp_path) -> None:
    """Generation split with accelerate's split_between_processes (launched by torchrun, gloo on CPU).

    `accelerate launch --cpu` starts a single process without mpirun, so torchrun launches here;
    on GPUs `accelerate launch --multi_gpu --num_processes N` takes the same code path.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).resolve().parent / "evaluate_processes.py")
    # No disk cache: both runs must render (a hit from an earlier test would make "rendered" 0).
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "ERASURELAB_CACHE": "off"}
    subprocess.run([sys.executable, script, str(tmp_path / "one.json")], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
                    str(tmp_path / "two.json")], check=True, capture_output=True, env=env, timeout=900)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["rendered"] == two["rendered"]
    _assert_close(one["metrics"], two["metrics"])


def _assert_close(a, b) -> None:
    """Equal structure and counts; floats within 1% (batch composition may move a pixel by 1/255)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-2, abs=1e-6)
    else:
        assert a == b


# -- Compound concepts ------------------------------------------------------------------------------------------


def test_conditional_is_evaluated_on_its_own_suites(pipe, edited_pipe, tmp_path) -> None:
    """A conditional concept gets forget in its context and retention ρ's, in the result, JSON and report."""
    result = evaluate(edited_pipe, ["red|white", "blue"], reference=pipe, judge=StubJudge(), settings=SMALL,
                      out=tmp_path / "report")
    assert [c.concept for c in result.concepts] == ["blue"]
    (conditional,) = result.compound
    assert conditional.kind == "conditional" and conditional.context == "white"
    assert conditional.forget["reference"].denominator > 0
    assert len(conditional.retention) >= 3 and all(0.0 <= r.rho <= 1.0 for r in conditional.retention
                                                   if r.rho == r.rho)
    assert any(line.startswith(f"{conditional.concept} (conditional)") for line in result.summary())
    metrics_json = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics_json["compound"][0]["concept"] == conditional.concept
    assert 'id="compound-' in (tmp_path / "report" / "index.html").read_text()
