"""Cost-aware lookahead: draft while the expected tokens per second still rise, on this machine.

Latencies (one draft step; one target call as a function of the tokens it verifies) are measured when the
policy is first used and refined by every step; acceptance probabilities come from the calibrated DISCO
classifier when the pair has one, else from the draft's own confidence (prompt lookup: the acceptance seen
so far at each position). A token is worth drafting when its expected gain per extra second beats the rate
already achieved; when even the first draft token does not pay, the target generates alone, and a rare
probe (backing off) checks whether the draft has become worth it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..backends.base import DecoderRunner
from .disco import AcceptanceClassifier, FeatureTracker, classifier_from_calibration
from .policies import LookaheadPolicy
from .signals import DraftSignal

_LATENCY_DECAY = 0.1  # weight of a new measurement in the running latency estimates
_RATE_DECAY = 0.1
_ACCEPTANCE_DECAY = 0.2


@dataclass
class LatencyModel:
    """Seconds of one draft step and of one target call over ``n`` tokens (``verify[n - 1]``).

    The verify table keeps its measured shape; every observed target call rescales it as a whole (``scale``),
    so the cost of the call not being made (one token, no draft) follows the machine's drift too.
    """

    draft_step: float
    verify: list[float] = field(default_factory=list)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.verify or any(not np.isfinite(v) or v <= 0 for v in self.verify) or self.draft_step < 0:
            raise ValueError(f"latencies must be positive seconds, got draft {self.draft_step}, verify {self.verify}.")
        self.verify = [float(v) for v in self.verify]

    def _base(self, tokens: int) -> float:
        if tokens <= len(self.verify):
            return self.verify[max(tokens, 1) - 1]
        slope = (self.verify[-1] - self.verify[0]) / max(len(self.verify) - 1, 1)
        return self.verify[-1] + slope * (tokens - len(self.verify))

    def verify_time(self, tokens: int) -> float:
        return self.scale * self._base(tokens)

    def update(self, draft_seconds: float, draft_calls: int, target_seconds: float, target_tokens: int) -> None:
        if draft_calls > 0:
            self.draft_step += _LATENCY_DECAY * (draft_seconds / draft_calls - self.draft_step)
        if target_tokens >= 1 and target_seconds > 0:
            self.scale += _LATENCY_DECAY * (target_seconds / self._base(target_tokens) - self.scale)

    def to_dict(self) -> dict:
        return {"draft_step_seconds": self.draft_step, "verify_seconds": [self.verify_time(n + 1)
                                                                          for n in range(len(self.verify))]}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyModel":
        return cls(float(data["draft_step_seconds"]), [float(v) for v in data["verify_seconds"]])


def measure_latencies(
    target: DecoderRunner, draft: Optional[DecoderRunner], context: np.ndarray, max_tokens: int, repeats: int = 3,
    context_tokens: int = 64,
) -> LatencyModel:
    """Time the draft's one-token step and the target's call over 1..``max_tokens`` + 1 tokens after a prefill of
    (the first ``context_tokens`` of) ``context``: rounds of every size in turn, each round on a fresh cache (so
    rolled-back slots do not pile up), median per size. Both runners are reset afterwards."""
    context = np.resize(np.asarray(context, dtype=np.int64), context_tokens)
    tokens = np.resize(context, max_tokens + 1)
    sizes = range(1, max_tokens + 2)
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for round_ in range(repeats + 1):
        target.reset()
        target.forward(context)
        length = target.cache_length
        for n in sizes:
            start = time.perf_counter()
            target.forward(tokens[:n])
            if round_:  # the first round warms every shape up
                samples[n].append(time.perf_counter() - start)
            target.trim(length)
    target.reset()
    draft_step = 0.0
    if draft is not None:
        draft.reset()
        draft.forward(context)
        steps = []
        for i in range(2 * repeats + 1):
            start = time.perf_counter()
            draft.forward(tokens[i % len(tokens) : i % len(tokens) + 1])
            steps.append(time.perf_counter() - start)
        draft.reset()
        draft_step = float(np.median(steps[1:]))
    verify = np.maximum.accumulate([float(np.median(samples[n])) for n in sizes])  # more tokens never cost less
    return LatencyModel(draft_step, verify.tolist())


class CostPolicy(LookaheadPolicy):
    """Draft the next token only while its expected gain per extra second beats the rate achieved so far.

    After drafting token ``n`` with predicted acceptance ``q`` (all of the step's tokens so far accepted with
    probability ``P``), one more token adds ``P * q`` expected tokens for ``t_draft + t_verify(n+2) -
    t_verify(n+1)`` seconds; drafting continues while that ratio exceeds the running tokens/s. The same test on
    the first token decides whether to draft at all.
    """

    name = "cost"
    needs_signal = True

    def __init__(
        self,
        latencies: LatencyModel,
        max_assistant_tokens: int = 10,
        classifier: Optional[AcceptanceClassifier] = None,
        initial_acceptance: float = 0.6,
        probe_interval: int = 8,
        max_probe_interval: int = 128,
    ):
        super().__init__(max_assistant_tokens)
        self.latencies = latencies
        self.classifier = classifier
        self.initial_acceptance = float(initial_acceptance)
        self.probe_interval = probe_interval
        self.max_probe_interval = max_probe_interval
        self.tracker = FeatureTracker(initial_acceptance)
        self.reset()

    @classmethod
    def from_calibration(
        cls, calibration: Optional[dict], latencies: Optional[LatencyModel], max_assistant_tokens: int = 10
    ) -> "CostPolicy":
        if latencies is None:
            raise ValueError("num_assistant_tokens_schedule='cost' needs latencies measured on this machine.")
        calibration = calibration or {}
        return cls(latencies, max_assistant_tokens, classifier_from_calibration(calibration),
                   float(calibration.get("mean_acceptance", 0.6)))

    def reset(self) -> None:
        self.tracker.reset()
        self.first_acceptance = self.initial_acceptance
        self.position_acceptance = [self.initial_acceptance] * (self.num_assistant_tokens + 1)
        self._tokens = 0.0
        self._seconds = 0.0
        self._step_tokens = 0
        self._skipped = 0
        self._interval = self.probe_interval
        self._expected = 1.0
        self.predictions: list[float] = []

    @property
    def rate(self) -> float:
        """The tokens/s a draft token must beat: the rate achieved so far, and never less than the target alone
        (not drafting is always possible, so a policy that drafted badly must not judge itself by its own rate)."""
        alone = 1.0 / self.latencies.verify_time(1)
        if self._seconds > 0:
            return max(self._tokens / self._seconds, alone)
        return alone

    def _gain(self, expected: float, drafted: int) -> float:
        """Expected tokens per extra second of drafting token ``drafted`` (0-based) and verifying it."""
        extra = (self.latencies.draft_step + self.latencies.verify_time(drafted + 2)
                 - self.latencies.verify_time(drafted + 1))
        return expected / max(extra, 1e-6)

    def lookahead(self) -> int:
        self.tracker.start_step()
        self._expected = 1.0
        self.predictions = []
        if self._gain(self.first_acceptance, 0) > self.rate:
            self._skipped = 0
            self._interval = self.probe_interval
            return self.num_assistant_tokens
        self._skipped += 1
        if self._skipped >= self._interval:  # probe: has the draft become worth it?
            self._skipped = 0
            self._interval = min(2 * self._interval, self.max_probe_interval)
            return 1
        return 0

    def _acceptance(self, position: int, signal: Optional[DraftSignal]) -> float:
        if signal is None:
            return self.position_acceptance[min(position, len(self.position_acceptance) - 1)]
        features = self.tracker.features(position, signal)
        if self.classifier is not None:
            return self.classifier.predict(features)
        return signal.probability

    def keep_drafting(self, position: int, signal: Optional[DraftSignal]) -> bool:
        acceptance = self._acceptance(position, signal)
        self.predictions.append(acceptance)
        self._expected *= acceptance
        # the next token's acceptance is unknown until it is drafted: assume it resembles this one
        return self._gain(self._expected * acceptance, position + 1) > self.rate

    def observe(self, proposed: int, accepted: int) -> None:
        self.tracker.observe(proposed, accepted)
        self._step_tokens = accepted + 1
        if proposed == 0:
            return
        self.first_acceptance += _ACCEPTANCE_DECAY * (float(accepted > 0) - self.first_acceptance)
        for position in range(min(accepted + 1, proposed, len(self.position_acceptance))):
            outcome = float(position < accepted)
            self.position_acceptance[position] += _ACCEPTANCE_DECAY * (outcome - self.position_acceptance[position])

    def observe_timing(self, draft_seconds: float, draft_calls: int, target_seconds: float, target_tokens: int) -> None:
        self.latencies.update(draft_seconds, draft_calls, target_seconds, target_tokens)
        seconds = draft_seconds + target_seconds
        if self._seconds == 0:
            self._tokens, self._seconds = float(self._step_tokens), seconds
        else:
            self._tokens += _RATE_DECAY * (self._step_tokens - self._tokens)
            self._seconds += _RATE_DECAY * (seconds - self._seconds)
