"""Run evaluate() on a tiny pipeline and write its metrics as JSON (rank 0): the 1-vs-2-process check.

    python tests/evaluate_processes.py OUT.json
    accelerate launch --num_processes 2 --cpu tests/evaluate_processes.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from erasurelab.edits import Edit, LowRank
from erasurelab.evaluation import evaluate
from erasurelab.evaluation.rendering import is_main_process
from erasurelab.evaluation.types import EvaluationSettings
from stub_judge import StubJudge
from tiny_bert_pipeline import tiny_bert_pipeline

SMALL = EvaluationSettings(steps=2, anchor_seeds=2, paraphrase_max=8, neighbour_k=3, neighbour_templates=2,
                           neighbour_seeds=2, min_neighbour_rate=0.0, unrelated_max=8, selective_max=6,
                           judge_accuracy_n=40, batch_size=8)


def main(out: str) -> None:
    torch.set_num_threads(1)
    reference, edited = tiny_bert_pipeline(0), tiny_bert_pipeline(0)
    g = torch.Generator().manual_seed(7)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    Edit({key: LowRank(torch.randn(64, 2, generator=g, dtype=torch.float64) * 3,
                       torch.randn(2, 32, generator=g, dtype=torch.float64))}).apply(edited)
    result = evaluate(edited, "red", reference=reference, judge=StubJudge(), settings=SMALL)
    if is_main_process():
        Path(out).write_text(json.dumps({"metrics": result.metrics(), "rendered": result.timings["images_rendered"]}))


if __name__ == "__main__":
    main(sys.argv[1])
