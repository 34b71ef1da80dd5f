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

    def rollback(self, length: int) -> None:
        """Only the first ``length`` tokens of the sequence are valid now."""


class ModelDrafter:
    """Drafts with a smaller decoder (or the target's INT4 copy), one token per draft call.

    Its KV cache holds the sequence up to the last token it was fed; tokens it has not seen yet (the
    target's correction, or the last draft token after full acceptance) are fed together next time.
    """

    def __init__(self, runner: DecoderRunner, target_vocab_size: int, vocabulary: Optional[np.ndarray] = None):
        """``vocabulary``: for a vocabulary-pruned draft, the token id of each of its logits columns."""
        self.runner = runner
        self.target_vocab_size = target_vocab_size
        self.vocabulary = vocabulary
        self._scattered = None if vocabulary is None else np.full(target_vocab_size, -np.inf, dtype=np.float32)
        self.runtime_seconds = 0.0
        self.calls = 0

    def begin(self, prompt: np.ndarray) -> None:
        self.runner.reset()

    def _forward_last(self, token_ids: np.ndarray) -> np.ndarray:
        """The draft's logits row after ``token_ids``, as its runtime returns it (pruned width, if pruned)."""
        start = time.perf_counter()
        row = self.runner.forward(token_ids, last=1)[0]
        self.runtime_seconds += time.perf_counter() - start
        self.calls += 1
        return row

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

    def propose(self, sequence, max_tokens, policy, selector, rng) -> Proposal:
        tokens = np.empty(max_tokens, dtype=np.int64)
        probs = np.empty((max_tokens, self.target_vocab_size), dtype=np.float32) if selector.do_sample else None
        pending = sequence[self.runner.cache_length :]
        prefix = sequence
        count = 0
        while count < max_tokens:
            row = self._forward_last(pending)
            signal = None
            if selector.do_sample:
                probs[count] = selector.probabilities(self._target_width(row), prefix)
                token = sample(probs[count], rng)
                if policy.needs_signal:
                    signal = sampled_signal(probs[count], token)
            elif self.vocabulary is not None:
                # a pruned draft's distribution is its own row: argmax and signal over its columns
                column = int(row.argmax())
                token = int(self.vocabulary[column])
                if policy.needs_signal:
                    signal = greedy_signal(row, column)
            else:
                logits = self._target_width(row)
                token = int(logits.argmax())
                if policy.needs_signal:
                    signal = greedy_signal(logits, token)
            tokens[count] = token
            count += 1
            # every token's signal reaches the policy (DISCO's features track the whole prefix)
            keep = policy.keep_drafting(count - 1, signal)
            if count == max_tokens or not keep:
                break
            pending = tokens[count - 1 : count]
            if selector.do_sample and selector.repetition_penalty != 1.0:
                prefix = np.concatenate([sequence, tokens[:count]])
        return Proposal(tokens[:count], None if probs is None else probs[:count])

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
        length = len(sequence)
        longest = min(self.max_ngram_size, length - 1)
        # earlier occurrences of the last token, latest first: the longest n-gram match wins, the latest among
        # equals (one vectorised scan, then a few Python comparisons, instead of a scan per n-gram size)
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
        if best_size < self.min_ngram_size:
            return Proposal(np.empty(0, dtype=np.int64))
        tokens = np.array(sequence[best_end + 1 : best_end + 1 + max_tokens], dtype=np.int64)
        count = 1
        while count < len(tokens) and policy.keep_drafting(count - 1, None):
            count += 1
        return Proposal(tokens[:count])

    def rollback(self, length: int) -> None:
        pass
