"""The report's figures as PNG bytes: the forget/retain trade-off and the re-emergence curves.

Why matplotlib's Figure and no pyplot: no GUI backend and no global state, so figures can be
drawn from any thread or process. Imports are lazy so the evaluation loads without matplotlib.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasurelab.evaluation.result import EvaluationResult


def model_label(result: EvaluationResult) -> str:
    """Short name of an evaluated model: its method, else the last part of its source."""
    return result.method or Path(result.model).name or result.model


def tradeoff_figure(results: Sequence[EvaluationResult]) -> bytes:
    """Forget f against retain r per concept: edited models and the unedited one (f not measurable: no point)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(5.6, 4.4), dpi=110)
    ax = fig.add_subplot()
    references: dict[str, dict[str, float]] = {}  # concept -> the unedited model's terms (first result's)
    for c in (c for result in results for c in result.concepts):
        references.setdefault(c.concept, c.terms_reference)
    # One concept: its name goes in the title; per-point labels would only pile up where methods agree.
    label_points = len(references) > 1
    for k, result in enumerate(results):
        label = model_label(result) if len(results) == 1 or result.method else f"{model_label(result)} ({k + 1})"
        shown = [c for c in result.concepts if math.isfinite(c.terms["f"]) and math.isfinite(c.terms["r"])]
        xs = [c.terms["f"] for c in shown]
        ys = [c.terms["r"] for c in shown]
        ax.scatter(xs, ys, s=46, label=label, zorder=3)
        if label_points:
            for c, x, y in zip(shown, xs, ys, strict=True):
                ax.annotate(c.concept, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    points = [t for t in references.values() if math.isfinite(t["f"]) and math.isfinite(t["r"])]
    if points:  # after the methods: "no edit" ends the legend
        ax.scatter([t["f"] for t in points], [t["r"] for t in points], marker="x", color="gray", s=40,
                   label="no edit", zorder=2)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("forget  f = 1 − max TP(edited) / TP(reference)   →  better")
    ax.set_ylabel("retain  r (neighbour retention)   →  better")
    ax.grid(alpha=0.3)
    if len(references) == 1:
        ax.set_title(next(iter(references)), fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def reemergence_attacks(results: Sequence[EvaluationResult]) -> list[tuple[str, Any]]:
    """(model label, attack) for every attack that reported re-emergence curves, in result order."""
    from erasurelab.finetuning.curves import is_curves

    return [(model_label(r), a) for r in results for a in r.attacks if is_curves(getattr(a, "curves", None))]


def reemergence_figure(results: Sequence[EvaluationResult]) -> bytes | None:
    """TP per fine-tuning step, one row of panels per concept, one panel per probe (anchor, paraphrase).

    Per model: the erased model fine-tuned (solid) and, when measured, Modular LoRA (dotted) and
    full fine-tuning (dash-dot); the unerased control (grey, dashed) once per concept. None when
    no attack reported curves.
    """
    from matplotlib.figure import Figure

    from erasurelab.finetuning.curves import PROBES, SERIES

    found = reemergence_attacks(results)
    if not found:
        return None
    concepts = list(dict.fromkeys(a.concept for _, a in found))
    probes = [p for p in PROBES if any(p in a.curves["counts"] for _, a in found)]
    fig = Figure(figsize=(4.2 * len(probes), 3.3 * len(concepts)), dpi=110)
    axes = fig.subplots(len(concepts), len(probes), squeeze=False)
    colours = [f"C{i}" for i in range(10)]
    models = list(dict.fromkeys(label for label, _ in found))
    styles = {"erased": ("-", "o"), "modular": (":", "s"), "full": ("-.", "^")}
    for row, concept in enumerate(concepts):
        mine = [(label, a.curves) for label, a in found if a.concept == concept]
        for col, probe in enumerate(probes):
            ax = axes[row][col]
            control = next((c for _, c in mine if probe in c["tp"].get("control", {})), None)
            if control is not None:
                ax.plot(control["steps"], _plottable(control["tp"]["control"][probe]), color="gray", ls="--",
                        marker=".", label=SERIES["control"])
            for label, curves in mine:
                colour = colours[models.index(label) % len(colours)]
                for series, (ls, marker) in styles.items():
                    values = curves["tp"].get(series, {}).get(probe)
                    if values is not None:
                        ax.plot(curves["steps"], _plottable(values), color=colour, ls=ls, marker=marker, ms=3,
                                label=f"{label}: {SERIES[series]}" if len(models) > 1 else SERIES[series])
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("fine-tuning step")
            ax.set_ylabel(f"target proportion ({probe})")
            ax.set_title(f"{concept}: {probe} prompts", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _plottable(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]
