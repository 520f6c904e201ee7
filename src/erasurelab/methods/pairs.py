"""SDEdit image pairs for DUO: x⁻ shows the concept, x⁺ is x⁻ edited to remove only it.

Why a judge at both ends: DUO learns "prefer x⁺ over x⁻", so a pair whose x⁻ lacks the concept or
whose x⁺ still shows it teaches nothing or the opposite. An unsafe render is kept only if the judge
shows the concept; its SDEdit (safe prompt, the unsafe prompt as negative, CFG 7.5, strength 0.75)
is kept only if the judge no longer shows it and, with `keep_attributes`, still reads the same
other attributes (for the shapes world: object, colour, style, background besides the target's),
so the pair differs in the concept and not in everything else. Each slot gets at most
`max_attempts` renders and as many edits; slots that never succeed are the reported shortfall.

Prompts: world concepts use `attacks.prompts.template_pairs` (canonical world captions with and
without the concept: "a red circle" / "a circle"); other specs their templates × words with the
concept phrase replaced by the guide. A user-given safe prompt replaces every safe side.

Pairs are cached on disk (`diskcache`, namespace "duo_pairs") by (model hash, concept spec, judge
id, settings, prompts): images as uint8 plus a JSON manifest. Fresh images are quantised the same
way, so a cached and a fresh run train on identical pairs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from erasurelab import diskcache
from erasurelab.concepts.spec import ConceptSpec, replace_mention
from erasurelab.errors import ErasureLabError
from erasurelab.models.img2img import img2img
from erasurelab.models.sampling import generate

NAMESPACE = "duo_pairs"
NEGATIVES: tuple[str, ...] = ("unsafe", "concept", "none")
#: Seed offset of the edit stream, so an edit never reuses its unsafe render's noise.
EDIT_SEED_OFFSET = 7_777_777


@dataclass(frozen=True)
class PairSettings:
    """How pairs are made. negative: the SDEdit negative prompt — "unsafe" (the whole unsafe prompt, the
    spec), "concept" (only the concept word) or "none"."""

    n_pairs: int = 64
    guidance: float = 7.5
    strength: float = 0.75
    steps: int | None = None
    max_attempts: int = 20
    negative: str = "unsafe"
    keep_attributes: bool = True
    seed: int = 42
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.negative not in NEGATIVES:
            raise ErasureLabError(f"unknown pair negative {self.negative!r}; valid: {', '.join(NEGATIVES)}")
        for name in ("n_pairs", "max_attempts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ErasureLabError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ErasureLabError(f"SDEdit strength must be in (0, 1], got {self.strength!r}")


@dataclass
class Pairs:
    """Kept pairs: unsafe[i] (judge-positive) and safe[i] (its judge-negative edit), float images in [0, 1]."""

    unsafe: torch.Tensor
    safe: torch.Tensor
    prompts: list[str]
    safe_prompts: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.unsafe.shape[0])


def judge_attribute(judge: Any, spec: ConceptSpec) -> str:
    """The judge head that decides the concept; one-line error when the judge cannot see it."""
    if spec.kind != "single":
        raise ErasureLabError(f"DUO pairs need a single concept; {spec.name!r} is a {spec.kind} "
                              "(erase its parts one by one)")
    if spec.name not in judge.concepts():
        raise ErasureLabError(f"judge {judge.id} cannot see concept {spec.name!r}, so no pair can be checked; "
                              f"it knows: {', '.join(judge.concepts())}")
    attribute_of = getattr(judge, "attribute_of", None)
    return attribute_of(spec.name) if attribute_of is not None else spec.category


def prompt_pairs(spec: ConceptSpec, safe_prompt: str | None = None,
                 prompts: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, str]]:
    """(unsafe, safe) prompt pairs: given prompts or the concept's own, safe = concept phrase → guide."""
    if prompts:
        out = []
        for prompt in prompts:
            safe = safe_prompt
            if safe is None:
                for word in sorted(spec.target_words, key=len, reverse=True):
                    replaced = replace_mention(prompt, word, spec.guide)
                    if replaced is not None:
                        safe = " ".join(replaced.split())
                        break
            out.append((prompt, spec.guide if safe is None else safe))
        return out
    from erasurelab.attacks.prompts import template_pairs

    pairs = template_pairs(spec)
    return [(u, safe_prompt if safe_prompt is not None else s) for u, s in pairs]


