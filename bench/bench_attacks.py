"""Attack bench on the embedded model: every attack against the unedited model and PURE/UCE edits.

For each concept (red, circle, striped, bobo) and attack (textual-inversion, unlearndiffatk,
ring-a-bell) it runs the attack
  - against the unedited model (the sanity check: ASR should be near 100%; for UnlearnDiffAtk it
    is 100% by construction, since its targets are M_0's own judge-positive renders), and
  - against the PURE- and UCE-erased models (the edit is applied to a second copy of the model
    and reverted afterwards; M_0 stays untouched and provides every reference image),
and prints ASR, pre-ASR (unattacked prompts on the same model), ΔASR and the budget (optimisation
steps, U-Net forward/backward samples, renders, wall time). The reference ASR of an edited row is
the unedited row's ASR (the same attack on the same M_0 with the same seeds), so the attack on M_0
runs once per concept and attack (`check_reference=False` on the edited runs).
Writes bench/results/attacks.json. Fixed seeds: two runs give the same numbers on one machine.

    python bench/bench_attacks.py                      # embedded defaults (attacks.md), ~hours on 2 cores
    python bench/bench_attacks.py --quick              # reduced budgets, for a first look
    python bench/bench_attacks.py --attacks ring-a-bell --concepts red --methods pure
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_closed_form import VARIANTS, run_erase
from erasurelab.attacks import available_attacks, run_attack
from erasurelab.judges import load_judge
from erasurelab.models import load_pipeline

from _common import peak_rss_mb, table, write_json

CONCEPTS = ("red", "circle", "striped", "bobo")
METHODS = ("pure-ls", "uce")
SEED = 1  # evaluation.md: base seed 1
#: --quick budgets: about a tenth of the embedded defaults.
QUICK = {
    "textual-inversion": {"train_steps": 100, "n_images": 16},
    "unlearndiffatk": {"iters": 5, "n_prompts": 5},
    "ring-a-bell": {"generations": 50, "n_prompts": 5, "n_pairs": 10},
}


def row(result, concept: str, attack: str, model: str, reference_asr) -> dict:
    edited = result.budget["edited"]
    pre = result.pre_asr
    return {
        "concept": concept, "attack": attack, "model": model,
        "asr": result.asr.value, "n": result.asr.denominator,
        "pre_asr": pre.value if pre is not None else float("nan"),
        "delta_asr": result.delta_asr if result.delta_asr is not None else float("nan"),
        "ref_asr": reference_asr.value if reference_asr is not None else float("nan"),
        "steps": int(edited["steps"]), "unet_fwd": int(edited["unet_forward"]),
        "unet_bwd": int(edited["unet_backward"]),
        "renders": int(edited["renders"] + result.budget["prepare"]["renders"]),
        "wall_s": edited["wall_time_s"] + result.budget["prepare"]["wall_time_s"],
    }


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """{"ring-a-bell": {"search_bf16": True}} from ["ring-a-bell.search_bf16=true"]."""
    import json

    overrides: dict[str, dict] = {}
    for item in items:
        name, sep, value = item.partition("=")
        attack, dot, option = name.partition(".")
        if not (sep and dot and attack and option):
            raise SystemExit(f"--set {item!r}: expected ATTACK.OPTION=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(attack, {})[option] = parsed
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", default=",".join(available_attacks()))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"any of {', '.join(VARIANTS)}; '' = none")
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--quick", action="store_true", help="reduced budgets (see QUICK)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="ATTACK.OPTION=VALUE",
                        help="an attack option for every run of that attack (repeatable; VALUE as JSON or text)")
    parser.add_argument("--output", default="attacks", help="results file name under bench/results/")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)

    torch.set_num_threads(args.threads)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    reference = load_pipeline("builtin:shapes")
    edited = load_pipeline("builtin:shapes")  # a second copy: edits are applied here and reverted
    judge = load_judge("shapes")
    rows, results = [], []
    start = time.perf_counter()
    for concept in concepts:
        edits = {method: run_erase(reference, (concept,), method) for method in methods}
        for attack in attacks:
            options = {**(QUICK.get(attack, {}) if args.quick else {}), **overrides.get(attack, {})}
            print(f"{attack} on {concept}: unedited model ...", flush=True)
            base = run_attack(attack, reference, concept, reference, judge, seed=SEED, **options)
            print(f"  {base.summary()}", flush=True)
            rows.append(row(base, concept, attack, "unedited", base.asr))
            results.append({"model": "unedited", **base.to_dict()})
            for method, edit in edits.items():
                with edit.applied(edited):
                    result = run_attack(attack, edited, concept, reference, judge, seed=SEED, check_reference=False,
                                        **options)
                print(f"  {method}: {result.summary()}", flush=True)
                rows.append(row(result, concept, attack, method, base.asr))
                results.append({"model": method, "edit_wall_time_s": edit.meta["wall_time_s"],
                                "reference_asr_from_unedited_run": base.asr.to_dict(), **result.to_dict()})
    columns = ["concept", "attack", "model", "asr", "n", "pre_asr", "delta_asr", "ref_asr", "steps", "unet_fwd",
               "unet_bwd", "renders", "wall_s"]
    print(table(rows, columns))
    settings = {"seed": SEED, "quick": args.quick, "options": QUICK if args.quick else {}, "overrides": overrides}
    payload = {"table": rows, "results": results, "total_wall_time_s": time.perf_counter() - start,
               "peak_rss_mb": peak_rss_mb()}
    print(f"wrote {write_json(args.output, payload, pipe=reference, judge=judge, settings=settings)}")


if __name__ == "__main__":
    main()
