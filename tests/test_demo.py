"""`erasurelab demo`: erase, evaluate and report end to end on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import erasurelab.demo as demo
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import EvaluationSettings
from test_cli import _assert_one_line_error, run_cli

from conftest import needs_assets


def test_unknown_method_fails_before_any_work(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--method", "purr", "--quiet"], capsys)
    _assert_one_line_error(code, err, "purr")
    assert not (tmp_path / "d").exists()


def test_unknown_attack_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ErasureLabError, match="ring-a-dong"):
        demo.run_demo(tmp_path / "d", methods=("uce",), attack="ring-a-dong", echo=lambda *_: None)
    assert not (tmp_path / "d").exists()


@needs_assets
@pytest.mark.slow
def test_demo_erases_and_reports(tmp_path: Path, monkeypatch) -> None:
    """UCE on red with a small protocol: the concept drops, the report and the run folder are written."""
    small = EvaluationSettings(anchor_seeds=2, paraphrase_max=8, neighbour_k=2, neighbour_templates=1,
                               neighbour_seeds=1, unrelated_max=8, selective_max=4, judge_accuracy_n=16,
                               batch_size=64, examples=2)
    monkeypatch.setattr(demo, "demo_settings", lambda: small)
    lines: list[str] = []
    (result,) = demo.run_demo(tmp_path / "d", concept_name="red", methods=("uce",), attack=None, quiet=True,
                              echo=lines.append)
    anchor = result.concept("red").target["anchor"]
    assert anchor["edited"].value < anchor["reference"].value
    assert result.method == "uce"
    report = tmp_path / "d" / "report"
    assert (report / "index.html").is_file()
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["concepts"][0]["concept"] == "red"
    assert json.loads((tmp_path / "d" / "runs" / "uce-red" / "manifest.json").read_text())["method"] == "uce"
    assert any(line.startswith("uce") for line in lines) and lines[-1].startswith("report: ")


def test_bench_refuses_unknown_concepts_before_any_work(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["bench", "--out", str(tmp_path / "b"), "--concept", "rde", "--quiet"], capsys)
    _assert_one_line_error(code, err, "rde")
    assert not (tmp_path / "b").exists()


def test_markdown_table_has_every_column() -> None:
    records = [{"method": "uce", "concept": "red", "tp_anchor": 0.125, "asr": None},
               {"method": "pure", "concept": "red", "tp_anchor": 0.5, "asr": 0.25}]
    lines = demo.markdown(records).splitlines()
    assert lines[0] == "| method | concept | tp_anchor | asr |"
    assert lines[2] == "| uce | red | 0.125 | n/a |" and lines[3] == "| pure | red | 0.500 | 0.250 |"


def test_demo_and_bench_run_both_attacks_by_default() -> None:
    assert demo.resolve_attacks("default") == demo.DEMO_ATTACKS == ("textual-inversion", "ring-a-bell")
    assert demo.resolve_attacks(None) == () and demo.resolve_attacks("none") == ()
    assert demo.resolve_attacks("ring-a-bell, textual-inversion") == ("ring-a-bell", "textual-inversion")
    with pytest.raises(ErasureLabError, match="ring-a-dong"):
        demo.resolve_attacks(["ring-a-dong"])
    import inspect

    assert inspect.signature(demo.run_demo).parameters["attack"].default == demo.DEMO_ATTACKS
    assert inspect.signature(demo.run_bench).parameters["attack"].default == demo.DEMO_ATTACKS
    assert not hasattr(demo, "DEMO_METHOD_OPTIONS")


@pytest.mark.parametrize("capable", [True, False])
def test_demo_scores_ring_a_bell_search_in_bf16_only_on_bf16_cpus(monkeypatch, capable: bool) -> None:
    import erasurelab.models.sampling as sampling

    monkeypatch.setattr(sampling, "cpu_bf16_capable", lambda: capable)
    options = demo.demo_attack_options(demo.DEMO_ATTACKS)
    assert options["ring-a-bell"].get("search_bf16", False) is capable
    assert options["textual-inversion"] == demo.DEMO_ATTACK_OPTIONS["textual-inversion"]
    assert "search_bf16" not in demo.DEMO_ATTACK_OPTIONS["ring-a-bell"]  # the module's table is not mutated
    assert demo.demo_attack_options(("textual-inversion",)).keys() == {"textual-inversion"}


def test_bench_defaults_to_the_test_concepts_and_names_the_set() -> None:
    assert demo.BENCH_CONCEPTS == ("green", "purple", "triangle", "diamond", "dotted", "outlined", "kiki", "zuzu")
    assert demo.concept_set(demo.BENCH_CONCEPTS) == "test"
    assert demo.concept_set(demo.DEV_CONCEPTS) == "dev"
    assert demo.concept_set(["red", "green"]) == "custom"


@needs_assets
@pytest.mark.slow
def test_bench_rows_are_written_as_they_complete_and_skipped_on_resume(tmp_path: Path, monkeypatch) -> None:
    small = EvaluationSettings(anchor_seeds=1, paraphrase_max=4, neighbour_k=1, neighbour_templates=1,
                               neighbour_seeds=1, unrelated_max=2, selective_max=4, judge_accuracy_n=0,
                               batch_size=64, examples=1, second_judge=None, steps=6)  # rows, not quality
    first_lines: list[str] = []
    first = demo.run_bench(tmp_path / "b", ["green"], ["uce"], None, quiet=True, echo=first_lines.append,
                           settings=small)
    row = tmp_path / "b" / "rows" / "uce-green"
    assert (row / "row.json").is_file() and (row / "report" / "metrics.json").is_file()
    lines: list[str] = []
    second = demo.run_bench(tmp_path / "b", ["green"], ["uce"], None, quiet=True, echo=lines.append, settings=small)
    assert any("skipped" in line for line in lines) and not any("erasing" in line for line in lines)
    assert second == first
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert data["concept_set"] == "custom" and data["rows"][0]["concept"] == "green"
    assert data["provenance"]["command"] and "f" in data["rows"][0] and "retention" in data["rows"][0]
    changed = EvaluationSettings(**{**small.to_dict(), "anchor_seeds": 2})
    lines.clear()
    demo.run_bench(tmp_path / "b", ["green"], ["uce"], None, quiet=True, echo=lines.append, settings=changed)
    assert any("erasing" in line for line in lines)
    # Other code (e.g. a changed method default) must not reuse the row either.
    from erasurelab import runinfo

    monkeypatch.setattr(runinfo, "code_digest", lambda: "other code")
    lines.clear()
    demo.run_bench(tmp_path / "b", ["green"], ["uce"], None, quiet=True, echo=lines.append, settings=changed)
    assert any("erasing" in line for line in lines) and not any("skipped" in line for line in lines)
