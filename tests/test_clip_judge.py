"""The zero-shot CLIP judge on a tiny random CLIP folder made offline."""

from __future__ import annotations

import json

import pytest
import torch

from erasurelab.concepts import ConceptSpec
from erasurelab.errors import ErasureLabError
from erasurelab.judges.clip import NULL_LABEL, ClipJudge, label_groups
from tiny_pipelines import tiny_clip_tokenizer


def make_clip_folder(folder, seed: int = 0):
    """A tiny random-weight CLIPModel + tokenizer saved as safetensors (what a user's CLIP folder holds)."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_attention_heads": 4, "num_hidden_layers": 2},
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return make_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def specs():
    return [ConceptSpec.from_words("snoopy", "character", ["Snoopy"], ["Garfield"], guide="a dog"),
            ConceptSpec.from_words("van_gogh", "style", ["Van Gogh"], ["Monet", "Picasso"], guide="")]


def test_label_groups_come_from_the_specs(specs):
    groups = label_groups(specs)
    assert [g.attribute for g in groups] == ["character", "style"]
    assert groups[0].labels == ("snoopy", "Garfield", "a dog")
    assert groups[0].texts == ("Snoopy", "Garfield", "a dog")
    assert groups[1].labels == ("van_gogh", "Monet", "Picasso", NULL_LABEL)


def test_present_and_predict_agree_on_two_label_groups(clip_folder):
    spec = ConceptSpec.from_words("cat", "object", ["cat"], [], guide="dog")
    judge = ClipJudge.for_specs(clip_folder, [spec], threshold=0.5)
    images = torch.rand(12, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    present = judge.present(images, "cat")
    predicted = [p["object"] == "cat" for p in judge.predict(images)]
    assert present.dtype == torch.bool and present.shape == (12,)
    assert present.tolist() == predicted  # with two labels, share >= 1/2 is exactly "argmax"
    assert judge.features(images).shape == (12, 16)
    assert torch.allclose(judge.features(images).norm(dim=-1), torch.ones(12), atol=1e-5)


def test_threshold_and_margin_gate_presence(clip_folder, specs):
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loose = ClipJudge.for_specs(clip_folder, specs, threshold=1e-6, margin=-1e9)
    strict = ClipJudge.for_specs(clip_folder, specs, threshold=1e-6, margin=1e9)
    assert loose.present(images, "snoopy").all()
    assert not strict.present(images, "snoopy").any()


def test_id_changes_with_labels_threshold_and_weights(tmp_path, clip_folder, specs):
    base = ClipJudge.for_specs(clip_folder, specs)
    assert ClipJudge.for_specs(clip_folder, specs).id == base.id
    assert ClipJudge.for_specs(clip_folder, specs, threshold=0.6).id != base.id
    assert base.with_specs(specs[:1]).id != base.id
    other = make_clip_folder(tmp_path / "other", seed=1)
    assert ClipJudge.for_specs(other, specs).id != base.id
    assert base.settings()["groups"]["character"] == {"snoopy": "Snoopy", "Garfield": "Garfield", "a dog": "a dog"}


def test_bad_input_gives_one_line_errors(tmp_path, clip_folder, specs):
    judge = ClipJudge.for_specs(clip_folder, specs)
    cases = []
    with pytest.raises(ErasureLabError) as info:
        judge.present(torch.rand(1, 3, 32, 32), "woody")
    cases.append(str(info.value))
    with pytest.raises(ErasureLabError) as info:
        ClipJudge(tmp_path / "missing")
    cases.append(str(info.value))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ErasureLabError) as info:
        ClipJudge(tmp_path / "bert")
    cases.append(str(info.value))
    with pytest.raises(ErasureLabError) as info:
        judge.features(torch.rand(2, 32, 32))
    cases.append(str(info.value))
    assert "woody" in cases[0] and "not found" in cases[1] and "not a CLIP" in cases[2]
    assert all("\n" not in c for c in cases)


def test_pickled_weights_are_refused(tmp_path, clip_folder):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((clip_folder / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ErasureLabError, match="safetensors"):
        ClipJudge(folder)


def test_clip_loads_through_the_registry_as_clip_colon_folder(clip_folder, specs):
    from erasurelab.judges import available_judges, load_judge
    from erasurelab.judges.base import is_judge_name

    assert "clip:ARGUMENT" in available_judges()
    assert is_judge_name(f"clip:{clip_folder}") and not is_judge_name("clip:") and not is_judge_name("clap:x")
    judge = load_judge(f"clip:{clip_folder}").with_specs(specs)
    assert judge.concepts() == sorted(["snoopy", "Garfield", "a dog", "van_gogh", "Monet", "Picasso", NULL_LABEL])
    with pytest.raises(ErasureLabError, match="needs an argument"):
        load_judge("clip:")


def test_one_clip_pass_per_batch_whatever_the_number_of_concepts(clip_folder, specs, monkeypatch):
    judge = ClipJudge.for_specs(clip_folder, specs)
    calls = []
    original = judge._features
    monkeypatch.setattr(judge, "_features", lambda images: calls.append(1) or original(images))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    first = [judge.present(images, c).tolist() for c in ("snoopy", "Garfield", "van_gogh")]
    assert len(calls) == 1
    assert [judge.present(images.clone(), c).tolist() for c in ("snoopy", "Garfield", "van_gogh")] == first
    judge.present(images + 0.01, "snoopy")
    assert len(calls) == 2
