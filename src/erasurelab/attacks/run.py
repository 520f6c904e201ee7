"""The attack protocol: `run_attack` runs a registered attack on M_e and on M_0, and returns an `AttackRun`.

Each attack module registers a class with two steps and its config dataclass (options and
validators: `erasurelab.configs`):

  prepare(ctx, budget) -> prepared   everything that comes from the *unedited* model M_0 (reference
                                     images, target images, seed prompts); computed once
  attack(target, prepared, ctx, budget) -> AttackOutcome
                                     the attack against one model, scored on that model

Why two steps: every attack must also run against M_0 as a sanity check (an attack that fails on
the unedited model makes its ASR on the edited one meaningless), and the M_0 data must not be
generated twice, nor ever from M_e. `prepare` depends only on M_0, the concept, the judge, the
config and the seed, so its output is cached on disk (`diskcache`, keyed by those) and a second
run, or a second method against the same reference, reuses it.
Attacks never edit weights: `run_attack` only reads the pipelines (tests compare every
parameter bit for bit before and after).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from erasurelab.attacks.budget import Budget
from erasurelab.attacks.context import Attack, AttackContext
from erasurelab.attacks.registry import AttackEntry, attack_config
from erasurelab.concepts.spec import ConceptSpec
from erasurelab.configs import config_dict
from erasurelab.errors import ErasureLabError
from erasurelab.results import REFERENCE_MIN_ASR, AttackResult, Rate
from erasurelab.runinfo import library_versions, replace_folder, write_json_atomic


@dataclass
class AttackRun(AttackResult):
    """An AttackResult plus what reproduces it: the adversarial suite, config, judge id and notes.

    suite: per-instance records on the edited model (prompts, token ids, seeds, verdicts) and on
    the reference. seed_sets: per run ("edited", "reference") the selection and scoring seeds used.
    tensors: safetensors payloads by file stem (textual inversion writes
    `learned_embeds` = {placeholder: vector}, loadable with diffusers' `load_textual_inversion`).
    """

    judge_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    image_rate: Rate | None = None
    reference_ok: bool | None = None
    notes: list[str] = field(default_factory=list)
    seed_sets: dict[str, Any] = field(default_factory=dict)
    suite: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update({"judge": self.judge_id, "config": self.config, "seed": self.seed,
                    "image_rate": None if self.image_rate is None else self.image_rate.to_dict(),
                    "reference_ok": self.reference_ok, "notes": list(self.notes), "seed_sets": self.seed_sets,
                    "suite": self.suite,
                    "tensor_files": {stem: sorted(t) for stem, t in self.tensors.items()}})
        return out

    def summary(self) -> str:
        """One line for the CLI and benches."""
        ref = "n/a" if self.reference_asr is None else f"{self.reference_asr}"
        pre = "n/a" if self.pre_asr is None else f"{self.pre_asr}"
        return (f"{self.name} on {self.concept}: ASR {self.asr}, pre-ASR {pre}, reference ASR {ref}, "
                f"{self.budget.get('wall_time_s', 0.0):.1f} s" + (f" — {self.notes[0]}" if self.notes else ""))

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write result.json, the tensors as safetensors and an images.png grid, atomically (DIR.tmp → DIR)."""
        from safetensors.torch import save_file

        from erasurelab.imaging import grid, save_image_atomic

        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise ErasureLabError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise ErasureLabError(f"cannot write to {directory.parent}: {exc.strerror}") from exc
        payload = {**self.to_dict(), "versions": library_versions()}
        write_json_atomic(tmp / "result.json", payload)
        for stem, tensors in self.tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{stem}.safetensors"))
        if self.images is not None and len(self.images):
            flags = [r.get("success") for r in self.suite.get("edited", [])]
            captions = [("+ " if f else "- ") + p if f is not None else p
                        for p, f in zip(self.prompts, flags + [None] * (len(self.prompts) - len(flags)), strict=True)]
            save_image_atomic(grid(self.images, captions[:len(self.images)]), tmp / "images.png")
        return replace_folder(tmp, directory)


def resolve_spec(spec: ConceptSpec | str | Path) -> ConceptSpec:
    if isinstance(spec, ConceptSpec):
        return spec
    from erasurelab.concepts import concept

    return concept(spec)


def _architecture(pipe: Any) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((k, tuple(v.shape)) for k, v in pipe.unet.state_dict().items())


def run_attack(name: Any, edited_pipe: Any, spec: ConceptSpec | str | Path, reference_pipe: Any, judge: Any,
               seed: int = 0, quiet: bool = True, check_reference: bool = True, **options: Any) -> AttackRun:
    """Run a registered attack on the edited model M_e and (sanity check) on the unedited model M_0.

    name: "textual-inversion", "unlearndiffatk", "ring-a-bell", "ft" (see `available_attacks()`),
    or an attack's config object (e.g. `RingABellConfig(generations=50)`).
    spec: a ConceptSpec, a built-in concept name or a concept YAML path; judge: a Judge that knows it.
    reference_pipe: M_0 (same architecture). Data the attack learns from (reference images, target
    images, seed prompts) always come from M_0. Neither pipeline's weights are changed.
    options: fields of the attack's config dataclass (unknown keys: one-line error).
    Returns an AttackRun: ASR on M_e, pre-ASR (unattacked prompts on M_e), reference ASR, the
    adversarial suite, images rendered on M_e, the seed sets, and the budget (optimisation steps,
    U-Net forward/backward samples, renders, wall time, peak memory; per phase under "prepare",
    "edited", "reference"; "cached": what was loaded from the disk cache instead of computed).
    """
    entry, config = attack_config(name, options)
    spec = resolve_spec(spec)
    if edited_pipe is None or reference_pipe is None:
        raise ErasureLabError("run_attack needs both the edited model and the unedited reference model")
    if edited_pipe is not reference_pipe and _architecture(edited_pipe) != _architecture(reference_pipe):
        raise ErasureLabError("edited and reference models differ in architecture; the reference must be the "
                              "unedited base of the edited model")
    if hasattr(judge, "attribute_of"):
        judge.attribute_of(spec.name)  # one-line error now rather than after minutes of work
    attack: Attack = entry.factory()
    if hasattr(attack, "check"):
        attack.check(edited_pipe)
        attack.check(reference_pipe)
    ctx = AttackContext(spec=spec, judge=judge, config=config, reference=reference_pipe, seed=int(seed), quiet=quiet)

    prepare_budget = Budget()
    with prepare_budget.track(reference_pipe):
        prepared, prepare_cached = _prepare_cached(attack, entry, ctx, prepare_budget)
    edited_budget = Budget()
    with edited_budget.track(edited_pipe):
        edited = attack.attack(edited_pipe, prepared, ctx, edited_budget)
    reference = None
    reference_budget = Budget()
    if check_reference:
        if reference_pipe is edited_pipe and not getattr(attack, "reference_differs", False):
            reference, reference_budget = edited, edited_budget
        else:
            reference_ctx = dataclasses.replace(ctx, role="reference")  # shares the render memo
            with reference_budget.track(reference_pipe):
                reference = attack.attack(reference_pipe, prepared, reference_ctx, reference_budget)

    asr = Rate.of(edited.success)
    pre_asr = Rate.of(edited.pre_success) if edited.pre_success is not None else None
    reference_asr = Rate.of(reference.success) if reference is not None else None
    notes: list[str] = []
    reference_ok = None
    if reference_asr is not None:
        reference_ok = reference_asr.denominator > 0 and reference_asr.value >= REFERENCE_MIN_ASR
        if not reference_ok:
            notes.append(f"the attack fails on the unedited model (reference ASR {reference_asr}): "
                         "its ASR on the edited model is not meaningful")
    if asr.denominator == 0:
        notes.append("no attack instances: the reference model never rendered the concept for the starting prompts")
    seed_sets = {"edited": edited.extra.get("seed_sets"),
                 "reference": reference.extra.get("seed_sets") if reference is not None else None}
    for role, sets in seed_sets.items():
        if sets and set(sets.get("selection", [])) & set(sets.get("scoring", [])):
            raise AssertionError(f"{entry.name}: {role} scoring seeds overlap its selection seeds")
    cached = (["prepare"] if prepare_cached else []) + [f"edited:{c}" for c in edited.extra.get("cached", [])]
    if reference is not None and reference is not edited:
        cached += [f"reference:{c}" for c in reference.extra.get("cached", [])]
    budget = {**edited_budget.to_dict(), "prepare": prepare_budget.to_dict(), "edited": edited_budget.to_dict(),
              "reference": reference_budget.to_dict() if reference is not None else None, "cached": cached}
    tensors = dict(edited.tensors)
    if reference is not None and reference is not edited:
        tensors.update({f"reference_{stem}": t for stem, t in reference.tensors.items()})
    suite = {"edited": edited.records, "edited_info": edited.extra,
             "reference": reference.records if reference is not None else None,
             "reference_info": reference.extra if reference is not None else None}
    return AttackRun(
        name=entry.name, concept=spec.name, asr=asr, pre_asr=pre_asr, reference_asr=reference_asr,
        prompts=list(edited.prompts), images=edited.images, budget=budget,
        judge_id=str(getattr(judge, "id", type(judge).__name__)), config=config_dict(config), seed=int(seed),
        image_rate=asr, reference_ok=reference_ok, notes=notes, suite=suite, tensors=tensors, seed_sets=seed_sets,
    )


def prepare_key(entry: AttackEntry, ctx: AttackContext) -> str | None:
    """Disk-cache key of `prepare`: reference model hash, concept hash, judge id, config, seed (None: cache off)."""
    from erasurelab import diskcache

    if diskcache.cache_root() is None:
        return None
    judge_id = str(getattr(ctx.judge, "id", type(ctx.judge).__name__))
    return diskcache.cache_key("attack-prepare", entry.name, ctx.model_hash(ctx.reference), ctx.spec.sha256(), judge_id,
                               config_dict(ctx.config), ctx.seed)


def _prepare_cached(attack: Any, entry: AttackEntry, ctx: AttackContext, budget: Budget) -> tuple[Any, bool]:
    """`attack.prepare`, loaded from / saved to the disk cache when the attack can serialise it."""
    from erasurelab import diskcache

    key = prepare_key(entry, ctx) if hasattr(attack, "dump_prepared") else None
    if key is not None:
        meta = diskcache.load_json("attack-prepare", key)
        tensors = diskcache.load_tensors("attack-prepare", key) if meta is not None else None
        if meta is not None and tensors is not None:
            return attack.load_prepared(tensors, meta), True
    prepared = attack.prepare(ctx, budget)
    if key is not None:
        tensors, meta = attack.dump_prepared(prepared)
        diskcache.save_tensors("attack-prepare", key, tensors)  # tensors first: the JSON marks a complete entry
        diskcache.save_json("attack-prepare", key, meta)
    return prepared, False
