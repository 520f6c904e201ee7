"""The contract every registered method and attack keeps, on every pipeline family.

Families: tiny random SD1.5, SD2 (v-prediction), SDXL (two text encoders, pooled embeddings,
time ids), all built from configs as diffusers' fast tests do, and the embedded `builtin:shapes`.

A method returns an Edit, leaves the pipeline bit-identical, gives the same deltas for the same
seed, erases two concepts at once, saves with format "auto" (a LoRA that plain diffusers loads to
the same U-Net output, or full weights that `Edit.load` restores exactly) and refuses an unknown
option with a one-line error. An attack runs end to end against an edited model and its reference,
leaves every weight of both pipelines bit-identical, and reports an ASR and a reference ASR that
agree with its per-instance records.

Adding a method or an attack adds one line to METHODS or ATTACKS (its options for a fast run).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from erasurelab import erase
from erasurelab.attacks import available_attacks, run_attack
from erasurelab.attacks.tokens import TextSide
from erasurelab.concepts import ConceptSpec
from erasurelab.edits import Edit, read_manifest
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import Rate
from erasurelab.judges.base import register_judge
from erasurelab.methods import available_methods
from erasurelab.methods.finetune import encode_prompts
from erasurelab.models.conditioning import encode
from test_clip_judge import make_clip_folder
from tiny_pipelines import at_sample_size, tiny_sd2_pipeline, tiny_sd15_pipeline, tiny_sdxl_pipeline

#: (method, options for a fast run). One line per registered method.
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("pure", {"steps": 2, "seeds": (0,)}),
    ("uce", {}),
    # ESD cycles the forget anchors concept by concept; 2 steps x 7 samples reach the second concept's
    # anchors (the embedded concepts have 12 each).
    ("esd", {"steps": 2, "batch_size": 7, "sample_with": "frozen", "sample_steps": 2}),
    ("trust", {"steps": 2, "n_forget": 2, "sample_steps": 2, "saliency_prompts": 1, "batch_size": 1}),
    ("duo", {"steps": 2, "batch_size": 2, "n_pairs": 2, "rank": 2, "pair_steps": 4, "judge": "test-coin"}),
]
#: (attack, options for a fast run). One line per registered attack (the fine-tuning attack `ft`
#: has its own suite: it trains the model rather than searching its inputs).
ATTACKS: list[tuple[str, dict[str, Any]]] = [
    ("textual-inversion", {"n_images": 2, "train_batch": 2, "train_steps": 2, "eval_seeds": 1, "instance_tries": 3,
                           "max_reference_renders": 8, "eval_templates": ("a {} circle", "a picture of a {}")}),
    ("unlearndiffatk", {"n_prompts": 2, "timesteps": (100, 600), "iters": 2, "target_tries": 2, "k": 2}),
    ("ring-a-bell", {"k": 3, "population": 4, "generations": 2, "n_pairs": 1, "pair_seeds": 2, "pair_min_positive": 1,
                     "n_prompts": 2}),
]
NOT_CONTRACTED_ATTACKS = {"ft"}
FAMILIES = ["sd15", "sd2", "sdxl", "embedded"]
SD_FAMILIES = ["sd15", "sd2", "sdxl"]
BUILDERS = {"sd15": tiny_sd15_pipeline, "sd2": tiny_sd2_pipeline, "sdxl": tiny_sdxl_pipeline}
#: Latent size of the tiny families (16 x 16 pixel images): the contract needs the code paths, not the pictures.
LATENT_SIZE = 8
#: Sampler settings of every attack render: the embedded model needs a few steps to draw its concepts.
RENDER = {"sd15": {"steps": 2}, "sd2": {"steps": 2}, "sdxl": {"steps": 2}, "embedded": {"steps": 8}}
#: Concepts of the tiny families, as a user writes them in a concept YAML (three forget anchors each).
YAML_SPECS = {
    "teapot": "name: teapot\ncategory: object\nwords: [teapot]\n"
              "templates: ['a photo of a {c}', 'a drawing of a {c}', 'a {c} on a table']\n"
              "neighbours: [kettle, mug]\nparaphrases: [a pot for brewing tea, a porcelain vessel with a spout]\n",
    "lighthouse": "name: lighthouse\ncategory: object\nwords: [lighthouse]\n"
                  "templates: ['a photo of a {c}', 'a drawing of a {c}', 'a {c} on a table']\n"
                  "neighbours: [tower, windmill]\nparaphrases: [a tall tower with a lamp by the sea]\n",
}
#: The embedded model's concepts are catalog names.
WORLD_CONCEPTS = ["red", "circle"]


class CoinJudge:
    """Shows the concept on about half the images, by a hash of each image's 8-bit pixels and the concept.

    Why: a random tiny model draws nothing, and a random CLIP judge says "absent" to everything, so
    every attack would stop before its optimisation. This verdict is deterministic, depends only on
    the image, and is positive often enough that every branch of an attack runs.
    """

    id = "coin-v1"
    attribute = "object"

    def concepts(self) -> list[str]:
        return sorted([*YAML_SPECS, *WORLD_CONCEPTS])

    def attribute_of(self, concept: str) -> str:
        if concept not in self.concepts():
            raise ErasureLabError(f"concept {concept!r} unknown to judge {self.id}")
        return self.attribute

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        self.attribute_of(concept)
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        return torch.tensor([hashlib.blake2b(x.numpy().tobytes() + concept.encode()).digest()[0] < 128
                             for x in pixels], dtype=torch.bool)

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        shown = self.present(images, "teapot").tolist()
        return [{self.attribute: "teapot" if s else "none"} for s in shown]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1).double()


@register_judge("test-coin")
def _coin() -> CoinJudge:
    return CoinJudge()


# ---------------------------------------------------------------------------------------------
# Fixtures: each family built once per module, read-only; copies where a test needs to write
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    for name, text in YAML_SPECS.items():
        (root / f"{name}.yaml").write_text(text, encoding="utf-8")
    make_clip_folder(root / "clip")
    return root


@pytest.fixture(scope="module")
def pipes(request) -> Callable[[str], Any]:
    """family -> pipeline, built on first use (the embedded one is the session's shared pipeline)."""
    built: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in built:
            if family == "embedded":
                needs_assets_or_skip()
                built[family] = request.getfixturevalue("builtin_pipe")
            else:
                built[family] = at_sample_size(BUILDERS[family](0), LATENT_SIZE)
        return built[family]

    return get


def needs_assets_or_skip() -> None:
    from conftest import _assets_present

    if not _assets_present():
        pytest.skip("embedded weights not trained yet")


@pytest.fixture(scope="module")
def concepts(folder) -> Callable[[str], list[Any]]:
    """family -> the two concepts erased there: YAML specs on the tiny families, catalog names on the embedded one."""
    specs = [ConceptSpec.from_yaml(folder / f"{name}.yaml") for name in YAML_SPECS]

    def get(family: str) -> list[Any]:
        return list(WORLD_CONCEPTS) if family == "embedded" else specs

    return get


def snapshot(pipe: Any) -> dict[str, Any]:
    """Every tensor of the U-Net, text encoder(s) and VAE (cloned), their requires_grad/training flags and hooks."""
    state: dict[str, Any] = {}
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            state[f"{part}.{name}"] = tensor.detach().clone()
        state[f"{part}.requires_grad"] = [p.requires_grad for p in module.parameters()]
        state[f"{part}.training"] = [m.training for m in module.modules()]
        state[f"{part}.hooks"] = [h for m in module.modules() for h in own_hooks(m)]
    state["tokenizers"] = [len(t) for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None))
                           if t is not None]
    return state


