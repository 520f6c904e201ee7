"""Compound-concept bench (issue 5): combinations and conditionals, method by method, on the embedded model.

For each compound concept (default: red+circle and blue+square combinations, circle|white and
star|black conditionals) it renders the TRuST paper's compound suites once on the unedited model, then for
each method erases the concept, renders the same suites on the edited model and reports:
  combination  CR_0 -> CR (both parts detected on F_ev), ρ per retain suite (R_A: the first
               part with other objects, R_B: the second part with other colours; capped at 1)
  conditional  P0 -> P of the concept on F_ev (UA = 1 - P/P0), ρ of the context on F_ev and of
               the retain suites (R_ctx: other contexts, R_A: concept alone, R_B: the context's
               other concepts)
plus the erase wall time, peak memory and (TRuST) the fraction of trainable weights touched.
Prints a table and writes bench/results/compound.json. Fixed seeds: two runs give the same numbers.

    python bench/bench_compound.py --methods trust,esd-x,esd-x-keep,pure-ls
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_closed_form import VARIANTS, run_erase
from erasurelab.concepts import concept
from erasurelab.evaluation.compound import CompoundSettings, evaluate_compound
from erasurelab.evaluation.rendering import RenderCache
from erasurelab.judges import load_judge
from erasurelab.models import load_pipeline
from erasurelab.world.compound import build_compound_suites

from _common import peak_rss_mb, table, write_json

CONCEPTS = ("red+circle", "blue+square", "circle|white", "star|black")


def render_suites(cache: RenderCache, pipe, key: str, suites) -> dict[str, torch.Tensor]:
    return {s.name: cache.render(pipe, key, *s.requests()) for s in suites.all()}


def row(name: str, method: str, metrics, edit, seconds: float) -> dict:
    forget = metrics.forget
    out = {"concept": name, "method": method, "kind": metrics.kind,
           "forget_base": forget["reference"].value, "forget_edited": forget["edited"].value,
           "forget_term": metrics.forget_term, "retention_term": metrics.retention_term, "score": metrics.score,
           "erase_s": round(seconds, 1), "touched": edit.meta.get("touched_fraction", "")}
    for entry in metrics.retention:
        if entry.in_score:
            out[f"rho[{entry.name}]"] = entry.rho
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="trust,esd-x,esd-x-keep,pure-ls", help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--seeds", type=int, default=4, help="seeds per suite prompt (the TRuST paper: 8)")
    parser.add_argument("--retain-max", type=int, default=24, help="prompts per retain suite at most")
    parser.add_argument("--output", default="compound", help="results file name under bench/results/")
    args = parser.parse_args()

    torch.set_num_threads(2)
    pipe = load_pipeline("builtin:shapes")
    judge = load_judge("shapes")
    settings = CompoundSettings(seeds=args.seeds, retain_max=args.retain_max)
    cache = RenderCache(batch_size=64)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, results = [], []
    for name in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        spec = concept(name)
        suites = build_compound_suites(spec, settings=settings)
        print(f"unedited model on {name} ...", flush=True)
        reference = render_suites(cache, pipe, "base", suites)
        for method in methods:
            start = time.perf_counter()
            edit = run_erase(pipe, (name,), method)
            seconds = time.perf_counter() - start
            with edit.applied(pipe):
                edited = render_suites(cache, pipe, f"{method}/{name}", suites)
            metrics = evaluate_compound(spec, suites, judge, reference, edited)
            rows.append(row(name, method, metrics, edit, seconds))
            results.append({"concept": name, "method": method, "options": VARIANTS[method][1],
                            "erase_s": seconds, "peak_rss_mb": peak_rss_mb(), "metrics": metrics.to_dict(),
                            "touched_fraction": edit.meta.get("touched_fraction")})
            print(f"  {method}: {rows[-1]}", flush=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))  # combinations and conditionals differ in ρ's
    print(table([{c: r.get(c, "") for c in columns} for r in rows], columns))
    settings = {"seeds": args.seeds, "retain_max": args.retain_max, "methods": {m: VARIANTS[m] for m in methods}}
    payload = {"results": results, "table": rows}
    print(f"wrote {write_json(args.output, payload, pipe=pipe, judge=judge, settings=settings)}")


if __name__ == "__main__":
    main()
