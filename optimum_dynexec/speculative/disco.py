"""DISCO (Mamou et al., Intel Labs, 2024): a classifier decides after each draft token whether to keep drafting.

The classifier is a logistic regression over draft-side features of the token just drafted; it predicts the
probability that the target accepts that token given that it accepted the ones before. Drafting stops when
the prediction falls below a threshold tuned at calibration for the highest tokens/s. It is trained per pair
(:mod:`.calibration`) and stored as plain arrays in dynexec_config.json.

Two stopping rules read the predictions (calibration keeps the one that simulates faster):

- ``"token"`` (the paper's): stop after a token whose own predicted acceptance is below the threshold;
- ``"prefix"``: stop once the predicted probability that *every* token drafted in this step is accepted (the
  product of the predictions) falls below it. A further token only adds output when all before it were
  accepted, so this is what its expected value depends on. On the Qwen2.5-Coder pair it simulated 3% faster on
  the benchmark's held-out prompts and 1.5% in cross-validation, but calibrations there often rate the two
  rules as a tie, and which one wins live varies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .policies import LookaheadPolicy
from .signals import DraftSignal

FEATURES = ("probability", "log_probability", "entropy", "margin", "position", "prefix_probability",
            "recent_acceptance")
_RECENT_DECAY = 0.3  # weight of the newest step in the recent-acceptance average
STOP_RULES = ("token", "prefix")


class FeatureTracker:
    """Builds the feature vector of each draft token: the token's signal, its position in the lookahead, the
    draft's probability of the whole prefix drafted in this step, and the acceptance of recent steps."""

    def __init__(self, initial_acceptance: float = 0.5):
        self.initial_acceptance = initial_acceptance
        self.reset()

    def reset(self) -> None:
        self.recent = self.initial_acceptance
        self.prefix = 1.0

    def start_step(self) -> None:
        self.prefix = 1.0

    def features(self, position: int, signal: DraftSignal) -> list[float]:
        probability = signal.probability
        self.prefix *= probability
        return [probability, math.log(max(probability, 1e-9)), signal.entropy, probability - signal.second,
                float(position), self.prefix, self.recent]

    def observe(self, proposed: int, accepted: int) -> None:
        # conditional acceptance (accepted / tokens judged up to the first rejection): the same quantity
        # whether a step drafted many tokens (calibration) or stopped early (DISCO at run time)
        if proposed > 0:
            self.recent += _RECENT_DECAY * (accepted / min(accepted + 1, proposed) - self.recent)


