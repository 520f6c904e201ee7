"""`erasurelab demo`: the main job on the embedded model, end to end, in a few minutes.

Erase one concept with each method (PURE and UCE by default), attack every erased model with one
attack, evaluate every facet against the unedited model, write one report comparing the methods
and print the table. Why one process and one render cache: the reference model renders each
(prompt, seed) once for all methods, and the attack's preparation (which only reads the unedited
model) would be the same for every method.

Why smaller protocol sizes than `erasurelab evaluate`: the demo shows the whole pipeline on a laptop
in minutes; its numbers carry wider confidence intervals (printed in the report). The sizes are
fixed here, so two demo runs give the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError

DEMO_CONCEPT = "circle"
DEMO_METHODS: tuple[str, ...] = ("pure", "uce")
#: Method options of the demo. PURE's spec operator cancels its own edit on the embedded model (the
#: target's activation direction lies in its same-category neighbours' span; docs/architecture.md),
#: so the demo runs the centred forget basis without retain cancellation.
DEMO_METHOD_OPTIONS: dict[str, dict[str, Any]] = {"pure": {"centre": True, "retain_strength": 0.0}}
DEMO_ATTACK = "ring-a-bell"
#: The attack's budget in the demo (the attack's own defaults are for `erasurelab attack`).
DEMO_ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "ring-a-bell": {"n_prompts": 4, "generations": 60},
    "unlearndiffatk": {"n_prompts": 4, "iters": 10},
    "textual-inversion": {"train_steps": 150, "n_images": 16},
}


def demo_settings() -> Any:
    """Protocol sizes of the demo: every facet, about 400 images per model."""
    from erasurelab.evaluation import EvaluationSettings

    return EvaluationSettings(anchor_seeds=4, paraphrase_max=40, neighbour_k=4, neighbour_templates=3,
                              neighbour_seeds=2, unrelated_max=64, selective_max=32, judge_accuracy_n=200,
                              batch_size=64, examples=8)


def _table(results: Sequence[Any]) -> list[str]:
    """One row per method: target proportions (edited vs unedited), retention, attack, H."""
    header = (f"{'method':8} {'anchor TP':>13} {'paraphrase TP':>15} {'attack ASR':>12} {'unrelated':>10} "
              f"{'neighbours':>11} {'H':>6} {'edit s':>7}")
    lines = [header, "-" * len(header)]
    for result in results:
        for c in result.concepts:
            anchor, para = c.target["anchor"], c.target["paraphrase"]
            rhos = [n["rho"] for n in c.neighbours if n.get("rho") is not None]
            asr = [a for a in result.attacks if a.concept == c.concept]
            attack = (f"{asr[0].asr.value:.2f}/{asr[0].reference_asr.value:.2f}"
                      if asr and asr[0].reference_asr is not None else "n/a")
            lines.append(
                f"{result.method or '?':8} {anchor['reference'].value:5.2f} → {anchor['edited'].value:4.2f} "
                f"{para['reference'].value:7.2f} → {para['edited'].value:4.2f} {attack:>12} "
                f"{c.unrelated['ratio']:10.3f} {(sum(rhos) / len(rhos) if rhos else float('nan')):11.3f} "
                f"{c.h:6.3f} {result.efficiency.get('edit_wall_time_s') or float('nan'):7.1f}")
    lines.append("TP: judge-detected target proportion, unedited → edited; attack ASR: edited/unedited model; "
                 "unrelated, neighbours: edited/unedited rate (1 = unchanged); H: HUB summary score")
    return lines


def run_demo(out: Path, concept_name: str = DEMO_CONCEPT, methods: Sequence[str] = DEMO_METHODS,
             attack: str | None = DEMO_ATTACK, quiet: bool = False, echo: Any = print) -> list[Any]:
    """Erase, attack, evaluate and report; returns the EvaluationResults (one per method)."""
    from erasurelab.api import erase, resolve_concepts
    from erasurelab.attacks import get_attack, run_attack
    from erasurelab.evaluation import evaluate
    from erasurelab.evaluation.rendering import RenderCache
    from erasurelab.evaluation.report import write_report
    from erasurelab.evaluation.runner import check_output
    from erasurelab.judges import load_judge
    from erasurelab.methods import get_method
    from erasurelab.models import load_pipeline

    started = time.perf_counter()
    report_dir = out / "report"
    check_output(report_dir, overwrite=True)
    methods = [get_method(m).name for m in methods]  # unknown names fail before any work
    if not methods:
        raise ErasureLabError("the demo needs at least one method")
    options = DEMO_ATTACK_OPTIONS.get(get_attack(attack).name, {}) if attack else {}
    (spec,) = resolve_concepts(concept_name)
    pipe = load_pipeline("builtin:shapes")
    reference = load_pipeline("builtin:shapes")
    judge = load_judge("shapes")
    settings = demo_settings()
    cache = RenderCache(settings.steps, settings.guidance, settings.batch_size, quiet)
    results = []
    for method in methods:
        options_m = DEMO_METHOD_OPTIONS.get(method, {})
        echo(f"[{method}] erasing {spec.name!r}" + (f" with {options_m}" if options_m else "") + " ...")
        edit = erase(pipe, spec, method, quiet=quiet, **options_m)
        edit.save(out / "runs" / method, format="lora", overwrite=True)
        edit.apply(pipe)
        pipe.erasurelab_edit = edit
        try:
            attacks = []
            if attack:
                echo(f"[{method}] attacking with {attack} ...")
                attacks.append(run_attack(attack, pipe, spec, reference, judge, quiet=quiet, **options))
            echo(f"[{method}] evaluating ...")
            results.append(evaluate(pipe, spec, reference=reference, judge=judge, attacks=attacks, quiet=quiet,
                                    settings=settings, cache=cache))
        finally:
            edit.revert(pipe)
            pipe.erasurelab_edit = None
    write_report(results, report_dir, overwrite=True)
    for line in _table(results):
        echo(line)
    echo(f"report: {report_dir / 'index.html'}  ({time.perf_counter() - started:.0f} s)")
    return results
