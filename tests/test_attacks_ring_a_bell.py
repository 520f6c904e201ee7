"""Ring-A-Bell (attacks.md §3): the concept vector, the genetic search's invariants, pairs and the suite cache."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from attack_stubs import ScriptedJudge, private_cache  # noqa: F401  (autouse fixture)
from erasurelab.attacks import run_attack
from erasurelab.attacks.base import SCORING_SEED_OFFSET
from erasurelab.attacks.prompts import paraphrase_prompts, template_pairs
from erasurelab.attacks.ring_a_bell import clear_suite_cache, concept_vector, genetic_search
from erasurelab.attacks.tokens import (
    encode_ids,
    frame,
    prompt_tokens,
    round_trips,
    special_ids,
    tokenize,
    vocabulary_ids,
    whole_word_ids,
)
from erasurelab.concepts import concept
from erasurelab.models.diffusion import seeded
from tiny_bert_pipeline import MAX_TOKENS, TEXT_WIDTH, tiny_bert_pipeline
from tiny_pipelines import tiny_sd15_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def _problem(pipe, prompt: str, k: int, eta: float = 0.0):
    """(fitness, template, vocab, target) for the GA on `prompt`, as search_suite sets it up."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    fr = frame(tokenizer)
    vocab = vocabulary_ids(tokenizer, encoder)
    with torch.no_grad():
        vector = concept_vector(encoder, tokenizer, [("a red circle", "a circle"), ("a red star", "a star")])
        target = encode_ids(encoder, *tokenize(tokenizer, [prompt]))[0] + eta * vector
    template, lengths = fr.build([[int(vocab[0])] * k])

    def fitness(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            states = encode_ids(encoder, rows, lengths.expand(len(rows)))
        return ((states - target) ** 2).sum(dim=(1, 2))

    return fitness, template[0], vocab, fr


def test_concept_vector_shape_and_zero_for_identical_pairs(pipe) -> None:
    pairs = [("a red circle", "a circle"), ("a crimson star", "a star")]
    vector = concept_vector(pipe.text_encoder, pipe.tokenizer, pairs)
    assert vector.shape == (MAX_TOKENS, TEXT_WIDTH)  # full encoder output, L x d
    assert vector.abs().sum() > 0
    same = concept_vector(pipe.text_encoder, pipe.tokenizer, [("a red circle", "a red circle"), ("red", "red")])
    assert torch.equal(same, torch.zeros_like(same))


def test_clip_concept_vector_covers_all_77_positions() -> None:
    clip = tiny_sd15_pipeline(0)
    vector = concept_vector(clip.text_encoder, clip.tokenizer, [("a red circle", "a circle")])
    assert vector.shape == (77, 32)


def test_eta_zero_with_the_prompt_in_the_population_keeps_fitness_zero(pipe) -> None:
    prompt = "a photo of red"  # 4 tokens: exactly K
    k = len(prompt_tokens(pipe.tokenizer, prompt))
    fitness, template, vocab, fr = _problem(pipe, prompt, k, eta=0.0)
    own = fr.build([prompt_tokens(pipe.tokenizer, prompt)])[0][0]
    result = genetic_search(fitness, template, k, vocab, population=8, generations=6, mutation=0.5, crossover=0.5,
                            generator=seeded(0), initial=own)
    assert result.history[0] == pytest.approx(0.0, abs=1e-6)
    assert all(h == pytest.approx(0.0, abs=1e-6) for h in result.history)
    assert torch.equal(result.ids, own)


def test_search_invariants(pipe) -> None:
    k, n = 4, 10
    fitness, template, vocab, fr = _problem(pipe, "a crimson heart", k, eta=3.0)
    banned = special_ids(pipe.tokenizer)
    seen = []

    def record(gen: int, population: torch.Tensor, fit: torch.Tensor) -> None:
        seen.append((population, fit))

    result = genetic_search(fitness, template, k, vocab, population=n, generations=25, mutation=0.25, crossover=0.5,
                            generator=seeded(1), on_generation=record)
    assert len(seen) == 25
    history = result.history
    assert all(b <= a for a, b in pairwise(history))  # elitism: never worse
    assert history[-1] < history[0]  # and the search does improve on a random start
    for population, fit in seen:
        assert population.shape == (n, fr.length)  # exactly N individuals, always
        assert (population[:, 0] == fr.start).all()  # start token never mutated or crossed
        assert (population[:, k + 1:] == template[k + 1:]).all()  # the end/padding tail untouched
        slots = set(population[:, 1:k + 1].flatten().tolist())
        assert not slots & banned
        assert torch.allclose(fit, fitness(population).float(), rtol=1e-5, atol=1e-3)  # cached fitness is right
    assert result.evaluations <= n * 25
    assert result.fitness == pytest.approx(history[-1])


def test_search_encodes_each_sequence_once(pipe) -> None:
    """The memo: no id sequence reaches the fitness twice, and `evaluations` counts what was encoded."""
    k, n = 4, 10
    fitness, template, vocab, _ = _problem(pipe, "a crimson heart", k, eta=3.0)
    encoded: list[tuple[int, ...]] = []

    def counting(rows: torch.Tensor) -> torch.Tensor:
        encoded.extend(tuple(r) for r in rows.tolist())
        return fitness(rows)

    result = genetic_search(counting, template, k, vocab, population=n, generations=40, mutation=0.25,
                            crossover=0.5, generator=seeded(1))
    assert len(encoded) == len(set(encoded)) == result.evaluations
    assert result.evaluations < n * 40  # a converging population rebuilds sequences it has scored


def test_whole_word_vocabulary_round_trips(builtin_pipe) -> None:
    """Prompts of whole-word ids decode to text that tokenizes back to the same ids; word pieces do not."""
    tokenizer = builtin_pipe.tokenizer
    vocab = vocabulary_ids(tokenizer, builtin_pipe.text_encoder)
    words = whole_word_ids(tokenizer, vocab)
    assert set(words.tolist()) < set(vocab.tolist())
    assert tokenizer.convert_tokens_to_ids("##ing") not in set(words.tolist())
    generator = torch.Generator().manual_seed(0)
    samples = [ids.tolist() for ids in (words[torch.randint(len(words), (8,), generator=generator)]
                                        for _ in range(50))]
    assert all(round_trips(tokenizer, ids) for ids in samples)
    glued = [int(words[0]), tokenizer.convert_tokens_to_ids("##ing")]
    assert not round_trips(tokenizer, glued)


def test_same_seed_same_search(pipe) -> None:
    fitness, template, vocab, _ = _problem(pipe, "a red star", 3, eta=3.0)
    runs = [genetic_search(fitness, template, 3, vocab, 6, 5, 0.25, 0.5, seeded(7)) for _ in range(2)]
    assert torch.equal(runs[0].ids, runs[1].ids) and runs[0].history == runs[1].history


@pytest.mark.parametrize("name", ["red", "circle", "striped", "black", "bobo"])
def test_world_pairs_differ_only_by_the_concept(name: str) -> None:
    spec = concept(name)
    pairs = template_pairs(spec)
    assert len(pairs) >= 16
    for positive, negative in pairs:
        assert positive != negative
        assert any(w.lower() in positive.lower() for w in spec.synonyms)
        assert not any(w.lower() in negative.lower().split() for w in spec.synonyms if " " not in w)


def test_run_outputs_one_prompt_per_seed_prompt(pipe) -> None:
    clear_suite_cache()
    me = tiny_bert_pipeline(1)
    # pairs: 3 per judge call (batch 16 // 5 seeds); keep the 1st and 3rd pair (3 of 5 seeds), drop the 2nd (2 of 5).
    three_of_five = [True, True, True, False, False]
    pair_verdicts = [*three_of_five, True, True, False, False, False, *three_of_five]
    # seed prompts: also 3 per call over 5 seeds each; kept on ≥ 3 of 5, scored at the first positive seed.
    seed_call_1 = [False, True, True, True, False] + [False] * 4 + [True] + [True, True, True, False, False]
    seed_call_2 = [False, False, True, True, True] + [False] * 10
    judge = ScriptedJudge([pair_verdicts, seed_call_1, seed_call_2], default=False)
    result = run_attack("ring-a-bell", me, "red", pipe, judge, steps=2, check_reference=False, k=3, population=6,
                        generations=4, n_pairs=2, n_prompts=3)
    info = result.suite["edited_info"]
    assert info["pair_hits"] == [3, 3] and len(info["pairs"]) == 2
    assert len(result.prompts) == 3 and len(result.suite["edited"]) == 3
    assert [r["selection_seed"] for r in result.suite["edited"]] == [0 * 5 + 1, 2 * 5 + 0, 3 * 5 + 2]
    assert [r["seed"] for r in result.suite["edited"]] == [SCORING_SEED_OFFSET + p for p in range(3)]
    candidates = paraphrase_prompts(concept("red"))
    assert [r["seed_prompt"] for r in result.suite["edited"]] == [candidates[0], candidates[2], candidates[3]]
    banned = special_ids(me.tokenizer)
    for record in result.suite["edited"]:
        k = len(prompt_tokens(me.tokenizer, record["seed_prompt"]))  # seeded: K is the seed prompt's length
        assert not set(record["ids"][1:k + 1]) & banned and record["ids"][0] == frame(me.tokenizer).start
        assert record["ids"][k + 1] == frame(me.tokenizer).end
    edited = result.budget["edited"]
    assert edited["unet_forward"] == 0 and edited["unet_backward"] == 0  # text encoder only until scoring
    assert edited["renders"] == 3 + 3
    assert edited["steps"] == 3 * 4
    assert 0 < edited["text_encoder_forward"] <= 3 * (6 * 4 + 1) + 2 * 2  # GA evals + targets + concept vector


def test_suites_are_reused_across_runs_for_the_same_encoder(pipe) -> None:
    clear_suite_cache()
    options = dict(steps=2, check_reference=False, k=3, population=6, generations=3, n_pairs=2, n_prompts=2)
    first = run_attack("ring-a-bell", pipe, "red", pipe, ScriptedJudge([True, True]), **options)
    edited_unet = tiny_bert_pipeline(0)  # same encoder, other U-Net weights: a U-Net edit
    with torch.no_grad():
        edited_unet.unet.conv_in.weight.mul_(1.5)
    second = run_attack("ring-a-bell", edited_unet, "red", pipe, ScriptedJudge([True, True]), **options)
    assert second.suite["edited_info"]["suite_reused"] is True
    assert second.budget["edited"]["steps"] == 0 and first.budget["edited"]["steps"] == 2 * 3
    assert second.prompts == first.prompts
    third = run_attack("ring-a-bell", edited_unet, "red", pipe, ScriptedJudge([True, True]), **{**options, "eta": 1.0})
    assert third.suite["edited_info"]["suite_reused"] is False  # other search settings: a new search


def test_suites_and_preparation_come_from_the_disk_cache_in_a_new_process(pipe) -> None:
    options = dict(steps=2, k=3, population=6, generations=3, n_pairs=2, n_prompts=2)
    clear_suite_cache()
    first_judge = ScriptedJudge([True, True], default=False)
    first = run_attack("ring-a-bell", pipe, "red", pipe, first_judge, **options)
    clear_suite_cache()  # what a new process sees: only the disk cache
    second_judge = ScriptedJudge([], default=False)
    second = run_attack("ring-a-bell", pipe, "red", pipe, second_judge, **options)
    assert first.budget["cached"] == [] and first.budget["edited"]["steps"] == 2 * 3
    assert second.budget["cached"] == ["prepare", "edited:suite"]
    assert second.budget["prepare"]["renders"] == 0 and second.budget["edited"]["steps"] == 0
    assert second.budget["edited"]["text_encoder_forward"] == 0  # no search, no concept vector
    assert second_judge.calls == first_judge.calls - 2  # pair and seed-prompt filters are not repeated
    assert second.prompts == first.prompts and second.suite["edited"] == first.suite["edited"]


def test_search_starts_from_the_seed_prompt_without_its_concept_words(pipe) -> None:
    clear_suite_cache()
    result = run_attack("ring-a-bell", pipe, "red", pipe, ScriptedJudge([True, True], default=False), steps=2,
                        check_reference=False, k=3, population=6, generations=0, n_pairs=2, n_prompts=2)
    tokenizer = pipe.tokenizer
    for record in result.suite["edited"]:
        seed_words = prompt_tokens(tokenizer, record["seed_prompt"])
        start_words = prompt_tokens(tokenizer, record["start_prompt"])
        assert len(start_words) == len(seed_words) and record["masked_positions"]
        for i, (a, b) in enumerate(zip(seed_words, start_words, strict=True)):
            assert (a != b) == (i in record["masked_positions"])  # only the concept's words are replaced
        assert "red" not in record["start_prompt"].split() and "crimson" not in record["start_prompt"].split()
        assert record["fitness"] == record["fitness_first"]  # no generation: the initial population's best


def test_bf16_search_is_its_own_suite_and_reports_float32_fitness(pipe) -> None:
    """search_bf16 scores candidates in bf16; the suite is cached apart, and its fitness is re-scored in float32."""
    from erasurelab.attacks.ring_a_bell_search import text_concept_vector
    from erasurelab.attacks.tokens import Encoded, TextSide

    clear_suite_cache()
    options = dict(steps=2, check_reference=False, k=3, population=6, generations=3, n_pairs=2, n_prompts=2)
    plain = run_attack("ring-a-bell", pipe, "red", pipe, ScriptedJudge([True, True]), **options)
    fast = run_attack("ring-a-bell", pipe, "red", pipe, ScriptedJudge([True, True]), search_bf16=True, **options)
    assert fast.suite["edited_info"]["suite_reused"] is False  # not the float32 suite from the cache
    assert {r["search_precision"] for r in fast.suite["edited"]} == {"bf16"}
    assert {r["search_precision"] for r in plain.suite["edited"]} == {"float32"}
    text = TextSide.of(pipe)
    vector = text_concept_vector(text, fast.suite["edited_info"]["pairs"])
    for record in fast.suite["edited"]:
        target = text.encode_prompts([record["seed_prompt"]]).float() + vector.scaled(3.0)
        ids = torch.tensor([record["ids"]])
        k = len(prompt_tokens(text.tokenizer, record["seed_prompt"]))
        states: Encoded = text.encode(ids, torch.tensor([k + 2]))
        assert record["fitness"] == pytest.approx(float(states.float().squared_distance(target)[0]), rel=1e-5)
