"""Drafters propose tokens for the target to verify: a draft model, or n-gram prompt lookup."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from ..backends.base import DecoderRunner
from .logits import TokenSelector
from .policies import LookaheadPolicy
from .signals import greedy_signal, sampled_signal
from .verification import sample


@dataclass
class Proposal:
    """Tokens a drafter proposes; ``probs[i]`` is the distribution token ``i`` was drawn from (over the
    target's vocabulary), or None for deterministic proposals."""

    tokens: np.ndarray
    probs: Optional[np.ndarray] = None


_NO_TOKENS = np.empty(0, dtype=np.int64)


def ngram_continuation(sequence: np.ndarray, max_tokens: int, max_ngram_size: int = 3,
                       min_ngram_size: int = 1) -> np.ndarray:
    """What followed the latest earlier occurrence of the sequence's last n tokens (the longest n from
    ``max_ngram_size`` down to ``min_ngram_size`` that occurs; the latest occurrence among equals), at most
    ``max_tokens`` tokens; empty when no n-gram matches."""
    if max_tokens <= 0:
        return _NO_TOKENS
    length = len(sequence)
    longest = min(max_ngram_size, length - 1)
    # earlier occurrences of the last token, latest first (one vectorised scan, then a few Python comparisons,
    # instead of a scan per n-gram size)
    best_size, best_end = 0, -1
    last = sequence[length - 1]
    for end in np.flatnonzero(sequence[: length - 1] == last)[::-1].tolist():
        size = 1
        limit = min(longest, end + 1)
        while size < limit and sequence[end - size] == sequence[length - 1 - size]:
            size += 1
        if size > best_size:
            best_size, best_end = size, end
            if size == longest:
                break
    if best_size < min_ngram_size:
        return _NO_TOKENS
    return np.array(sequence[best_end + 1 : best_end + 1 + max_tokens], dtype=np.int64)


class Drafter(Protocol):
    """Who drafts. ``sequence`` is every token so far (prompt + accepted), never modified by the drafter."""

    #: seconds spent inside the draft runtime (model drafters), for statistics
    runtime_seconds: float

    def begin(self, prompt: np.ndarray) -> None:
        """Start a new sequence."""

    def propose(
        self, sequence: np.ndarray, max_tokens: int, policy: LookaheadPolicy, selector: TokenSelector,
        rng: Optional[np.random.Generator],
    ) -> Proposal:
        """Up to ``max_tokens`` tokens to follow ``sequence``."""

    def fill(self, sequence: np.ndarray, max_tokens: int) -> np.ndarray:
        """Up to ``max_tokens`` more tokens to verify after ``sequence`` (the sequence and this step's proposal)
        that cost nothing to propose; the target's call has room for them in its padding."""

    def rollback(self, length: int) -> None:
        """Only the first ``length`` tokens of the sequence are valid now."""


class ModelDrafter:
    """Drafts with a smaller decoder (or the target's INT4 copy).

    Its KV cache holds the sequence up to the last token it was fed; tokens it has not seen yet (the
    target's correction, or the last draft token after full acceptance) are fed together next time.

    With ``lookup_tokens`` > 0 and greedy drafting, each draft call also checks an n-gram guess (Saxena's prompt
    lookup over the sequence and the drafts so far) of the tokens that follow: one call returns a logits row per
    guessed token, and every guess equal to the draft's own choice there comes with the draft token after it,
    so a run of right guesses costs one call instead of one call per token (the draft is memory-bound: a call
    over 5 tokens costs ~1.15x one over 2 on Qwen2.5-0.5B here). The draft's proposals are unchanged: a guess
    only counts where the draft itself would have chosen it. (Cascade drafting: Chen et al., 2023, "Cascade
    Speculative Drafting"; the lowest cascade level there is also a model-free n-gram guess.)

    The same guesses fill the target's padded verification slots (:meth:`fill`): first the draft tokens the
    last call computed beyond the policy's stop (rows after right guesses), then the n-gram continuation.
    """

    def __init__(self, runner: DecoderRunner, target_vocab_size: int, vocabulary: Optional[np.ndarray] = None,
                 lookup_tokens: int = 0, lookup_ngram_sizes: tuple[int, int] = (3, 2)):
        """``vocabulary``: for a vocabulary-pruned draft, the token id of each of its logits columns.
        ``lookup_tokens``: n-gram guesses checked per draft call (0: none); ``lookup_ngram_sizes``: the longest
        and shortest n-gram the guess matches."""
        if lookup_tokens < 0:
            raise ValueError(f"lookup_tokens must be >= 0, got {lookup_tokens}.")
        self.runner = runner
        self.target_vocab_size = target_vocab_size
        self.vocabulary = vocabulary
        self.lookup_tokens = int(lookup_tokens)
        self.lookup_ngram_sizes = lookup_ngram_sizes
        self._scattered = None if vocabulary is None else np.full(target_vocab_size, -np.inf, dtype=np.float32)
        self.runtime_seconds = 0.0
        self.calls = 0
        #: draft tokens that needed no call of their own (the row after a right n-gram guess)
        self.lookup_hits = 0
        # draft tokens computed beyond the last proposal (rows after right guesses), valid after ``_free_after``
        # tokens of sequence + proposal
        self._free, self._free_after = _NO_TOKENS, -1

    def begin(self, prompt: np.ndarray) -> None:
        self.runner.reset()

    def _forward(self, token_ids: np.ndarray, rows: int) -> np.ndarray:
        """The draft's logits rows of the last ``rows`` of ``token_ids``, as its runtime returns them (pruned
        width, if pruned)."""
        start = time.perf_counter()
        logits = self.runner.forward(token_ids, last=rows)
        self.runtime_seconds += time.perf_counter() - start
        self.calls += 1
        return logits

    def _target_width(self, row: np.ndarray) -> np.ndarray:
        """``row`` over the target's vocabulary (the sampling path compares distributions token by token)."""
        vocab = self.target_vocab_size
        if self.vocabulary is not None:
            # tokens the pruned head cannot propose get probability 0 (-inf logits): exactness is the target's job
            self._scattered[self.vocabulary] = row
            return self._scattered
        if row.shape[-1] == vocab:
            return row
        if row.shape[-1] > vocab:  # padded embedding rows beyond the shared tokenizer
            return row[:vocab]
        padded = np.full(vocab, -np.inf, dtype=np.float32)
        padded[: row.shape[-1]] = row
        return padded

    def _greedy(self, row: np.ndarray, needs_signal: bool):
        """The draft's greedy token from its logits ``row`` and, when asked, the policy's signal of it."""
        if self.vocabulary is not None:
            # a pruned draft's distribution is its own row: argmax and signal over its columns
            column = int(row.argmax())
            return int(self.vocabulary[column]), greedy_signal(row, column) if needs_signal else None
        logits = self._target_width(row)
        token = int(logits.argmax())
        return token, greedy_signal(logits, token) if needs_signal else None

    def propose(self, sequence, max_tokens, policy, selector, rng) -> Proposal:
        self._free, self._free_after = _NO_TOKENS, -1
        if selector.do_sample:
            return self._propose_sampled(sequence, max_tokens, policy, selector, rng)
        tokens = np.empty(max_tokens, dtype=np.int64)
        pending = sequence[self.runner.cache_length :]
        count = 0
        padded_length = getattr(self.runner, "padded_length", None)
        while count < max_tokens:
            room = max_tokens - count - 1
            if len(pending) <= self.lookup_tokens + 2:
                # within the widest input the draft's calls are padded to (2 + lookup_tokens): no new shape
                room = min(room, self.lookup_tokens + 2 - len(pending))
            spare_slot = padded_length is not None and padded_length(len(pending)) > len(pending)
            guess = self._guess(sequence, tokens[:count], room, spare_slot)
            fed = self.runner.cache_length + len(pending)  # cached tokens once the pending ones are in
            rows = self._forward(np.concatenate([pending, guess]) if len(guess) else pending, len(guess) + 1)
            stop = False
            for i in range(len(guess) + 1):
                token, signal = self._greedy(rows[i], policy.needs_signal)
                tokens[count] = token
                count += 1
                # every token's signal reaches the policy, the last one's too (DISCO's features track the prefix)
                keep = policy.keep_drafting(count - 1, signal)
                stop = count == max_tokens or not keep
                if i == len(guess) or token != guess[i]:
                    break
                fed += 1  # the guess is this draft token: its keys/values are already in the cache
                if stop:
                    self._free, right = self._rows_after(rows, guess, i + 1)
                    fed += right
                    break
                self.lookup_hits += 1  # the next row's token needs no call of its own
            if self.runner.cache_length > fed:  # keys/values of wrong (or unused) guesses
                self.runner.trim(fed)
            if stop:
                break
            pending = tokens[count - 1 : count]
        self._free_after = len(sequence) + count
        return Proposal(tokens[:count])

    def _rows_after(self, rows: np.ndarray, guess: np.ndarray, start: int) -> tuple[np.ndarray, int]:
        """The draft's tokens in ``rows[start:]`` (computed, but past the policy's stop) while each follows right
        guesses only, and how many of them equal their guess (their keys/values are valid in the cache)."""
        free, right = [], 0
        for i in range(start, len(guess) + 1):
            token, _ = self._greedy(rows[i], False)
            free.append(token)
            if i == len(guess) or token != guess[i]:
                break
            right += 1
        return np.array(free, dtype=np.int64), right

    def fill(self, sequence: np.ndarray, max_tokens: int) -> np.ndarray:
        """The draft tokens its last call computed past the proposal, then the n-gram continuation (no guesses
        when ``lookup_tokens`` is 0)."""
        if max_tokens <= 0 or self.lookup_tokens == 0:
            return _NO_TOKENS
        free = self._free[:max_tokens] if self._free_after == len(sequence) else _NO_TOKENS
        self._free, self._free_after = _NO_TOKENS, -1
        more = self._ngram_after(sequence, free, max_tokens - len(free))
        return np.concatenate([free, more]) if len(free) else more

    def _ngram_after(self, sequence: np.ndarray, extra: np.ndarray, count: int,
                     sizes: Optional[tuple[int, int]] = None) -> np.ndarray:
        """The n-gram continuation of ``sequence`` + ``extra``, at most ``count`` tokens; ``sizes``: the longest and
        shortest n-gram matched (default ``lookup_ngram_sizes``)."""
        context = np.concatenate([sequence, extra]) if len(extra) else sequence
        longest, shortest = sizes or self.lookup_ngram_sizes
        return ngram_continuation(context, count, longest, shortest)

    def _guess(self, sequence: np.ndarray, drafted: np.ndarray, room: int, spare_slot: bool = False) -> np.ndarray:
        """An n-gram guess of up to ``lookup_tokens`` tokens after ``sequence`` + ``drafted`` (at most ``room``).
        With a ``spare_slot`` (the call is padded by a token anyway) and no such n-gram, the token that followed
        the last token's latest occurrence: a weaker guess (right for 6% of Qwen2.5-Coder's draft tokens, against
        15% for the n-gram's) that costs nothing."""
        count = min(self.lookup_tokens, room)
        guess = self._ngram_after(sequence, drafted, count)
        # a shortest n-gram of 1 already searched for the one-token match
        if spare_slot and not len(guess) and count > 0 and self.lookup_ngram_sizes[1] > 1:
            guess = self._ngram_after(sequence, drafted, 1, sizes=(1, 1))
        return guess

    def _propose_sampled(self, sequence, max_tokens, policy, selector, rng) -> Proposal:
        """Draft tokens drawn from the draft's distribution, one call each (no guesses: a guessed token would
        have to be drawn, not chosen)."""
        tokens = np.empty(max_tokens, dtype=np.int64)
        probs = np.empty((max_tokens, self.target_vocab_size), dtype=np.float32)
        pending = sequence[self.runner.cache_length :]
        prefix = sequence
        count = 0
        while count < max_tokens:
            row = self._forward(pending, 1)[0]
            probs[count] = selector.probabilities(self._target_width(row), prefix)
            token = sample(probs[count], rng)
            signal = sampled_signal(probs[count], token) if policy.needs_signal else None
            tokens[count] = token
            count += 1
            keep = policy.keep_drafting(count - 1, signal)
            if count == max_tokens or not keep:
                break
            pending = tokens[count - 1 : count]
            if selector.repetition_penalty != 1.0:
                prefix = np.concatenate([sequence, tokens[:count]])
        return Proposal(tokens[:count], probs[:count])

    def rollback(self, length: int) -> None:
        if self.runner.cache_length > length:
            self.runner.trim(length)


class PromptLookupDrafter:
    """n-gram prompt lookup (Saxena, 2023; transformers' ``prompt_lookup_num_tokens``): find the latest
    earlier occurrence of the sequence's last n tokens and propose what followed it. No model, no cost."""

    runtime_seconds = 0.0

    def __init__(self, max_ngram_size: int = 3, min_ngram_size: int = 1):
        if not 1 <= min_ngram_size <= max_ngram_size:
            raise ValueError(
                f"prompt lookup needs 1 <= min_ngram_size <= max_matching_ngram_size, got {min_ngram_size}, {max_ngram_size}."
            )
        self.max_ngram_size = max_ngram_size
        self.min_ngram_size = min_ngram_size

    def begin(self, prompt: np.ndarray) -> None:
        pass

    def propose(self, sequence, max_tokens, policy, selector, rng) -> Proposal:
        tokens = ngram_continuation(sequence, max_tokens, self.max_ngram_size, self.min_ngram_size)
        if len(tokens) == 0:
            return Proposal(tokens)
        count = 1
        while count < len(tokens) and policy.keep_drafting(count - 1, None):
            count += 1
        return Proposal(tokens[:count])

    def fill(self, sequence: np.ndarray, max_tokens: int) -> np.ndarray:
        """The n-gram continuation past the proposal (what the policy stopped short of)."""
        if max_tokens <= 0:
            return _NO_TOKENS
        return ngram_continuation(sequence, max_tokens, self.max_ngram_size, self.min_ngram_size)

    def rollback(self, length: int) -> None:
        pass
