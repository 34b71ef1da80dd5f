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
from typing import Optional, Sequence

import numpy as np

from ..backends.base import DecoderRunner
from .disco import AcceptanceClassifier, FeatureTracker, classifier_from_calibration
from .policies import LookaheadPolicy
from .signals import DraftSignal

_LATENCY_DECAY = 0.2  # weight of a new measurement in the running latency estimates
# weight of a call in its width's own correction: slower than the machine's drift (``scale``), so that the
# correction keeps what stays true of the width (its shape in the loop) and the drift shows in every width at once
_WIDTH_DECAY = 0.1
_RATE_DECAY = 0.1
_ACCEPTANCE_DECAY = 0.1
# a plan must beat the target alone by this much to start drafting: what the latency model leaves out (the
# draft catching up on skipped tokens, switching the target between input lengths, the measurements' noise)
# costs a few percent, and a draft that only breaks even is not worth it
_MIN_PLAN_GAIN = 1.05
_MIN_REALIZED = 4  # steps of each kind before realized rates overrule the latency model
# a probe's first step feeds the draft the tokens it skipped; the others measure drafting afresh (enough of them
# for a realized rate)
_PROBE_STEPS = 2 + _MIN_REALIZED
_MAX_STEP_RATIO = 4.0  # a step counts as at most this many average steps in the running rates
# realized rates within this factor of each other keep the policy in its current mode: one step's wall time varies
# by a third on a shared machine, and a switch costs what steady steps do not show (the draft catching up on
# skipped tokens, input shapes changing)
_SWITCH_MARGIN = 1.03
# A drafting run's rate is noisy: tokens per step vary from 1 to the whole lookahead with the text (their spread is
# 0.6 of their mean on Qwen2.5-Coder), so a few steps (a probe) say little. A run younger than this many steps stops
# only on a clear loss; one that merely looks no better than the target alone goes on until it has the evidence.
# (SmolLM2 with its INT4 copy: drafting pays 10% over the benchmark, but 4-step probes realized 0.6-1.1x the target
# alone, so "cost" drafted in a few percent of its steps.)
_EVIDENCE_STEPS = 12
_CLEAR_LOSS = 0.8