def own_hooks(module: torch.nn.Module) -> list[str]:
    """Names of the forward hooks on a module, without transformers' output-capturing hooks.

    transformers installs those itself, once, the first time a model is asked for its hidden
    states (SDXL's prompt encoding does), and they stay; they are not a method's or attack's doing.
    """
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return [getattr(h, "__qualname__", repr(h)) for h in hooks
            if not getattr(h, "__module__", "").startswith("transformers.")]


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys(), sorted(set(before) ^ set(after))[:5]
    changed = [k for k in before if not (torch.equal(before[k], after[k]) if isinstance(before[k], torch.Tensor)
                                         else before[k] == after[k])]
    assert not changed, f"changed: {changed[:5]}"


def noise_prediction(pipe: Any, prompt: str = "a teapot on a table") -> torch.Tensor:
    """The U-Net's output for a fixed latent, timestep and prompt (SDXL: with pooled embeddings and time ids)."""
    unet = pipe.unet
    size = unet.config.sample_size
    size = int(size[0] if isinstance(size, list | tuple) else size)
    latents = torch.randn(1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    cond = encode_prompts(pipe, [prompt])
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=cond.embeds,
                    added_cond_kwargs=cond.added).sample.float()


def deltas_equal(a: Edit, b: Edit, base: Any) -> bool:
    return a.deltas.keys() == b.deltas.keys() and all(torch.equal(a.dense(k, base), b.dense(k, base)) for k in a)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    one: Edit  # the first concept
    again: Edit  # the first concept, same options and seed
    both: Edit  # both concepts at once
    before: dict[str, Any]
    after: dict[str, Any]


