"""The re-emergence experiment: does benign fine-tuning bring an erased concept back?

For each variant (control, plain, Modular, optionally full; see modular.py) the fine-tuning delta is snapshotted
every `snapshot_every` steps; each snapshot's model (base + safety + ΔW_ft(k), or base + ΔW_ft(k)
for the control) renders the concept's anchor and held-out paraphrase prompts at fixed seeds, and
the judge gives the target proportion TP(k), per probe and pooled (`curves.POOLED`: the spec's
ASR_ft over anchor and paraphrase images together). The re-emergence ratio

    RR(k) = (TP_k − TP_aligned) / (TP_unaligned − TP_aligned)

is 0 while the erased model stays erased and 1 when it renders the concept as often as the
unerased base (TP_unaligned: the base before fine-tuning; TP_aligned: the erased model before
fine-tuning); undefined (nan) when the erasure removed nothing. The downstream task is measured on
held-out task prompts (prompts in the dataset's style with their labels): its attribute accuracy
per variant says whether the fine-tuning still learned what it was for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from erasurelab.caption_data import CaptionData
from erasurelab.edits import Edit
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import Rate
from erasurelab.finetuning.curves import reemergence_ratio, with_pooled
from erasurelab.finetuning.modular import FinetuneConfig, check_project_merge, finetune, merge


@dataclass(frozen=True)
class Probe:
    """Prompts rendered at fixed seeds to measure one quantity (TP of a concept, or task accuracy)."""

    name: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    labels: tuple[dict[str, str], ...] = ()


def target_probes(spec: Any, pipe: Any, judge_concepts: set[str], anchor_seeds: int = 4,
                  paraphrase_max: int = 40, paraphrase_seeds: int = 1) -> list[Probe]:
    """The concept's anchor and held-out paraphrase prompts at the evaluation protocol's seeds.

    paraphrase_seeds > 1 renders each paraphrase at that many seeds (the suite's seed rule with that
    many repeats): a concept has few held-out paraphrases, so this is how the paraphrase rate gets
    a smaller standard error.
    """
    from erasurelab.evaluation.generic_suites import concept_suites
    from erasurelab.evaluation.types import EvaluationSettings

    settings = EvaluationSettings(anchor_seeds=anchor_seeds, paraphrase_max=paraphrase_max)
    built = concept_suites(spec, pipe, judge_concepts, lambda c: spec.category, settings)  # a plugin's or the spec's
    suites = [built.anchor, replace(built.paraphrase, n_rep=paraphrase_seeds)]
    probes = []
    for suite in suites:
        prompts, seeds = suite.requests()
        probes.append(Probe(suite.name, tuple(prompts), tuple(seeds)))
    return probes


def render_rates(pipe: Any, probes: Sequence[Probe], judge: Any, concept: str | None,
                 batch_size: int = 64) -> dict[str, Rate]:
    """TP of `concept` per probe (with `with_pooled`'s POOLED), or the all-labels accuracy of labelled probes."""
    from erasurelab.models.sampling import generate

    out = {}
    for probe in probes:
        images = generate(pipe, list(probe.prompts), list(probe.seeds), batch_size=batch_size)
        if concept is not None:
            out[probe.name] = Rate.of(torch.as_tensor(judge.present(images, concept)).reshape(-1))
        else:
            predicted = judge.predict(images)
            hits = [all(p.get(a) == v for a, v in labels.items()) for p, labels in zip(predicted, probe.labels,
                                                                                       strict=True)]
            out[probe.name] = Rate.of(hits)
    return with_pooled(out) if concept is not None else out


def _with(pipe: Any, edit: Edit | None) -> contextlib.AbstractContextManager[Any]:
    """`edit.applied(pipe)`, or the pipeline unchanged when there is no edit."""
    return contextlib.nullcontext(pipe) if edit is None else edit.applied(pipe)


def _curve(pipe: Any, probes: Sequence[Probe], judge: Any, concept: str, start: dict[str, Rate],
           snapshots: dict[int, Edit], combine: Callable[[Edit], Edit]) -> list[dict[str, Any]]:
    """TP per probe at step 0 (`start`) and at every snapshot ΔW_ft(k) of the adapter, applied as combine(ΔW_ft(k))."""
    curve: list[dict[str, Any]] = [{"step": 0, **start}]
    for step, ft_k in snapshots.items():
        with combine(ft_k).applied(pipe):
            curve.append({"step": step, **render_rates(pipe, probes, judge, concept)})
    return curve


def variant_merge(variant: str, safety: Edit, pipe: Any) -> Callable[[Edit], Edit]:
    """How a variant's fine-tuning delta joins the safety edit at inference.

    "modular-project" is Modular LoRA with the spec's projection merge, W* = E(W_0 + ΔW_ft) on the
    modules a projection edit (PURE) changes: the fine-tuning delta's outputs pass through the same
    operator E as the base's, so when E is an orthogonal projector (PURE's `projector` solver) the
    adapter cannot write back what E removes. Every other variant sums (base + ΔW_safe + ΔW_ft).
    """
    mode = "project" if variant == "modular-project" else "sum"
    return lambda ft: merge(safety, ft, mode, base=pipe)


#: Variants run_experiment can run per safety edit ("full" is the costlier baseline (a), off by default).
EXPERIMENT_VARIANTS: tuple[str, ...] = ("plain", "modular", "modular-project", "full")
#: Variants that reuse the control's adapter (trained on W_0 alone) instead of training their own.
MODULAR_VARIANTS: tuple[str, ...] = ("modular", "modular-project")


def run_experiment(pipe: Any, safeties: dict[str, Edit], spec: Any, data: CaptionData, judge: Any,
                   config: FinetuneConfig | None = None, task_probe: Probe | None = None,
                   quiet: bool = True, variants: Sequence[str] = ("plain", "modular"),
                   probes: Sequence[Probe] | None = None) -> dict[str, Any]:
    """The unerased control and, per safety edit, each of `variants` on the same data, seeds and steps.

    pipe: the base pipeline (no edit applied); it is left unchanged. safeties: label -> safety Edit.
    variants: of EXPERIMENT_VARIANTS, plain fine-tuning (b), Modular LoRA (c) summed or with the
    projection merge (`variant_merge`), full fine-tuning (a).
    Modular's adapter is the control's: both are ΔW_ft trained on W_0 alone with the same data
    order, noise and seeds, so they are equal bit for bit (tests/test_modular_lora.py proves it);
    only the merge differs. The control is therefore trained once and reused. probes: the target
    probes scored at every snapshot (default: `target_probes` at its default sizes).
    """
    unknown = [v for v in variants if v not in EXPERIMENT_VARIANTS]
    if unknown or not variants:
        raise ErasureLabError(f"unknown experiment variant {unknown[0] if unknown else '(none given)'!r}; "
                              f"valid: {', '.join(EXPERIMENT_VARIANTS)}")
    if "modular-project" in variants:  # a safety edit the projection merge cannot take fails before any training
        for safety in safeties.values():
            check_project_merge(safety, pipe)
    config = config or FinetuneConfig()
    probes = list(probes) if probes is not None else target_probes(spec, pipe, set(judge.concepts()))
    unaligned = render_rates(pipe, probes, judge, spec.name)

    def task(edit: Edit | None) -> Rate | None:
        if task_probe is None:
            return None
        with _with(pipe, edit):
            return render_rates(pipe, [task_probe], judge, None)[task_probe.name]

    control = finetune(pipe, data, "control", None, config, quiet=quiet)
    result: dict[str, Any] = {
        "concept": spec.name, "config": config.to_dict(), "unaligned": unaligned, "task_base": task(None),
        "control": {"curve": _curve(pipe, probes, judge, spec.name, unaligned, control.snapshots, lambda ft: ft),
                    "task_accuracy": task(control.ft), "wall_time_s": control.wall_time_s,
                    "final_loss": control.logs[-1]["loss"]},
        "methods": {}}
    for label, safety in safeties.items():
        with _with(pipe, safety):
            aligned = render_rates(pipe, probes, judge, spec.name)
            task_aligned = task(None)
        entry: dict[str, Any] = {"aligned": aligned, "task_aligned": task_aligned, "variants": {}}
        for variant in variants:
            combine = variant_merge(variant, safety, pipe)
            if variant in MODULAR_VARIANTS:
                run_snapshots, final = control.snapshots, combine(control.ft)
            else:
                run = finetune(pipe, data, variant, safety, config, quiet=quiet)
                run_snapshots, final = run.snapshots, run.merged
                entry[f"{variant}_wall_time_s"] = run.wall_time_s
            curve = _curve(pipe, probes, judge, spec.name, aligned, run_snapshots, combine)
            rr = {name: [reemergence_ratio(point[name].value, aligned[name].value, unaligned[name].value)
                         for point in curve] for name in aligned}
            entry["variants"][variant] = {"curve": curve, "rr": rr, "task_accuracy": task(final)}
        result["methods"][label] = entry
    return result


def plot_curves(result: dict[str, Any], path: Any, probe: str = "anchor") -> Any:
    """TP(k) of the control and of every method's variants (plain, Modular, full) on one plot; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    control = result["control"]["curve"]
    ax.plot([p["step"] for p in control], [p[probe].value for p in control], color="gray", ls="--", marker=".",
            label="unerased control")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, entry) in enumerate(result["methods"].items()):
        for variant, style, name in (("plain", "-", "fine-tuned"), ("modular", ":", "Modular"),
                                     ("modular-project", "--", "Modular (project merge)"),
                                     ("full", "-.", "full fine-tuning")):
            if variant not in entry["variants"]:
                continue
            curve = entry["variants"][variant]["curve"]
            ax.plot([p["step"] for p in curve], [p[probe].value for p in curve], color=colours[i % len(colours)],
                    ls=style, marker="o", ms=3, label=f"{label} {name}")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(f"target proportion ({probe} prompts)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"re-emergence of {result['concept']!r} under benign fine-tuning", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
