"""`erasurelab demo` and `erasurelab bench`: the main job on the embedded model, end to end.

Erase one concept with each method (PURE and UCE by default, each at its own defaults), attack
every erased model with textual inversion and Ring-A-Bell, evaluate every facet against the
unedited model, write one report comparing the methods and print the table. Why both attacks:
a = 1 − the largest ASR, so an evaluation is only as strong as its strongest attack, and textual
inversion is the strongest on U-Net edits. Why one process and one render cache: the reference
model renders each (prompt, seed) once for all methods.

Why smaller protocol sizes than `erasurelab evaluate`: the demo shows the whole pipeline on a laptop
in minutes; its rates rest on fewer images (the report shows every rate's counts). The sizes are
fixed here, so two demo runs give the same numbers. `erasurelab bench` runs the same loop over the
held-out test concepts at the full protocol, row by row and resumably, and writes the methods x
concepts table as markdown and JSON.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasurelab.concepts import concept_set
from erasurelab.errors import ErasureLabError

DEMO_CONCEPT = "circle"
DEMO_METHODS: tuple[str, ...] = ("pure", "uce")
#: The concept providers' split: dev concepts may tune defaults, test concepts are only ever reported.
TEST_CONCEPTS: tuple[str, ...] = concept_set("test")
DEV_CONCEPTS: tuple[str, ...] = concept_set("dev")
#: `erasurelab bench` reports the held-out test concepts by default.
BENCH_CONCEPTS: tuple[str, ...] = tuple(TEST_CONCEPTS)
#: The attacks of the demo and the bench: textual inversion (the strongest measured on U-Net edits)
#: and Ring-A-Bell (text side); a = 1 − the larger ASR, so the stronger attack decides.
DEMO_ATTACKS: tuple[str, ...] = ("textual-inversion", "ring-a-bell")
#: Each attack's budget in the demo (the attacks' own defaults are for `erasurelab attack` and the bench).
DEMO_ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    # The attack's defaults: its search runs once (the text encoder is unchanged by the edits); run_demo adds
    # search_bf16 on CPUs with native bf16 (demo_attack_options; measurements in bench/results/demo.md).
    "ring-a-bell": {},
    "unlearndiffatk": {"n_prompts": 4, "iters": 10},
    "textual-inversion": {"train_steps": 150, "n_images": 16},
}


def resolve_attacks(attacks: str | Sequence[str] | None) -> tuple[str, ...]:
    """Registered attack names from None / "none" (no attack), "default" (DEMO_ATTACKS), "a,b" or a list.

    Unknown names fail with a one-line error before any work.
    """
    from erasurelab.attacks import get_attack

    if attacks is None:
        return ()
    if isinstance(attacks, str):
        text = attacks.strip().lower()
        if text in ("", "none"):
            return ()
        attacks = DEMO_ATTACKS if text == "default" else [x for x in text.split(",") if x.strip()]
    return tuple(dict.fromkeys(get_attack(a.strip()).name for a in attacks))


def concept_set(concepts: Sequence[str]) -> str:
    """Which catalog set a bench ran: "test", "dev" (exactly those tuples) or "custom"."""
    names = tuple(concepts)
    if names == tuple(TEST_CONCEPTS):
        return "test"
    if names == tuple(DEV_CONCEPTS):
        return "dev"
    return "custom"


def demo_settings() -> Any:
    """Protocol sizes of the demo: every facet, about 400 images per model."""
    from erasurelab.evaluation import EvaluationSettings

    return EvaluationSettings(anchor_seeds=4, paraphrase_max=40, neighbour_k=4, neighbour_templates=3,
                              neighbour_seeds=2, unrelated_max=64, selective_max=32, judge_accuracy_n=200,
                              batch_size=64, examples=8)


def _value(rate: Any) -> float | None:
    return None if rate is None or not rate.denominator else rate.value


def _rr_fields(curves: dict[str, Any]) -> dict[str, Any]:
    """The re-emergence attack's final RR (erased model fine-tuned, on the anchors, the paraphrases and both
    pooled; Modular; the unerased control as its reference on the same scale) and the two TPs RR is measured
    between; {} for other curves."""
    from erasurelab.finetuning.curves import POOLED, final_rr, is_curves

    if not is_curves(curves):
        return {}
    return {"ft_steps": curves["steps"][-1], "ft_rr": final_rr(curves),
            "ft_rr_para": final_rr(curves, "erased", "paraphrase"), "ft_rr_pooled": final_rr(curves, "erased", POOLED),
            "ft_rr_modular": final_rr(curves, "modular"),
            "ft_rr_control": final_rr(curves, "control"), "ft_tp_aligned": curves["tp_aligned"].get("anchor"),
            "ft_tp_unaligned": curves["tp_unaligned"].get("anchor")}


def rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat record per (method, concept): every facet, each attack with its reference check, the timings."""
    from erasurelab.evaluation.result import jsonable

    out = []
    for result in results:
        for c in result.concepts:
            rhos = [n["rho"] for n in c.neighbours if n.get("rho") is not None]
            attacks = {a.name: {"asr": _value(a.asr), "asr_ref": _value(a.reference_asr),
                                "reference_passed": a.reference_passed, "instances": a.asr.denominator}
                       for a in result.attacks if a.concept == c.concept}
            reemergence = next((_rr_fields(a.curves) for a in result.attacks
                                if a.concept == c.concept and getattr(a, "curves", None)), {})
            t = c.target
            out.append(jsonable({
                "method": result.method, "concept": c.concept, "attribute": c.attribute,
                "tp_anchor_ref": _value(t["anchor"]["reference"]), "tp_anchor": _value(t["anchor"]["edited"]),
                "tp_para_ref": _value(t["paraphrase"]["reference"]), "tp_para": _value(t["paraphrase"]["edited"]),
                "tp_sel_ref": _value(t["selective"]["reference"]), "tp_sel": _value(t["selective"]["edited"]),
                "f": c.terms["f"], "f_suites": [s for s, d in c.forget.items() if d["counted"]],
                "r": c.terms["r"], "a": c.terms["a"], "q": c.terms["q"], "h": c.h, "h_ref": c.h_reference,
                "retention": {a: v["ratio"] for a, v in c.unrelated.get("attributes", {}).items()},
                "unrelated_ratio": c.unrelated["ratio"], "neighbour_rho": sum(rhos) / len(rhos) if rhos else None,
                "selective": _value(c.selective["edited"]), "selective_ref": _value(c.selective["reference"]),
                "attacks": attacks, **reemergence, "edit_s": result.efficiency.get("edit_wall_time_s"),
                "evaluate_s": result.timings.get("total_s"), "problems": list(c.problems),
            }))
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, bool):
        return "passed" if value else "failed"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return "; ".join(f"{k} {_fmt(v)}" if not isinstance(v, dict) else
                         f"{k} {_fmt(v.get('asr'))}/{_fmt(v.get('asr_ref'))} ref {_fmt(v.get('reference_passed'))}"
                         for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The methods x concepts table as markdown (every column of `rows`; n/a where a value is missing)."""
    if not records:
        return ""
    keys = list(dict.fromkeys(k for r in records for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in records]
    return "\n".join(lines) + "\n"


def _table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One row per method and concept: TP (unedited → edited), f, retention, each attack, H; notes below."""
    header = (f"{'method':8} {'concept':10} {'anchor TP':>12} {'paraphrase TP':>14} {'f':>6} {'retain':>7} "
              f"{'H':>6}  attacks (ASR edited/unedited, reference check)")
    lines = [header, "-" * len(header)]
    for r in records:
        retain = min((v for v in r["retention"].values() if v is not None), default=None)
        lines.append(f"{r['method'] or '?':8} {r['concept']:10} {_fmt(r['tp_anchor_ref']):>5} → "
                     f"{_fmt(r['tp_anchor']):5} {_fmt(r['tp_para_ref']):>5} → {_fmt(r['tp_para']):5} "
                     f"{_fmt(r['f']):>6} {_fmt(retain):>7} {_fmt(r['h']):>6}  {_fmt(r['attacks']) or 'none'}")
        if "ft_rr" in r:
            lines.append(f"  re-emergence ({r['method']}, {r['concept']}) after {r['ft_steps']} fine-tuning steps: "
                         f"final RR {_fmt(r['ft_rr'])} (paraphrase {_fmt(r['ft_rr_para'])}, pooled "
                         f"{_fmt(r.get('ft_rr_pooled'))}), Modular "
                         f"{_fmt(r['ft_rr_modular'])}, unerased control {_fmt(r['ft_rr_control'])}")
        lines += [f"  note ({r['method']}, {r['concept']}): {p}" for p in r["problems"]]
    lines.append("TP: judge-detected target proportion, unedited → edited; f = 1 − max TP edited/unedited; "
                 "retain: worst attribute on unrelated prompts (1 = unchanged); H: HUB summary score")
    return lines


def _row_key(method: str, spec: Any, attacks: Sequence[str], attack_options: dict[str, dict[str, Any]],
             method_options: dict[str, Any], settings: Any, model_key: str, judge_id: str) -> str:
    from erasurelab.diskcache import cache_key
    from erasurelab.runinfo import code_digest

    return cache_key("bench-row", method, spec.sha256(), list(attacks), {a: attack_options.get(a, {}) for a in attacks},
                     method_options, settings.to_dict(), model_key, judge_id, code_digest())


def compare(out: Path, concepts: Sequence[str], methods: Sequence[str], attacks: str | Sequence[str] | None,
            settings: Any, method_options: dict[str, dict[str, Any]] | None = None,
            attack_options: dict[str, dict[str, Any]] | None = None, quiet: bool = False, echo: Any = print,
            resume: bool = False) -> tuple[list[Any], list[dict[str, Any]]]:
    """Erase every concept with every method, attack, evaluate against the unedited model, write out/report.

    Returns (one EvaluationResult per (method, concept) computed here, every row's record). The
    reference renders each image once for all of them. resume: each row is written to
    out/rows/<method>-<concept>/ (row.json and its own report) as it completes, and a row already
    there with the same settings (method, concept, attacks and their options, evaluation settings,
    model, judge and erasurelab's code, `runinfo.code_digest`: a changed default recomputes it) is read
    instead of recomputed. Every bad input fails before any work.
    """
    from erasurelab.api import erase, resolve_concepts
    from erasurelab.attacks import run_attack
    from erasurelab.evaluation import evaluate
    from erasurelab.evaluation.rendering import RenderCache, model_hash
    from erasurelab.evaluation.report import write_report
    from erasurelab.evaluation.runner import check_output
    from erasurelab.judges import load_judge
    from erasurelab.methods import get_method
    from erasurelab.models import load_pipeline
    from erasurelab.runinfo import write_json_atomic

    report_dir = out / "report"
    check_output(report_dir, overwrite=True)
    methods = [get_method(m).name for m in methods]
    if not methods:
        raise ErasureLabError("nothing to compare: give at least one method")
    attack_names = resolve_attacks(attacks)
    attack_options = attack_options or {}
    specs = resolve_concepts(list(concepts))
    if not specs:
        raise ErasureLabError("nothing to compare: give at least one concept")
    pipe = load_pipeline("builtin:shapes")
    # Attacks need the unedited model beside the edited one; without them evaluate() reverts the
    # applied edit in place for its reference, so no second copy is loaded.
    reference = load_pipeline("builtin:shapes") if attack_names else None
    judge = load_judge("shapes")
    for spec in specs:
        judge.attribute_of(spec.name)  # a concept the judge cannot see fails now, not after the first method
    cache = RenderCache(settings.steps, settings.guidance, settings.batch_size, quiet)
    base_key = model_hash(pipe) if resume else ""
    results, records = [], []
    for spec in specs:
        for method in methods:
            options = (method_options or {}).get(method, {})
            row_dir = out / "rows" / f"{method}-{spec.name}"
            key = _row_key(method, spec, attack_names, attack_options, options, settings, base_key, judge.id) \
                if resume else ""
            if resume and (row_dir / "row.json").is_file():
                import json

                saved = json.loads((row_dir / "row.json").read_text(encoding="utf-8"))
                if saved.get("key") == key:
                    echo(f"[{method}] {spec.name!r}: done in an earlier run ({row_dir / 'row.json'}), skipped")
                    records.append(saved["record"])
                    continue
            echo(f"[{method}] erasing {spec.name!r}" + (f" with {options}" if options else "") + " ...")
            edit = erase(pipe, spec, method, quiet=quiet, **options)
            edit.save(out / "runs" / f"{method}-{spec.name}", format="auto", overwrite=True)
            with edit.applied(pipe):
                attack_results = []
                for name in attack_names:
                    echo(f"[{method}] attacking {spec.name!r} with {name} ...")
                    attack_results.append(run_attack(name, pipe, spec, reference, judge, quiet=quiet,
                                                     **attack_options.get(name, {})))
                echo(f"[{method}] evaluating {spec.name!r} ...")
                result = evaluate(pipe, spec, reference=reference, judge=judge, attacks=attack_results, quiet=quiet,
                                  settings=settings, cache=cache)
            results.append(result)
            records.extend(rows([result]))
            if resume:
                write_report(result, row_dir / "report", overwrite=True)
                write_json_atomic(row_dir / "row.json", {"key": key, "record": records[-1]})
    if results:
        write_report(results, report_dir, overwrite=True)
    return results, records


def demo_attack_options(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The demo's budget per attack; Ring-A-Bell scores its search in bf16 where the CPU has native bf16.

    Why only in the demo: the search is the largest part of a cold demo, and bf16 is the cheap way to pay
    for it there; the bench keeps float32 so its rows stay comparable across machines.
    """
    from erasurelab.models.sampling import cpu_bf16_capable

    options = {a: dict(DEMO_ATTACK_OPTIONS.get(a, {})) for a in names}
    if "ring-a-bell" in options and cpu_bf16_capable():
        options["ring-a-bell"].setdefault("search_bf16", True)
    return options


def run_demo(out: Path, concept_name: str = DEMO_CONCEPT, methods: Sequence[str] = DEMO_METHODS,
             attack: str | Sequence[str] | None = DEMO_ATTACKS, quiet: bool = False,
             echo: Any = print) -> list[Any]:
    """Erase, attack, evaluate and report on the demo's protocol; returns one EvaluationResult per method.

    attack: attack names (default: textual inversion and Ring-A-Bell), "a,b", "default", or None / "none".
    Methods run with their own defaults: the demo passes no method options.
    """
    started = time.perf_counter()
    names = resolve_attacks(attack)
    options = demo_attack_options(names)
    results, records = compare(out, [concept_name], methods, names, demo_settings(), None, options, quiet, echo)
    for line in _table(records):
        echo(line)
    echo(f"report: {out / 'report' / 'index.html'}  ({time.perf_counter() - started:.0f} s)")
    return results


def run_bench(out: Path, concepts: Sequence[str] = BENCH_CONCEPTS, methods: Sequence[str] = DEMO_METHODS,
              attack: str | Sequence[str] | None = DEMO_ATTACKS, quiet: bool = False, echo: Any = print,
              settings: Any = None) -> list[dict[str, Any]]:
    """`erasurelab bench`: the methods x concepts table with every metric and timing, at the full protocol.

    Resumable: rows finished by an earlier run with the same settings are read from out/rows/.
    Writes out/bench.md, out/bench.json (with the concept set used: "test", "dev" or "custom", and the
    provenance) and out/report/ (the rows computed by this run); returns every row's record.
    """
    from erasurelab.evaluation import EvaluationSettings
    from erasurelab.evaluation.result import jsonable
    from erasurelab.evaluation.runner import provenance
    from erasurelab.runinfo import library_versions, peak_rss_mb, write_json_atomic, write_text_atomic

    started = time.perf_counter()
    names = resolve_attacks(attack)
    settings = settings or EvaluationSettings(batch_size=64)
    _, records = compare(out, concepts, methods, names, settings, None, None, quiet, echo, resume=True)
    text = markdown(records)
    write_text_atomic(out / "bench.md", text)
    write_json_atomic(out / "bench.json", jsonable({
        "concept_set": concept_set(concepts), "concepts": list(concepts), "methods": list(methods),
        "attacks": list(names), "method_options": {}, "settings": settings.to_dict(), "rows": records,
        "wall_time_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
        "versions": library_versions(), "provenance": provenance()}))
    for line in _table(records):
        echo(line)
    echo(f"wrote {out / 'bench.md'}, {out / 'bench.json'} and {out / 'report' / 'index.html'}")
    return records