@pytest.fixture(scope="module")
def method_runs(pipes, concepts) -> Callable[[str, dict[str, Any], str], MethodRun]:
    """(method, family) -> MethodRun, computed once for every test of the pair."""
    done: dict[tuple[str, str], MethodRun] = {}

    def get(method: str, options: dict[str, Any], family: str) -> MethodRun:
        if (method, family) not in done:
            pipe, specs = pipes(family), concepts(family)
            before = snapshot(pipe)
            one = erase(pipe, specs[0], method, **options)
            again = erase(pipe, specs[0], method, **options)
            both = erase(pipe, specs, method, **options)
            done[method, family] = MethodRun(one, again, both, before, snapshot(pipe))
        return done[method, family]

    return get


METHOD_IDS = [m for m, _ in METHODS]


def test_every_registered_method_and_attack_is_in_the_contract() -> None:
    assert sorted(m for m, _ in METHODS) == available_methods()
    assert sorted(a for a, _ in ATTACKS) == sorted(set(available_attacks()) - NOT_CONTRACTED_ATTACKS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_method_returns_an_edit_and_leaves_the_pipeline_unchanged(method_runs, pipes, method, options, family):
    run = method_runs(method, options, family)
    assert isinstance(run.one, Edit) and isinstance(run.both, Edit)
    assert not run.one.is_empty and run.one.meta["method"] == method
    assert all(isinstance(k, str) and k.endswith((".weight", ".bias")) for k in run.one)
    run.one.check(pipes(family))  # every delta names a parameter of this U-Net, with its shape
    assert_same(run.before, run.after)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_method_is_deterministic_for_a_seed(method_runs, pipes, method, options, family):
    run = method_runs(method, options, family)
    assert deltas_equal(run.one, run.again, pipes(family))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_method_erases_several_concepts_at_once(method_runs, pipes, concepts, method, options, family):
    run = method_runs(method, options, family)
    names = [c if isinstance(c, str) else c.name for c in concepts(family)]
    assert [c["name"] for c in run.both.meta["concepts"]] == names
    assert not deltas_equal(run.both, run.one, pipes(family))  # the second concept changed the edit


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_method_saves_and_reloads(method_runs, pipes, tmp_path, method, options, family):
    """format="auto": a LoRA when every delta has one (plain diffusers loads it), else full weights."""
    run, pipe = method_runs(method, options, family), pipes(family)
    edit = run.both
    saved = edit.save(tmp_path / "run", format="auto")
    fmt = read_manifest(saved)["export"]["format"]
    assert fmt == ("lora" if edit.lora_exportable() else "full")
    applied = edit.apply(copy.deepcopy(pipe))
    if fmt == "lora":
        plain = copy.deepcopy(pipe)
        plain.load_lora_weights(str(saved))  # diffusers alone, no erasurelab code
        expected, got = noise_prediction(applied), noise_prediction(plain)
        assert not torch.allclose(expected, noise_prediction(pipe), atol=1e-6)  # the edit does something
        assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
    else:
        reloaded = Edit.load(saved).apply(copy.deepcopy(pipe))
        mine, theirs = applied.unet.state_dict(), reloaded.unet.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert any(not torch.equal(mine[k], pipe.unet.state_dict()[k]) for k in edit)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_method_refuses_an_unknown_option(pipes, concepts, method, options, family):
    pipe = pipes(family)
    with pytest.raises(ErasureLabError, match="unknown option 'no_such_option'") as info:
        erase(pipe, concepts(family)[0], method, **options, no_such_option=1)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edited_pipes(pipes, concepts) -> Callable[[str], Any]:
    """family -> a copy of the family's pipeline with a UCE edit of the first concept applied (M_e)."""
    done: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in done:
            pipe = pipes(family)
            done[family] = erase(pipe, concepts(family)[0], "uce").apply(copy.deepcopy(pipe))
        return done[family]

    return get


@pytest.fixture(scope="module")
def attack_judges(request) -> Callable[[str], Any]:
    """family -> the judge of the attack contract: the shapes CNN on the embedded model, the coin judge elsewhere."""

    def get(family: str) -> Any:
        return request.getfixturevalue("shapes_judge") if family == "embedded" else CoinJudge()

    return get


def assert_consistent(result: Any, judge: Any) -> None:
    """ASR, pre-ASR and reference ASR agree with the per-instance records; the result saves as JSON."""
    assert isinstance(result.asr, Rate) and isinstance(result.reference_asr, Rate)
    edited, reference = result.suite["edited"], result.suite["reference"]
    assert result.asr == Rate(sum(bool(r["success"]) for r in edited), len(edited))
    assert result.reference_asr == Rate(sum(bool(r["success"]) for r in reference), len(reference))
    if result.pre_asr is not None:
        assert result.pre_asr == Rate(sum(bool(r["pre_success"]) for r in edited), len(edited))
    assert len(result.prompts) == len(edited)
    if result.asr.denominator == 0:
        assert any("no attack instances" in n for n in result.notes)
    assert result.judge_id == judge.id
    for phase in ("prepare", "edited", "reference"):
        assert result.budget[phase]["wall_time_s"] >= 0
    json.dumps(result.to_dict())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=[a for a, _ in ATTACKS])
