"""One attack on saved erasure runs (methods x concepts), beside the attacks their bench rows already hold.

For each (method, concept) it runs `erasurelab attack --attack NAME --model RUN --concept C` in a fresh process
(resumable: a run whose result for the same run folder exists in --work is not attacked again), then tabulates
the attack's ASR, its ASR before optimisation (pre), its reference ASR and whether the reference check passed,
next to the textual-inversion and Ring-A-Bell ASRs of the same run's bench row. Run folders:
`<bench>/runs/<method>-<concept>`, where <bench> is --duo-bench for DUO and --bench for the others (the
layout `erasurelab bench` writes).

    python bench/bench_attack_runs.py --attack unlearndiffatk --concepts green,triangle --work /tmp/uda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write_json


def run_folder(method: str, concept: str, bench: Path, duo_bench: Path) -> Path:
    return (duo_bench if method == "duo" else bench) / "runs" / f"{method}-{concept}"


def bench_row(run: Path) -> dict:
    """The bench row of a run folder (<bench>/rows/<name>/row.json), {} if there is none."""
    path = run.parent.parent / "rows" / run.name / "row.json"
    return json.loads(path.read_text())["record"] if path.is_file() else {}


def attack(name: str, run: Path, concept: str, out: Path) -> float:
    """Run the attack CLI on one run folder; returns wall seconds (0 if skipped).

    Skipped when `out` holds a result for this very run (its digest in out/run_digest.txt): a run folder
    rewritten by a later bench (e.g. new method defaults) is attacked again.
    """
    from erasurelab.runinfo import tree_digest

    digest, stamp = tree_digest(run), out / "run_digest.txt"
    if (out / "result.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "erasurelab", "attack", "--attack", name, "--model", str(run),
                    "--concept", concept, "--out", str(out), "-q"], check=True)
    stamp.write_text(digest + "\n")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack", default="unlearndiffatk")
    parser.add_argument("--concepts", default="green,triangle,dotted,kiki")
    parser.add_argument("--methods", default="duo,pure,uce,esd,trust")
    parser.add_argument("--bench", type=Path, default=RESULTS / "bench_test")
    parser.add_argument("--duo-bench", type=Path, default=RESULTS / "bench_test_duo")
    parser.add_argument("--work", type=Path, required=True, help="Folder of the per-run attack outputs (resumable).")
    parser.add_argument("--collect-only", action="store_true", help="Tabulate the results already in --work.")
    parser.add_argument("--output", default=None, help="bench/results/NAME.json (default attack_runs_<attack>).")
    args = parser.parse_args()

    rows = []
    for concept in args.concepts.split(","):
        for method in args.methods.split(","):
            run, out = run_folder(method, concept, args.bench, args.duo_bench), args.work / f"{method}-{concept}"
            if not args.collect_only:
                attack(args.attack, run, concept, out)
            if not (out / "result.json").is_file():
                print(f"{method}-{concept}: no result yet", flush=True)
                continue
            result, record = json.loads((out / "result.json").read_text()), bench_row(run)
            attacks = record.get("attacks", {})
            rows.append({"method": method, "concept": concept, "asr": result["asr"]["value"],
                         "pre_asr": result["pre_asr"]["value"], "reference_asr": result["reference_asr"]["value"],
                         "reference_passed": result["reference_passed"], "instances": result["asr"]["denominator"],
                         "edited_wall_s": result["budget"]["edited"]["wall_time_s"],
                         "ti_asr": attacks.get("textual-inversion", {}).get("asr"),
                         "rab_asr": attacks.get("ring-a-bell", {}).get("asr"),
                         "anchor_tp": record.get("tp_anchor"), "anchor_tp_ref": record.get("tp_anchor_ref"),
                         "run": str(run.relative_to(RESULTS.parent.parent)) if run.is_relative_to(RESULTS.parent.parent)
                         else str(run), "judge": result.get("judge")})
    print(table(rows, ["method", "concept", "anchor_tp", "asr", "pre_asr", "reference_asr", "reference_passed",
                       "ti_asr", "rab_asr", "edited_wall_s"]))
    name = args.output or f"attack_runs_{args.attack}"
    path = write_json(name, {"attack": args.attack, "rows": rows},
                      judge=rows[0]["judge"] if rows else None,
                      settings={"attack": args.attack, "options": "the attack's embedded defaults",
                                "concepts": args.concepts, "methods": args.methods})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
