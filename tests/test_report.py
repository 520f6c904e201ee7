"""The evaluation report: structure of index.html, inline images, metrics.json, atomic writes."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import evaluate, write_report
from erasurelab.evaluation.report import SECTIONS
from erasurelab.evaluation.suites import load_suite
from erasurelab.evaluation.types import AttackResult, EvaluationSettings, Rate
from stub_judge import StubJudge
from tiny_bert_pipeline import tiny_bert_pipeline

torch.set_num_threads(1)

SMALL = EvaluationSettings(steps=2, anchor_seeds=2, paraphrase_max=8, neighbour_k=3, neighbour_templates=2,
                           neighbour_seeds=2, min_neighbour_rate=0.0, unrelated_max=8, selective_max=6,
                           judge_accuracy_n=40)
PNG = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "img":
            self.images.append(values.get("src") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


@pytest.fixture(scope="module")
def models():
    reference = tiny_bert_pipeline(0)
    edited = tiny_bert_pipeline(0)
    g = torch.Generator().manual_seed(3)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    edit = Edit({key: LowRank(torch.randn(64, 2, generator=g, dtype=torch.float64) * 3,
                              torch.randn(2, 32, generator=g, dtype=torch.float64))}, {"method": "test-edit"})
    edit.apply(edited)
    return edited, reference


@pytest.fixture(scope="module")
def report(models, tmp_path_factory):
    edited, reference = models
    attack = AttackResult("textual-inversion", "red", Rate(4, 10), Rate(1, 10), Rate(9, 10),
                          prompts=["a photo of <c*>", "<c*> circle"], images=torch.rand(2, 3, 16, 16),
                          budget={"steps": 5, "unet_calls": 40})
    out = tmp_path_factory.mktemp("reports") / "report"
    result = evaluate(edited, ["red", "blue"], reference=reference, judge=StubJudge(), attacks=[attack], out=out,
                      settings=SMALL)
    return result, out


def test_report_files_exist_and_no_temp_folder_is_left(report) -> None:
    result, out = report
    assert result.report == out
    for name in ("index.html", "metrics.json", "tradeoff.png"):
        assert (out / name).is_file()
    assert (out / "tradeoff.png").read_bytes().startswith(PNG)
    assert sorted(p.name for p in (out / "grids").iterdir())
    assert not out.with_name("report.tmp").exists()


def test_index_has_every_section(report) -> None:
    _, out = report
    page = _parse(out / "index.html")
    assert set(SECTIONS) <= page.ids
    assert {"concept-red", "concept-blue"} <= page.ids
    text = " ".join(page.text)
    for phrase in ("H (mean over concepts)", "textual-inversion", "a photo of <c*>", "Neighbours", "Prompt suites",
                   StubJudge().id, "torch"):
        assert phrase in text


def test_every_image_is_inline_or_an_existing_file(report) -> None:
    _, out = report
    page = _parse(out / "index.html")
    assert len(page.images) >= 1 + 2 * 5 + 1  # trade-off, before/after per suite, attack grid
    for src in page.images:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
        else:
            assert (out / src).is_file(), src


def test_metrics_json_matches_the_result(report) -> None:
    result, out = report
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["kind"] == "erasurelab-evaluation"
    red = data["concepts"][0]
    assert red["concept"] == "red"
    assert red["terms"]["a"] == pytest.approx(0.6)
    assert red["target"]["paraphrase"]["edited"]["denominator"] == 8
    assert data["judge"]["id"] == StubJudge().id


def test_suite_files_carry_their_hashes(report) -> None:
    result, out = report
    files = sorted((out / "suites").glob("*.json"))
    assert len(files) == 10
    loaded = load_suite(out / "suites" / "red_selective.json")
    assert loaded.sha256 == result.concept("red").suites["selective"]["sha256"]


def test_existing_report_needs_overwrite(report, tmp_path) -> None:
    result, _ = report
    out = write_report(result, tmp_path / "again")
    with pytest.raises(ErasureLabError, match="exists"):
        write_report(result, out)
    (out / "stale.txt").write_text("old")
    write_report(result, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "index.html").exists()


def test_several_results_in_one_report(report, tmp_path) -> None:
    result, _ = report
    out = write_report([result, result], tmp_path / "both")
    data = json.loads((out / "metrics.json").read_text())
    assert data["kind"] == "erasurelab-evaluation-set" and len(data["results"]) == 2
    assert set(SECTIONS) <= _parse(out / "index.html").ids


def test_a_failed_write_leaves_nothing(report, tmp_path, monkeypatch) -> None:
    import erasurelab.evaluation.report as report_module

    result, _ = report

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "tradeoff_figure", broken)
    out = tmp_path / "broken"
    with pytest.raises(ErasureLabError, match="No space left") as info:
        write_report(result, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not out.with_name("broken.tmp").exists()


def _ft_attack(concept: str) -> AttackResult:
    """A re-emergence ("ft") attack result as run_attack hands it over: ASR plus the curves per checkpoint."""
    from erasurelab.finetuning.curves import build_curves

    curves = build_curves([0, 50, 100], {
        "erased": {"anchor": [0.125, 0.375, 0.625], "paraphrase": [0.0, 0.25, 0.5]},
        "modular": {"anchor": [0.125, 0.125, 0.25], "paraphrase": [0.0, 0.0, 0.25]},
        "control": {"anchor": [0.875, 0.875, 0.75], "paraphrase": [1.0, 0.75, 0.75]}},
        {"anchor": 8, "paraphrase": 4})
    return AttackResult("ft", concept, Rate(5, 8), Rate(1, 8), Rate(6, 8), prompts=[f"a photo of {concept}"],
                        images=torch.rand(1, 3, 16, 16), budget={"optimisation_steps": 200}, curves=curves)


@pytest.fixture(scope="module")
def ft_report(models, tmp_path_factory):
    edited, reference = models
    out = tmp_path_factory.mktemp("reports") / "ft"
    attack = _ft_attack("red")
    result = evaluate(edited, ["red"], reference=reference, judge=StubJudge(), attacks=[attack], out=out,
                      settings=SMALL)
    return result, out, attack


def test_report_shows_the_reemergence_curves_and_metrics_carry_them(ft_report) -> None:
    from erasurelab.finetuning.curves import final_rr

    result, out, attack = ft_report
    figure = (out / "reemergence.png").read_bytes()
    assert figure.startswith(PNG)
    page = _parse(out / "index.html")
    assert "reemergence" in page.ids
    inline = [base64.b64decode(src.split(",", 1)[1]) for src in page.images if src.startswith("data:")]
    assert figure in inline
    text = " ".join(page.text)
    assert "Re-emergence under benign fine-tuning" in text and "re-emergence observed" in text
    assert f"{final_rr(attack.curves):.3f}" in text and f"{final_rr(attack.curves, 'modular'):.3f}" in text
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    (ft,) = [a for a in data["attacks"] if a["name"] == "ft"]
    assert ft["curves"]["steps"] == [0, 50, 100]
    assert ft["curves"]["tp"]["erased"]["paraphrase"] == [0.0, 0.25, 0.5]
    assert ft["curves"]["final_rr"]["erased"]["anchor"] == pytest.approx((0.625 - 0.125) / (0.875 - 0.125))


def test_no_reemergence_figure_without_an_ft_attack(report) -> None:
    _, out = report
    assert not (out / "reemergence.png").exists()
    assert "reemergence" not in _parse(out / "index.html").ids


def test_bench_row_carries_the_final_rr(ft_report, report) -> None:
    from erasurelab.demo import _table, markdown, rows

    result, _, _ = ft_report
    (row,) = rows([result])
    assert row["ft_rr"] == pytest.approx(0.5 / 0.75) and row["ft_rr_para"] == pytest.approx(0.5)
    assert row["ft_rr_modular"] == pytest.approx(0.125 / 0.75) and row["ft_rr_control"] == pytest.approx(0.625 / 0.75)
    assert row["ft_tp_aligned"] == 0.125 and row["ft_tp_unaligned"] == 0.875 and row["ft_steps"] == 100
    assert row["attacks"]["ft"]["asr"] == pytest.approx(5 / 8) and row["attacks"]["ft"]["asr_ref"] == 0.75
    assert "ft_rr" in markdown([row]).splitlines()[0]
    assert any("re-emergence (" in line and "final RR 0.667" in line for line in _table([row]))
    # Rows without the ft attack have no RR fields (n/a in the markdown table).
    assert not any(k.startswith("ft_") for r in rows([report[0]]) for k in r)
