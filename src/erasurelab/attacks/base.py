"""The one attack registry, the common `run_attack` contract, and budget accounting (the attack protocol).

Why a registry: the CLI, the benchmark and the evaluator name attacks by string, exactly as they
name methods (the same `erasurelab.registry.Registry` shape; third-party attacks register through
the entry-point group `erasurelab.attacks`). Each attack module registers a class with two steps
and its config dataclass (options and validators: `erasurelab.configs`):

  prepare(ctx, budget) -> prepared   everything that comes from the *unedited* model M_0 (reference
                                     images, target images, seed prompts); computed once
  attack(target, prepared, ctx, budget) -> AttackOutcome
                                     the attack against one model, scored on that model

Why two steps: every attack must also run against M_0 as a sanity check (an attack that fails on
the unedited model makes its ASR on the edited one meaningless), and the M_0 data must not be
generated twice, nor ever from M_e.

Why two seed sets: a reference ASR must measure the attack, not the selection. Whatever an attack
picks on M_0 (target images, seed prompts, scoring instances) is picked on *selection seeds*; every
instance is scored on *scoring seeds* (`scoring_seed`), a disjoint range, and the result records
both. `prepare` depends only on M_0, the concept, the judge and the config, so its output is cached
on disk (`diskcache`, keyed by the reference model's hash, the concept's hash, the judge id, the
config and the seed) and a second run, or a second method against the same reference, reuses it.
Within one run a (model, prompt, seed) image is rendered once (`AttackContext.render` memo).

Why budgets are counted by hooks: "U-Net forward passes" is what makes attacks comparable across
methods and hardware. A forward pre-hook on the U-Net counts every sample it sees (a batch of 8
is 8; classifier-free guidance counts both halves), split into optimisation and rendering.
Attacks never edit weights: `run_attack` only reads the pipelines (tests compare every
parameter bit for bit before and after).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from erasurelab.concepts.spec import ConceptSpec
from erasurelab.configs import check_non_negative as check_non_negative
from erasurelab.configs import check_positive, config_dict, entry_for_config, load_plugins, make_config, merge_options
from erasurelab.configs import check_probability as check_probability
from erasurelab.configs import check_strings as check_strings
from erasurelab.errors import ErasureLabError
from erasurelab.registry import Entry, Registry, option
from erasurelab.results import REFERENCE_MIN_ASR as REFERENCE_MIN_ASR
from erasurelab.results import AttackResult, Rate
from erasurelab.runinfo import library_versions, peak_rss_mb, replace_folder, write_json_atomic

#: Scoring seeds are ctx.seed + SCORING_SEED_OFFSET + i: disjoint from every selection seed (which stay
#: below it: retries are spaced by RETRY_SEED_STRIDE, reference images and pairs use offsets < 100 000).
SCORING_SEED_OFFSET = 500_000


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


class _SamplerDefaults:
    """`RenderConfig.model_defaults`, read when asked from the defaults `sampling.default_sampling` uses
    (the embedded model's are registered by its plugin, which nothing here imports)."""

    def __get__(self, obj: Any, owner: type | None = None) -> dict[str, tuple[Any, Any]]:
        from erasurelab.models.sampling import sampling_defaults

        sd, embedded = sampling_defaults(None), sampling_defaults("builtin:shapes")
        return {"steps": (sd[0], embedded[0]), "guidance": (sd[1], embedded[1])}


@dataclass(frozen=True)
class RenderConfig:
    """Rendering settings every attack shares; None means the model's defaults (sampling.default_sampling)."""

    steps: int | None = option(None, help="sampler steps of every render (None: the model's default)")
    guidance: float | None = option(None, help="classifier-free guidance scale of every render (None: the "
                                               "model's default)")
    batch_size: int = option(16, help="images per sampler batch when rendering")

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        if self.steps is not None:
            check_positive("steps", self.steps)
        if self.guidance is not None and not isinstance(self.guidance, int | float):
            raise ErasureLabError(f"guidance must be a number, got {self.guidance!r}")


#: (SD-family, embedded) values of the None defaults, as `sampling.default_sampling` picks them; set after the
#: class is made, because the dataclass decorator reads class attributes and these are read only when asked.
RenderConfig.model_defaults = _SamplerDefaults()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------


class Budget:
    """Counters for one phase of an attack: steps, U-Net/text-encoder samples, renders, time, memory.

    Keys: steps (optimiser steps or GA generations), unet_forward / unet_backward (samples during
    optimisation), render_unet_forward (samples while rendering for scoring), text_encoder_forward
    (samples outside rendering), renders (images), wall_time_s, peak_rss_mb.
    """

    def __init__(self) -> None:
        self.counts: dict[str, float] = {"steps": 0, "unet_forward": 0, "unet_backward": 0,
                                         "render_unet_forward": 0, "text_encoder_forward": 0, "renders": 0}
        self.rendering = False

    def add(self, key: str, n: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    @contextmanager
    def render_phase(self) -> Iterator[None]:
        """U-Net calls inside count as rendering, not optimisation."""
        previous, self.rendering = self.rendering, True
        try:
            yield
        finally:
            self.rendering = previous

    @contextmanager
    def track(self, pipe: Any) -> Iterator[None]:
        """Count U-Net and text-encoder samples of `pipe`, time the block and record peak memory."""
        def unet_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs.get("sample")
            self.add("render_unet_forward" if self.rendering else "unet_forward", int(sample.shape[0]))

        def encoder_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = args[0] if args else kwargs.get("input_ids")
            if ids is not None and not self.rendering:
                self.add("text_encoder_forward", int(ids.shape[0]))

        unet_hook.erasurelab_budget = True  # type: ignore[attr-defined]
        encoder_hook.erasurelab_budget = True  # type: ignore[attr-defined]
        handles = [pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True)]
        if getattr(pipe, "text_encoder", None) is not None:
            handles.append(pipe.text_encoder.register_forward_pre_hook(encoder_hook, with_kwargs=True))
        start = time.perf_counter()
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.add("wall_time_s", time.perf_counter() - start)
            self.counts["peak_rss_mb"] = peak_rss_mb()
            if torch.cuda.is_available():
                self.counts["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counts.items()}


def strip_budget_hooks(module: torch.nn.Module) -> torch.nn.Module:
    """Remove budget-counting hooks from a deep copy (deepcopy copies hooks; a copy must not count twice)."""
    for sub in module.modules():
        for key, hook in list(sub._forward_pre_hooks.items()):
            if getattr(hook, "erasurelab_budget", False):
                del sub._forward_pre_hooks[key]
                sub._forward_pre_hooks_with_kwargs.pop(key, None)
    return module


# ---------------------------------------------------------------------------------------------
# What an attack sees and returns
# ---------------------------------------------------------------------------------------------


@dataclass
class AttackContext:
    """Inputs shared by both runs of an attack: the concept, the judge, the config, M_0, seeds."""

    spec: ConceptSpec
    judge: Any
    config: Any
    reference: Any
    seed: int = 0
    quiet: bool = True
    role: str = "edited"  # "reference" while the attack runs against M_0 as the sanity check
    memo: dict[tuple[int, str, int], torch.Tensor] = field(default_factory=dict, repr=False)
    pinned: dict[int, Any] = field(default_factory=dict, repr=False)
    hashes: dict[int, str] = field(default_factory=dict, repr=False)

    def model_hash(self, pipe: Any) -> str:
        """`models.identity.model_hash` of a pipeline, computed once per run (weights do not change in a run)."""
        from erasurelab.models.identity import model_hash

        if id(pipe) not in self.hashes:
            self.pinned[id(pipe)] = pipe
            self.hashes[id(pipe)] = model_hash(pipe)
        return self.hashes[id(pipe)]

    def scoring_seed(self, index: int, retry: int = 0) -> int:
        """The scoring seed of instance `index` (retry j: + RETRY_SEED_STRIDE·j), never a selection seed."""
        return self.seed + SCORING_SEED_OFFSET + int(index) + RETRY_SEED_STRIDE * int(retry)

    def render(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], budget: Budget) -> torch.Tensor:
        """Render text prompts with the protocol's sampler (one CPU generator per image), counted as rendering.

        A (pipeline, prompt, seed) already rendered in this run is taken from the memo, not rendered
        again (counted as renders_reused). The pipeline is pinned so its id cannot be reused.
        """
        from erasurelab.models.sampling import generate

        self.pinned[id(pipe)] = pipe
        keys = [(id(pipe), str(p), int(s)) for p, s in zip(prompts, seeds, strict=True)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if missing:
            with budget.render_phase():
                images = generate(pipe, [k[1] for k in missing], [k[2] for k in missing], steps=self.config.steps,
                                  guidance=self.config.guidance, batch_size=self.config.batch_size, quiet=True)
            budget.add("renders", len(images))
            self.memo.update(zip(missing, images, strict=True))
        if len(keys) > len(missing):
            budget.add("renders_reused", len(keys) - len(missing))
        if not keys:
            return torch.zeros(0)
        return torch.stack([self.memo[k] for k in keys])

    def render_embeds(self, pipe: Any, embeds: Any, seeds: Sequence[int], budget: Budget) -> torch.Tensor:
        """Render from prompt embeddings (searched token ids), same seeding rule as `generate`.

        embeds: token states (n, L, d), or a `tokens.Encoded` (SDXL: with its pooled embeddings).
        """
        from erasurelab.models.sampling import default_sampling

        default_steps, default_guidance = default_sampling(pipe)
        steps = self.config.steps or default_steps
        guidance = default_guidance if self.config.guidance is None else self.config.guidance
        embeds, pooled = (embeds.embeds, embeds.pooled) if hasattr(embeds, "embeds") else (embeds, None)
        out = []
        with budget.render_phase(), torch.no_grad():
            for start in range(0, len(embeds), self.config.batch_size):
                chunk = slice(start, start + self.config.batch_size)
                generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[chunk]]
                extra = {} if pooled is None else {"pooled_prompt_embeds": pooled[chunk].to(pipe.unet.device,
                                                                                          pipe.unet.dtype)}
                result = pipe(prompt_embeds=embeds[chunk].to(pipe.unet.device, pipe.unet.dtype), generator=generators,
                              num_inference_steps=steps, guidance_scale=guidance, output_type="pt", **extra)
                images = result.images if isinstance(result.images, torch.Tensor) else torch.as_tensor(result.images)
                out.append(images.float().cpu())
        images = torch.cat(out)
        budget.add("renders", len(images))
        return images

    def present(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's verdict for this concept, as a bool CPU tensor."""
        return torch.as_tensor(self.judge.present(images, self.spec.name), dtype=torch.bool).cpu()


#: Seed retries are spaced by this much so they never collide with other instances' seeds.
RETRY_SEED_STRIDE = 1000


@dataclass
class Target:
    """A prompt with its judge-positive M_0 render at the selection seed `seed` (image None: never rendered)."""

    prompt: str
    index: int
    seed: int
    image: torch.Tensor | None
    tries: int


def targets_to_cache(targets: Sequence[Target], prefix: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(tensors, JSON rows) of targets for the disk cache; images under f"{prefix}{index}"."""
    tensors = {f"{prefix}{n}": t.image for n, t in enumerate(targets) if t.image is not None}
    rows = [{"prompt": t.prompt, "index": t.index, "seed": t.seed, "tries": t.tries} for t in targets]
    return tensors, rows


def targets_from_cache(tensors: Mapping[str, torch.Tensor], rows: Sequence[Mapping[str, Any]],
                       prefix: str) -> list[Target]:
    """Inverse of targets_to_cache."""
    return [Target(r["prompt"], int(r["index"]), int(r["seed"]), tensors.get(f"{prefix}{n}"), int(r["tries"]))
            for n, r in enumerate(rows)]


def positive_renders(ctx: AttackContext, prompts: Sequence[str], seeds: Sequence[int], tries: int,
                     budget: Budget) -> list[Target]:
    """Render prompt i on M_0 at seeds[i] + RETRY_SEED_STRIDE·j, j < tries, until the judge finds the concept.

    Why: an attack instance the unedited model does not render even unattacked tests the model's
    sampler, not the attack (UnlearnDiffAtk's target images; textual inversion's scoring seeds).
    """
    targets = [Target(p, i, int(s), None, 0) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
    for j in range(tries):
        pending = [t for t in targets if t.image is None]
        if not pending:
            break
        retry_seeds = [int(seeds[t.index]) + RETRY_SEED_STRIDE * j for t in pending]
        images = ctx.render(ctx.reference, [t.prompt for t in pending], retry_seeds, budget)
        for t, s, image, ok in zip(pending, retry_seeds, images, ctx.present(images).tolist(), strict=True):
            t.tries += 1
            t.seed = s
            if ok:
                t.image = image
    return targets


@dataclass
class AttackOutcome:
    """One attack against one model, scored on that model.

    success: per instance (n_eval = 1: one image each). pre_success: the unattacked counterpart of
    each instance on the same model (None when it does not apply). prompts/images: aligned with the
    instances. records: per-instance JSON (ids, seeds, steps used). tensors: safetensors payloads
    by file stem (e.g. a learned embedding).
    """

    success: torch.Tensor
    prompts: list[str]
    images: torch.Tensor | None
    pre_success: torch.Tensor | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Attack(Protocol):
    def prepare(self, ctx: AttackContext, budget: Budget) -> Any: ...

    def attack(self, target: Any, prepared: Any, ctx: AttackContext, budget: Budget) -> AttackOutcome: ...


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


#: Every attack: name -> a class with `prepare` and `attack`, with its config class.
ATTACKS: Registry[type] = Registry("attack", "erasurelab.attacks")
#: A registry entry; `entry.factory` is the attack class.
AttackEntry = Entry


def register_attack(name: str, config: type, summary: str = "",
                    aliases: Sequence[str] = ()) -> Callable[[type], type]:
    """Class decorator: add an attack (with `prepare` and `attack`) and its config dataclass to the registry."""
    return ATTACKS.register(name, config, tuple(aliases), summary)


def available_attacks() -> list[str]:
    """Registered attack names, third-party plugins included."""
    load_plugins(ATTACKS)
    return ATTACKS.names()


def get_attack(name: str) -> Entry[type]:
    """The registry entry for a name or alias ("ring_a_bell" = "ring-a-bell"); unknown names: one-line error."""
    return ATTACKS.get(str(name).strip().replace("_", "-"))


def attack_for_config(config: Any) -> Entry[type]:
    """The attack whose config class `config` is an instance of; one-line error for any other object."""
    return entry_for_config(ATTACKS, config)


def make_attack_config(entry: Entry[type], options: Mapping[str, Any]) -> Any:
    """The attack's config from keyword options; unknown keys or bad values -> one-line error."""
    return make_config(entry.config_cls, options, f"attack {entry.name}")


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# run_attack
# ---------------------------------------------------------------------------------------------


def resolve_spec(spec: ConceptSpec | str | Path) -> ConceptSpec:
    if isinstance(spec, ConceptSpec):
        return spec
    from erasurelab.concepts import concept

    return concept(spec)


def _architecture(pipe: Any) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((k, tuple(v.shape)) for k, v in pipe.unet.state_dict().items())


def attack_config(name: Any, options: Mapping[str, Any]) -> tuple[Entry[type], Any]:
    """(entry, config) from an attack name plus keyword options, or from a config object.

    A config object names its attack; keyword options beside it may only repeat its values
    (a differing one is a one-line error).
    """
    if isinstance(name, str):
        entry = get_attack(name)
        return entry, make_attack_config(entry, options)
    entry = attack_for_config(name)
    return entry, merge_options(name, options, f"attack {entry.name}")


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
