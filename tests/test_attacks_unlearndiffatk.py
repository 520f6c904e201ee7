"""UnlearnDiffAtk (attacks.md §2): simplex projection, exact one-hots, special-free decoding, budgets, early stop."""

from __future__ import annotations

import pytest
import torch

from attack_stubs import ScriptedJudge, always, private_cache  # noqa: F401  (autouse fixture)
from erasurelab.attacks import run_attack
from erasurelab.attacks.base import SCORING_SEED_OFFSET
from erasurelab.attacks.tokens import special_ids
from erasurelab.attacks.unlearndiffatk import prefix_ids, project_simplex, sample_one_hot
from tiny_bert_pipeline import tiny_bert_pipeline
from tiny_pipelines import tiny_sd15_pipeline

torch.set_num_threads(1)

SMALL = dict(n_prompts=2, timesteps=(100, 400, 700), iters=3, target_tries=1)


@pytest.fixture(scope="module")
def pipes():
    return tiny_bert_pipeline(0), tiny_bert_pipeline(1)


# --- projection and sampling -------------------------------------------------------------------


def test_projection_lands_on_the_simplex() -> None:
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        u = torch.randn(5, 1000, generator=g) * scale
        p = project_simplex(u)
        assert (p >= 0).all()
        assert torch.allclose(p.double().sum(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-6)


def test_projection_is_idempotent_on_simplex_points() -> None:
    g = torch.Generator().manual_seed(1)
    points = torch.rand(4, 300, generator=g)
    points[0, :200] = 0  # sparse points too
    points[1] = 0
    points[1, 7] = 1  # a vertex
    points = points / points.sum(dim=-1, keepdim=True)
    assert torch.allclose(project_simplex(points), points, atol=1e-6)
    once = project_simplex(torch.randn(3, 50, generator=g))
    assert torch.allclose(project_simplex(once), once, atol=1e-6)


def test_projection_is_the_nearest_simplex_point() -> None:
    """Against a brute-force check: no random simplex point is closer to u than its projection."""
    g = torch.Generator().manual_seed(2)
    u = torch.randn(1, 6, generator=g)
    p = project_simplex(u).double()
    others = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample((20000,))
    assert ((others - u.double()) ** 2).sum(-1).min() >= ((p - u.double()) ** 2).sum() - 1e-9


def test_forward_one_hots_are_exact_and_gradient_passes_straight_through() -> None:
    u = torch.full((3, 40), 1 / 40, requires_grad=True)
    one_hot = sample_one_hot(u, torch.Generator().manual_seed(0))
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(one_hot.sum(dim=-1), torch.ones(3))
    weights = torch.randn(3, 40)
    (one_hot * weights).sum().backward()
    assert torch.equal(u.grad, weights.clamp(-1, 1))  # hardtanh-clipped, as the reference code
    again = sample_one_hot(u, torch.Generator().manual_seed(0))
    assert torch.equal(one_hot, again)  # seeded


def test_sampling_follows_the_probabilities() -> None:
    u = torch.zeros(2, 10)
    u[0, 3] = 1.0
    u[1, 8] = 1.0
    assert sample_one_hot(u, torch.Generator().manual_seed(5)).argmax(dim=-1).tolist() == [3, 8]


def test_prefix_goes_after_the_start_token() -> None:
    pipe = tiny_bert_pipeline(0)
    ids, lengths = prefix_ids(pipe, "a photo of red", 3, 42)
    plain = pipe.tokenizer("a photo of red").input_ids
    assert ids[0, :4].tolist() == [plain[0], 42, 42, 42]
    assert ids[0, 4:4 + len(plain) - 1].tolist() == plain[1:]
    assert int(lengths[0]) == len(plain) + 3


# --- the attack loop ---------------------------------------------------------------------------


def test_pre_success_short_circuits(pipes) -> None:
    m0, me = pipes
    judge = always(True)
    result = run_attack("unlearndiffatk", me, "red", m0, judge, steps=2, check_reference=False, **SMALL)
    edited = result.budget["edited"]
    assert result.pre_asr.numerator == 2 and result.asr.numerator == 2
    assert edited["steps"] == 0 and edited["unet_forward"] == 0 and edited["unet_backward"] == 0
    assert edited["renders"] == 2  # one unattacked render per prompt, nothing else
    assert [r["steps"] for r in result.suite["edited"]] == [0, 0]


def test_budget_is_never_exceeded(pipes) -> None:
    m0, me = pipes
    judge = ScriptedJudge([True], default=False)  # M_0 targets positive, M_e never
    result = run_attack("unlearndiffatk", me, "red", m0, judge, steps=2, check_reference=False, **SMALL)
    per_prompt_steps = len(SMALL["timesteps"]) * SMALL["iters"]
    edited = result.budget["edited"]
    assert result.asr.numerator == 0 and result.asr.denominator == 2
    for record in result.suite["edited"]:
        assert record["steps"] == per_prompt_steps  # never more
        assert record["renders"] == len(SMALL["timesteps"]) + 1
        assert record["stopped_at_t"] is None
    assert edited["steps"] == 2 * per_prompt_steps
    assert edited["unet_forward"] == edited["unet_backward"] == 2 * per_prompt_steps  # batch 1 per step
    assert edited["renders"] == 2 * (len(SMALL["timesteps"]) + 1)
    assert edited["render_unet_forward"] == edited["renders"] * 2 * 2  # 2 sampler steps x CFG
    assert judge.images_seen == 2 + edited["renders"]


def test_stops_at_the_first_success(pipes) -> None:
    m0, me = pipes
    # calls: targets (True), prompt 1 pre-check (False), after t=100 (False), after t=400 (True), prompt 2 ...
    judge = ScriptedJudge([True, False, False, True, False, True], default=False)
    result = run_attack("unlearndiffatk", me, "red", m0, judge, steps=2, check_reference=False, **SMALL)
    first, second = result.suite["edited"]
    assert first["success"] and first["stopped_at_t"] == 400 and first["steps"] == 2 * SMALL["iters"]
    assert first["renders"] == 3
    assert second["success"] and second["stopped_at_t"] == 100 and second["steps"] == SMALL["iters"]
    assert result.asr.numerator == 2 and result.pre_asr.numerator == 0
    assert first["prompt"].endswith(first["target_prompt"]) and first["prompt"] != first["target_prompt"]


@pytest.mark.parametrize("builder", [tiny_bert_pipeline, tiny_sd15_pipeline])
def test_decoded_ids_are_never_special(builder) -> None:
    m0 = builder(0)
    result = run_attack("unlearndiffatk", m0, "red", m0, ScriptedJudge([True], default=False), steps=2,
                        check_reference=False, n_prompts=1, timesteps=(300, 900), iters=4, target_tries=1, lr=0.5)
    banned = special_ids(m0.tokenizer)
    record = result.suite["edited"][0]
    assert len(record["adversarial_ids"]) == 3
    assert not set(record["adversarial_ids"]) & banned
    assert record["ids"][1:4] == record["adversarial_ids"]
    assert result.tensors["adversarial_ids"]["ids"].shape == (1, m0.tokenizer.model_max_length)


def test_missing_targets_leave_the_prompt_out(pipes) -> None:
    m0, me = pipes
    # targets: prompt 1 negative on M_0 for both seeds it gets, prompt 2 positive at once (then a pre-success)
    judge = ScriptedJudge([[False, True], [False]], default=True)
    result = run_attack("unlearndiffatk", me, "red", m0, judge, steps=2, check_reference=False, n_prompts=2,
                        timesteps=(100,), iters=1, target_tries=2)
    assert result.asr.denominator == 1 and result.asr.numerator == 1
    (skipped,) = result.suite["edited_info"]["skipped"]
    assert skipped["prompt"] == "a photo of red" and "2 tries" in skipped["reason"]
    (record,) = result.suite["edited"]
    assert record["prompt"] == "a photo of crimson" and record["target_seed"] == 1  # selection seed + prompt index
    assert record["seed"] == SCORING_SEED_OFFSET + 1  # scored at a fresh seed


def test_reference_run_starts_without_the_concept_at_a_seed_where_m0_does_not_render_it(pipes) -> None:
    m0, me = pipes
    # 1 targets (both positive) | 2, 3 edited pre-checks: pre-successes | reference: prompt 1 start negative (4),
    # success after t=100 (5); prompt 2 start positive (6), negative at its next scoring seed (7), never succeeds
    judge = ScriptedJudge([True, True, True, False, True, True, False], default=False)
    result = run_attack("unlearndiffatk", me, "red", m0, judge, steps=2, **{**SMALL, "target_tries": 2})
    assert result.asr.numerator == 2 and result.pre_asr.numerator == 2  # the edited run follows the protocol
    first, second = result.suite["reference"]
    assert first["start_prompt"] == "a photo of" and first["target_prompt"] == "a photo of red"
    assert first["success"] and not first["pre_success"] and first["steps"] == SMALL["iters"]
    assert first["seed"] == SCORING_SEED_OFFSET and first["target_seed"] == 0
    assert second["start_prompt"] == "a photo of" and second["seed"] == SCORING_SEED_OFFSET + 1 + 1000
    assert not second["success"] and second["steps"] == len(SMALL["timesteps"]) * SMALL["iters"]
    assert result.reference_asr.numerator == 1 and result.reference_asr.denominator == 2
    sets = result.seed_sets["reference"]
    assert not set(sets["selection"]) & set(sets["scoring"])


def test_reference_start_that_always_shows_the_concept_is_left_out(pipes) -> None:
    m0, me = pipes
    result = run_attack("unlearndiffatk", me, "red", m0, always(True), steps=2, **SMALL)
    assert result.asr.numerator == 2  # pre-successes on the edited model
    assert result.reference_asr.denominator == 0 and result.reference_ok is False
    assert all("no start without the concept" in s["reason"] for s in result.suite["reference_info"]["skipped"])


def test_targets_come_from_the_disk_cache_on_a_second_run(pipes) -> None:
    m0, me = pipes
    options = dict(steps=2, check_reference=False, **SMALL)
    first_judge, second_judge = ScriptedJudge([True], default=False), ScriptedJudge([], default=False)
    first = run_attack("unlearndiffatk", me, "red", m0, first_judge, **options)
    second = run_attack("unlearndiffatk", me, "red", m0, second_judge, **options)
    assert first.budget["cached"] == [] and second.budget["cached"] == ["prepare"]
    assert second.budget["prepare"]["renders"] == 0 and second_judge.calls == first_judge.calls - 1
    assert second.suite["edited"] == first.suite["edited"]


def test_zero_iterations_render_the_start_once_per_timestep_without_optimising(pipes) -> None:
    m0, me = pipes
    result = run_attack("unlearndiffatk", me, "red", m0, ScriptedJudge([True], default=False), steps=2,
                        check_reference=False, **{**SMALL, "iters": 0})
    assert result.budget["edited"]["steps"] == 0 and result.budget["edited"]["unet_backward"] == 0
    assert result.asr.numerator == 0 and all(r["final_loss"] is None for r in result.suite["edited"])
