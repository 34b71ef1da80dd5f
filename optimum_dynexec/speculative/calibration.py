"""Calibration of the dynamic lookahead, backend-free: record draft features and oracle labels, train the DISCO
classifier, tune its threshold for the highest tokens/s under measured latencies.

Recording drafts ``max_lookahead`` tokens every step and lets the target verify them all: how many it accepts is
the oracle lookahead of that step, and every token up to the first rejection is a labelled example (accepted or
not, given that the tokens before it were). Training is scikit-learn's logistic regression; the result is stored
as plain arrays (:class:`~optimum_dynexec.speculative.disco.AcceptanceClassifier`), never pickled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from .cost import LatencyModel
from .disco import FEATURES, STOP_RULES, AcceptanceClassifier, FeatureTracker, stop_position
from .policies import LookaheadPolicy
from .signals import DraftSignal

THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)) + (0.97, 0.99)


@dataclass
class RecordedStep:
    """One verification step of the recording run: features of each drafted token, and how many were accepted."""

    features: np.ndarray  # [proposed, len(FEATURES)]
    accepted: int

    @property
    def proposed(self) -> int:
        return len(self.features)


class RecordingPolicy(LookaheadPolicy):
    """Always drafts ``max_lookahead`` tokens and records each token's DISCO features and the step's outcome."""

    name = "record"
    needs_signal = True

    def __init__(self, max_lookahead: int):
        super().__init__(max_lookahead)
        self.tracker = FeatureTracker()
        self.steps: list[RecordedStep] = []
        self._current: list[list[float]] = []

    def reset(self) -> None:
        self.tracker.reset()

    def lookahead(self) -> int:
        self.tracker.start_step()
        self._current = []
        return self.num_assistant_tokens

    def keep_drafting(self, position: int, signal: Optional[DraftSignal]) -> bool:
        if signal is None:
            raise ValueError("calibration records the draft's distribution; prompt lookup has none.")
        self._current.append(self.tracker.features(position, signal))
        return True

    def observe(self, proposed: int, accepted: int) -> None:
        if proposed > 0:
            self.steps.append(RecordedStep(np.asarray(self._current[:proposed], dtype=np.float64), accepted))
        self.tracker.observe(proposed, accepted)


def labelled_examples(steps: Sequence[RecordedStep]) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every drafted token up to (and including) each step's first rejection."""
    rows, labels = [], []
    for step in steps:
        judged = min(step.accepted + 1, step.proposed)
        rows.append(step.features[:judged])
        labels.append(np.arange(judged) < step.accepted)
    if not rows:
        raise ValueError("calibration recorded no draft tokens: give it prompts that produce some text.")
    return np.concatenate(rows), np.concatenate(labels).astype(np.int64)