@dataclass
class AcceptanceClassifier:
    """Logistic regression over standardised features: P(accepted) = sigmoid(w . (x - mean) / scale + b)."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    features: Sequence[str] = FEATURES

    def __post_init__(self) -> None:
        lengths = {len(self.mean), len(self.scale), len(self.weights), len(self.features)}
        if len(lengths) != 1:
            raise ValueError(f"acceptance classifier arrays have different lengths {sorted(lengths)}.")
        if tuple(self.features) != FEATURES:
            raise ValueError(
                f"acceptance classifier was trained on features {list(self.features)}, this optimum-dynexec "
                f"computes {list(FEATURES)}; re-run `optimum-cli dynexec calibrate`."
            )
        values = [*self.mean, *self.scale, *self.weights, self.bias]
        if not all(math.isfinite(v) for v in values) or any(s <= 0 for s in self.scale):
            raise ValueError("acceptance classifier has non-finite weights or non-positive scales; re-run calibration.")
        # folded once: w / scale and b - w . mean / scale, so predicting is one dot product
        self._coefficients = [w / s for w, s in zip(self.weights, self.scale)]
        self._offset = self.bias - sum(w * m / s for w, m, s in zip(self.weights, self.mean, self.scale))

    def predict(self, features: Sequence[float]) -> float:
        z = self._offset + sum(c * x for c, x in zip(self._coefficients, features))
        if z < -30.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-z))

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": float(self.bias)}

    @classmethod
    def from_dict(cls, data: dict) -> "AcceptanceClassifier":
        try:
            return cls(mean=[float(v) for v in data["mean"]], scale=[float(v) for v in data["scale"]],
                       weights=[float(v) for v in data["weights"]], bias=float(data["bias"]),
                       features=tuple(data["features"]))
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"the acceptance classifier in dynexec_config.json is incomplete ({error!r}); "
                "re-run `optimum-cli dynexec calibrate`."
            ) from error


def classifier_from_calibration(calibration: Optional[dict]) -> Optional[AcceptanceClassifier]:
    if not calibration or "classifier" not in calibration:
        return None
    return AcceptanceClassifier.from_dict(calibration["classifier"])


def stop_position(predictions: Sequence[float], threshold: float, stop_rule: str = "token") -> int:
    """Tokens DISCO proposes given each drafted token's predicted acceptance: up to and including the first
    token whose prediction (``"token"``) or whose prefix's product of predictions (``"prefix"``) is below
    ``threshold``; all of them when none is."""
    probability = 1.0
    for position, prediction in enumerate(predictions):
        probability = probability * prediction if stop_rule == "prefix" else prediction
        if probability < threshold:
            return position + 1
    return len(predictions)


class DiscoPolicy(LookaheadPolicy):
    """Draft up to ``max_assistant_tokens``; stop after a token whose predicted acceptance (``stop_rule="token"``)
    or the predicted acceptance of the whole step so far (``"prefix"``) is below ``threshold``."""

    name = "disco"
    needs_signal = True

    def __init__(self, classifier: AcceptanceClassifier, threshold: float, max_assistant_tokens: int = 10,
                 initial_acceptance: float = 0.5, stop_rule: str = "token"):
        super().__init__(max_assistant_tokens)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"the DISCO threshold must be in [0, 1), got {threshold}.")
        if stop_rule not in STOP_RULES:
            raise ValueError(f"unknown DISCO stop rule {stop_rule!r}; expected one of {STOP_RULES} "
                             "(re-run `optimum-cli dynexec calibrate` if dynexec_config.json was edited).")
        self.classifier = classifier
        self.threshold = float(threshold)
        self.stop_rule = stop_rule
        self.tracker = FeatureTracker(initial_acceptance)
        #: predicted acceptance of each token drafted in the current step
        self.predictions: list[float] = []
        self._prefix = 1.0

    @classmethod
    def from_calibration(cls, calibration: Optional[dict], max_assistant_tokens: int = 10) -> "DiscoPolicy":
        classifier = classifier_from_calibration(calibration)
        if classifier is None or "threshold" not in calibration:
            raise ValueError(
                "num_assistant_tokens_schedule='disco' needs a calibrated pair: run "
                "`optimum-cli dynexec calibrate PAIR_DIR` (or export with `optimum-cli export dynexec --calibrate`), "
                "then load PAIR_DIR."
            )
        limit = int(calibration.get("max_lookahead", max_assistant_tokens))
        if calibration.get("verification_widths"):  # the widest verification the threshold was tuned with
            limit = min(limit, max(int(w) for w in calibration["verification_widths"]) - 1)
        # calibrations written before the stop rule was chosen used the per-token rule
        return cls(classifier, float(calibration["threshold"]), min(max_assistant_tokens, limit),
                   float(calibration.get("mean_acceptance", 0.5)), str(calibration.get("stop_rule", "token")))

    def reset(self) -> None:
        self.tracker.reset()

    def lookahead(self) -> int:
        self.tracker.start_step()
        self.predictions = []
        self._prefix = 1.0
        return self.num_assistant_tokens

    def keep_drafting(self, position: int, signal: Optional[DraftSignal]) -> bool:
        if signal is None:
            return True
        prediction = self.classifier.predict(self.tracker.features(position, signal))
        self.predictions.append(prediction)
        self._prefix *= prediction
        return (self._prefix if self.stop_rule == "prefix" else prediction) >= self.threshold

    def observe(self, proposed: int, accepted: int) -> None:
        self.tracker.observe(proposed, accepted)
