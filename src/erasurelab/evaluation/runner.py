"""`evaluate(model, specs, reference, judge, attacks, out)`: the HUB-style protocol end to end.

Why this order of work: every bad input (unknown concept, a concept the judge cannot see, a model
that is not a run and no reference, an unwritable report folder, an empty suite, a leaking suite)
is found before the first image is rendered, so a mistake costs seconds, not an evaluation. Then
the reference renders every suite (its neighbour rates decide which neighbours count), the edited
model renders what it needs, the judge answers, and the metrics are pure functions of the answers.

The steps live in sibling modules: reference.py (which models), facets.py (rendering plan and
per-concept metrics), attack_results.py (attack results and the term a), output.py (the report
folder); this module runs them in order and assembles the EvaluationResult.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import compound, judging
from erasurelab.evaluation.attack_results import check_attacks
from erasurelab.evaluation.efficiency import edit_cost, median_latency
from erasurelab.evaluation.facets import (
    FORGET_SUITES,
    Images,
    concept_result,
    edited_pairs,
    neighbour_rates,
    render_suite,
    suites_for,
)
from erasurelab.evaluation.output import check_output, write_output
from erasurelab.evaluation.reference import (
    ModelLike,
    Reference,
    check_model_spec,
    load_model,
    provenance,
    resolve_reference,
)
from erasurelab.evaluation.rendering import RenderCache, model_hash, world_size
from erasurelab.evaluation.result import EvaluationResult
from erasurelab.evaluation.suites import ConceptSuites, method_anchors
from erasurelab.evaluation.types import AttackResult, EvaluationSettings
from erasurelab.models.provenance import current_edit
from erasurelab.runinfo import library_versions

__all__ = ["FORGET_SUITES", "EvaluationResult", "ModelLike", "check_output", "evaluate", "provenance"]


@dataclass
class _Inputs:
    """Everything checked before loading: concepts (plain and compound), judge, attacks, report folder."""

    specs: list[ConceptSpec]
    compound_specs: list[ConceptSpec]
    judge: Any
    attacks: list[AttackResult]
    out_path: Any


@dataclass
class _Renders:
    """What both models rendered, per concept, plus the sampler facts the result records."""

    ref: list[dict[str, Images]] = field(default_factory=list)
    ref_compound: list[dict[str, torch.Tensor]] = field(default_factory=list)
    edited: list[dict[str, Images]] = field(default_factory=list)
    edited_compound: list[dict[str, torch.Tensor]] = field(default_factory=list)
    neighbour_refs: list[dict[str, Any]] = field(default_factory=list)
    kept: list[list[str]] = field(default_factory=list)
    ref_key: str = ""
    model_key: str = ""
    steps: Any = None
    guidance: Any = None
    latency_ref: float | None = None
    latency_edited: float | None = None


def _check_inputs(model: ModelLike, specs: Any, reference: ModelLike | None, judge: Any,
                  attacks: Sequence[AttackResult] | None, out: Any, overwrite: bool) -> _Inputs:
    """Resolve and check every input that needs no model; one-line errors."""
    from erasurelab.api import resolve_concepts

    out_path = check_output(out, overwrite)
    spec_list = resolve_concepts(specs)
    if not spec_list:
        raise ErasureLabError("no concept to evaluate: give at least one concept")
    compound_specs = [s for s in spec_list if s.is_compound]  # combinations / conditionals: own suites
    spec_list = [s for s in spec_list if not s.is_compound]
    judge_obj = judging.resolve_judge(judge, [*spec_list, *compound_specs])
    attributes = {s.name: judging.attribute_of(judge_obj, s.name) for s in spec_list}
    attack_list = check_attacks(attacks, set(attributes))
    check_model_spec(model, need_run=reference is None)
    return _Inputs(spec_list, compound_specs, judge_obj, attack_list, out_path)


def _build_suites(inputs: _Inputs, model_pipe: Any, known: set[str],
                  settings: EvaluationSettings) -> tuple[list[ConceptSuites], list[Any]]:
    """The suites of every plain and compound concept, with the anchors the edit was trained on."""
    edit = current_edit(model_pipe)
    manifest_concepts = list((edit.meta.get("concepts") or []) if edit is not None else [])
    all_suites = [suites_for(s, model_pipe, inputs.judge, known, settings, method_anchors(s, manifest_concepts))
                  for s in inputs.specs]
    compound_settings = compound.CompoundSettings.from_evaluation(settings)
    compound_suites = [compound.compound_suites(s, known, compound_settings, method_anchors(s, manifest_concepts))
                       for s in inputs.compound_specs]
    return all_suites, compound_suites


def _render_cache(cache: RenderCache | None, settings: EvaluationSettings, quiet: bool) -> RenderCache:
    """The given shared cache (it must sample as the settings ask) or a new one."""
    if cache is None:
        return RenderCache(settings.steps, settings.guidance, settings.batch_size, quiet)
    if (cache.steps, cache.guidance) != (settings.steps, settings.guidance):
        raise ErasureLabError(f"the shared render cache samples with steps={cache.steps}, guidance={cache.guidance} "
                              f"but the settings ask for steps={settings.steps}, guidance={settings.guidance}")
    return cache


def _render_reference(renders: _Renders, ref: Reference, cache: RenderCache, all_suites: list[ConceptSuites],
                      compound_suites: list[Any], settings: EvaluationSettings) -> None:
    """The reference renders every suite (with its edits reverted while it does)."""
    with ref.active() as ref_pipe:
        renders.ref_key = model_hash(ref_pipe)
        renders.steps, renders.guidance = cache.sampling(ref_pipe)
        for suites in all_suites:
            renders.ref.append({s.name: render_suite(cache, ref_pipe, renders.ref_key, s, s.indices())
                                for s in suites.all()})
        renders.ref_compound = [{x.name: render_suite(cache, ref_pipe, renders.ref_key, x, x.indices()).images
                                 for x in cs.all()} for cs in compound_suites]
        if settings.measure_overhead:
            renders.latency_ref = median_latency(ref_pipe, renders.steps, renders.guidance)


def _filter_neighbours(renders: _Renders, judge: Any, settings: EvaluationSettings) -> None:
    """Keep the neighbours the reference renders often enough to measure their retention."""
    for images in renders.ref:
        rates = neighbour_rates(judge, images["neighbours"]) if images["neighbours"].pairs else {}
        renders.neighbour_refs.append(rates)
        renders.kept.append([n for n, rate in rates.items() if rate.value >= settings.min_neighbour_rate])


def _render_edited(renders: _Renders, model_pipe: Any, cache: RenderCache, all_suites: list[ConceptSuites],
                   compound_suites: list[Any], settings: EvaluationSettings) -> None:
    """The edited model renders every suite but only the kept neighbours."""
    renders.model_key = model_hash(model_pipe)
    for suites, kept in zip(all_suites, renders.kept, strict=True):
        pairs = edited_pairs(suites, set(kept))
        renders.edited.append({s.name: render_suite(cache, model_pipe, renders.model_key, s, pairs[s.name])
                               for s in suites.all()})
    renders.edited_compound = [{x.name: render_suite(cache, model_pipe, renders.model_key, x, x.indices()).images
                                for x in cs.all()} for cs in compound_suites]
    if settings.measure_overhead:
        renders.latency_edited = median_latency(model_pipe, renders.steps, renders.guidance)


def _judge_accuracy(judge: Any, judge_accuracy: Mapping[str, Any] | None,
                    settings: EvaluationSettings) -> tuple[Any, str]:
    """(accuracy per attribute, where it comes from): given, measured on fresh renders, or not measured."""
    if judge_accuracy is not None:
        return dict(judge_accuracy), "given"
    measured = judging.ground_truth_accuracy(judge, settings.judge_accuracy_n, settings.judge_accuracy_seed)
    source = (f"{settings.judge_accuracy_n} fresh world renders (seed {settings.judge_accuracy_seed})"
              if measured is not None else "not measured")
    return measured, source


def _efficiency(model_pipe: Any, renders: _Renders) -> dict[str, Any]:
    """Edit cost plus the inference overhead of the edited model over the reference, when measured."""
    efficiency = edit_cost(model_pipe)
    latency_edit, latency_ref = renders.latency_edited, renders.latency_ref
    efficiency["inference_overhead"] = (latency_edit / latency_ref - 1.0
                                        if latency_edit is not None and latency_ref else None)
    efficiency["latency_edited_s"], efficiency["latency_reference_s"] = latency_edit, latency_ref
    return efficiency


def _sampler(cache: RenderCache, model_pipe: Any, renders: _Renders, settings: EvaluationSettings) -> dict[str, Any]:
    """How the images were sampled, enough to render them again."""
    scheduler = getattr(model_pipe, "scheduler", None)
    return {**cache.sampler(model_pipe), "steps": renders.steps, "guidance": renders.guidance,
            "scheduler": type(scheduler).__name__, "base_seed": settings.base_seed,
            "seed_rule": "base_seed + n_rep*p + r",
            "device": str(getattr(model_pipe, "device", "cpu")), "processes": world_size(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def evaluate(model: ModelLike, specs: Any, reference: ModelLike | None = None, judge: Any = "shapes",
             attacks: Sequence[AttackResult] | None = None, out: str | os.PathLike[str] | None = None,
             quiet: bool = True, *, settings: EvaluationSettings | None = None,
             judge_accuracy: Mapping[str, Any] | None = None, overwrite: bool = False,
             cache: RenderCache | None = None) -> EvaluationResult:
    """Evaluate an edited model against its reference on every facet, for one or more concepts.

    model: the edited pipeline, or a model spec (a run folder from `erasurelab erase`, ...).
    specs: ConceptSpec(s), built-in names ("red") or concept YAML paths.
    reference: the unedited pipeline or spec; default: the run's base (its edit reverted in place).
    judge: a registered judge name or a Judge instance.
    attacks: AttackResults (erasurelab.evaluation.types) of attacks already run on this model.
    out: report folder (index.html, metrics.json, tradeoff.png, grids/, suites/), written atomically.
    settings: protocol sizes and sampler (EvaluationSettings); judge_accuracy: precomputed accuracy
    per attribute (Rate or float), otherwise measured on fresh ground-truth renders when a suite
    builder has them (the embedded world's).
    Raises ErasureLabError (one line) on bad input, before any image is rendered.
    """
    started = time.perf_counter()
    settings = settings or EvaluationSettings()
    inputs = _check_inputs(model, specs, reference, judge, attacks, out, overwrite)
    model_pipe, model_label = load_model(model)
    ref = resolve_reference(model_pipe, reference)
    known = set(inputs.judge.concepts())
    all_suites, compound_suites = _build_suites(inputs, model_pipe, known, settings)
    cache = _render_cache(cache, settings, quiet)
    rendered_before, hits_before = cache.rendered, cache.hits
    renders, timings = _Renders(), {}

    t0 = time.perf_counter()
    _render_reference(renders, ref, cache, all_suites, compound_suites, settings)
    timings["render_reference_s"] = time.perf_counter() - t0
    _filter_neighbours(renders, inputs.judge, settings)
    t0 = time.perf_counter()
    _render_edited(renders, model_pipe, cache, all_suites, compound_suites, settings)
    timings["render_edited_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    results = [concept_result(spec, suites, r, e, n_ref, kept, inputs.judge, inputs.attacks, settings)
               for spec, suites, r, e, n_ref, kept in zip(inputs.specs, all_suites, renders.ref, renders.edited,
                                                         renders.neighbour_refs, renders.kept, strict=True)]
    compound_results = [compound.evaluate_compound(s, cs, inputs.judge, r, e, settings.min_reference_rate)
                        for s, cs, r, e in zip(inputs.compound_specs, compound_suites, renders.ref_compound,
                                               renders.edited_compound, strict=True)]
    agreement = judging.second_judge_agreement(
        inputs.judge, settings.second_judge,
        [x.images for images in renders.ref for x in images.values()]
        + [x for c in renders.ref_compound for x in c.values()],
        [x.images for images in renders.edited for x in images.values()]
        + [x for c in renders.edited_compound for x in c.values()])
    accuracy, source = _judge_accuracy(inputs.judge, judge_accuracy, settings)
    timings["judge_s"] = time.perf_counter() - t0

    efficiency = _efficiency(model_pipe, renders)
    timings["total_s"] = time.perf_counter() - started
    timings["images_rendered"] = float(cache.rendered - rendered_before)
    timings["cache_hits"] = float(cache.hits - hits_before)
    result = EvaluationResult(
        model=model_label, reference=ref.label, method=efficiency.get("method"), model_hash=renders.model_key,
        reference_hash=renders.ref_key,
        judge={"id": inputs.judge.id, "accuracy": accuracy, "accuracy_source": source,
               "concepts": sorted(known), **({"agreement": agreement} if agreement is not None else {})},
        sampler=_sampler(cache, model_pipe, renders, settings),
        settings=settings.to_dict(), efficiency=efficiency, concepts=results, compound=compound_results,
        attacks=inputs.attacks, versions=library_versions(), timings=timings, provenance=provenance())
    write_output(result, inputs.out_path, overwrite,
                 [s for suites in all_suites for s in suites.all()] + [x for cs in compound_suites for x in cs.all()])
    return result
