"""Lookahead policies: how many tokens to draft before the target verifies them.

A policy is asked once per speculative step for the most tokens it wants (``lookahead``; 0 = let the target
generate this token alone), may stop the draft early after each drafted token (``keep_drafting``, reading the
draft's :class:`~optimum_dynexec.speculative.signals.DraftSignal` when ``needs_signal``), and learns from the
outcome (``observe``) and the measured latencies (``observe_timing``). Policies know nothing of models or
runtimes. The calibrated policies ("disco", "cost") live in :mod:`.disco` and :mod:`.cost`.
"""

from __future__ import annotations

from typing import Optional

from .signals import DraftSignal


class LookaheadPolicy:
    """Static lookahead: always draft ``num_assistant_tokens`` tokens."""

    name = "constant"
    #: whether ``keep_drafting`` reads the draft's signal (costs a softmax per draft token)
    needs_signal = False

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
        """Most draft tokens to propose in this step (0: the target generates one token alone)."""
        return self.num_assistant_tokens

    def keep_drafting(self, position: int, signal: Optional[DraftSignal]) -> bool:
        """Whether to draft another token after the token at ``position`` (0-based); ``signal`` is None for
        drafters without a distribution (prompt lookup) or when the policy does not need it."""
        return True

    def observe(self, proposed: int, accepted: int) -> None:
        """Feedback after verification: ``accepted`` of ``proposed`` draft tokens were kept."""

    def observe_timing(self, draft_seconds: float, draft_tokens: int, target_seconds: float, target_tokens: int) -> None:
        """Latencies of the step just finished: the draft model's calls that proposed ``draft_tokens`` tokens (0 for
        drafters without a model), and one target call over ``target_tokens`` tokens."""


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
    needs_signal = True

    def __init__(self, num_assistant_tokens: int, threshold: float):
        super().__init__(num_assistant_tokens)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"assistant_confidence_threshold must be in [0, 1), got {threshold}.")
        self.threshold = float(threshold)

    def keep_drafting(self, position: int, signal: Optional[DraftSignal]) -> bool:
        return signal is None or signal.probability >= self.threshold


SCHEDULES = ("constant", "heuristic", "disco", "cost")


def make_policy(
    num_assistant_tokens: int,
    schedule: str = "constant",
    confidence_threshold: Optional[float] = None,
    *,
    calibration: Optional[dict] = None,
    latencies=None,
    max_assistant_tokens: int = 10,
) -> LookaheadPolicy:
    """Build the policy named by transformers' options (``num_assistant_tokens_schedule`` and
    ``assistant_confidence_threshold``); a threshold > 0 with the constant schedule selects confidence.

    "disco" needs ``calibration`` (the ``calibration`` section of a pair's dynexec_config.json); "cost" needs
    ``latencies`` (a :class:`~optimum_dynexec.speculative.cost.LatencyModel` measured on this machine) and
    uses the calibrated classifier when there is one.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown num_assistant_tokens_schedule={schedule!r}; expected one of {SCHEDULES}.")
    if confidence_threshold and schedule != "constant":
        raise ValueError(
            f"assistant_confidence_threshold cannot be combined with num_assistant_tokens_schedule={schedule!r}; "
            "pick one of them."
        )
    if schedule == "heuristic":
        return HeuristicPolicy(num_assistant_tokens)
    if schedule == "disco":
        from .disco import DiscoPolicy

        return DiscoPolicy.from_calibration(calibration, max_assistant_tokens)
    if schedule == "cost":
        from .cost import CostPolicy

        return CostPolicy.from_calibration(calibration, latencies, max_assistant_tokens)
    if confidence_threshold:
        return ConfidencePolicy(num_assistant_tokens, confidence_threshold)
    return LookaheadPolicy(num_assistant_tokens)
