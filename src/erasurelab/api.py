"""`erase(pipe, concepts, method, **options) -> Edit`: the one entry point to every erasure method.

Why a wrapper around the registry: whatever the method, a run must record the same facts in its
Edit (method, validated config, concept specs with hashes, base-model fingerprint, wall time,
peak memory, library versions, the erasurelab commit), so that `Edit.save` writes a complete
manifest and results can be compared across methods and traced to the code that made them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
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


def erase(pipe: Any, concepts: ConceptLike | Sequence[ConceptLike], method: str = "pure", *, quiet: bool = True,
          **options: Any) -> Edit:
    """Compute an erasure Edit for one concept or several at once; `pipe` is left unmodified.

    concepts: ConceptSpec(s), built-in names ("red") or concept YAML paths.
    method: a registered method ("pure", "uce", ...); options: fields of its config dataclass.
    A method's settings that depend on the model (e.g. PURE's solver="auto") are resolved by the
    method and recorded in `edit.meta` beside the config as given.
    Returns an Edit to `apply(pipe)` or `save(dir, format="lora"|"full")`.
    """
    from erasurelab.methods import get_method, make_config
    from erasurelab.methods.base import config_dict

    entry = get_method(method)
    specs = resolve_concepts(concepts)
    config = make_config(entry.config_cls, options, entry.name)
    start = time.perf_counter()
    edit = entry.fn(pipe, specs, config, quiet)
    wall = time.perf_counter() - start
    edit.meta.update({
        "method": entry.name, "config": config_dict(config), "concepts": [s.manifest_entry() for s in specs],
        "base": base_description(pipe, edit.deltas), "wall_time_s": wall, "peak_rss_mb": peak_rss_mb(),
        "versions": library_versions(), "source_revision": source_revision(),
    })
    return edit.bind_source(pipe)


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
