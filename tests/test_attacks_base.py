"""Attack registry, config validation, token plumbing, run_attack's contract and weight safety (attacks.md §0)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from attack_stubs import ScriptedJudge, always, assert_unchanged, private_cache, snapshot  # noqa: F401  (autouse fixture)
from erasurelab.attacks import available_attacks, get_attack, make_attack_config, run_attack
from erasurelab.attacks.ring_a_bell import clear_suite_cache
from erasurelab.attacks.tokens import encode_ids, frame, special_ids, tokenize, vocabulary_ids
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.types import AttackResult
from erasurelab.models.conditioning import encode
from tiny_bert_pipeline import tiny_bert_pipeline
from tiny_pipelines import tiny_sd15_pipeline, tiny_sdxl_pipeline

torch.set_num_threads(1)

TINY = {
    "textual-inversion": dict(n_images=2, train_batch=2, train_steps=2, eval_templates=("a picture of a {}",),
                              eval_seeds=2),
    "unlearndiffatk": dict(n_prompts=2, timesteps=(100, 600), iters=2, target_tries=1),
    "ring-a-bell": dict(k=3, population=6, generations=3, n_pairs=2, n_prompts=2),
}
#: Judge calls that look at M_0's data in `prepare` (reference images / targets; pairs + seed prompts).
PREPARE_CALLS = {"textual-inversion": 2, "unlearndiffatk": 1, "ring-a-bell": 2}  # judge calls on M_0 data


@pytest.fixture(scope="module")
def pipes():
    return tiny_bert_pipeline(0), tiny_bert_pipeline(1)


# --- registry ----------------------------------------------------------------------------------


def test_registry_lists_the_four_attacks() -> None:
    assert available_attacks() == ["ft", "ring-a-bell", "textual-inversion", "unlearndiffatk"]
    assert get_attack("Ring_A_Bell").name == "ring-a-bell"
    assert get_attack("ti").name == "textual-inversion"
    assert get_attack("concept-inversion").name == "textual-inversion"


def test_unknown_attack_is_one_line_with_close_match() -> None:
    with pytest.raises(ErasureLabError) as info:
        get_attack("ring-a-bel")
    message = str(info.value)
    assert "\n" not in message and "did you mean: ring-a-bell" in message and "available:" in message


@pytest.mark.parametrize("options, fragment", [
    ({"populaton": 8}, "did you mean: population"),
    ({"population": 1}, "population must be at least 2"),
    ({"mutation": 1.5}, "mutation must be in [0, 1]"),
    ({"k": 0}, "k must be a positive integer"),
    ({"pair_min_positive": 6}, "exceeds pair_seeds"),
])
def test_ring_a_bell_config_errors(options: dict, fragment: str) -> None:
    with pytest.raises(ErasureLabError) as info:
        make_attack_config(get_attack("ring-a-bell"), options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, options, fragment", [
    ("unlearndiffatk", {"timesteps": (500, 100)}, "ascending"),
    ("unlearndiffatk", {"timesteps": ()}, "non-empty"),
    ("unlearndiffatk", {"iters": 2.5}, "iters must be a non-negative integer"),
    ("ring-a-bell", {"generations": -1}, "generations must be a non-negative integer"),
    ("textual-inversion", {"templates": ("a photo of",)}, "exactly one '{}'"),
    ("textual-inversion", {"placeholder": "two words"}, "one word"),
    ("textual-inversion", {"lr": -1.0}, "lr must be a non-negative"),
    ("textual-inversion", {"batch_size": 0}, "batch_size must be a positive"),
])
def test_config_validation(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(ErasureLabError) as info:
        make_attack_config(get_attack(name), options)
    assert fragment in str(info.value)


def test_lists_become_tuples() -> None:
    config = make_attack_config(get_attack("unlearndiffatk"), {"timesteps": [10, 20]})
    assert config.timesteps == (10, 20)


def test_run_attack_rejects_mismatched_models_and_sdxl_tokenizers_that_disagree(pipes) -> None:
    m0, _ = pipes
    with pytest.raises(ErasureLabError, match="differ in architecture"):
        run_attack("ring-a-bell", tiny_sd15_pipeline(0), "red", m0, always(True))
    sdxl = tiny_sdxl_pipeline(0)  # attacks run on SDXL (test_contract.py) when both tokenizers mean the same ids
    sdxl.tokenizer_2.add_tokens(["<only-in-the-second>"])
    with pytest.raises(ErasureLabError, match="share one vocabulary") as info:
        run_attack("unlearndiffatk", sdxl, "red", sdxl, always(True))
    assert "\n" not in str(info.value)


def test_unknown_option_fails_before_any_work(pipes) -> None:
    m0, me = pipes
    judge = always(True)
    with pytest.raises(ErasureLabError, match="unknown option 'itres'"):
        run_attack("unlearndiffatk", me, "red", m0, judge, itres=3)
    assert judge.calls == 0


# --- tokens -----------------------------------------------------------------------------------


def test_vocabulary_excludes_bert_specials_and_unused_rows() -> None:
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused12]", "red", "circle"]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    encoder = tiny_bert_pipeline(0).text_encoder
    assert special_ids(tokenizer) == {0, 1, 2, 3, 4, 5, 6}
    assert vocabulary_ids(tokenizer, encoder).tolist() == [7, 8]


def test_vocabulary_excludes_clip_start_end_and_rows_without_tokens() -> None:
    pipe = tiny_sd15_pipeline(0)
    vocab = vocabulary_ids(pipe.tokenizer, pipe.text_encoder)
    start, end = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
    assert start not in vocab.tolist() and end not in vocab.tolist()
    assert int(vocab.max()) < len(pipe.tokenizer)  # encoder rows beyond the tokenizer are not choosable
    assert len(vocab) == len(pipe.tokenizer) - 2


@pytest.mark.parametrize("builder", [tiny_bert_pipeline, tiny_sd15_pipeline])
def test_encode_ids_matches_the_pipeline(builder) -> None:
    pipe = builder(0)
    prompts = ["a photo of red", "a crimson star on a dark background", ""]
    with torch.no_grad():
        mine = encode_ids(pipe.text_encoder, *tokenize(pipe.tokenizer, prompts))
    assert torch.equal(mine, encode(pipe, prompts).embeds)


def test_frame_builds_start_words_end_padding() -> None:
    pipe = tiny_bert_pipeline(0)
    fr = frame(pipe.tokenizer)
    ids, lengths = fr.build([[10, 11]])
    reference = pipe.tokenizer(pipe.tokenizer.decode([10, 11]), padding="max_length",
                               max_length=fr.length).input_ids
    assert ids[0].tolist() == reference and lengths.tolist() == [4]
    with pytest.raises(ErasureLabError, match="do not fit"):
        fr.build([[10] * fr.length])


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_attacks_never_change_model_weights(pipes, name: str) -> None:
    m0, me = pipes
    before = snapshot(m0, me)
    # Positive on M_0's data, negative afterwards: every attack optimises and renders.
    judge = ScriptedJudge([True] * PREPARE_CALLS[name], default=False)
    result = run_attack(name, me, "red", m0, judge, steps=2, **TINY[name])
    assert_unchanged(before, [m0, me])
    assert isinstance(result, AttackResult)
    assert result.budget["renders"] > 0


def test_result_counts_and_reference_note(pipes) -> None:
    m0, _ = pipes
    me = tiny_bert_pipeline(0)  # same text encoder as M_0, edited U-Net: Ring-A-Bell's suite is reused
    with torch.no_grad():
        me.unet.conv_in.weight.add_(0.1)
    clear_suite_cache()
    result = run_attack("ring-a-bell", me, "red", m0, ScriptedJudge([True, True], default=False), steps=2,
                        **TINY["ring-a-bell"])
    assert result.asr.numerator == 0 and result.asr.denominator == 2
    assert result.reference_asr is not None and result.reference_asr.numerator == 0
    assert result.reference_ok is False and "fails on the unedited model" in result.notes[0]
    assert result.budget["edited"]["steps"] == 2 * 3  # generations per seed prompt
    assert result.budget["reference"]["steps"] == 0  # same text encoder: the suite is reused
    assert result.suite["reference_info"]["suite_reused"] is True
    assert result.suite["edited_info"]["suite_reused"] is False
    assert result.prompts == [r["prompt"] for r in result.suite["reference"]]


def test_unedited_model_as_both_runs_once_when_the_reference_run_is_the_same(pipes) -> None:
    m0, _ = pipes
    judge = always(True)
    result = run_attack("textual-inversion", m0, "red", m0, judge, steps=2, **TINY["textual-inversion"])
    assert result.reference_asr == result.asr and result.reference_ok is True
    assert judge.calls == 4  # D_ref and instances on M_0, then attacked + unattacked renders; not repeated


def test_prepare_is_cached_on_disk_and_reported_in_the_budget(pipes) -> None:
    m0, me = pipes
    first_judge, second_judge = always(True), always(True)
    options = dict(steps=2, check_reference=False, **TINY["textual-inversion"])
    first = run_attack("textual-inversion", me, "red", m0, first_judge, **options)
    second = run_attack("textual-inversion", me, "red", m0, second_judge, **options)
    assert first.budget["cached"] == [] and first.budget["prepare"]["renders"] > 0
    assert second.budget["cached"] == ["prepare", "edited:token"]
    assert second.budget["prepare"]["renders"] == 0 and second.budget["edited"]["unet_backward"] == 0
    assert second_judge.calls == first_judge.calls - 2  # the two judge calls of `prepare` are not repeated
    assert second.suite["edited"] == first.suite["edited"]
    assert torch.equal(second.tensors["learned_embeds"]["<c*>"], first.tensors["learned_embeds"]["<c*>"])


def test_save_writes_json_tensors_and_grid(pipes, tmp_path) -> None:
    m0, me = pipes
    result = run_attack("textual-inversion", me, "red", m0, always(True), steps=2, **TINY["textual-inversion"])
    folder = result.save(tmp_path / "ti")
    data = json.loads((folder / "result.json").read_text())
    assert data["name"] == "textual-inversion" and data["asr"]["denominator"] == 2
    assert data["judge"] == "stub-scripted" and data["config"]["train_steps"] == 2
    embeds = load_file(str(folder / "learned_embeds.safetensors"))
    assert list(embeds) == ["<c*>"] and embeds["<c*>"].shape == (32,)
    assert (folder / "reference_learned_embeds.safetensors").exists()
    assert (folder / "images.png").exists()
    with pytest.raises(ErasureLabError, match="exists"):
        result.save(folder)
    assert not (tmp_path / "ti.tmp").exists()
