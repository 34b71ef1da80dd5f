"""The acceptance rules of speculative decoding, written as the math reads.

Greedy: keep the longest prefix of draft tokens that equals the target's own choice, then take the
target's choice at the first mismatch (or the bonus token after a full match).
Sampling (Leviathan et al., 2023; Chen et al., 2023): accept draft token x with probability
``min(1, p(x) / q(x))``; on rejection draw from ``norm(max(0, p - q))``. The emitted tokens are then
distributed exactly as the target's own samples.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from a probability vector (inverse CDF, no per-call allocation of choice())."""
    cumulative = np.cumsum(probs, dtype=np.float64)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(probs) - 1))


def accept_greedy(draft_tokens: Sequence[int], target_choice: Callable[[int], int]) -> tuple[int, int]:
    """Number of accepted draft tokens and the target's token that follows them.

    ``target_choice(i)`` is the target's greedy token at lookahead position ``i`` (0 = the token after the
    last accepted one); it is only evaluated up to the first mismatch.
    """
    for i, token in enumerate(draft_tokens):
        choice = target_choice(i)
        if choice != token:
            return i, choice
    return len(draft_tokens), target_choice(len(draft_tokens))


def accept_sampled(
    draft_tokens: Sequence[int],
    draft_probs: Optional[np.ndarray],
    target_probs: Callable[[int], np.ndarray],
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Rejection sampling over the draft tokens.

    ``draft_probs[i]`` is the distribution draft token ``i`` was sampled from, over the target's vocabulary;
    tokens without a row (all of them when ``draft_probs`` is None) were proposed deterministically (prompt
    lookup, a greedy draft, the loop's fill), i.e. from a one-hot ``q``. ``target_probs(i)`` gives the
    target's distribution at lookahead position ``i`` and is evaluated lazily.
    Returns the number of accepted tokens and the token emitted after them.
    """
    for i, token in enumerate(draft_tokens):
        p = target_probs(i)
        if draft_probs is None or i >= len(draft_probs):
            if rng.random() < p[token]:
                continue
            residual = p.copy()
            residual[token] = 0.0
        else:
            q = draft_probs[i]
            # q[token] > 0 because the token was drawn from q
            if rng.random() * q[token] < p[token]:
                continue
            residual = np.maximum(p - q, 0.0)
        total = residual.sum()
        if total <= 0:  # p == q on the support: any draw from p is exact
            return i, sample(p, rng)
        return i, sample(residual / total, rng)
    return len(draft_tokens), sample(target_probs(len(draft_tokens)), rng)

