"""Lookahead policies: how many tokens to draft before the target verifies them.

A policy is asked once per speculative step for the most tokens it wants (``lookahead``), may stop the
draft early after each drafted token (``keep_drafting``), and learns from the outcome (``observe``).
Policies know nothing of models or runtimes.
"""

from __future__ import annotations

from typing import Optional


class LookaheadPolicy:
    """Static lookahead: always draft ``num_assistant_tokens`` tokens."""

    name = "constant"
    #: whether ``keep_drafting`` reads the draft token's probability (costs a softmax per draft token)
    needs_confidence = False

    def __init__(self, num_assistant_tokens: int):
        if int(num_assistant_tokens) < 1:
            raise ValueError(
                f"num_assistant_tokens must be >= 1, got {num_assistant_tokens}. "
                "Use a draft lookahead of at least one token, or generate without a draft."
            )
        self.num_assistant_tokens = int(num_assistant_tokens)

    def reset(self) -> None:
        """Called at the start of every sequence."""

    def lookahead(self) -> int:
        """Most draft tokens to propose in this step."""
        return self.num_assistant_tokens

    def keep_drafting(self, position: int, probability: Optional[float]) -> bool:
        """Whether to draft another token after the token at ``position`` (0-based) with draft ``probability``."""
        return True

    def observe(self, proposed: int, accepted: int) -> None:
        """Feedback after verification: ``accepted`` of ``proposed`` draft tokens were kept."""


class HeuristicPolicy(LookaheadPolicy):
    """transformers' "heuristic" schedule: +2 after a fully accepted step, -1 (at least 1) otherwise."""

    name = "heuristic"

    def __init__(self, num_assistant_tokens: int, max_assistant_tokens: int = 32):
        super().__init__(num_assistant_tokens)
        self.initial = self.num_assistant_tokens
        self.max_assistant_tokens = max(max_assistant_tokens, self.initial)

    def reset(self) -> None:
        self.num_assistant_tokens = self.initial

    def observe(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == proposed:
            self.num_assistant_tokens = min(self.num_assistant_tokens + 2, self.max_assistant_tokens)
        else:
            self.num_assistant_tokens = max(1, self.num_assistant_tokens - 1)


class ConfidencePolicy(LookaheadPolicy):
    """Draft up to ``num_assistant_tokens`` tokens, stopping after a token whose draft probability is
    below ``threshold`` (transformers' ``assistant_confidence_threshold``)."""

    name = "confidence"
    needs_confidence = True

    def __init__(self, num_assistant_tokens: int, threshold: float):
        super().__init__(num_assistant_tokens)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"assistant_confidence_threshold must be in [0, 1), got {threshold}.")
        self.threshold = float(threshold)

    def keep_drafting(self, position: int, probability: Optional[float]) -> bool:
        return probability is None or probability >= self.threshold


SCHEDULES = ("constant", "heuristic")


def make_policy(
    num_assistant_tokens: int, schedule: str = "constant", confidence_threshold: Optional[float] = None
) -> LookaheadPolicy:
    """Build the policy named by transformers' options (``num_assistant_tokens_schedule`` and
    ``assistant_confidence_threshold``); a threshold > 0 with the constant schedule selects confidence."""
    if schedule == "heuristic":
        policy = HeuristicPolicy(num_assistant_tokens)
        if confidence_threshold:
            raise ValueError(
                "assistant_confidence_threshold cannot be combined with num_assistant_tokens_schedule='heuristic'; "
                "pick one of them."
            )
        return policy
    if schedule != "constant":
        raise ValueError(
            f"Unknown num_assistant_tokens_schedule={schedule!r}; expected one of {SCHEDULES}."
        )
    if confidence_threshold:
        return ConfidencePolicy(num_assistant_tokens, confidence_threshold)
    return LookaheadPolicy(num_assistant_tokens)