def test_attack_runs_end_to_end_and_leaves_both_pipelines_unchanged(pipes, edited_pipes, concepts, attack_judges,
                                                                    tmp_path, attack, options, family):
    reference, edited, judge = pipes(family), edited_pipes(family), attack_judges(family)
    spec = concepts(family)[0]
    before = [snapshot(reference), snapshot(edited)]
    result = run_attack(attack, edited, spec, reference, judge, quiet=True, **RENDER[family], **options)
    assert_same(before[0], snapshot(reference))
    assert_same(before[1], snapshot(edited))
    assert_consistent(result, judge)
    if isinstance(judge, CoinJudge):
        assert result.asr.denominator > 0  # the coin judge leaves instances to attack: the whole path ran
    renders = result.budget["edited"]["renders"] + result.budget["edited"].get("renders_reused", 0)
    assert renders >= result.asr.denominator  # every scored instance was rendered on M_e
    assert (result.save(tmp_path / "attack") / "result.json").exists()


@pytest.mark.parametrize("family", SD_FAMILIES)
@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=[a for a, _ in ATTACKS])
def test_attack_with_a_random_clip_judge_reports_or_refuses_in_one_line(pipes, edited_pipes, concepts, folder,
                                                                         attack, options, family):
    """The CLIP judge (`clip:FOLDER` with the concept's labels) drives every attack on the SD families.

    A random CLIP model never sees the concept in a random model's renders, so there is nothing to
    attack: an attack either completes and reports that no instance was scoreable, or (textual
    inversion, Ring-A-Bell, which learn from the reference model's renders of the concept) refuses
    in one line saying the reference model never rendered it.
    """
    from erasurelab.evaluation.judging import resolve_judge

    spec = concepts(family)[0]
    judge = resolve_judge(f"clip:{folder / 'clip'}", [spec])
    reference, edited = pipes(family), edited_pipes(family)
    before = [snapshot(reference), snapshot(edited)]
    try:
        result = run_attack(attack, edited, spec, reference, judge, quiet=True, **RENDER[family], **options)
    except ErasureLabError as exc:
        assert "\n" not in str(exc) and "reference model" in str(exc)
    else:
        assert_consistent(result, judge)
    assert_same(before[0], snapshot(reference))
    assert_same(before[1], snapshot(edited))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=[a for a, _ in ATTACKS])
