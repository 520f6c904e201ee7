"""SDEdit image pairs for DUO: x⁻ shows the concept, x⁺ is x⁻ edited to remove only it.

Why a judge at both ends: DUO learns "prefer x⁺ over x⁻", so a pair whose x⁻ lacks the concept or
whose x⁺ still shows it teaches nothing or the opposite. An unsafe render is kept only if the judge
shows the concept; its SDEdit (safe prompt, the unsafe prompt as negative, CFG 7.5, strength 0.75)
is kept only if the judge no longer shows it and, with `keep_attributes`, still reads the same
other attributes (for the shapes world: object, colour, style, background besides the target's),
so the pair differs in the concept and not in everything else. Each slot gets at most
`max_attempts` tries of (render, judge, edit, judge): a failed edit is retried on a fresh unsafe
render, since an image whose other attributes are ambiguous to the judge tends to fail every edit.
Slots that never succeed are the reported shortfall; the report also gives the rate at which edits
that removed the concept kept the other attributes (`attribute_keep_rate`, the SDEdit's own quality
before the filter).

Prompts: world concepts use `attacks.prompts.template_pairs` (canonical world captions with and
without the concept: "a red circle" / "a circle"); other specs their templates × words with the
concept phrase replaced by the guide. A user-given safe prompt replaces every safe side. With
`safe_caption="judge"` each safe side is instead a caption of what the judge read in that unsafe
image minus the target attribute (the grammar's `caption_without`), so SDEdit is asked to keep the
style and background the image actually has.

Pairs are cached on disk (`diskcache`, namespace "duo_pairs") by (model hash, concept spec, judge
id, settings, prompts): images as uint8 plus a JSON manifest. Fresh images are quantised the same
way, so a cached and a fresh run train on identical pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from erasurelab import diskcache
from erasurelab.concepts.spec import ConceptSpec, replace_mention
from erasurelab.errors import ErasureLabError
from erasurelab.models.img2img import check_denoising_steps, img2img
from erasurelab.models.sampling import generate

NAMESPACE = "duo_pairs"
NEGATIVES: tuple[str, ...] = ("unsafe", "concept", "none")
SAFE_CAPTIONS: tuple[str, ...] = ("prompt", "judge")
UNSAFE_MEMBERS: tuple[str, ...] = ("render", "sdedit")
#: Seed offset of the edit stream, so an edit never reuses its unsafe render's noise.
EDIT_SEED_OFFSET = 7_777_777


@dataclass(frozen=True)
class PairSettings:
    """How pairs are made. negative: the SDEdit negative prompt — "unsafe" (the whole unsafe prompt, the
    spec), "concept" (only the concept word) or "none". safe_caption: the SDEdit prompt — "prompt" (the
    unsafe prompt with the concept phrase replaced, the spec) or "judge" (a caption of what the judge reads
    in that unsafe image, without the target attribute; needs a prompt grammar that knows the concept).
    unsafe_member: "render" (the judge-positive render itself, the spec) or "sdedit" (that render edited at
    the same strength and with the same noise as its safe member, towards a caption of everything the judge
    read in it, target included, or the unsafe prompt without a grammar; kept only if it still shows the
    concept and the other attributes), so the two members differ by the prompt alone and not also by one
    SDEdit pass."""

    n_pairs: int = 64
    guidance: float = 7.5
    strength: float = 0.75
    steps: int | None = None
    max_attempts: int = 20
    negative: str = "unsafe"
    safe_caption: str = "prompt"
    unsafe_member: str = "render"
    keep_attributes: bool = True
    seed: int = 42
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.negative not in NEGATIVES:
            raise ErasureLabError(f"unknown pair negative {self.negative!r}; valid: {', '.join(NEGATIVES)}")
        if self.safe_caption not in SAFE_CAPTIONS:
            raise ErasureLabError(f"unknown pair safe caption {self.safe_caption!r}; valid: "
                                  f"{', '.join(SAFE_CAPTIONS)}")
        if self.unsafe_member not in UNSAFE_MEMBERS:
            raise ErasureLabError(f"unknown pair unsafe member {self.unsafe_member!r}; valid: "
                                  f"{', '.join(UNSAFE_MEMBERS)}")
        for name in ("n_pairs", "max_attempts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ErasureLabError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ErasureLabError(f"SDEdit strength must be in (0, 1], got {self.strength!r}")
        if self.steps is not None:
            check_denoising_steps(self.steps, self.strength)


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


def safe_captioner(spec: ConceptSpec, target: str,
                   settings: PairSettings) -> Callable[[dict[str, str]], str | None] | None:
    """labels -> safe prompt naming what the judge read except the target ("judge" captions), else None.

    Why: a safe prompt that names only the remaining concept ("a circle") leaves style and background to
    the sampler, and SDEdit redraws them; naming what this image shows keeps them. None when the
    settings ask for the prompt's safe side or no prompt grammar knows the concept.
    With target "" the caption names every label (the prompt of an SDEdit'd unsafe member).
    """
    if settings.safe_caption != "judge":
        return None
    from erasurelab.concepts.grammar import grammar_for

    grammar = grammar_for(spec)
    caption = getattr(grammar, "caption_without", None)
    if caption is None:
        return None
    return lambda labels: caption(labels, target)


def _kept_attributes(before: list[dict[str, str]], after: list[dict[str, str]], target: str) -> list[bool]:
    """Per image: the judge's labels agree before and after the edit on every attribute but the target's."""
    return [all(x[k] == y.get(k) for k in x if k != target) for x, y in zip(before, after, strict=True)]


def _unsafe_twins(pipe: Any, spec: ConceptSpec, judge: Any, s: PairSettings, target: str, source: torch.Tensor,
                  labels: list[dict[str, str]], full_caption: Callable[[dict[str, str]], str | None] | None,
                  unsafe_prompts: list[str], seeds: list[int], wanted: list[bool],
                  tally: dict[str, int]) -> tuple[torch.Tensor, list[bool]]:
    """The "sdedit" unsafe members of the `wanted` sources: each source edited with its safe member's seed and
    strength towards a caption of everything the judge read in it (or its unsafe prompt), no negative prompt.
    Returns (members, ok): members equals `source` where not wanted; ok is False where a wanted twin lost the
    concept or (with keep_attributes) another attribute."""
    index = [k for k, w in enumerate(wanted) if w]
    members, ok = source.clone(), [False] * len(wanted)
    if not index:
        return members, ok
    prompts = [unsafe_prompts[k] for k in index]
    if full_caption is not None and labels:
        prompts = [full_caption(labels[k]) or p for k, p in zip(index, prompts, strict=True)]
    twins = img2img(pipe, source[index], prompts, [seeds[k] for k in index], strength=s.strength,
                    guidance=s.guidance, steps=s.steps, batch_size=s.batch_size)
    twins = _quantise(twins).float() / 255
    shown = judge.present(twins, spec.name).tolist()
    same = (_kept_attributes([labels[k] for k in index], judge.predict(twins), target) if s.keep_attributes
            else [True] * len(index))
    for j, k in enumerate(index):
        members[k], ok[k] = twins[j], bool(shown[j] and same[j])
    tally["unsafe_edits"] += len(index)
    tally["unsafe_edits_rejected"] += sum(not ok[k] for k in index)
    return members, ok


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
    caption = safe_captioner(spec, target, s) if safe_prompt is None else None
    full_caption = safe_captioner(spec, "", s) if s.unsafe_member == "sdedit" else None
    unsafe: dict[int, torch.Tensor] = {}
    safe: dict[int, torch.Tensor] = {}
    safe_prompts: dict[int, str] = {}
    found: set[int] = set()
    tally = {"render_attempts": 0, "edit_attempts": 0, "edits_still_showing_concept": 0,
             "edits_removing_concept": 0, "edits_losing_other_attributes": 0, "judge_captions": 0,
             "unsafe_edits": 0, "unsafe_edits_rejected": 0}
    pending = list(range(n))
    for attempt in range(s.max_attempts):
        if not pending:
            break
        seeds = [s.seed + i + attempt * n for i in pending]
        images = generate(pipe, [slot_pairs[i][0] for i in pending], seeds, steps=s.steps, guidance=s.guidance,
                          batch_size=s.batch_size, quiet=quiet)
        images = _quantise(images).float() / 255
        tally["render_attempts"] += len(pending)
        shown = judge.present(images, spec.name).tolist()
        slots = [i for k, i in enumerate(pending) if shown[k]]
        found.update(slots)
        if slots:
            source = images[[k for k in range(len(pending)) if shown[k]]]
            prompts_now = [slot_pairs[i][1] for i in slots]
            labels = judge.predict(source) if caption is not None or s.keep_attributes else []
            if caption is not None:
                described = [caption(read) for read in labels]
                tally["judge_captions"] += sum(c is not None for c in described)
                prompts_now = [c or p for c, p in zip(described, prompts_now, strict=True)]
            edit_seeds = [s.seed + EDIT_SEED_OFFSET + i + attempt * n for i in slots]
            edited = img2img(pipe, source, prompts_now, edit_seeds,
                             strength=s.strength, guidance=s.guidance, steps=s.steps, batch_size=s.batch_size,
                             negative_prompts=[_negative(s, spec, slot_pairs[i][0]) or "" for i in slots])
            edited = _quantise(edited).float() / 255
            tally["edit_attempts"] += len(slots)
            gone = (~judge.present(edited, spec.name)).tolist()
            kept = _kept_attributes(labels, judge.predict(edited), target) if s.keep_attributes else [True] * len(slots)
            tally["edits_still_showing_concept"] += sum(not g for g in gone)
            tally["edits_removing_concept"] += sum(gone)
            tally["edits_losing_other_attributes"] += sum(g and not k for g, k in zip(gone, kept, strict=True))
            members = source
            if s.unsafe_member == "sdedit":
                members, twin_ok = _unsafe_twins(pipe, spec, judge, s, target, source, labels, full_caption,
                                                 [slot_pairs[i][0] for i in slots], edit_seeds,
                                                 [g and k for g, k in zip(gone, kept, strict=True)], tally)
                kept = [k and ok for k, ok in zip(kept, twin_ok, strict=True)]
            for k, i in enumerate(slots):
                if gone[k] and kept[k]:
                    unsafe[i], safe[i], safe_prompts[i] = members[k], edited[k], prompts_now[k]
        pending = [i for i in pending if i not in safe]
    order = sorted(safe)
    edits, removing = tally["edit_attempts"], tally["edits_removing_concept"]
    report = {"requested": n, "kept": len(order), "shortfall": n - len(order), "slots_with_unsafe": len(found),
              **tally, "edit_success_rate": len(order) / edits if edits else 0.0,
              "attribute_keep_rate": 1 - tally["edits_losing_other_attributes"] / removing if removing else 0.0,
              "target_attribute": target, "seconds": time.perf_counter() - start, "cached": False,
              "cache_key": key, "settings": asdict(s)}
    if not order:
        raise ErasureLabError(f"no DUO pair for {spec.name!r} survived the judge filter ({len(found)} of {n} "
                              f"slots rendered the concept in {s.max_attempts} attempts, no edit kept); "
                              "try other prompts, a safe_prompt or another strength")
    result = Pairs(torch.stack([unsafe[i] for i in order]), torch.stack([safe[i] for i in order]),
                   [slot_pairs[i][0] for i in order], [safe_prompts[i] for i in order], report)
    diskcache.save_tensors(NAMESPACE, key, {"unsafe": _quantise(result.unsafe), "safe": _quantise(result.safe)})
    diskcache.save_json(NAMESPACE, key, {"prompts": result.prompts, "safe_prompts": result.safe_prompts,
                                         "report": report, "spec": spec.manifest_entry(), "judge": judge.id})
    return result
