"""The acceptance rules on plain arrays: greedy prefix matching, and rejection sampling that reproduces the
target distribution exactly (chi-square tests with fixed seeds, so every run draws the same numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import chi_square_pvalue
from optimum_dynexec.speculative.verification import accept_greedy, accept_sampled, sample

VOCAB = 8
TRIALS = 30_000
ALPHA = 1e-3


def random_distribution(rng: np.random.Generator, size: int = VOCAB, zeros: int = 0) -> np.ndarray:
    probs = rng.dirichlet(np.full(size, 0.7))
    if zeros:
        probs[rng.choice(size, zeros, replace=False)] = 0.0
        probs /= probs.sum()
    return probs.astype(np.float32)


def first_token_after_rejection_sampling(p: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> int:
    draft = sample(q, rng)
    accepted, token = accept_sampled([draft], q[None], lambda i: p, rng)
    return draft if accepted else token


# ---------------------------------------------------------------- sample()


def test_sample_draws_from_the_given_distribution():
    rng = np.random.default_rng(0)
    probs = random_distribution(rng, zeros=2)
    draws = np.array([sample(probs, rng) for _ in range(TRIALS)])
    assert chi_square_pvalue(draws, probs) > ALPHA


def test_sample_never_returns_an_out_of_range_id():
    rng = np.random.default_rng(1)
    probs = np.zeros(5, dtype=np.float32)
    probs[-1] = 1.0
    assert {sample(probs, rng) for _ in range(200)} == {4}


# ---------------------------------------------------------------- greedy


def test_accept_greedy_keeps_the_matching_prefix_and_takes_the_target_token():
    target = [5, 6, 7, 8]
    assert accept_greedy([5, 6, 9], lambda i: target[i]) == (2, 7)
    assert accept_greedy([4, 6, 7], lambda i: target[i]) == (0, 5)


def test_accept_greedy_full_match_adds_the_bonus_token():
    target = [5, 6, 7, 8]
    assert accept_greedy([5, 6, 7], lambda i: target[i]) == (3, 8)
    assert accept_greedy([], lambda i: target[i]) == (0, 5)


def test_accept_greedy_evaluates_the_target_lazily():
    asked = []

    def choice(i):
        asked.append(i)
        return [1, 2, 3, 4][i]

    accept_greedy([1, 9, 3], choice)
    assert asked == [0, 1]


# ---------------------------------------------------------------- sampling: the first emitted token is distributed as p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rejection_sampling_reproduces_the_target_distribution(seed):
    rng = np.random.default_rng(seed)
    p, q = random_distribution(rng, zeros=seed), random_distribution(rng)
    tokens = np.array([first_token_after_rejection_sampling(p, q, rng) for _ in range(TRIALS)])
    assert chi_square_pvalue(tokens, p) > ALPHA


def test_the_chi_square_test_catches_accepting_every_draft_token():
    """Power check: with the same p, q and trial count, 'always accept' (output ~ q) is rejected."""
    rng = np.random.default_rng(0)
    p, q = random_distribution(rng), random_distribution(rng)
    drafts = np.array([sample(q, rng) for _ in range(TRIALS)])
    assert chi_square_pvalue(drafts, p) < 1e-12


def test_the_chi_square_test_catches_resampling_from_p_instead_of_the_residual():
    """A classic bug: on rejection, draw from p rather than norm(max(0, p - q)): the output is biased."""
    rng = np.random.default_rng(0)
    p, q = random_distribution(rng), random_distribution(rng)
    tokens = []
    for _ in range(TRIALS):
        draft = sample(q, rng)
        tokens.append(draft if rng.random() * q[draft] < p[draft] else sample(p, rng))
    assert chi_square_pvalue(np.array(tokens), p) < 1e-6


def test_rejection_sampling_with_a_draft_that_misses_part_of_the_target_support():
    rng = np.random.default_rng(3)
    p = random_distribution(rng)
    q = p.copy()
    q[[0, 1, 2]] = 0.0  # the draft never proposes tokens 0-2: they can only come from the residual
    q /= q.sum()
    tokens = np.array([first_token_after_rejection_sampling(p, q, rng) for _ in range(TRIALS)])
    assert chi_square_pvalue(tokens, p) > ALPHA


def test_identical_draft_and_target_accept_everything():
    rng = np.random.default_rng(4)
    p = random_distribution(rng)
    drafts = [sample(p, rng) for _ in range(3)]
    for _ in range(2000):
        accepted, _ = accept_sampled(drafts, np.stack([p] * 3), lambda i: p, rng)
        assert accepted == 3


def test_draft_token_impossible_for_the_target_is_always_rejected():
    rng = np.random.default_rng(5)
    p = random_distribution(rng, zeros=0)
    p[3] = 0.0
    p /= p.sum()
    q = np.full(VOCAB, 1 / VOCAB, dtype=np.float32)
    for _ in range(2000):
        accepted, token = accept_sampled([3], q[None], lambda i: p, rng)
        assert accepted == 0 and token != 3


@pytest.mark.parametrize("draft_token", [0, 5])
@pytest.mark.parametrize("as_one_hot", [False, True])
def test_deterministic_draft_reproduces_the_target_distribution(draft_token, as_one_hot):
    """Prompt lookup / greedy drafts: q is one-hot (``None`` means exactly that)."""
    rng = np.random.default_rng(10 + draft_token)
    p = random_distribution(rng)
    probs = np.eye(VOCAB, dtype=np.float32)[[draft_token]] if as_one_hot else None
    tokens = []
    for _ in range(TRIALS):
        accepted, token = accept_sampled([draft_token], probs, lambda i: p, rng)
        tokens.append(draft_token if accepted else token)
    assert chi_square_pvalue(np.array(tokens), p) > ALPHA


def test_two_step_drafts_reproduce_the_joint_target_distribution():
    """Drafts d0 ~ q0, d1 ~ q1(.|d0); the emitted pair must follow p0(t0) p1(t1|t0), whichever way it was
    produced (both accepted, d0 accepted + correction/bonus, or d0 rejected and the next step drafting again)."""
    rng = np.random.default_rng(7)
    p0, q0 = random_distribution(rng), random_distribution(rng)
    p1 = np.stack([random_distribution(rng) for _ in range(VOCAB)])  # p1[t0] = target after t0
    q1 = np.stack([random_distribution(rng) for _ in range(VOCAB)])
    pairs = []
    for _ in range(TRIALS):
        d0 = sample(q0, rng)
        d1 = sample(q1[d0], rng)
        accepted, token = accept_sampled([d0, d1], np.stack([q0, q1[d0]]), lambda i: p0 if i == 0 else p1[d0], rng)
        if accepted == 2:
            pairs.append((d0, d1))
        elif accepted == 1:
            pairs.append((d0, token))
        else:  # next step: one fresh draft after the corrected t0
            t0 = token
            d = sample(q1[t0], rng)
            accepted, t1 = accept_sampled([d], q1[t0][None], lambda i: p1[t0], rng)
            pairs.append((t0, d if accepted else t1))
    cells = np.array([a * VOCAB + b for a, b in pairs])
    joint = (p0[:, None] * p1).reshape(-1)
    assert chi_square_pvalue(cells, joint / joint.sum()) > ALPHA


def test_bonus_token_after_full_acceptance_is_drawn_from_the_next_target_row():
    rng = np.random.default_rng(8)
    certain = np.eye(VOCAB, dtype=np.float32)[2]  # the target itself would pick the draft token 2
    bonus = random_distribution(rng)
    tokens = []
    for _ in range(TRIALS // 3):
        accepted, token = accept_sampled([2], certain[None], lambda i: certain if i == 0 else bonus, rng)
        assert accepted == 1
        tokens.append(token)
    assert chi_square_pvalue(np.array(tokens), bonus) > ALPHA


def test_target_rows_are_evaluated_lazily():
    rng = np.random.default_rng(9)
    asked = []
    zero_for_draft = np.full(VOCAB, 1 / (VOCAB - 1), dtype=np.float32)
    zero_for_draft[1] = 0.0

    def target(i):
        asked.append(i)
        return zero_for_draft

    accept_sampled([1, 1, 1], None, target, rng)
    assert asked == [0]