@dataclass
class _RunningRate:
    """Tokens per step and seconds per step, exponentially averaged; their ratio is a rate in tokens/s."""

    tokens: float = 0.0
    seconds: float = 0.0
    steps: int = 0
    _first: list = field(default_factory=list)

    def add(self, tokens: float, seconds: float) -> None:
        self.steps += 1
        if self.steps <= _MIN_REALIZED:
            # The first steps start the averages together, the slowest of them left out once there are three: the
            # first step on a compiled copy pays its first inference (0.35 s against ~30 ms for a SmolLM2 drafting
            # step here), and as the only start of the averages it would set the scale later steps are clipped
            # to, making drafting look slow for dozens of steps.
            self._first.append((float(tokens), float(seconds)))
            kept = sorted(self._first, key=lambda sample: sample[1])
            kept = kept[:-1] if len(kept) >= 3 else kept
            self.tokens = sum(t for t, _ in kept) / len(kept)
            self.seconds = sum(s for _, s in kept) / len(kept)
            return
        # one stalled step (a first call compiling a graph, a page fault storm, another tenant) must not
        # switch drafting off for dozens of steps: it counts as a few slow ones at most
        seconds = min(seconds, _MAX_STEP_RATIO * self.seconds)
        self.tokens += _RATE_DECAY * (tokens - self.tokens)
        self.seconds += _RATE_DECAY * (seconds - self.seconds)

    @property
    def value(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LatencyModel:
    """Seconds of one draft step and of one target call over ``n`` tokens (``verify[n - 1]``).

    Every observed target call rescales the measured table as a whole (``scale``), so the cost of a call not
    being made (one token, no draft) follows the machine's drift too, and corrects its own width's entry
    (``width_factors``): in the loop a width may cost more than measured alone (SmolLM2-135M: width 9 1.25x its
    measured cost when its calls alternated with width-1 calls on one compiled model; Qwen2.5-1.5B: width 10
    1.08x), and only the loop shows it. ``widths`` are the input lengths the runtime pads target calls up to (see
    ``OVPagedDecoderRunner.input_widths``): a call over ``n`` tokens costs what a call of the smallest width >= n
    costs.
    """

    draft_step: float
    verify: list[float] = field(default_factory=list)
    scale: float = 1.0
    widths: tuple[int, ...] = ()
    width_factors: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verify or any(not np.isfinite(v) or v <= 0 for v in self.verify) or self.draft_step < 0:
            raise ValueError(f"latencies must be positive seconds, got draft {self.draft_step}, verify {self.verify}.")
        self.verify = [float(v) for v in self.verify]
        self.widths = tuple(sorted(int(w) for w in self.widths))

    @property
    def draft_is_free(self) -> bool:
        """No draft model runs (prompt lookup: measured without one, its step costs 0 s)."""
        return self.draft_step == 0.0

    def padded(self, tokens: int) -> int:
        """The input length a call over ``tokens`` tokens runs at."""
        return next((width for width in self.widths if width >= tokens), tokens)

    def with_widths(self, widths: Sequence[int]) -> "LatencyModel":
        """The same measurements, for a runtime padding calls to ``widths``."""
        return LatencyModel(self.draft_step, list(self.verify), self.scale, tuple(widths), dict(self.width_factors))

    def _table(self, width: int) -> float:
        """The measured cost of a call ``width`` tokens wide (extrapolated beyond the table)."""
        if width <= len(self.verify):
            return self.verify[width - 1]
        slope = (self.verify[-1] - self.verify[0]) / max(len(self.verify) - 1, 1)
        return self.verify[-1] + slope * (width - len(self.verify))

    def verify_time(self, tokens: int) -> float:
        width = self.padded(max(tokens, 1))
        return self.scale * self._table(width) * self.width_factors.get(width, 1.0)

    def update(self, draft_seconds: float, draft_tokens: int, target_seconds: float, target_tokens: int) -> None:
        """Follow the machine: ``draft_seconds`` for ``draft_tokens`` draft tokens, ``target_seconds`` for one target
        call over ``target_tokens`` tokens."""
        if draft_tokens > 0:
            self.draft_step += _LATENCY_DECAY * (draft_seconds / draft_tokens - self.draft_step)
        # a call longer than the table is a prompt's prefill (the first step of a sequence): priced by extrapolating
        # the table it said nothing about steady steps, yet it moved the whole table for a dozen steps (3x after a
        # 105-token SmolLM2 prompt)
        if 1 <= target_tokens <= len(self.verify) and target_seconds > 0:
            width = self.padded(target_tokens)
            ratio = target_seconds / self._table(width)
            factor = self.width_factors.get(width, 1.0)
            self.scale += _LATENCY_DECAY * (ratio / factor - self.scale)
            self.width_factors[width] = factor + _WIDTH_DECAY * (ratio / self.scale - factor)
            # the corrections are relative (their mean is 1): ``scale`` carries the level, and a width not seen
            # yet costs the table's shape at the level of those seen
            mean = sum(self.width_factors.values()) / len(self.width_factors)
            self.scale *= mean
            self.width_factors = {w: f / mean for w, f in self.width_factors.items()}

    def to_dict(self) -> dict:
        """Seconds per draft step and per target call of each size, as measured (sizes 1..len(verify))."""
        return {"draft_step_seconds": self.draft_step,
                "verify_seconds": [self.scale * v for v in self.verify]}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyModel":
        return cls(float(data["draft_step_seconds"]), [float(v) for v in data["verify_seconds"]])


def measure_latencies(
    target: DecoderRunner, draft: Optional[DecoderRunner], context: np.ndarray, max_tokens: int, repeats: int = 3,
    context_tokens: int = 64, rounds: int = 3,
) -> LatencyModel:
    """Time the draft's one-token step and the target's call over 1..``max_tokens`` + 1 tokens after a prefill of
    (the first ``context_tokens`` of) ``context``.

    Each size is timed over ``repeats`` calls in a row after an untimed one (a call of a new input length pays
    the plugin's shape preparation once: in the loop, calls of one size follow each other too), each call rolled
    back to one prefill made per round, and the sizes take turns for ``rounds`` rounds so that the
    machine's drift (other tenants' memory traffic moves a Qwen2.5-1.5B call by 20% here) spreads over all of
    them. The verify table is a straight line fitted to the per-size medians (cost grows about linearly with
    the tokens verified; a fit is far less noisy than each size's own median). Both runners are reset."""
    limits = [r.max_length - max_tokens - 2 for r in (target, draft) if r is not None and r.max_length]
    context = np.resize(np.asarray(context, dtype=np.int64), max(min([context_tokens, *limits]), 1))
    tokens = np.resize(context, max_tokens + 1)
    sizes = np.arange(1, max_tokens + 2)
    samples: dict[int, list[float]] = {int(n): [] for n in sizes}
    draft_steps: list[float] = []
    if draft is not None:
        draft.reset()
        draft.forward(context, last=1)
        draft_length = draft.cache_length
    # a runner that pads calls (input_widths) is measured at each size itself
    padding = getattr(target, "input_widths", None)
    for _ in range(rounds):
        # one prefill per round, every call trimmed back to it: a prefill per size made this take minutes where
        # a 256-token prefill of the target takes seconds (Qwen2.5-1.5B on an AVX2-only CPU)
        target.reset()
        target.forward(context, last=1)
        length = target.cache_length
        for n in sizes:
            n = int(n)
            if padding is not None:
                target.input_widths = (n,)
            for repeat in range(repeats + 1):
                start = time.perf_counter()
                target.forward(tokens[:n])
                if repeat:
                    samples[n].append(time.perf_counter() - start)
                target.trim(length)
                if draft is not None:  # as in the loop: a draft step right after a target call
                    start = time.perf_counter()
                    draft.forward(tokens[n - 1 : n], last=1)
                    if repeat:
                        draft_steps.append(time.perf_counter() - start)
                    draft.trim(draft_length)
    target.reset()
    if padding is not None:
        target.input_widths = padding
    draft_step = 0.0
    if draft is not None:
        draft.reset()
        draft_step = float(np.median(draft_steps))
    medians = np.array([np.median(samples[int(n)]) for n in sizes])
    if len(sizes) > 1:
        slope, intercept = np.polyfit(sizes, medians, 1)
        slope = max(float(slope), 0.0)  # more tokens never cost less
        intercept = float(np.median(medians - slope * sizes))
        verify = intercept + slope * sizes
    else:
        verify = medians
    return LatencyModel(draft_step, np.maximum(verify, 1e-6).tolist())


class CostPolicy(LookaheadPolicy):
    """Draft the next token only while its expected gain per extra second beats the rate achieved so far.

    After drafting token ``n`` with predicted acceptance ``q`` (all of the step's tokens so far accepted with
    probability ``P``), m more tokens add ``P (q + q^2 + ... + q^m)`` expected tokens for ``m t_draft +
    t_verify(n+1+m) - t_verify(n+1)`` seconds; drafting continues while some m earns more than the running
    tokens/s would in that time (Dinkelbach's rule for maximising a ratio). The same test before the first
    token decides whether to draft at all.

    When the target alone wins, a probe (a few drafting steps) every ``probe_interval`` skipped steps, doubling up
    to ``max_probe_interval``, checks whether drafting has started to pay: unless it loses clearly it goes on until
    its realized rate rests on enough steps to judge, and drafting that proves itself resets the interval. The
    policy lives across generate calls, and the interval may span several of them: a probe's first step feeds the
    draft every token it skipped (the prompt included), which on a pair whose draft costs most of a target step is
    what makes probing expensive.
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
        max_probe_interval: int = 1024,
    ):
        super().__init__(max_assistant_tokens)
        self.latencies = latencies
        self.classifier = classifier
        self.initial_acceptance = float(initial_acceptance)
        self.probe_interval = probe_interval
        self.max_probe_interval = max_probe_interval
        self.tracker = FeatureTracker(initial_acceptance)
        #: seconds for realized step times (replaceable in tests)
        self.clock = time.perf_counter
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

    def _start_learning(self) -> None:
        """What the policy learns while it runs; kept across sequences (one policy serves a model's calls)."""
        self.position_acceptance = [self.initial_acceptance] * (self.num_assistant_tokens + 1)
        self._achieved = _RunningRate()  # runtime seconds of every step: the rate a draft token must beat
        self._skipped = 0
        self._interval = self.probe_interval
        self._probe_left = 0
        # realized wall-time rates of steady drafting steps and of target-only steps: once both are known they
        # decide, whatever the latency model predicted
        self._realized = {True: _RunningRate(), False: _RunningRate()}

    def reset(self) -> None:
        """A new sequence: the draft has not seen its prompt yet (its first call is a prefill, not a step)."""
        if not hasattr(self, "_interval"):
            self._start_learning()
        self.tracker.reset()
        self._step_tokens = 0
        self._expected = 1.0
        self.predictions: list[float] = []
        self._drafting = False
        self._caught_up = False  # True when the draft has seen every token but the last (it drafted last step)
        self._step_end: Optional[float] = None

    @property
    def rate(self) -> float:
        """The tokens/s a draft token must beat: the rate achieved so far, and never less than the target alone
        (not drafting is always possible, so a policy that drafted badly must not judge itself by its own rate)."""
        return max(self._achieved.value, 1.0 / self.latencies.verify_time(1))

    def _worth_drafting(self, probability: float, acceptances: Sequence[float], drafted: int) -> bool:
        """Whether drafting more after ``drafted`` tokens pays: some plan of m more tokens, the i-th accepted with
        probability ``acceptances[i]`` given the ones before (after a prefix all accepted with ``probability``),
        yields more expected tokens than ``rate`` would earn in the seconds those m draft steps and the longer
        verification take. Looking m tokens ahead (not one) matters: the first draft token alone may not pay
        while the run it starts does."""
        rate, latencies = self.rate, self.latencies
        verify_now = latencies.verify_time(drafted + 1)
        expected = 0.0
        for more, acceptance in enumerate(acceptances[: self.num_assistant_tokens - drafted], start=1):
            probability *= acceptance
            expected += probability
            extra = more * latencies.draft_step + latencies.verify_time(drafted + 1 + more) - verify_now
            if expected > rate * extra:
                return True
        return False

    def _plan_pays(self) -> bool:
        """Before a step, with no draft signal yet: whether drafting some m tokens yields more tokens per second
        than the target alone, from the acceptance of each position seen so far (given the ones before: later
        tokens of a run that got that far are accepted far more often than the first, 0.9 vs 0.6 on
        Qwen2.5-Coder). Compared with the target alone, not with the rate achieved so far, so that one unlucky
        step does not switch a good draft off."""
        latencies = self.latencies
        alone = _MIN_PLAN_GAIN / latencies.verify_time(1)
        probability, expected = 1.0, 1.0
        for more, acceptance in enumerate(self.position_acceptance[: self.num_assistant_tokens], start=1):
            probability *= acceptance
            expected += probability
            if expected > alone * (more * latencies.draft_step + latencies.verify_time(1 + more)):
                return True
        return False

    def _drafting_pays(self) -> bool:
        """The realized tokens/s of drafting steps against those of target-only steps once both were seen
        (``_MIN_REALIZED`` steps each; the other mode must win by ``_SWITCH_MARGIN`` to switch, and a drafting run
        younger than ``_EVIDENCE_STEPS`` steps stops only below ``_CLEAR_LOSS`` times the target alone), else the
        latency model's plan.

        A draft that costs nothing to run (prompt lookup: no draft step, nothing to catch up on after skipped
        steps) is judged by the plan alone: drafting costs only the wider target call, which the latency model
        follows per width, and the realized rates would compare unlike steps (a drafting step without an n-gram
        match is a one-token call like the target alone's, so drafting's rate blends both; on SmolLM2 the rates
        came within 3% and the policy skipped the matches of whole prompts)."""
        if self.latencies.draft_is_free:
            return self._plan_pays()
        drafting, alone = self._realized[True], self._realized[False]
        if drafting.steps >= _MIN_REALIZED and alone.steps >= _MIN_REALIZED:
            if self._drafting and drafting.steps < _EVIDENCE_STEPS:
                return drafting.value > alone.value * _CLEAR_LOSS
            pays = drafting.value > alone.value * (1.0 / _SWITCH_MARGIN if self._drafting else _SWITCH_MARGIN)
            if pays and self._drafting:
                self._interval = self.probe_interval  # drafting proved itself: the next probe's back-off starts over
            return pays
        return self._plan_pays()

    def lookahead(self) -> int:
        self.tracker.start_step()
        self._expected = 1.0
        self.predictions = []
        if self._probe_left or self._drafting_pays():
            self._probe_left = max(self._probe_left - 1, 0)
            if not self._probe_left:
                self._skipped = 0
            self._drafting = True
            return self.num_assistant_tokens
        self._skipped += 1
        if self._skipped >= self._interval:  # probe: has the draft become worth it?
            self._skipped = 0
            self._interval = min(2 * self._interval, self.max_probe_interval)
            # a few steps: the first makes the draft catch up on the tokens it skipped (not a steady step's cost),
            # the next ones show what drafting earns; as many tokens each as the draft's signals justify. They
            # replace what drafting realized before: that is as old as the last drafting run, and a few steps
            # averaged into it could not move it
            self._probe_left = _PROBE_STEPS - 1
            self._realized[True] = _RunningRate()
            self._drafting = True
            return self.num_assistant_tokens
        self._drafting = False
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
        # the next tokens' acceptance is unknown until they are drafted: assume they resemble this one
        return self._worth_drafting(self._expected, [acceptance] * self.num_assistant_tokens, position + 1)

    def observe(self, proposed: int, accepted: int) -> None:
        self.tracker.observe(proposed, accepted)
        self._step_tokens = accepted + 1
        if proposed == 0:
            return
        for position in range(min(accepted + 1, proposed, len(self.position_acceptance))):
            outcome = float(position < accepted)
            self.position_acceptance[position] += _ACCEPTANCE_DECAY * (outcome - self.position_acceptance[position])

    def observe_timing(self, draft_seconds: float, draft_tokens: int, target_seconds: float, target_tokens: int) -> None:
        if self._caught_up:
            self.latencies.update(draft_seconds, draft_tokens, target_seconds, target_tokens)
        else:  # the draft's first call after skipped steps fed all the tokens it missed: not a draft step's cost
            self.latencies.update(0.0, 0, target_seconds, target_tokens)
        # realized rates use the wall time from step end to step end: the draft's Python (sampling, signals) and
        # the loop's are part of what drafting costs
        now = self.clock()
        wall, self._step_end = (None if self._step_end is None else now - self._step_end), now
        # a catch-up step's draft time is the skipped tokens' prefill, not what drafting costs
        if wall is not None and (self._caught_up or not self._drafting):
            self._realized[self._drafting].add(self._step_tokens, wall)
        self._caught_up = self._drafting
        self._achieved.add(self._step_tokens, draft_seconds + target_seconds)
