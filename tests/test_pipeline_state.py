"""No state on diffusers objects: provenance and applied edits live in erasurelab.models.provenance.

Why these checks: a pipeline is the user's object. Loading, erasing, applying, evaluating and
reverting must leave the attribute set of the pipeline and of its U-Net as diffusers made it, and
`evaluate(pipe, spec)` must find an edit applied with `edit.apply(pipe)` on any pipeline, including
one erasurelab never loaded.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from erasurelab.api import erase
from erasurelab.edits import Edit, LowRank
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import evaluate
from erasurelab.evaluation.rendering import model_hash
from erasurelab.evaluation.types import EvaluationSettings
from erasurelab.models import generate, load_pipeline, loading
from erasurelab.models.provenance import (
    UNKNOWN_SOURCE,
    applied_edits,
    base_source_of,
    current_edit,
    record_source,
    source_of,
)
from erasurelab.models.sampling import progress_bar_disabled
from erasurelab.registry import Registry
from stub_judge import StubJudge
from tiny_bert_pipeline import tiny_bert_pipeline

from conftest import needs_assets

torch.set_num_threads(1)

SMALL = EvaluationSettings(steps=2, anchor_seeds=2, paraphrase_max=8, neighbour_k=3, neighbour_templates=2,
                           neighbour_seeds=2, min_neighbour_rate=0.0, unrelated_max=8, selective_max=6,
                           judge_accuracy_n=40)
KEY = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _edit(seed: int = 7, method: str = "test-edit") -> Edit:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(64, 2, generator=g, dtype=torch.float64) * 3
    A = torch.randn(2, 32, generator=g, dtype=torch.float64)
    return Edit({KEY: LowRank(B, A)}, {"method": method})


def _state(pipe) -> dict[str, object]:
    """Attribute names of the pipeline, of its U-Net and of every U-Net submodule (what erasurelab must not change)."""
    return {"pipeline": sorted(vars(pipe)), "unet": sorted(vars(pipe.unet)),
            "modules": {name: sorted(vars(m)) for name, m in pipe.unet.named_modules()},
            "progress_bar": dict(getattr(pipe, "_progress_bar_config", {"<unset>": True}))}


def _warm_up(pipe) -> None:
    """One plain diffusers call: the pipeline records its own call settings (guidance, progress bar) as attributes."""
    with torch.no_grad():
        pipe(prompt="a red circle", num_inference_steps=1, output_type="pt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny diffusers folder and a run saved on it (LoRA + manifest naming the folder as its base)."""
    root = tmp_path_factory.mktemp("state")
    base = tiny_bert_pipeline(0)
    base.save_pretrained(root / "base", safe_serialization=True)
    record_source(base, str(root / "base"))
    erase(base, "red", "uce").save(root / "run", format="lora")
    return root


# -- load ---------------------------------------------------------------------------------------------------------

def test_load_pipeline_adds_no_attribute_to_what_diffusers_builds(folders) -> None:
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(str(folders / "base"), local_files_only=True)
    loaded = load_pipeline(folders / "base")
    assert _state(loaded) == _state(plain)
    assert source_of(loaded) == str(folders / "base") and source_of(plain) is None
    run = load_pipeline(folders / "run")  # the base with the run's edit applied
    assert _state(run) == _state(plain)
    assert source_of(run) == str(folders / "run") and base_source_of(run) == str(folders / "base")
    assert [e.meta["method"] for e in applied_edits(run)] == ["uce"]


def test_named_model_sources_resolve_through_the_registry(monkeypatch) -> None:
    sources = Registry("model source", entry_point_group="erasurelab.test_model_sources")
    monkeypatch.setattr(loading, "MODEL_SOURCES", sources)
    calls = []

    def tiny(argument, dtype=None):
        calls.append(argument)
        return tiny_bert_pipeline(int(argument))

    loading.register_model_source("tiny", tiny)
    pipe = loading.load_pipeline("tiny:3")
    assert calls == ["3"] and source_of(pipe) == "tiny:3"
    with pytest.raises(ErasureLabError, match="model not found: nosuch:3"):
        loading.load_pipeline("nosuch:3")


def test_builtin_source_is_registered_and_unknown_names_are_one_line_errors() -> None:
    assert "builtin:shapes" in loading.MODEL_SOURCES
    with pytest.raises(ErasureLabError, match="did you mean: shapes") as info:
        load_pipeline("builtin:shape")
    assert "\n" not in str(info.value)


# -- apply / revert and evaluate ---------------------------------------------------------------------------------

