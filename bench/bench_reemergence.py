"""Re-emergence under benign fine-tuning, and Modular LoRA, on the embedded model (issue 19).

For each concept: a benign dataset (`world dataset`: the concept in no image, close to it), the
unerased control fine-tuned on it, and per erasure method the erased model fine-tuned on it (plain)
and Modular LoRA (the control's adapter merged with the safety edit). Target proportion on the
concept's anchor and held-out paraphrase prompts at every snapshot, RR(k), the task's attribute
accuracy, and the fine-tuning wall time. Writes bench/results/reemergence.json (+ a PNG per concept).

    OMP_NUM_THREADS=2 python bench/bench_reemergence.py --concepts green,triangle,dotted --methods uce,pure,esd

A method entry is a registered method name, or LABEL=METHOD with that label's options in --method-options,
e.g. `--methods esd,esd-x-strict=esd --method-options '{"esd-x-strict": {"variant": "x-strict"}}'`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, table, write_json


def jsonable(value):
    from erasurelab.evaluation.result import jsonable as convert

    return convert(value)


def method_labels(spec: str) -> dict[str, str]:
    """label -> registered method name, from "uce,esd,esd-x-strict=esd" (a bare name is its own label)."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    return {e.partition("=")[0].strip(): (e.partition("=")[2] or e).strip() for e in entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="green,triangle,dotted")
    parser.add_argument("--methods", default="uce,pure,esd", help="method names or LABEL=METHOD entries")
    parser.add_argument("--method-options", default="{}", help="JSON: label -> options of that method's erase")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--variants", default="plain,modular",
                        help="of plain, modular, modular-project (Modular with the projection merge), full")
    parser.add_argument("--task-prompts", type=int, default=32,
                        help="held-out task prompts (one seed each) scored for the task's own attribute")
    parser.add_argument("--anchor-seeds", type=int, default=4, help="seeds per anchor prompt of the target probe")
    parser.add_argument("--paraphrase-seeds", type=int, default=1,
                        help="seeds per held-out paraphrase prompt of the target probe")
    parser.add_argument("--output", default="reemergence")
    args = parser.parse_args()

    import tempfile

    import erasurelab as el
    from erasurelab.caption_data import load_caption_folder
    from erasurelab.concepts import concept as concept_spec
    from erasurelab.concepts import concept_split
    from erasurelab.finetuning import FinetuneConfig
    from erasurelab.finetuning.curves import POOLED
    from erasurelab.finetuning.reemergence import plot_curves, run_experiment, target_probes
    from erasurelab.judges import load_judge
    from erasurelab.world.benign import task_probe, write_benign_dataset

    methods = method_labels(args.methods)
    options = json.loads(args.method_options)
    unknown = sorted(set(options) - set(methods))
    if unknown:
        parser.error(f"--method-options names {unknown[0]!r}, which is not in --methods")
    pipe, judge = el.load_pipeline("builtin:shapes"), load_judge("shapes")
    config = FinetuneConfig(steps=args.steps, rank=args.rank, lr=args.lr, batch_size=args.batch_size,
                            snapshot_every=args.snapshot_every)
    results, rows = [], []
    for name in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        folder = Path(tempfile.mkdtemp(prefix="bench-reemergence-")) / name
        write_benign_dataset(name, folder, n=args.images, seed=0, judge=judge)
        data = load_caption_folder(folder, size=32)
        safeties = {label: el.erase(pipe, name, method=method, **options.get(label, {}))
                    for label, method in methods.items()}
        start = time.perf_counter()
        probe = task_probe(name, n=args.task_prompts)
        spec = concept_spec(name)
        targets = target_probes(spec, pipe, set(judge.concepts()), anchor_seeds=args.anchor_seeds,
                                paraphrase_seeds=args.paraphrase_seeds)
        result = run_experiment(pipe, safeties, spec, data, judge, config, probe,
                                variants=[v for v in args.variants.split(",") if v], probes=targets)
        result["wall_time_s"] = time.perf_counter() - start
        result["split"] = concept_split(name)
        plot_curves(result, RESULTS / f"{args.output}_{name}.png")
        results.append(result)
        control = result["control"]
        for method, entry in result["methods"].items():
            for variant, data_v in entry["variants"].items():
                final = data_v["curve"][-1]
                rows.append({
                    "concept": name, "method": method, "variant": variant,
                    "tp_unaligned": result["unaligned"]["anchor"].value, "tp_aligned": entry["aligned"]["anchor"].value,
                    "tp_final": final["anchor"].value, "rr_final": data_v["rr"]["anchor"][-1],
                    "tp_para_aligned": entry["aligned"]["paraphrase"].value, "tp_para_final": final["paraphrase"].value,
                    "tp_pooled_aligned": entry["aligned"][POOLED].value, "tp_pooled_final": final[POOLED].value,
                    "rr_pooled_final": data_v["rr"][POOLED][-1],
                    "task": data_v["task_accuracy"].value, "task_control": control["task_accuracy"].value,
                })
        print(table([r for r in rows if r["concept"] == name],
                    ["concept", "method", "variant", "tp_unaligned", "tp_aligned", "tp_final", "rr_final",
                     "tp_para_final", "tp_pooled_aligned", "tp_pooled_final", "task", "task_control"]), flush=True)
    write_json(args.output, jsonable({"rows": rows, "experiments": results, "peak_rss_mb": peak_rss_mb()}),
               judge=judge, settings={**vars(args), "finetune": config.to_dict()},
               command=" ".join(["python", "bench/bench_reemergence.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
