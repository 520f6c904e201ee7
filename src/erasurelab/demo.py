"""`erasurelab demo` and `erasurelab bench`: the main job on the embedded model, end to end.

Erase one concept with each method (PURE and UCE by default), attack every erased model with one
attack, evaluate every facet against the unedited model, write one report comparing the methods
and print the table. Why one process and one render cache: the reference model renders each
(prompt, seed) once for all methods, and Ring-A-Bell's prompt search (text encoder only, which no
closed-form edit changes) runs once and is reused for every method.

Why smaller protocol sizes than `erasurelab evaluate`: the demo shows the whole pipeline on a laptop
in minutes; its rates rest on fewer images (the report shows every rate's counts). The sizes are
fixed here, so two demo runs give the same numbers. `erasurelab bench` runs the same loop over
several concepts at the full protocol and writes the methods x concepts table as markdown and JSON.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError

DEMO_CONCEPT = "circle"
DEMO_METHODS: tuple[str, ...] = ("pure", "uce")
BENCH_CONCEPTS: tuple[str, ...] = ("red", "circle", "striped", "bobo")
#: Method options of the demo. PURE's spec operator cancels its own edit on the embedded model (the
#: target's activation direction lies in its same-category neighbours' span; docs/architecture.md),
#: so the demo runs PURE's least-squares solver, which fits the retain constraint instead.
DEMO_METHOD_OPTIONS: dict[str, dict[str, Any]] = {"pure": {"solver": "least_squares"}}
DEMO_ATTACK = "ring-a-bell"
#: The attack's budget in the demo (the attack's own defaults are for `erasurelab attack`).
DEMO_ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "ring-a-bell": {},  # the attack's defaults: its search runs once (text encoder unchanged by the edits)
    "unlearndiffatk": {"n_prompts": 4, "iters": 10},
    "textual-inversion": {"train_steps": 150, "n_images": 16},
}


def demo_settings() -> Any:
    """Protocol sizes of the demo: every facet, about 400 images per model."""
    from erasurelab.evaluation import EvaluationSettings

    return EvaluationSettings(anchor_seeds=4, paraphrase_max=40, neighbour_k=4, neighbour_templates=3,
                              neighbour_seeds=2, unrelated_max=64, selective_max=32, judge_accuracy_n=200,
                              batch_size=64, examples=8)


def rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat record per (method, concept): every facet and the timings, for tables and JSON."""
    out = []
    for result in results:
        for c in result.concepts:
            rhos = [n["rho"] for n in c.neighbours if n.get("rho") is not None]
            asr = [a for a in result.attacks if a.concept == c.concept]
            out.append({
                "method": result.method, "concept": c.concept, "attribute": c.attribute,
                "tp_anchor_ref": c.target["anchor"]["reference"].value, "tp_anchor": c.target["anchor"]["edited"].value,
                "tp_para_ref": c.target["paraphrase"]["reference"].value,
                "tp_para": c.target["paraphrase"]["edited"].value,
                "attack": asr[0].name if asr else None, "asr": asr[0].asr.value if asr else None,
                "asr_ref": asr[0].reference_asr.value if asr and asr[0].reference_asr is not None else None,
                "unrelated_ratio": c.unrelated["ratio"], "neighbour_rho": sum(rhos) / len(rhos) if rhos else None,
                "selective": c.selective["edited"].value, "selective_ref": c.selective["reference"].value,
                "q": c.terms["q"], "h": c.h, "h_ref": c.h_reference,
                "edit_s": result.efficiency.get("edit_wall_time_s"), "evaluate_s": result.timings.get("total_s"),
            })
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The methods x concepts table as markdown (every column of `rows`)."""
    if not records:
        return ""
    keys = list(records[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in records]
    return "\n".join(lines) + "\n"


def _table(results: Sequence[Any]) -> list[str]:
    """One row per method and concept: target proportions (unedited → edited), retention, attack, H."""
    header = (f"{'method':8} {'concept':10} {'anchor TP':>13} {'paraphrase TP':>15} {'attack ASR':>12} "
              f"{'unrelated':>10} {'neighbours':>11} {'H':>6} {'edit s':>7}")
    lines = [header, "-" * len(header)]
    for r in rows(results):
        attack = f"{r['asr']:.2f}/{r['asr_ref']:.2f}" if r["asr"] is not None and r["asr_ref"] is not None else "n/a"
        rho = r["neighbour_rho"] if r["neighbour_rho"] is not None else float("nan")
        lines.append(f"{r['method'] or '?':8} {r['concept']:10} {r['tp_anchor_ref']:5.2f} → {r['tp_anchor']:4.2f} "
                     f"{r['tp_para_ref']:7.2f} → {r['tp_para']:4.2f} {attack:>12} {r['unrelated_ratio']:10.3f} "
                     f"{rho:11.3f} {r['h']:6.3f} {r['edit_s'] or float('nan'):7.1f}")
    lines.append("TP: judge-detected target proportion, unedited → edited; attack ASR: edited/unedited model; "
                 "unrelated, neighbours: edited/unedited rate (1 = unchanged); H: HUB summary score")
    return lines


def compare(out: Path, concepts: Sequence[str], methods: Sequence[str], attack: str | None, settings: Any,
            method_options: dict[str, dict[str, Any]] | None = None,
            attack_options: dict[str, Any] | None = None, quiet: bool = False, echo: Any = print) -> list[Any]:
    """Erase every concept with every method, attack, evaluate against the unedited model, write out/report.

    One EvaluationResult per (method, concept); the reference renders each image once for all of them.
    Every bad input (method, attack, concept, report folder) fails before any work.
    """
    from erasurelab.api import erase, resolve_concepts
    from erasurelab.attacks import get_attack, run_attack
    from erasurelab.evaluation import evaluate
    from erasurelab.evaluation.rendering import RenderCache
    from erasurelab.evaluation.report import write_report
    from erasurelab.evaluation.runner import check_output
    from erasurelab.judges import load_judge
    from erasurelab.methods import get_method
    from erasurelab.models import load_pipeline

    report_dir = out / "report"
    check_output(report_dir, overwrite=True)
    methods = [get_method(m).name for m in methods]
    if not methods:
        raise ErasureLabError("nothing to compare: give at least one method")
    attack = get_attack(attack).name if attack else None
    specs = resolve_concepts(list(concepts))
    if not specs:
        raise ErasureLabError("nothing to compare: give at least one concept")
    pipe = load_pipeline("builtin:shapes")
    # Attacks need the unedited model beside the edited one; without them evaluate() reverts the
    # applied edit in place for its reference, so no second copy is loaded.
    reference = load_pipeline("builtin:shapes") if attack else None
    judge = load_judge("shapes")
    for spec in specs:
        judge.attribute_of(spec.name)  # a concept the judge cannot see fails now, not after the first method
    cache = RenderCache(settings.steps, settings.guidance, settings.batch_size, quiet)
    results = []
    for spec in specs:
        for method in methods:
            options = (method_options or {}).get(method, {})
            echo(f"[{method}] erasing {spec.name!r}" + (f" with {options}" if options else "") + " ...")
            edit = erase(pipe, spec, method, quiet=quiet, **options)
            edit.save(out / "runs" / f"{method}-{spec.name}", format="lora", overwrite=True)
            edit.apply(pipe)
            pipe.erasurelab_edit = edit
            try:
                attacks = []
                if attack:
                    echo(f"[{method}] attacking {spec.name!r} with {attack} ...")
                    attacks.append(run_attack(attack, pipe, spec, reference, judge, quiet=quiet,
                                              **(attack_options or {})))
                echo(f"[{method}] evaluating {spec.name!r} ...")
                results.append(evaluate(pipe, spec, reference=reference, judge=judge, attacks=attacks, quiet=quiet,
                                        settings=settings, cache=cache))
            finally:
                edit.revert(pipe)
                pipe.erasurelab_edit = None
    write_report(results, report_dir, overwrite=True)
    return results


def run_demo(out: Path, concept_name: str = DEMO_CONCEPT, methods: Sequence[str] = DEMO_METHODS,
             attack: str | None = DEMO_ATTACK, quiet: bool = False, echo: Any = print) -> list[Any]:
    """Erase, attack, evaluate and report on the demo's protocol; returns one EvaluationResult per method."""
    from erasurelab.attacks import get_attack

    started = time.perf_counter()
    attack_options = DEMO_ATTACK_OPTIONS.get(get_attack(attack).name, {}) if attack else {}
    results = compare(out, [concept_name], methods, attack, demo_settings(), DEMO_METHOD_OPTIONS, attack_options,
                      quiet, echo)
    for line in _table(results):
        echo(line)
    echo(f"report: {out / 'report' / 'index.html'}  ({time.perf_counter() - started:.0f} s)")
    return results


def run_bench(out: Path, concepts: Sequence[str], methods: Sequence[str], attack: str | None,
              quiet: bool = False, echo: Any = print) -> list[dict[str, Any]]:
    """`erasurelab bench`: the methods x concepts table with every metric and timing, at the full protocol.

    Writes out/bench.md, out/bench.json and out/report/; returns the table's records.
    """
    from erasurelab.evaluation import EvaluationSettings
    from erasurelab.runinfo import library_versions, peak_rss_mb, write_json_atomic, write_text_atomic

    started = time.perf_counter()
    results = compare(out, concepts, methods, attack, EvaluationSettings(batch_size=64), DEMO_METHOD_OPTIONS,
                      None, quiet, echo)
    records = rows(results)
    text = markdown(records)
    write_text_atomic(out / "bench.md", text)
    write_json_atomic(out / "bench.json", {"rows": records, "method_options": DEMO_METHOD_OPTIONS,
                                           "wall_time_s": time.perf_counter() - started,
                                           "peak_rss_mb": peak_rss_mb(), "versions": library_versions()})
    echo(text)
    echo(f"wrote {out / 'bench.md'}, {out / 'bench.json'} and {out / 'report' / 'index.html'}")
    return records
