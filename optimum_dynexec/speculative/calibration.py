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
from typing import Callable, Optional, Sequence

import numpy as np

from .cost import LatencyModel
from .disco import FEATURES, AcceptanceClassifier, FeatureTracker
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


def disco_lookahead(step: RecordedStep, classifier: AcceptanceClassifier, threshold: float) -> int:
    """Tokens DISCO proposes in a recorded step: up to and including the first token predicted below threshold."""
    for position, row in enumerate(step.features):
        if classifier.predict(row) < threshold:
            return position + 1
    return step.proposed


def _width_sets(max_width: int, max_widths: int) -> list[tuple[int, ...]]:
    """Candidate verification widths: every single width 2..``max_width`` and, when the runtime keeps two
    widths without switching costs, every pair."""
    singles = [(w,) for w in range(2, max_width + 1)]
    if max_widths < 2:
        return singles
    return singles + list(itertools.combinations(range(2, max_width + 1), 2))


def tune_lookahead(
    steps: Sequence[RecordedStep], classifier: AcceptanceClassifier, latencies: LatencyModel,
    thresholds: Sequence[float] = THRESHOLDS, max_widths: int = 1,
) -> tuple[float, tuple[int, ...], dict]:
    """The threshold and verification widths with the highest simulated tokens/s, and the comparison behind them.

    Target calls run padded to one of a few input lengths (``widths``; the runtime keeps the same shapes from
    call to call), so a step proposing ``p`` tokens costs a verification at the smallest width above ``p``, and
    the largest width bounds the lookahead. Every candidate set of at most ``max_widths`` widths (one, or two
    when the runtime holds a compiled copy per width) is simulated with every threshold. Static k runs at
    width k + 1; the oracle at its exact sizes.

    Returns ``(threshold, widths, simulation)``; ``simulation`` has ``threshold_curve`` (for the chosen widths),
    ``static`` (k -> tokens/s), ``oracle`` and ``widths_curve`` (best tokens/s of each width set).
    """
    accepted = np.array([step.accepted for step in steps])
    proposed = np.array([step.proposed for step in steps])
    max_width = int(proposed.max()) + 1
    # DISCO's own stopping point in every step, per threshold (before any cap)
    predictions = [np.array([classifier.predict(row) for row in step.features]) for step in steps]
    stops = {float(t): np.array([_first_below(p, t) for p in predictions]) for t in thresholds}

    def tokens_per_second(lookahead: np.ndarray, widths: tuple[int, ...]) -> float:
        timing = latencies.with_widths(widths)
        verify = np.array([timing.verify_time(n) for n in range(1, max_width + 1)])
        tokens = np.minimum(accepted, lookahead).sum() + len(lookahead)
        seconds = (lookahead * timing.draft_step).sum() + verify[lookahead].sum()
        return float(tokens / seconds)

    best, widths_curve = (0.0, None, None), {}
    for widths in _width_sets(max_width, max_widths):
        cap = np.minimum(proposed, max(widths) - 1)
        curve = {t: tokens_per_second(np.minimum(stop, cap), widths) for t, stop in stops.items()}
        threshold = max(curve, key=curve.get)
        widths_curve[widths] = curve[threshold]
        if curve[threshold] > best[0]:
            best = (curve[threshold], threshold, widths, curve)
    _, threshold, widths, curve = best
    static = {k: tokens_per_second(np.minimum(proposed, k), (k + 1,)) for k in range(1, max_width)}
    static[0] = tokens_per_second(np.zeros_like(proposed), (1,))
    oracle = tokens_per_second(accepted, ())
    return threshold, widths, {"threshold_curve": curve, "static": dict(sorted(static.items())), "oracle": oracle,
                               "widths_curve": {",".join(map(str, w)): v for w, v in widths_curve.items()}}


def _first_below(predictions: np.ndarray, threshold: float) -> int:
    """Tokens DISCO proposes given each drafted token's predicted acceptance: up to the first one below."""
    below = np.flatnonzero(predictions < threshold)
    return int(below[0]) + 1 if len(below) else len(predictions)


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
