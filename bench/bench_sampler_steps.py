"""Fewer sampler steps as a faster render path: judge verdicts and CPU time against the model's default steps.

Rendering is about 90% of a cold evaluation (bench/results/evaluate.md), and its cost is linear in
sampler steps. Fewer steps of the same DPM-Solver++ sampler are held to the rule bf16 autocast was held
to (bench_generation.py): a step count could replace the default only if, on the world's canonical
prompts at the same seeds, every attribute's shapes-judge verdict changes on under 1% of the images.
Measures only; it changes no default.

`--floor` adds one more row: the default steps with the U-Net and VAE in channels_last memory format,
whose images differ from the default only by float32 rounding. It shows how many verdicts a change
that small already flips, i.e. how close the 1% rule sits to the judge's own noise on borderline images.

    OMP_NUM_THREADS=2 python bench/bench_sampler_steps.py --steps 10,12,15 [--seeds 4] [--floor]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import canonical_requests, judged_render, table, to_channels_last, verdict_difference, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,12,15", help="comma-separated candidate step counts")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per canonical prompt (from 1000)")
    parser.add_argument("--floor", action="store_true", help="add the channels_last row (float32 rounding only)")
    parser.add_argument("--output", default="sampler_steps")
    args = parser.parse_args()
    candidates = [int(s) for s in args.steps.split(",") if s.strip()]
    if not candidates or min(candidates) <= 0:
        parser.error(f"--steps needs positive step counts, got {args.steps!r}")

    from erasurelab.judges import load_judge
    from erasurelab.models import load_pipeline
    from erasurelab.models.sampling import default_sampling
    from erasurelab.world import vocab

    pipe, judge = load_pipeline("builtin:shapes"), load_judge("shapes")
    default_steps, guidance = default_sampling(pipe)
    prompts, seeds, n_prompts = canonical_requests(args.seeds)

    def compared_row(label: object, steps: int) -> dict:
        images, preds, cpu = judged_render(pipe, judge, prompts, seeds, steps=steps)
        return {"steps": label, "cpu_s": cpu, "speed_up": base_cpu / cpu,
                **verdict_difference(base_preds, preds, base_images, images, vocab.ATTRIBUTES)}

    base_images, base_preds, base_cpu = judged_render(pipe, judge, prompts, seeds, steps=default_steps)
    rows = [{"steps": default_steps, "cpu_s": base_cpu, "speed_up": 1.0, "max_rate": 0.0, "passes": True}]
    rows += [compared_row(steps, steps) for steps in candidates]
    if args.floor:
        to_channels_last(pipe)
        rows.append(compared_row(f"{default_steps}, channels_last", default_steps))
    columns = ["steps", "cpu_s", "speed_up", "max_rate", "passes"]
    print(table(rows, columns))
    for row in rows[1:]:
        print(f"{row['steps']} steps: verdict change rate per attribute {row['verdict_change_rate']}")
    write_json(args.output, {"rows": rows, "reference_steps": default_steps, "guidance": guidance,
                             "images": len(prompts), "prompts": n_prompts},
               judge=judge, settings={"steps": candidates, "seeds": args.seeds, "first_seed": 1000, "floor": args.floor,
                                      "scheduler": type(pipe.scheduler).__name__})


if __name__ == "__main__":
    main()
