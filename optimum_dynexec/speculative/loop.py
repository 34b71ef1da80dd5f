"""The speculative decoding loop for one sequence.

    prefill + draft k tokens (policy decides k and when to stop)
    fill the slots the target's call is padded to anyway with tokens that cost nothing to propose
    target runs once on [tokens it has not seen + k drafts + fill] -> one row of logits per candidate + 1
    accept a prefix of the candidates, emit it + one target token, roll both KV caches back
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..backends.base import DecoderRunner
from .drafters import Drafter
from .logits import TokenSelector
from .policies import LookaheadPolicy
from .stats import SpeculationStats
from .verification import accept_greedy, accept_sampled


@dataclass
class SpeculativeResult:
    """New tokens of one sequence, the statistics of its run and (optionally) the target's scores."""

    tokens: np.ndarray
    stats: SpeculationStats
    scores: list[np.ndarray] = field(default_factory=list)


def speculative_generate(
    target: DecoderRunner,
    drafter: Drafter,
    policy: LookaheadPolicy,
    prompt: np.ndarray,
    selector: TokenSelector,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    rng: Optional[np.random.Generator] = None,
    on_tokens: Optional[Callable[[np.ndarray], None]] = None,
    should_stop: Optional[Callable[[np.ndarray], bool]] = None,
    output_scores: bool = False,
    max_length: Optional[int] = None,
    draft_after_first_token: bool = False,
) -> SpeculativeResult:
    """Generate up to ``max_new_tokens`` tokens after ``prompt`` (1-D int64), exactly as the target would.

    ``on_tokens`` receives each step's emitted tokens (streamers); ``should_stop(sequence)`` is asked after
    every emitted token (custom stopping criteria, stop strings); ``max_length`` bounds the sequence
    length (model positions). With ``draft_after_first_token`` the first call is the target's prefill alone (the
    first token comes sooner; the draft reads the prompt in the second step).
    """
    if selector.do_sample and rng is None:
        raise ValueError("sampling needs a numpy random Generator (rng).")
    prompt_length = len(prompt)
    sequence = np.empty(prompt_length + max_new_tokens, dtype=np.int64)
    sequence[:prompt_length] = prompt
    length = prompt_length
    if max_length is not None:
        max_new_tokens = min(max_new_tokens, max_length - prompt_length)
    eos = {int(token) for token in eos_token_ids}
    stats = SpeculationStats()
    scores: list[np.ndarray] = []

    start = time.perf_counter()
    target.reset()
    drafter.begin(prompt)
    policy.reset()
    draft_seconds_before = drafter.runtime_seconds
    draft_calls_before = getattr(drafter, "calls", 0)
    padded_length = getattr(target, "padded_length", None)

    while length - prompt_length < max_new_tokens:
        budget = max_new_tokens - (length - prompt_length)
        if draft_after_first_token and stats.target_calls == 0:
            lookahead = 0  # not asked of the policy: this step is no choice of its
        else:
            lookahead = min(policy.lookahead(), budget - 1)
        drafted = np.empty(0, dtype=np.int64)
        draft_probs = None
        draft_seconds, draft_calls = drafter.runtime_seconds, getattr(drafter, "calls", 0)
        if lookahead > 0:
            proposal = drafter.propose(sequence[:length], lookahead, policy, selector, rng)
            drafted, draft_probs = proposal.tokens[:lookahead], proposal.probs
        proposed = len(drafted)
        # drafts sit in the buffer after the sequence, so every row's prefix is a view
        sequence[length : length + proposed] = drafted
        pending = length - target.cache_length
        candidates = proposed
        if padded_length is not None:
            # the call runs padded to a fixed width anyway: its spare slots verify free guesses for nothing
            room = min(padded_length(pending + proposed) - pending - proposed, budget - 1 - proposed)
            if room > 0:
                fill = drafter.fill(sequence[: length + proposed], room)[:room]
                sequence[length + proposed : length + proposed + len(fill)] = fill
                candidates += len(fill)
        drafted = sequence[length : length + candidates]

        target_start = time.perf_counter()
        # rows for the last token before the candidates and for each of them (the prompt's other rows are not needed)
        rows = target.forward(sequence[target.cache_length : length + candidates], last=candidates + 1)
        target_seconds = time.perf_counter() - target_start
        stats.seconds_target += target_seconds

        if selector.do_sample:
            accepted, token = accept_sampled(
                drafted, draft_probs, lambda i: selector.probabilities(rows[i], sequence[: length + i]), rng
            )
        elif selector.is_plain_greedy:
            choices = rows.argmax(axis=-1)
            mismatches = np.flatnonzero(choices[:candidates] != drafted)
            accepted = int(mismatches[0]) if len(mismatches) else candidates
            token = int(choices[accepted])
        else:
            accepted, token = accept_greedy(drafted, lambda i: selector.greedy(rows[i], sequence[: length + i]))
        sequence[length + accepted] = token
        emitted = accepted + 1

        finished = False
        if eos:
            for j, emitted_token in enumerate(sequence[length : length + emitted].tolist()):
                if emitted_token in eos:  # a set: np.isin costs ~10 us on a few tokens
                    emitted, finished = j + 1, True
                    break
        if should_stop is not None:
            for j in range(emitted):
                if should_stop(sequence[: length + j + 1]):
                    emitted, finished = j + 1, True
                    break
        if output_scores:
            scores.extend(selector.process(rows[j], sequence[: length + j]) for j in range(emitted))

        new_tokens = sequence[length : length + emitted]
        length += emitted
        # the last emitted token has not been fed to either model yet
        target.trim(length - 1)
        drafter.rollback(length - 1)
        # the policy judges its own drafts; the fill's outcome is not its doing
        policy.observe(proposed, min(accepted, proposed))
        # the draft's cost per proposed token (a model drafter may propose several tokens per call)
        drafted_by_calls = proposed if getattr(drafter, "calls", 0) > draft_calls else 0
        policy.observe_timing(drafter.runtime_seconds - draft_seconds, drafted_by_calls, target_seconds,
                              pending + candidates)

        stats.target_calls += 1
        stats.draft_tokens_proposed += proposed
        stats.draft_tokens_accepted += min(accepted, proposed, emitted)
        stats.fill_tokens_proposed += candidates - proposed
        stats.fill_tokens_accepted += max(min(accepted, emitted) - proposed, 0)
        stats.proposed_per_step.append(proposed)
        stats.accepted_per_step.append(accepted)
        if stats.target_calls == 1:
            stats.seconds_to_first_tokens, stats.first_tokens = time.perf_counter() - start, emitted
        if on_tokens is not None:
            on_tokens(new_tokens)
        if finished:
            break

    stats.seconds_draft = drafter.runtime_seconds - draft_seconds_before
    stats.draft_calls = getattr(drafter, "calls", 0) - draft_calls_before
    stats.seconds_total = time.perf_counter() - start
    stats.new_tokens = length - prompt_length
    return SpeculativeResult(sequence[prompt_length:length].copy(), stats, scores)
