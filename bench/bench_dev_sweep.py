"""A method's settings on dev concepts through the evaluation protocol, without attacks (tuning on dev only).

Each setting (a label and the method's options) is one resumable comparison (`demo.compare`) in
bench/results/<method>_dev/<label>/ (rows/*/row.json; reports and runs stay out of git). The table per
(setting, concept): anchor / paraphrase / selective TP (reference → edited), f, worst-attribute
retention (ratio to the unedited model, every attribute the judge reads), for DUO the pairs kept of
requested, and the erase wall time (for DUO: pairs + training; pairs are cached on disk after their
first build, so only the first setting with given pair options pays for them). Writes
bench/results/<output>.json after every setting (`complete` is false until the last one). DUO's sweeps 1-9
(duo_notes.md) ran this script as bench_duo_sweep.py, when it knew DUO only; `--method duo` (the default)
runs them the same way. A sweep stopped under its rule part-way through a setting leaves row files but no
JSON for that setting; `--from-rows` writes the JSON from the row files on disk and runs nothing (DUO's pair
fields come from the run manifests, which stay out of git: run it where the sweep ran).

    OMP_NUM_THREADS=2 python bench/bench_dev_sweep.py --concepts red,circle \\
        --grid '{"default": {}, "prompt": {"conditioning": "prompt"}}'
    OMP_NUM_THREADS=2 python bench/bench_dev_sweep.py --method trust \\
        --grid '{"default": {}, "r1": {"retain_weight": 1}}' --output trust_dev_sweep
    python bench/bench_dev_sweep.py --concepts red,circle,striped,bobo --grid '{"p192": {"n_pairs": 192}}' \
        --output duo_dev_sweep14 --from-rows --stopped "after striped: ... (rule (1))"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write_json


def _pairs_report(out: Path, method: str, concept: str) -> dict:
    """DUO's pairs kept / requested and, averaged over the last tenth of the steps, the DPO accuracy, margin
    Δ⁺ − Δ⁻ and Δ⁺ (how the adapted model fits the safe members against the reference), from the run's
    manifest (None when absent, as for every other method)."""
    manifest = out / "runs" / f"{method}-{concept}" / "manifest.json"
    meta = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    per = (meta.get("per_concept") or [{}])[0]
    report = per.get("pairs", {})
    return {"pairs_kept": report.get("kept"), "pairs_requested": report.get("requested"),
            "pair_attribute_keep_rate": report.get("attribute_keep_rate"),
            **{f"final_{k}": per.get("final", {}).get(k) for k in ("accuracy", "margin", "d_safe")}}


def sweep_row(out: Path, method: str, label: str, options: dict, record: dict) -> dict:
    """One JSON row: the setting, DUO's pair report, the worst-retained attribute, then the comparison's record."""
    retention = record.get("retention") or {}
    worst = min(retention.items(), key=lambda kv: kv[1]) if retention else (None, None)
    return {"setting": label, "options": options, **_pairs_report(out, method, record["concept"]),
            "worst_attribute": worst[0], "worst_retention": worst[1], **record}


def rows_on_disk(method: str, grid: dict, concepts: list[str]) -> list[dict]:
    """The rows whose row files a (possibly stopped) sweep left, in grid and concept order."""
    rows = []
    for label, options in grid.items():
        out = RESULTS / f"{method}_dev" / label
        for concept in concepts:
            path = out / "rows" / f"{method}-{concept}" / "row.json"
            if path.is_file():
                rows.append(sweep_row(out, method, label, options, json.loads(path.read_text())["record"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="duo", help="the method whose options the grid sets")
    parser.add_argument("--concepts", default="red,circle")
    parser.add_argument("--grid", required=True, help='JSON object {label: {option of the method: value}}')
    parser.add_argument("--protocol", choices=("demo", "full"), default="demo",
                        help="evaluation sizes: the demo's (~400 images per model) or the bench's")
    parser.add_argument("--output", default=None, help="default: <method>_dev_sweep")
    parser.add_argument("--from-rows", action="store_true",
                        help="run nothing: write the JSON from the row files the sweep left (one stopped early)")
    parser.add_argument("--stopped", default=None, help="with --from-rows: why and where the sweep was stopped")
    args = parser.parse_args()
    grid = json.loads(args.grid)
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    from erasurelab.demo import DEV_CONCEPTS, compare, demo_settings
    from erasurelab.methods import get_method

    method = get_method(args.method).name
    if not_dev := [c for c in concepts if c not in DEV_CONCEPTS]:
        parser.error(f"tuning runs on dev concepts only; not dev: {', '.join(not_dev)}")
    from erasurelab.evaluation import EvaluationSettings

    settings = demo_settings() if args.protocol == "demo" else EvaluationSettings(batch_size=64)
    recorded = {"method": method, "concepts": concepts, "grid": grid, "protocol": args.protocol,
                "evaluation": settings.to_dict()}
    command = " ".join(["python", "bench/bench_dev_sweep.py", *sys.argv[1:]])
    columns = ["setting", "concept", "tp_anchor_ref", "tp_anchor", "tp_para_ref", "tp_para", "tp_sel", "f",
               "worst_attribute", "worst_retention", "pairs_kept", "edit_s"]
    if args.from_rows:
        rows = rows_on_disk(method, grid, concepts)
        print(table(rows, columns))
        write_json(args.output or f"{method}_dev_sweep", {"rows": rows, "complete": len(rows) == len(grid) *
                                                          len(concepts)}, judge="shapes",
                   settings={**recorded, "rows_from": "row files on disk", "stopped_early": args.stopped},
                   command=command)
        return
    rows = []
    for label, options in grid.items():
        out = RESULTS / f"{method}_dev" / label
        _, records = compare(out, concepts, [method], None, settings, {method: options}, resume=True, quiet=True)
        rows += [sweep_row(out, method, label, options, record) for record in records]
        print(table([r for r in rows if r["setting"] == label], columns), flush=True)
        # after every setting, so a sweep stopped early (a rule that can no longer pass) still leaves its file
        write_json(args.output or f"{method}_dev_sweep", {"rows": rows, "complete": label == list(grid)[-1]},
                   judge="shapes", settings=recorded, command=command)


if __name__ == "__main__":
    main()
