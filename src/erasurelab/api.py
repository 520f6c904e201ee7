"""`erase(pipe, concepts, method, **options) -> Edit`: the one entry point to every erasure method (and `attack`).

Why a wrapper around the registry: whatever the method, a run must record the same facts in its
Edit (method, validated config, concept specs with hashes, base-model fingerprint, wall time,
peak memory, library versions, the erasurelab commit), so that `Edit.save` writes a complete
manifest and results can be compared across methods and traced to the code that made them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from erasurelab.concepts import ConceptSpec, concept
from erasurelab.edits import Edit, fingerprint
from erasurelab.errors import ErasureLabError
from erasurelab.runinfo import library_versions, peak_rss_mb, source_revision

ConceptLike = ConceptSpec | str | Path


def resolve_concepts(concepts: ConceptLike | Sequence[ConceptLike]) -> list[ConceptSpec]:
    """ConceptSpecs from specs, built-in names or YAML paths (one or a list)."""
    items = [concepts] if isinstance(concepts, ConceptSpec | str | Path) else list(concepts)
    specs = [c if isinstance(c, ConceptSpec) else concept(c) for c in items]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ErasureLabError(f"concept {duplicates[0]!r} given twice")
    return specs


def base_description(pipe: Any, keys: Any) -> dict[str, Any]:
    """What the manifest says about the base model: how to load it again and its fingerprint."""
    from erasurelab.models.provenance import source_of

    source = source_of(pipe)
    resolved = None
    if source and not str(source).startswith("builtin:") and Path(source).exists():
        resolved = os.fspath(Path(source).resolve())
    return {"source": source, "source_resolved": resolved, "fingerprint": fingerprint(pipe, keys),
            "pipeline_class": type(pipe).__name__, "unet_class": type(pipe.unet).__name__,
            "text_encoder_class": type(getattr(pipe, "text_encoder", None)).__name__,
            "unet_dtype": str(pipe.unet.dtype)}


def method_config(method: Any, options: Mapping[str, Any]) -> tuple[Any, Any]:
    """(registry entry, validated config) from a method name plus keyword options, or from a config object.

    A config object names its method (`UceConfig(...)` -> "uce"); keyword options beside it may
    only repeat its values, a differing one is a one-line error.
    """
    from erasurelab.configs import merge_options
    from erasurelab.methods import get_method, make_config
    from erasurelab.methods.base import method_for_config

    if isinstance(method, str):
        entry = get_method(method)
        return entry, make_config(entry.config_cls, options, entry.name)
    entry = method_for_config(method)
    return entry, merge_options(method, options, f"method {entry.name}")


def erase(pipe: Any, concepts: ConceptLike | Sequence[ConceptLike], method: Any = "pure", *, quiet: bool = True,
          **options: Any) -> Edit:
    """Compute an erasure Edit for one concept or several at once; `pipe` is left unmodified.

    concepts: ConceptSpec(s), built-in names ("red") or concept YAML paths.
    method: a registered method name ("pure", "uce", ... ; `erasurelab methods`) with its config
    fields as keyword options, or a method's config object (`erasurelab.UceConfig(lam=1.0)`),
    which names the method itself.
    A method's settings that depend on the model (e.g. PURE's solver="auto") are resolved by the
    method and recorded in `edit.meta` beside the config as given.
    Returns an Edit to `apply(pipe)` or `save(dir, format="lora"|"full")`.
    """
    from erasurelab.configs import config_dict

    entry, config = method_config(method, options)
    specs = resolve_concepts(concepts)
    start = time.perf_counter()
    edit = entry.factory(pipe, specs, config, quiet)
    wall = time.perf_counter() - start
    edit.meta.update({
        "method": entry.name, "config": config_dict(config), "concepts": [s.manifest_entry() for s in specs],
        "base": base_description(pipe, edit.deltas), "wall_time_s": wall, "peak_rss_mb": peak_rss_mb(),
        "versions": library_versions(), "source_revision": source_revision(),
    })
    return edit.bind_source(pipe)


def attack(edited_pipe: Any, concept: ConceptLike, name_or_config: Any, reference: Any = None, judge: Any = None, *,
           seed: int = 0, quiet: bool = True, check_reference: bool = True, **options: Any) -> Any:
    """Attack an erased model: `attacks.run_attack` with the defaults a Python user expects.

    name_or_config: a registered attack ("textual-inversion", "ring-a-bell", ... ; `erasurelab
    attacks`) with its config fields as keyword options, or an attack's config object.
    reference: the unedited model M_0 the attack learns from and checks itself on: a pipeline or a
    model spec (loaded like the edited model); None: the base model under the edit applied to
    `edited_pipe`, for a model erasurelab loaded (a run folder, or a base with `Edit.apply`).
    judge: a Judge or a registered name (None: "shapes" on the embedded model; elsewhere pass
    one, e.g. "clip:FOLDER").
    Returns an AttackRun (ASR on the edited model, pre-ASR, reference ASR, suite, budget).
    """
    from erasurelab.attacks import run_attack
    from erasurelab.attacks.base import attack_config, resolve_spec
    from erasurelab.evaluation.judging import resolve_judge
    from erasurelab.models.sampling import is_embedded

    attack_config(name_or_config, options)  # a bad name or option fails before any model loads
    spec = resolve_spec(concept)
    if judge is None:
        if not is_embedded(edited_pipe):
            raise ErasureLabError("attack needs judge= on this model (a Judge or a name: "
                                  "`erasurelab judges`); the default 'shapes' reads only the embedded world")
        judge = "shapes"
    if isinstance(judge, str):
        judge = resolve_judge(judge, [spec])
    reference = _reference_pipe(edited_pipe, reference)
    return run_attack(name_or_config, edited_pipe, spec, reference, judge, seed=seed, quiet=quiet,
                      check_reference=check_reference, **options)


def _reference_pipe(edited_pipe: Any, reference: Any) -> Any:
    """The unedited model: a given pipeline, a model spec loaded like the edited one, or the edit's base model."""
    if reference is None:
        from erasurelab.models.provenance import applied_edits, base_source_of

        reference = base_source_of(edited_pipe) if applied_edits(edited_pipe) else None
        if reference is None:
            raise ErasureLabError("attack needs reference= (the unedited model: a pipeline or a model spec); "
                                  "only a model loaded by erasurelab with an edit applied knows its base")
    if isinstance(reference, str | os.PathLike):
        from erasurelab.models import load_pipeline

        return load_pipeline(reference, dtype=edited_pipe.unet.dtype, device=edited_pipe.unet.device)
    return reference


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """CLI `--option key=value` pairs -> keyword options; values are YAML scalars or lists.

    "tau_forget=0.9" -> 0.9, "seeds=[0,1]" -> [0, 1], "projections=[to_v]" -> ["to_v"],
    "guide=" -> "". Unknown keys are caught later, against the method's config.
    """
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ErasureLabError(f"bad option {pair!r}: expected key=value, e.g. tau_forget=0.9")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ErasureLabError(f"bad option value in {pair!r}: {' '.join(str(exc).split())}") from exc
        options[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return options


def summary(edit: Edit) -> str:
    """One line for the CLI: method, concepts, tensors edited, rank range, wall time."""
    ranks = [r for r in edit.ranks().values() if r is not None]
    names = ", ".join(c["name"] for c in edit.meta.get("concepts", []))
    rank_text = f"ranks {min(ranks)}-{max(ranks)}" if ranks else "no low-rank tensors"
    return (f"{edit.meta.get('method', '?')} erased [{names}]: {len(edit)} tensors, {rank_text}, "
            f"{edit.meta.get('wall_time_s', 0.0):.1f} s, peak {edit.meta.get('peak_rss_mb', 0.0):.0f} MiB")
