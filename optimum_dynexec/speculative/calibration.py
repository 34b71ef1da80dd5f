"""Calibration of the dynamic lookahead, backend-free: record draft features and oracle labels, train the DISCO
classifier, tune its threshold for the highest tokens/s under measured latencies.

Recording drafts ``max_lookahead`` tokens every step and lets the target verify them all: how many it accepts is
the oracle lookahead of that step, and every token up to the first rejection is a labelled example (accepted or
not, given that the tokens before it were). Training is scikit-learn's logistic regression; the result is stored
as plain arrays (:class:`~optimum_dynexec.speculative.disco.AcceptanceClassifier`), never pickled.
"""

from __future__ import annotations

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


def tune_threshold(
    steps: Sequence[RecordedStep], classifier: AcceptanceClassifier, latencies: LatencyModel,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[float, dict]:
    """The threshold with the highest simulated tokens/s, and the whole comparison (static k, oracle, DISCO)."""
    curve = {float(t): simulate(steps, lambda s, t=t: disco_lookahead(s, classifier, t), latencies)["tokens_per_second"]
             for t in thresholds}
    best = max(curve, key=curve.get)
    max_lookahead = max(step.proposed for step in steps)
    static = {k: simulate(steps, lambda s, k=k: k, latencies)["tokens_per_second"] for k in range(0, max_lookahead + 1)}
    oracle = simulate(steps, lambda s: s.accepted, latencies)["tokens_per_second"]
    return best, {"threshold_curve": curve, "static": static, "oracle": oracle}


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