def test_apply_pushes_and_revert_pops() -> None:
    pipe, other = tiny_bert_pipeline(0), tiny_bert_pipeline(0)
    first, second = _edit(1, "first"), _edit(2, "second")
    assert applied_edits(pipe) == [] and current_edit(pipe) is None
    first.apply(pipe)
    second.apply(pipe)
    assert applied_edits(pipe) == [first, second] and current_edit(pipe) is second
    assert applied_edits(other) == []  # keyed by this pipeline's U-Net only
    assert current_edit(pipe.unet) is second  # the U-Net itself names the same record
    second.revert(pipe)
    assert applied_edits(pipe) == [first] and current_edit(pipe) is first
    first.revert(pipe)
    assert applied_edits(pipe) == [] and current_edit(pipe) is None
    with pytest.raises(ErasureLabError, match="not applied"):
        first.revert(pipe)
    assert applied_edits(pipe) == []


def test_a_failed_apply_records_nothing() -> None:
    pipe = tiny_bert_pipeline(0)
    misfit = Edit({"no.such.weight": LowRank(torch.ones(2, 1), torch.ones(1, 2))}, {"method": "misfit"})
    with pytest.raises(ErasureLabError, match="does not fit"):
        misfit.apply(pipe)
    assert applied_edits(pipe) == []


def test_evaluate_finds_the_edit_applied_to_a_plain_diffusers_pipeline() -> None:
    pipe = tiny_bert_pipeline(0)  # built by diffusers directly: erasurelab never saw where it came from
    edit = _edit()
    edit.apply(pipe)
    _warm_up(pipe)
    before, edited_hash = _state(pipe), model_hash(pipe)
    result = evaluate(pipe, "red", judge=StubJudge(), settings=SMALL)
    assert result.method == "test-edit"
    assert UNKNOWN_SOURCE in result.model and "edit reverted" in result.reference
    assert result.efficiency["tensors_changed"] == 1
    assert result.reference_hash == model_hash(tiny_bert_pipeline(0))  # the unedited weights
    assert model_hash(pipe) == edited_hash and current_edit(pipe) is edit  # edit re-applied
    assert _state(pipe) == before


def test_evaluate_reverts_every_applied_edit_for_the_reference() -> None:
    pipe = tiny_bert_pipeline(0)
    first, second = _edit(1, "first"), _edit(2, "second")
    first.apply(pipe)
    second.apply(pipe)
    edited_hash = model_hash(pipe)
    result = evaluate(pipe, "red", judge=StubJudge(), settings=SMALL)
    assert result.method == "second" and "edits reverted" in result.reference
    assert result.reference_hash == model_hash(tiny_bert_pipeline(0))
    assert model_hash(pipe) == edited_hash and applied_edits(pipe) == [first, second]


def test_without_an_applied_edit_there_is_no_default_reference() -> None:
    pipe = tiny_bert_pipeline(0)
    edit = _edit()
    edit.apply(pipe)
    edit.revert(pipe)
    with pytest.raises(ErasureLabError, match="not an erasure run"):
        evaluate(pipe, "red", judge=StubJudge(), settings=SMALL)


def test_the_registry_does_not_keep_a_pipeline_alive() -> None:
    pipe = tiny_bert_pipeline(0)
    record_source(pipe, "somewhere")
    _edit().apply(pipe)
    unet = weakref.ref(pipe.unet)
    del pipe
    gc.collect()
    assert unet() is None


# -- progress bar -------------------------------------------------------------------------------------------------

def test_progress_bar_is_silenced_per_call_and_restored(folders) -> None:
    pipe = load_pipeline(folders / "base")
    assert not hasattr(pipe, "_progress_bar_config")  # load_pipeline leaves diffusers' default
    with progress_bar_disabled(pipe):
        assert pipe._progress_bar_config == {"disable": True}
    assert not hasattr(pipe, "_progress_bar_config")
    pipe.set_progress_bar_config(desc="mine", leave=False)
    generate(pipe, ["a red circle"] * 3, [0, 1, 2], steps=1, batch_size=2)
    assert pipe._progress_bar_config == {"desc": "mine", "leave": False}


# -- the embedded model end to end --------------------------------------------------------------------------------

@needs_assets
def test_embedded_model_keeps_its_attributes_through_erase_apply_evaluate_revert() -> None:
    pipe = load_pipeline("builtin:shapes")
    _warm_up(pipe)
    before = _state(pipe)
    edit = erase(pipe, "red", "uce")
    assert _state(pipe) == before
    edit.apply(pipe)
    result = evaluate(pipe, "red", judge=StubJudge(), settings=SMALL)
    assert result.method == "uce" and result.model == "builtin:shapes"
    assert result.reference == "builtin:shapes (edit reverted)"
    assert current_edit(pipe) is edit
    edit.revert(pipe)
    assert _state(pipe) == before and applied_edits(pipe) == []
