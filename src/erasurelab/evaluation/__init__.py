"""Evaluation: fixed prompt suites, metrics, the evaluate() runner and the report writer.

Lazy re-exports so `from erasurelab.evaluation.types import AttackResult` stays cheap.
"""

from __future__ import annotations

from typing import Any

from erasurelab.evaluation.types import AttackResult, EvaluationSettings, Rate

__all__ = ["AttackResult", "ConceptResult", "EvaluationResult", "EvaluationSettings", "Rate", "evaluate",
           "write_report"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from erasurelab.evaluation.runner import evaluate

        return evaluate
    if name in ("EvaluationResult", "ConceptResult"):
        from erasurelab.evaluation import result

        return getattr(result, name)
    if name == "write_report":
        from erasurelab.evaluation.report import write_report

        return write_report
    raise AttributeError(name)
