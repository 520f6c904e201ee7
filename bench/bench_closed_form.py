"""Acceptance bench of the closed-form methods (PURE, UCE) on the embedded model.

For each method and each target (dev concepts by default, --targets for others, and one 3-concept
call) it measures,
with the shapes judge, base model vs edited model:
  target_anchor      fraction of images showing the target on the spec's forget anchors
                     (the prompts the edit was built from; --seeds seeds each)
  target_paraphrase  same on held-out paraphrase prompts (captions.paraphrase_prompts; never anchors)
  retention          object-and-color-correct rate on canonical prompts that do not name a target
Then edit time (median of --repeats) and peak memory for 1 and 10 concepts, each in a fresh
subprocess so its peak resident memory is its own. Prints tables and writes
bench/results/closed_form.json (with provenance, model hash, judge and settings; the "split" of
each row says whether its concept is a dev or a test concept). Fixed prompts and seeds: two runs
give the same numbers (tests/test_bench_reproduce.py checks one row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasurelab.api import erase
from erasurelab.concepts import concept
from erasurelab.judges import load_judge
from erasurelab.models import generate, load_pipeline
from erasurelab.world import captions
from erasurelab.world.catalog import DEV_CONCEPTS, TEST_CONCEPTS, concept_split

from _common import peak_rss_mb, run_worker, table, write_json

#: Default single targets: the dev concepts defaults were chosen on (--targets test: TEST_CONCEPTS).
SINGLE = DEV_CONCEPTS[:4]
MULTI = ("red", "circle", "striped")
#: The 10-concept timing call spans every category.
TEN = ("red", "blue", "green", "circle", "square", "star", "striped", "dotted", "bobo", "kiki")
SEED0 = 20_000  # evaluation seeds, disjoint from training and capture seeds
#: Named method variants: "pure" is the paper's projector (explicitly, whatever the default);
#: "pure-default" is PURE with no options (least squares on the embedded model); "pure-centred"
#: builds the forget basis from per-(seed, step) centred activations and drops the retain
#: cancellation (PureConfig docstring).
VARIANTS: dict[str, tuple[str, dict]] = {
    "pure": ("pure", {"solver": "projector"}),
    "pure-default": ("pure", {}),
    "pure-centred": ("pure", {"centre": True, "retain_strength": 0.0}),
    "pure-centred-half": ("pure", {"centre": True, "retain_strength": 0.5}),
    "pure-ls": ("pure", {"solver": "least_squares"}),
    "pure-ls-w100": ("pure", {"solver": "least_squares", "retain_weight": 100.0}),
    "pure-ls-w10": ("pure", {"solver": "least_squares", "retain_weight": 10.0}),
    "uce": ("uce", {}),
    "esd-default": ("esd", {}),
    "esd-x": ("esd", {"variant": "x"}),
    "esd-u": ("esd", {"variant": "u"}),
    "trust": ("trust", {}),
    "esd-x-keep": ("esd", {"variant": "x", "retain_weight": 1.0}),
    "esd-x-keep-eta3": ("esd", {"variant": "x", "retain_weight": 1.0, "eta": 3.0, "lr": 1e-3}),
    # striped needs more steps than ESD's 300 at that setting (bench/results/methods_notes.md)
    "esd-x-keep-eta3-400": ("esd", {"variant": "x", "retain_weight": 1.0, "eta": 3.0, "lr": 1e-3, "steps": 400}),
    # TRuST's fast setting (bench_finetune_speed: 10 steps to anchor ≤ 0.10 on circle)
    "trust-cip-fast": ("trust", {"variant": "cip", "batch_size": 2, "lr": 1.5e-2, "refresh": 10,
                                 "saliency_prompts": 1, "n_forget": 8, "sample_steps": 6, "steps": 20}),
}


def _attribute(label: str) -> str:
    return concept(label).category


def anchor_items(label: str) -> list[captions.LabelledPrompt]:
    return [captions.LabelledPrompt(p, {_attribute(label): label}) for p in concept(label).forget]


def retain_items(targets: tuple[str, ...]) -> list[captions.LabelledPrompt]:
    """Canonical prompts whose labels name none of the targets (characters: every canonical prompt)."""
    return [item for item in captions.canonical_suite() if not set(item.labels.values()) & set(targets)]


def render(pipe, items: list[captions.LabelledPrompt], seeds: int) -> torch.Tensor:
    prompts = [i.prompt for i in items for _ in range(seeds)]
    return generate(pipe, prompts, [SEED0 + k for _ in items for k in range(seeds)], batch_size=64)


def target_rate(pipe, judge, label: str, items: list[captions.LabelledPrompt], seeds: int) -> float:
    return float(judge.present(render(pipe, items, seeds), label).float().mean())


def retention(pipe, judge, items: list[captions.LabelledPrompt], seeds: int) -> float:
    predicted = judge.predict(render(pipe, items, seeds))
    expanded = [i for i in items for _ in range(seeds)]
    ok = [p["object"] == i.labels["object"] and p["color"] == i.labels["color"]
          for p, i in zip(predicted, expanded, strict=True)]
    return sum(ok) / len(ok)


def measure(pipe, judge, targets: tuple[str, ...], args) -> dict:
    """Retention and, per target, anchor and paraphrase rates; args.max_prompts (if set) caps each prompt list."""
    cap = getattr(args, "max_prompts", None)
    out = {"retention": retention(pipe, judge, retain_items(targets)[:cap], args.retain_seeds)}
    for label in targets:
        out[f"{label}/anchor"] = target_rate(pipe, judge, label, anchor_items(label)[:cap], args.seeds)
        out[f"{label}/paraphrase"] = target_rate(pipe, judge, label, list(captions.paraphrase_prompts(label))[:cap],
                                                 args.paraphrase_seeds)
    return out


def edit_summary(edit) -> dict:
    meta = edit.meta
    ranks = [r for r in edit.ranks().values() if r is not None]
    summary = {"tensors": len(edit), "max_rank": max(ranks, default=0), "wall_time_s": meta["wall_time_s"]}
    if meta["method"] == "pure" and "layers" in meta:
        summary["k_F"] = [info["k_F"] for info in meta["layers"].values()]
        summary["k_R"] = [info["k_R"] for info in meta["layers"].values()]
        summary["noop_layers"] = sum(info["noop"] for info in meta["layers"].values())
    for key in ("cond_M", "touched_fraction", "variant", "steps"):
        if key in meta or key in meta.get("config", {}):
            summary[key] = meta.get(key, meta.get("config", {}).get(key))
    return summary


def run_erase(pipe, targets, variant: str):
    method, options = VARIANTS[variant]
    return erase(pipe, list(targets), method, **options)


def sizes(seeds: int = 10, paraphrase_seeds: int = 3, retain_seeds: int = 2,
          max_prompts: int | None = None) -> SimpleNamespace:
    """The sample sizes `measure` reads (the command line's defaults unless given)."""
    return SimpleNamespace(seeds=seeds, paraphrase_seeds=paraphrase_seeds, retain_seeds=retain_seeds,
                           max_prompts=max_prompts)


def bench_row(pipe, judge, targets: tuple[str, ...], variant: str, args, base: dict | None = None) -> dict:
    """One result: the base and edited measurements of erasing `targets` with `variant`.

    base: the unedited model's measurements when already taken (they do not depend on the method).
    The pipeline is left as it was, also on errors.
    """
    base = measure(pipe, judge, targets, args) if base is None else base
    edit = run_erase(pipe, targets, variant)
    with edit.applied(pipe):
        edited = measure(pipe, judge, targets, args)
    return {"targets": list(targets), "split": [concept_split(t) for t in targets], "method": variant,
            "base": base, "edited": edited, "edit": edit_summary(edit), "edit_wall_time_s": edit.meta["wall_time_s"]}


def timing_worker(method: str, n: int, repeats: int) -> dict:
    """Edit time (median of repeats) and peak memory of erasing the first n of TEN, in this process."""
    torch.set_num_threads(2)
    pipe = load_pipeline("builtin:shapes")
    loaded = peak_rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_erase(pipe, TEN[:n], method)
        times.append(time.perf_counter() - start)
    return {"method": method, "concepts": n, "median_s": statistics.median(times), "peak_rss_mb": peak_rss_mb(),
            "rss_after_load_mb": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="pure-default,pure,uce", help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--targets", default=None,
                        help="comma-separated single targets, or 'dev' (default: red, circle, striped, bobo) "
                        "or 'test' (the catalog's TEST_CONCEPTS)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per anchor prompt")
    parser.add_argument("--paraphrase-seeds", type=int, default=3, help="seeds per paraphrase prompt")
    parser.add_argument("--retain-seeds", type=int, default=2, help="seeds per canonical prompt")
    parser.add_argument("--multi-only", action="store_true", help="only the one-call erasure of " + "+".join(MULTI))
    parser.add_argument("--repeats", type=int, default=3, help="edit-time repeats (median)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--output", default="closed_form", help="results file name under bench/results/")
    parser.add_argument("--timing-only", action="store_true", help="timing runs only (closed_form_timing.json)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    parser.add_argument("--timing-worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_worker:
        print(json.dumps(timing_worker(args.timing_worker[0], int(args.timing_worker[1]), args.repeats)))
        return

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pipe = load_pipeline("builtin:shapes")
    judge = load_judge("shapes")
    named = {"dev": SINGLE, "test": TEST_CONCEPTS}
    singles = named.get(args.targets, args.targets.split(",") if args.targets else SINGLE)
    runs = [(label,) for label in singles] + ([MULTI] if args.targets in (None, "dev") else [])
    if args.multi_only:
        runs = [MULTI]
    if args.timing_only:
        runs = []
    rows, results = [], []
    for targets in runs:
        print(f"base model on {'+'.join(targets)} ...", flush=True)
        base = measure(pipe, judge, targets, args)
        for method in methods:
            result = bench_row(pipe, judge, targets, method, args, base)
            results.append(result)
            edited = result["edited"]
            for label in targets:
                rows.append({"targets": "+".join(targets), "method": method, "concept": label,
                             "split": concept_split(label),
                             "anchor_base": base[f"{label}/anchor"], "anchor_edited": edited[f"{label}/anchor"],
                             "para_base": base[f"{label}/paraphrase"], "para_edited": edited[f"{label}/paraphrase"],
                             "retain_base": base["retention"], "retain_edited": edited["retention"],
                             "edit_s": result["edit_wall_time_s"]})
            print(f"  {method}: {json.dumps(edited)}", flush=True)
    print(table(rows, ["targets", "method", "concept", "split", "anchor_base", "anchor_edited", "para_base",
                       "para_edited", "retain_base", "retain_edited", "edit_s"]))

    timing = []
    if not args.skip_timing:
        for method in methods:
            for n in (1, 10):
                timing.append(run_worker(__file__, "--timing-worker", method, str(n), "--repeats", str(args.repeats)))
        print(table(timing, ["method", "concepts", "median_s", "peak_rss_mb", "rss_after_load_mb"]))

    settings = {"methods": {m: VARIANTS[m] for m in methods}, "seeds": args.seeds,
                "paraphrase_seeds": args.paraphrase_seeds, "retain_seeds": args.retain_seeds, "seed0": SEED0,
                "repeats": args.repeats}
    payload = {"results": results, "table": rows, "timing": timing}
    path = write_json(args.output + ('_timing' if args.timing_only else ''), payload, pipe=pipe, judge=judge,
                      settings=settings)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