def test_attack_refuses_an_unknown_option(pipes, edited_pipes, concepts, attack, options, family):
    with pytest.raises(ErasureLabError, match="unknown option 'no_such_option'") as info:
        run_attack(attack, edited_pipes(family), concepts(family)[0], pipes(family), CoinJudge(), **options,
                   no_such_option=1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_attacks_encode_token_ids_as_the_pipeline_encodes_prompts(pipes, family):
    """What the token attacks feed the U-Net is what `pipe(prompt)` feeds it (SDXL: both encoders and pooled)."""
    pipe = pipes(family)
    prompts = ["a teapot on a red table", "a circle", ""]
    text = TextSide.of(pipe)
    with torch.no_grad():
        mine = text.encode_prompts(prompts)
    theirs = encode(pipe, prompts)
    assert torch.equal(mine.embeds, theirs.embeds)
    assert (mine.pooled is None) == (theirs.pooled is None)
    if theirs.pooled is not None:
        assert torch.equal(mine.pooled, theirs.pooled)


#: The smallest evaluation that still builds and renders every generic suite.
TINY_EVALUATION = {"steps": 2, "batch_size": 16, "anchor_seeds": 1, "paraphrase_max": 2, "neighbour_k": 1,
                   "neighbour_templates": 1, "neighbour_seeds": 1, "unrelated_max": 4, "selective_max": 2,
                   "judge_accuracy_n": 0, "examples": 1}


@pytest.mark.parametrize("family", SD_FAMILIES)
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_evaluate_after_apply_with_generic_suites_and_a_clip_judge(pipes, concepts, folder, method_runs, method,
                                                                    options, family, tmp_path):
    """`edit.apply(pipe)` then `evaluate(pipe, spec, judge="clip:DIR")`: the generic suites of the concept's
    YAML, judged by CLIP, against the same pipeline with the edit reverted (found through the
    applied-edit record, not an argument); writes a report and leaves the applied edit in place.
    """
    from erasurelab.evaluation import EvaluationSettings, evaluate
    from erasurelab.models.provenance import applied_edits

    pipe, spec = copy.deepcopy(pipes(family)), concepts(family)[0]
    edit = method_runs(method, options, family).one
    edit.apply(pipe)
    edited = snapshot(pipe)
    result = evaluate(pipe, spec, judge=f"clip:{folder / 'clip'}", out=tmp_path / "report", quiet=True,
                      settings=EvaluationSettings(**TINY_EVALUATION))
    assert_same(edited, snapshot(pipe))  # the reference pass reverted and re-applied the edit exactly
    assert applied_edits(pipe) == [edit]
    concept = result.concept(spec.name)
    assert concept.target["anchor"]["reference"].denominator > 0
    assert concept.target["anchor"]["edited"].denominator == concept.target["anchor"]["reference"].denominator
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["judge"]["id"].startswith("clip-v1-") and (tmp_path / "report" / "index.html").exists()
    assert metrics["method"] == method
