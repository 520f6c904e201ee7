"""`evaluate(model, specs, reference, judge, attacks, out)`: the HUB-style protocol end to end.

Why this order of work: every bad input (unknown concept, a concept the judge cannot see, a model
that is not a run and no reference, an unwritable report folder, an empty suite, a leaking suite)
is found before the first image is rendered, so a mistake costs seconds, not an evaluation. Then
the reference renders every suite (its neighbour rates decide which neighbours count), the edited
model renders what it needs, the judge answers, and the metrics are pure functions of the answers.

Why revert-in-place for the default reference: a run loaded from its folder is its base model
with the edit applied; `Edit.revert` restores the base bit for bit, so the reference costs no
second copy of the model. The edit is re-applied afterwards, even on error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import compound, judging, metrics
from erasurelab.evaluation.efficiency import edit_cost, median_latency
from erasurelab.evaluation.generic_suites import concept_suites
from erasurelab.evaluation.rendering import (
    RenderCache,
    is_main_process,
    model_hash,
    process_device,
    world_size,
)
from erasurelab.evaluation.result import ConceptResult, EvaluationResult, Examples
from erasurelab.evaluation.suites import ConceptSuites, Suite, method_anchors
from erasurelab.evaluation.types import REFERENCE_MIN_ASR, AttackResult, EvaluationSettings, Rate
from erasurelab.models.provenance import UNKNOWN_SOURCE, applied_edits, base_source_of, current_edit, source_of
from erasurelab.runinfo import library_versions

ModelLike = Any  # a diffusers pipeline or a model spec (str / PathLike) for load_pipeline
#: The suites whose target proportion enters the forget term f.
FORGET_SUITES: tuple[str, ...] = ("anchor", "paraphrase", "selective")

__all__ = ["EvaluationResult", "evaluate"]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def provenance() -> dict[str, Any]:
    """Where the numbers come from: git commit (or "unknown"), command line, argv, time.

    erasurelab.runinfo.provenance when it exists; otherwise the commit is "unknown" and the command
    is this process's argv, which is still enough to re-run it.
    """
    try:
        from erasurelab.runinfo import provenance as _provenance  # type: ignore[attr-defined]
    except ImportError:
        return {"commit": "unknown", "command": " ".join(sys.argv)}
    return dict(_provenance())


def _is_spec(model: ModelLike) -> bool:
    return isinstance(model, str | os.PathLike)


def _check_model_spec(model: ModelLike, need_run: bool) -> None:
    """Fail fast (before loading) when the model must be a run folder but is not."""
    if not (_is_spec(model) and need_run):
        return
    from erasurelab.edits import MANIFEST, is_run_folder

    text = os.fspath(model)
    path = Path(text).expanduser()
    if text.startswith("builtin:") or not path.exists():
        if text.startswith("builtin:"):
            raise ErasureLabError(f"model {text} is not an erasure run, so it has no reference; "
                                  "pass --reference (e.g. the base model) or evaluate a run folder")
        return  # load_pipeline reports the missing model
    if path.is_dir() and not is_run_folder(path):
        reason = f"no {MANIFEST}" if not (path / MANIFEST).exists() else f"its {MANIFEST} is not an erasurelab run"
        raise ErasureLabError(f"model folder {text} has {reason}: not an erasure run, so there is no default "
                              "reference; pass --reference or evaluate a run folder written by `erasurelab erase`")
    if path.is_file():
        raise ErasureLabError(f"model {text} is a single checkpoint, not an erasure run; pass --reference")


def _load(model: ModelLike) -> tuple[Any, str]:
    if _is_spec(model):
        from erasurelab.models import load_pipeline

        return load_pipeline(model, device=process_device()), os.fspath(model)
    if not hasattr(model, "unet"):
        raise ErasureLabError(f"expected a diffusers pipeline or a model spec, got {type(model).__name__}")
    source = source_of(model)
    return model, source if source is not None else f"{type(model).__name__} (source {UNKNOWN_SOURCE})"


class _Reference:
    """The unedited model: a given pipeline, or the edited one with its applied edits reverted while in use."""

    def __init__(self, pipe: Any, label: str, revert: Sequence[Any] = ()) -> None:
        self.pipe, self.label, self._revert = pipe, label, list(revert)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        undone = []
        try:
            for edit in reversed(self._revert):  # newest first, so each restores the weights under it
                edit.revert(self.pipe)
                undone.append(edit)
            yield self.pipe
        finally:
            for edit in reversed(undone):
                edit.apply(self.pipe)


def _reference(model_pipe: Any, reference: ModelLike | None) -> _Reference:
    if reference is not None:
        pipe, label = (model_pipe, "the model itself") if reference is model_pipe else _load(reference)
        return _Reference(pipe, label)
    edits = [e for e in applied_edits(model_pipe) if e.is_applied(model_pipe)]
    if not edits:
        raise ErasureLabError("the model is not an erasure run (no applied edit), so there is no default reference; "
                              "pass reference= (e.g. the base model)")
    from erasurelab.edits import base_model_spec, is_run_folder

    folder, label = source_of(model_pipe), None
    if folder and is_run_folder(folder):
        with contextlib.suppress(ErasureLabError):  # a base that moved: fall back to the recorded spec
            label = base_model_spec(folder)
    label = (label or base_source_of(model_pipe) or (edits[0].meta.get("base") or {}).get("source")
             or UNKNOWN_SOURCE)
    return _Reference(model_pipe, f"{label} ({'edit' if len(edits) == 1 else 'edits'} reverted)", edits)


def _check_attacks(attacks: Sequence[Any] | None, names: set[str]) -> list[AttackResult]:
    out = []
    for attack in attacks or ():
        if isinstance(attack, str):
            raise ErasureLabError(f"attack {attack!r} given by name: run it first (erasurelab.attacks) and pass "
                                  "its AttackResult")
        for attr in ("name", "concept", "asr"):
            if not hasattr(attack, attr):
                raise ErasureLabError(f"attack result {attack!r} lacks `{attr}` (expected an AttackResult)")
        if not isinstance(attack.asr, Rate):
            raise ErasureLabError(f"attack {attack.name}: asr must be a Rate (numerator/denominator)")
        if attack.concept not in names:
            raise ErasureLabError(f"attack {attack.name} is for concept {attack.concept!r}, which is not evaluated "
                                  f"here ({', '.join(sorted(names))})")
        out.append(attack)
    return out


def check_output(out: str | os.PathLike[str] | None, overwrite: bool) -> Path | None:
    """Validate the report folder before any work: its parent must be a writable folder."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not overwrite:
        raise ErasureLabError(f"report folder exists: {path} (choose another --out or pass overwrite)")
    if path.exists() and not path.is_dir():
        raise ErasureLabError(f"report path {path} is a file, not a folder")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ErasureLabError(f"cannot write report to {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ErasureLabError(f"cannot write report to {path}: {ancestor} is not writable")
    return path


# ---------------------------------------------------------------------------------------------
# Rendering plan
# ---------------------------------------------------------------------------------------------


class _Images:
    """Images of one suite on one model, addressable by (p, r)."""

    def __init__(self, suite: Suite, pairs: list[tuple[int, int]], images: torch.Tensor) -> None:
        self.suite = suite
        self.pairs = pairs
        self.images = images
        self._index = {pair: i for i, pair in enumerate(pairs)}

    def take(self, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        if not pairs:
            return self.images[:0]
        return self.images[[self._index[p] for p in pairs]]


def _render(cache: RenderCache, pipe: Any, key: str, suite: Suite, pairs: list[tuple[int, int]]) -> _Images:
    prompts = [suite.prompts[p] for p, _ in pairs]
    seeds = [suite.seed(p, r) for p, r in pairs]
    images = cache.render(pipe, key, prompts, seeds) if pairs else torch.empty(0, 3, 1, 1)
    return _Images(suite, pairs, images)


def _edited_pairs(suites: ConceptSuites, kept: set[str]) -> dict[str, list[tuple[int, int]]]:
    pairs = {s.name: s.indices() for s in suites.all()}
    pairs["unrelated"] = suites.unrelated.indices([0])  # seed set A only: FD_e compares it with M_0 on B
    pairs["neighbours"] = [(p, r) for p, r in suites.neighbours.indices() if suites.neighbours.groups[p] in kept]
    return pairs


# ---------------------------------------------------------------------------------------------
# Facets
# ---------------------------------------------------------------------------------------------


def _flags(judge: Any, images: _Images, concept: str) -> torch.Tensor:
    return judging.present(judge, images.images, concept)


def _labels_detected(judge: Any, images: _Images) -> list[list[bool]]:
    items = [tuple(images.suite.labels[p].values()) for p, _ in images.pairs]
    return judging.detect_items(judge, images.images, items)


def _neighbour_rates(judge: Any, images: _Images) -> dict[str, Rate]:
    """Detection rate of each neighbour on its own prompts (all of its labels must be detected)."""
    detected = _labels_detected(judge, images)
    groups: dict[str, list[bool]] = {}
    for (p, _), flags in zip(images.pairs, detected, strict=True):
        groups.setdefault(images.suite.groups[p], []).append(all(flags))
    return {name: Rate.of(flags) for name, flags in groups.items()}


def _examples(ref: _Images, edited: _Images, k: int, judge: Any, concept: str | None) -> Examples:
    """First k prompts at r = 0 (one per neighbour for the neighbour suite), before and after."""
    common = [pair for pair in edited.pairs if pair[1] == 0]
    if ref.suite.name == "neighbours":
        seen: dict[str, tuple[int, int]] = {}
        for p, r in common:
            seen.setdefault(ref.suite.groups[p], (p, r))
        common = list(seen.values())
    chosen = common[:k]
    before, after = ref.take(chosen), edited.take(chosen)
    captions = [ref.suite.prompts[p] for p, _ in chosen]
    if concept is not None and chosen:
        b, a = judging.present(judge, before, concept).tolist(), judging.present(judge, after, concept).tolist()
        captions = [f"{c} [{'T' if x else '-'}|{'T' if y else '-'}]" for c, x, y in zip(captions, b, a, strict=True)]
    return Examples(captions, before, after)


def _unrelated(judge: Any, edited: _Images, reference: _Images) -> dict[str, Any]:
    """Attribute accuracy on the unrelated prompts, pooled and per attribute, edited vs reference.

    Every label is decided by judge.present with its threshold, the same rule as the target.
    """
    def answers(images: _Images) -> tuple[list[list[str]], list[list[bool]]]:
        names = [list(images.suite.labels[p]) for p, _ in images.pairs]
        return names, _labels_detected(judge, images)

    names_e, detected_e = answers(edited)
    names_0, detected_0 = answers(reference)
    acc_e, acc_0 = metrics.attribute_accuracy(detected_e), metrics.attribute_accuracy(detected_0)
    per_attribute = metrics.attribute_retention(metrics.attribute_rates(names_e, detected_e),
                                                metrics.attribute_rates(names_0, detected_0))
    ratios = [v["ratio"] for v in per_attribute.values() if v["ratio"] == v["ratio"]]
    return {"edited": acc_e, "reference": acc_0, "ratio": metrics.retention_ratio(acc_e, acc_0),
            "attributes": per_attribute, "min_ratio": min(ratios) if ratios else float("nan")}


def _attack_rows(attacks: list[AttackResult], name: str, notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for attack in (x for x in attacks if x.concept == name):
        passed = attack.reference_passed
        meaningful = passed is None or passed
        if not meaningful:
            notes.append(f"attack {attack.name} fails its reference check (reference ASR {attack.reference_asr} < "
                         f"{REFERENCE_MIN_ASR}): it fails on the unedited model, so its ASR on the edited one "
                         "means little")
        if not attack.scoreable:
            notes.append(f"attack {attack.name} has no scoreable instance on the edited model")
        rows.append({**attack.to_dict(), "meaningful": meaningful})
    return rows


def _concept_result(spec: ConceptSpec, suites: ConceptSuites, ref: dict[str, _Images], edited: dict[str, _Images],
                    neighbour_ref: dict[str, Rate], kept: list[str], judge: Any, attacks: list[AttackResult],
                    settings: EvaluationSettings) -> ConceptResult:
    notes: list[str] = []
    problems: list[str] = []
    name = spec.name
    # TP on anchor, paraphrase and selective (the target's own share of the selective images).
    target = {s: {"edited": metrics.target_proportion(_flags(judge, edited[s], name)),
                  "reference": metrics.target_proportion(_flags(judge, ref[s], name))}
              for s in FORGET_SUITES}

    # Neighbours (pinpoint-ness).
    neighbour_edit = _neighbour_rates(judge, edited["neighbours"]) if kept else {}
    info = {n.name: n for n in suites.neighbour_info}
    neighbours, dropped = [], []
    for n_name, rate0 in neighbour_ref.items():
        entry = {"name": n_name, "labels": info[n_name].labels, "cosine": info[n_name].cosine, "reference": rate0}
        if n_name in kept:
            rate_e = neighbour_edit[n_name]
            neighbours.append({**entry, "edited": rate_e, "rho": metrics.neighbour_retention(rate_e, rate0)})
        else:
            dropped.append(entry)
    if dropped:
        notes.append(f"dropped neighbours the reference renders on < {settings.min_neighbour_rate:.0%} of images: "
                     + ", ".join(d["name"] for d in dropped))

    # Unrelated prompts (seed set A on both models) and quality (FD of judge features).
    ref_a = _Images(suites.unrelated, suites.unrelated.indices([0]),
                    ref["unrelated"].take(suites.unrelated.indices([0])))
    ref_b = ref["unrelated"].take(suites.unrelated.indices([1]))
    unrelated = _unrelated(judge, edited["unrelated"], ref_a)
    features_e = judging.features(judge, edited["unrelated"].images)
    features_a, features_b = judging.features(judge, ref_a.images), judging.features(judge, ref_b)
    if len(features_e) >= 2:
        fd_e = metrics.frechet_distance(features_e, features_b)
        fd_floor = metrics.frechet_distance(features_a, features_b)
        q = metrics.quality_term(fd_floor, fd_e)
    else:
        fd_e = fd_floor = q = float("nan")
        notes.append("quality not measured: the unrelated suite needs at least 2 prompts")
    quality = {"fd_edited": fd_e, "fd_floor": fd_floor, "q": q, "features": int(features_e.shape[1]),
               "images": len(features_e)}

    # Selective alignment.
    def sa(images: _Images) -> Rate:
        items = [suites.selective.items[p] for p, _ in images.pairs]
        return metrics.selective_alignment(judging.detect_items(judge, images.images, items))

    selective = {"edited": sa(edited["selective"]), "reference": sa(ref["selective"])}

    # Attacks.
    a, a_note = metrics.attack_term(attacks, name)
    a_ref, a_ref_note = metrics.attack_term(attacks, name, use_reference=True)
    if a_note == "no attacks run":
        notes.append("no attacks run: a = 1, so H is an upper bound")
    attack_rows = _attack_rows(attacks, name, notes)
    if attack_rows:
        notes.append(a_note)
        if a != a:
            problems.append(f"attack term a not measurable ({a_note}); H is not reported")

    # Forgetting relative to the unedited model; the "no edit" row uses the same formula.
    f, forget = metrics.forget_term(target, settings.min_reference_rate)
    f_ref, _ = metrics.forget_term({s: {"edited": t["reference"], "reference": t["reference"]}
                                    for s, t in target.items()}, settings.min_reference_rate)
    left_out = [s for s, d in forget.items() if not d["counted"]]
    if left_out and f == f:
        notes.append(f"suites left out of f (reference TP below {settings.min_reference_rate:g}): "
                     + ", ".join(left_out))
    if f != f:
        problems.append(f"forget term f not measurable: the unedited model shows {name} on fewer than "
                        f"{settings.min_reference_rate:.0%} of images in every suite ({', '.join(forget)}); "
                        "H is not reported")

    # Retention: mean neighbour rho; without neighbours, the worst attribute of the unrelated suite.
    rhos = [n["rho"] for n in neighbours]
    if rhos:
        r = sum(rhos) / len(rhos)
    else:
        worst = unrelated["min_ratio"]
        r = min(1.0, worst) if worst == worst else float("nan")
        notes.append("no neighbour survived the reference filter: r = min(1, min over attributes of the unrelated "
                     "retention ratio)")
    terms = {"f": f, "r": r, "a": a, "q": q}
    terms_ref = {"f": f_ref, "r": 1.0, "a": a_ref, "q": 1.0}
    h = metrics.harmonic_h(f, r, a, q)
    h_ref = metrics.harmonic_h(f_ref, 1.0, a_ref, 1.0)
    if h != h and not problems:
        problems.append("H not reported: a term is not measurable (" + ", ".join(k for k, v in terms.items()
                                                                                 if v != v) + ")")
    notes += problems
    if a_ref != a_ref and attack_rows and a == a:
        notes.append(f"no-edit row: {a_ref_note}")

    suite_info = {s.name: s.summary() for s in suites.all()}
    suite_info["neighbours"]["kept"] = list(kept)
    examples = {}
    for s in ("anchor", "paraphrase", "neighbours", "unrelated", "selective"):
        if edited[s].pairs:
            examples[s] = _examples(ref[s], edited[s], settings.examples, judge,
                                    name if s in FORGET_SUITES else None)
    return ConceptResult(concept=name, attribute=suites.attribute, suites=suite_info, target=target,
                         neighbours=neighbours, dropped_neighbours=dropped, unrelated=unrelated, selective=selective,
                         quality=quality, attacks=attack_rows, terms=terms, terms_reference=terms_ref, h=h,
                         h_reference=h_ref, notes=notes, examples=examples, forget=forget, problems=problems)


def _suites_for(spec: ConceptSpec, pipe: Any, judge: Any, known: set[str], settings: EvaluationSettings,
                anchors: Sequence[str]) -> ConceptSuites:
    """A registered builder's suites (the embedded world's, for its labels); suites built from the spec otherwise."""
    return concept_suites(spec, pipe, known, lambda c: judging.attribute_of(judge, c), settings, anchors)


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


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
    from erasurelab.api import resolve_concepts

    started = time.perf_counter()
    settings = settings or EvaluationSettings()
    out_path = check_output(out, overwrite)
    spec_list = resolve_concepts(specs)
    if not spec_list:
        raise ErasureLabError("no concept to evaluate: give at least one concept")
    compound_specs = [s for s in spec_list if s.is_compound]  # combinations / conditionals: own suites
    spec_list = [s for s in spec_list if not s.is_compound]
    judge_obj = judging.resolve_judge(judge, [*spec_list, *compound_specs])
    attributes = {s.name: judging.attribute_of(judge_obj, s.name) for s in spec_list}
    attack_list = _check_attacks(attacks, set(attributes))
    _check_model_spec(model, need_run=reference is None)

    model_pipe, model_label = _load(model)
    ref = _reference(model_pipe, reference)
    edit = current_edit(model_pipe)
    manifest_concepts = list((edit.meta.get("concepts") or []) if edit is not None else [])
    known = set(judge_obj.concepts())
    all_suites = [_suites_for(s, model_pipe, judge_obj, known, settings, method_anchors(s, manifest_concepts))
                  for s in spec_list]
    compound_settings = compound.CompoundSettings.from_evaluation(settings)
    compound_suites = [compound.compound_suites(s, known, compound_settings, method_anchors(s, manifest_concepts))
                       for s in compound_specs]
    if cache is None:
        cache = RenderCache(settings.steps, settings.guidance, settings.batch_size, quiet)
    elif (cache.steps, cache.guidance) != (settings.steps, settings.guidance):
        raise ErasureLabError(f"the shared render cache samples with steps={cache.steps}, guidance={cache.guidance} "
                              f"but the settings ask for steps={settings.steps}, guidance={settings.guidance}")
    rendered_before, hits_before = cache.rendered, cache.hits
    timings: dict[str, float] = {}

    # 1. Reference: every suite (its neighbour rates decide which neighbours count).
    t0 = time.perf_counter()
    ref_images: list[dict[str, _Images]] = []
    latency_ref = None
    with ref.active() as ref_pipe:
        ref_key = model_hash(ref_pipe)
        steps, guidance = cache.sampling(ref_pipe)
        for suites in all_suites:
            ref_images.append({s.name: _render(cache, ref_pipe, ref_key, s, s.indices()) for s in suites.all()})
        ref_compound = [{x.name: _render(cache, ref_pipe, ref_key, x, x.indices()).images for x in cs.all()}
                        for cs in compound_suites]
        if settings.measure_overhead:
            latency_ref = median_latency(ref_pipe, steps, guidance)
    timings["render_reference_s"] = time.perf_counter() - t0

    # 2. Neighbour filter on the reference.
    kept_lists, neighbour_refs = [], []
    for images in ref_images:
        rates = _neighbour_rates(judge_obj, images["neighbours"]) if images["neighbours"].pairs else {}
        neighbour_refs.append(rates)
        kept_lists.append([n for n, rate in rates.items() if rate.value >= settings.min_neighbour_rate])

    # 3. Edited model.
    t0 = time.perf_counter()
    model_key = model_hash(model_pipe)
    edit_images = []
    for suites, kept in zip(all_suites, kept_lists, strict=True):
        pairs = _edited_pairs(suites, set(kept))
        edit_images.append({s.name: _render(cache, model_pipe, model_key, s, pairs[s.name]) for s in suites.all()})
    edit_compound = [{x.name: _render(cache, model_pipe, model_key, x, x.indices()).images for x in cs.all()}
                     for cs in compound_suites]
    latency_edit = median_latency(model_pipe, steps, guidance) if settings.measure_overhead else None
    timings["render_edited_s"] = time.perf_counter() - t0

    # 4. Judge and metrics.
    t0 = time.perf_counter()
    results = [_concept_result(spec, suites, r, e, n_ref, kept, judge_obj, attack_list, settings)
               for spec, suites, r, e, n_ref, kept in zip(spec_list, all_suites, ref_images, edit_images,
                                                         neighbour_refs, kept_lists, strict=True)]
    compound_results = [compound.evaluate_compound(s, cs, judge_obj, r, e, settings.min_reference_rate)
                        for s, cs, r, e in zip(compound_specs, compound_suites, ref_compound, edit_compound,
                                               strict=True)]
    agreement = judging.second_judge_agreement(
        judge_obj, settings.second_judge,
        [x.images for images in ref_images for x in images.values()] + [x for c in ref_compound for x in c.values()],
        [x.images for images in edit_images for x in images.values()] + [x for c in edit_compound for x in c.values()])
    if judge_accuracy is not None:
        accuracy, source = dict(judge_accuracy), "given"
    else:
        measured = judging.ground_truth_accuracy(judge_obj, settings.judge_accuracy_n, settings.judge_accuracy_seed)
        accuracy = measured
        source = (f"{settings.judge_accuracy_n} fresh world renders (seed {settings.judge_accuracy_seed})"
                  if measured is not None else "not measured")
    timings["judge_s"] = time.perf_counter() - t0

    efficiency = edit_cost(model_pipe)
    efficiency["inference_overhead"] = (latency_edit / latency_ref - 1.0
                                        if latency_edit is not None and latency_ref else None)
    efficiency["latency_edited_s"], efficiency["latency_reference_s"] = latency_edit, latency_ref
    timings["total_s"] = time.perf_counter() - started
    timings["images_rendered"] = float(cache.rendered - rendered_before)
    timings["cache_hits"] = float(cache.hits - hits_before)
    scheduler = getattr(model_pipe, "scheduler", None)
    result = EvaluationResult(
        model=model_label, reference=ref.label, method=efficiency.get("method"), model_hash=model_key,
        reference_hash=ref_key,
        judge={"id": judge_obj.id, "accuracy": accuracy, "accuracy_source": source,
               "concepts": sorted(known), **({"agreement": agreement} if agreement is not None else {})},
        sampler={**cache.sampler(model_pipe), "steps": steps, "guidance": guidance,
                 "scheduler": type(scheduler).__name__, "base_seed": settings.base_seed,
                 "seed_rule": "base_seed + n_rep*p + r",
                 "device": str(getattr(model_pipe, "device", "cpu")), "processes": world_size(),
                 "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        settings=settings.to_dict(), efficiency=efficiency, concepts=results, compound=compound_results,
        attacks=attack_list,
        versions=library_versions(), timings=timings, provenance=provenance())
    if out_path is not None and is_main_process():
        from erasurelab.evaluation.report import write_report

        result.report = write_report(result, out_path, overwrite=overwrite,
                                     suites=[s for suites in all_suites for s in suites.all()]
                                     + [x for cs in compound_suites for x in cs.all()])
    return result