def train_classifier(steps: Sequence[RecordedStep], seed: int = 0) -> tuple[AcceptanceClassifier, dict]:
    """Fit the acceptance classifier; returns it and its quality (held-out accuracy, AUC, log loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, labels = labelled_examples(steps)
    if len(np.unique(labels)) < 2:
        outcome = "accepted" if labels.all() else "rejected"
        raise ValueError(
            f"every one of the {len(labels)} calibration draft tokens was {outcome}, so there is nothing to learn "
            "when to stop; calibrate on more varied prompts (or more tokens per prompt)."
        )

    def fit(x: np.ndarray, y: np.ndarray) -> AcceptanceClassifier:
        scaler = StandardScaler().fit(x)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        model = LogisticRegression(C=1.0, max_iter=2000).fit((x - scaler.mean_) / scale, y)
        return AcceptanceClassifier(scaler.mean_.tolist(), scale.tolist(), model.coef_[0].tolist(),
                                    float(model.intercept_[0]), FEATURES)

    metrics: dict = {"examples": int(len(labels)), "accepted_fraction": float(labels.mean())}
    minority = int(min(labels.sum(), len(labels) - labels.sum()))
    if minority >= 5:
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=0.25, random_state=seed, stratify=labels
        )
        held_out = fit(x_train, y_train)
        predicted = np.array([held_out.predict(row) for row in x_test])
        metrics.update(
            held_out_accuracy=float(((predicted >= 0.5) == y_test).mean()),
            held_out_auc=float(roc_auc_score(y_test, predicted)) if len(np.unique(y_test)) == 2 else None,
            held_out_log_loss=float(log_loss(y_test, np.clip(predicted, 1e-6, 1 - 1e-6), labels=[0, 1])),
        )
    return fit(features, labels), metrics


def _step_cost(proposed: int, latencies: LatencyModel) -> float:
    return proposed * latencies.draft_step + latencies.verify_time(proposed + 1)


def simulate(
    steps: Sequence[RecordedStep], choose: Callable[[RecordedStep], int], latencies: LatencyModel
) -> dict:
    """Tokens/s if each recorded step had proposed ``choose(step)`` tokens (accepting min(oracle, proposed))."""
    tokens = seconds = 0.0
    chosen = []
    for step in steps:
        proposed = min(max(int(choose(step)), 0), step.proposed)
        tokens += min(step.accepted, proposed) + 1
        seconds += _step_cost(proposed, latencies)
        chosen.append(proposed)
    return {"tokens_per_second": tokens / seconds if seconds else 0.0, "chosen": chosen,
            "tokens_per_step": tokens / max(len(steps), 1)}


def disco_lookahead(step: RecordedStep, classifier: AcceptanceClassifier, threshold: float,
                    stop_rule: str = "token") -> int:
    """Tokens DISCO proposes in a recorded step (see :func:`~optimum_dynexec.speculative.disco.stop_position`)."""
    return stop_position([classifier.predict(row) for row in step.features], threshold, stop_rule)


def _width_sets(max_width: int, max_widths: int) -> list[tuple[int, ...]]:
    """Candidate verification widths: every set of at most ``max_widths`` widths in 2..``max_width`` (one per
    compiled copy of the target the runtime keeps, so that calls alternating between them switch no shapes)."""
    return [widths for count in range(1, max(max_widths, 1) + 1)
            for widths in itertools.combinations(range(2, max_width + 1), count)]


class LookaheadTuning(NamedTuple):
    """What calibration chose for DISCO, and the simulation behind the choice."""

    threshold: float
    stop_rule: str
    widths: tuple[int, ...]
    simulation: dict


def tune_lookahead(
    steps: Sequence[RecordedStep], classifier: AcceptanceClassifier, latencies: LatencyModel,
    thresholds: Sequence[float] = THRESHOLDS, max_widths: int = 1, stop_rules: Sequence[str] = STOP_RULES,
) -> LookaheadTuning:
    """The stop rule, threshold and verification widths with the highest simulated tokens/s.

    Target calls run padded to one of a few input lengths (``widths``; the runtime keeps the same shapes from
    call to call), so a step proposing ``p`` tokens costs a verification at the smallest width above ``p``, and
    the largest width bounds the lookahead. Every candidate set of at most ``max_widths`` widths (one per
    compiled copy of the target the runtime holds) is simulated with every stop rule and threshold. Static k
    runs at width k + 1; the oracle at its exact sizes.

    ``simulation`` has ``threshold_curve`` (for the chosen rule and widths), ``static`` (k -> tokens/s),
    ``oracle``, ``widths_curve`` (best tokens/s of each width set) and ``rule_curve`` (best of each stop rule).
    """
    accepted = np.array([step.accepted for step in steps])
    proposed = np.array([step.proposed for step in steps])
    max_width = int(proposed.max()) + 1
    # DISCO's own stopping point in every step, per rule and threshold (before any cap)
    predictions = [[classifier.predict(row) for row in step.features] for step in steps]
    stops = {(rule, float(t)): np.array([stop_position(p, t, rule) for p in predictions])
             for rule in stop_rules for t in thresholds}

    verify_tables: dict[tuple[int, ...], np.ndarray] = {}

    def tokens_per_second(lookahead: np.ndarray, widths: tuple[int, ...]) -> float:
        if widths not in verify_tables:
            timing = latencies.with_widths(widths)
            verify_tables[widths] = np.array([timing.verify_time(n) for n in range(1, max_width + 1)])
        tokens = np.minimum(accepted, lookahead).sum() + len(lookahead)
        seconds = lookahead.sum() * latencies.draft_step + verify_tables[widths][lookahead].sum()
        return float(tokens / seconds)

    best, widths_curve, rule_curve = (0.0,), {}, {}
    for widths in _width_sets(max_width, max_widths):
        cap = np.minimum(proposed, max(widths) - 1)
        curve = {key: tokens_per_second(np.minimum(stop, cap), widths) for key, stop in stops.items()}
        choice = max(curve, key=curve.get)
        widths_curve[widths] = curve[choice]
        for rule in stop_rules:
            rule_curve[rule] = max(rule_curve.get(rule, 0.0), max(v for (r, _), v in curve.items() if r == rule))
        if curve[choice] > best[0]:
            best = (curve[choice], choice, widths, curve)
    _, (stop_rule, threshold), widths, curve = best
    static = {k: tokens_per_second(np.minimum(proposed, k), (k + 1,)) for k in range(1, max_width)}
    static[0] = tokens_per_second(np.zeros_like(proposed), (1,))
    oracle = tokens_per_second(accepted, ())
    simulation = {"threshold_curve": {t: v for (r, t), v in curve.items() if r == stop_rule},
                  "static": dict(sorted(static.items())), "oracle": oracle, "rule_curve": rule_curve,
                  "widths_curve": {",".join(map(str, w)): v for w, v in widths_curve.items()}}
    return LookaheadTuning(threshold, stop_rule, widths, simulation)


def acceptance_curve(steps: Sequence[RecordedStep]) -> list[Optional[float]]:
    """P(draft token at position j is accepted | the tokens before it were), per position."""
    max_lookahead = max(step.proposed for step in steps)
    judged = np.zeros(max_lookahead)
    accepted = np.zeros(max_lookahead)
    for step in steps:
        count = min(step.accepted + 1, step.proposed)
        judged[:count] += 1
        accepted[: step.accepted] += 1
    return [float(a / j) if j else None for a, j in zip(accepted, judged)]