def _quantise(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _negative(settings: PairSettings, spec: ConceptSpec, unsafe_prompt: str) -> str | None:
    if settings.negative == "unsafe":
        return unsafe_prompt
    if settings.negative == "concept":
        return spec.synonyms[0] if spec.synonyms else spec.name
    return None


def _kept_attributes(judge: Any, before: torch.Tensor, after: torch.Tensor, target: str) -> list[bool]:
    """Per image: the judge reads every attribute but the target's the same before and after the edit."""
    a, b = judge.predict(before), judge.predict(after)
    return [all(x[k] == y.get(k) for k in x if k != target) for x, y in zip(a, b, strict=True)]


def build_pairs(pipe: Any, spec: ConceptSpec, judge: Any, settings: PairSettings | None = None,
                safe_prompt: str | None = None, prompts: tuple[str, ...] | list[str] | None = None,
                quiet: bool = True) -> Pairs:
    """Render, filter and SDEdit `settings.n_pairs` pairs (or load them from the cache); see the module docstring.

    Raises a one-line error when the judge cannot see the concept or when no pair survives the filter.
    """
    from erasurelab.evaluation.rendering import model_hash

    settings = settings or PairSettings()
    target = judge_attribute(judge, spec)
    pairs = prompt_pairs(spec, safe_prompt, prompts)
    if not pairs:
        raise ErasureLabError(f"no prompts to build DUO pairs for {spec.name!r}")
    key = diskcache.cache_key(NAMESPACE, model_hash(pipe), spec.to_dict(), judge.id, asdict(settings), pairs)
    cached, manifest = diskcache.load_tensors(NAMESPACE, key), diskcache.load_json(NAMESPACE, key)
    if cached is not None and manifest is not None:
        return Pairs(cached["unsafe"].float() / 255, cached["safe"].float() / 255, manifest["prompts"],
                     manifest["safe_prompts"], {**manifest["report"], "cached": True, "cache_key": key})

    start = time.perf_counter()
    n, s = settings.n_pairs, settings
    slot_pairs = [pairs[i % len(pairs)] for i in range(n)]
    unsafe: dict[int, torch.Tensor] = {}
    safe: dict[int, torch.Tensor] = {}
    render_tries, edit_tries, concept_left, attribute_lost = 0, 0, 0, 0
    pending = list(range(n))
    for attempt in range(s.max_attempts):
        if not pending:
            break
        seeds = [s.seed + i + attempt * n for i in pending]
        images = generate(pipe, [slot_pairs[i][0] for i in pending], seeds, steps=s.steps, guidance=s.guidance,
                          batch_size=s.batch_size, quiet=quiet)
        images = _quantise(images).float() / 255
        render_tries += len(pending)
        shown = judge.present(images, spec.name).tolist()
        for k, i in enumerate(pending):
            if shown[k]:
                unsafe[i] = images[k]
        pending = [i for i in pending if i not in unsafe]
    pending = sorted(unsafe)
    for attempt in range(s.max_attempts):
        if not pending:
            break
        seeds = [s.seed + EDIT_SEED_OFFSET + i + attempt * n for i in pending]
        source = torch.stack([unsafe[i] for i in pending])
        edited = img2img(pipe, source, [slot_pairs[i][1] for i in pending], seeds, strength=s.strength,
                         guidance=s.guidance, steps=s.steps, batch_size=s.batch_size,
                         negative_prompts=[_negative(s, spec, slot_pairs[i][0]) or "" for i in pending])
        edited = _quantise(edited).float() / 255
        edit_tries += len(pending)
        gone = (~judge.present(edited, spec.name)).tolist()
        kept = _kept_attributes(judge, source, edited, target) if s.keep_attributes else [True] * len(pending)
        concept_left += sum(not g for g in gone)
        attribute_lost += sum(g and not k for g, k in zip(gone, kept, strict=True))
        for k, i in enumerate(pending):
            if gone[k] and kept[k]:
                safe[i] = edited[k]
        pending = [i for i in pending if i not in safe]
    order = sorted(safe)
    report = {"requested": n, "kept": len(order), "shortfall": n - len(order),
              "unsafe_found": len(unsafe), "render_attempts": render_tries, "edit_attempts": edit_tries,
              "edits_still_showing_concept": concept_left, "edits_losing_other_attributes": attribute_lost,
              "target_attribute": target, "seconds": time.perf_counter() - start, "cached": False,
              "cache_key": key, "settings": asdict(s)}
    if not order:
        raise ErasureLabError(f"no DUO pair for {spec.name!r} survived the judge filter ({len(unsafe)} of {n} "
                              f"unsafe renders judge-positive after {s.max_attempts} attempts, no edit kept); "
                              "try other prompts, a safe_prompt or another strength")
    result = Pairs(torch.stack([unsafe[i] for i in order]), torch.stack([safe[i] for i in order]),
                   [slot_pairs[i][0] for i in order], [slot_pairs[i][1] for i in order], report)
    diskcache.save_tensors(NAMESPACE, key, {"unsafe": _quantise(result.unsafe), "safe": _quantise(result.safe)})
    diskcache.save_json(NAMESPACE, key, {"prompts": result.prompts, "safe_prompts": result.safe_prompts,
                                         "report": report, "spec": spec.manifest_entry(), "judge": judge.id})
    return result
