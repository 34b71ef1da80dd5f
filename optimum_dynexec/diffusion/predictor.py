"""The StepSaver predictor: prompt embedding -> number of denoising steps, before generation starts.

A ridge regression on the pipeline's own pooled text embedding, predicting the step label; the prediction
(plus a safety ``margin``: under-predicting costs quality, over-predicting only time) goes to the nearest
rung of the labelling ladder and is clamped to ``[min_steps, max_steps]``. Stored as plain arrays in JSON (never pickle), with the
identity of the text encoder it was trained on: the embedding size and a probe embedding (the embedding
of a fixed prompt), so a predictor is not silently used with another text encoder.

numpy only at run time; training uses scikit-learn.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

PREDICTOR_NAME = "step_predictor.json"
PREDICTOR_FORMAT = "optimum-dynexec/step-predictor/v1"
#: the probe prompt whose embedding identifies a text encoder (any fixed text works)
PROBE_PROMPT = "a photo of a red circle on a blue background"
#: cosine similarity a probe embedding must keep (bf16 / f16 inference moves it by ~1e-3)
PROBE_MIN_COSINE = 0.99


@dataclass
class EncoderIdentity:
    """Which text encoder a predictor reads: embedding size, a name, and the probe prompt's embedding."""

    embedding_size: int
    probe_embedding: list[float]
    name: str = ""
    probe_prompt: str = PROBE_PROMPT

    def check(self, embedding_size: int, probe_embedding: Optional[np.ndarray], where: str = "this pipeline") -> None:
        """ValueError naming the mismatch if another text encoder produced these values."""
        if embedding_size != self.embedding_size:
            raise ValueError(
                f"the step predictor reads {self.embedding_size}-dimensional prompt embeddings of text encoder "
                f"{self.name or '(unnamed)'}, but {where}'s text encoder gives {embedding_size}: it was trained for "
                "another pipeline. Train one for this pipeline with `optimum-cli dynexec label-steps` and "
                "`optimum-cli dynexec train-steps`."
            )
        if probe_embedding is None:
            return
        ours = np.asarray(self.probe_embedding, dtype=np.float64)
        theirs = np.asarray(probe_embedding, dtype=np.float64).ravel()
        cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs) + 1e-12))
        if cosine < PROBE_MIN_COSINE:
            raise ValueError(
                f"the step predictor was trained on another text encoder ({self.name or 'unnamed'}): {where}'s "
                f"embedding of the probe prompt {self.probe_prompt!r} differs (cosine {cosine:.3f} < "
                f"{PROBE_MIN_COSINE}). Train a predictor for this pipeline (`optimum-cli dynexec label-steps`, "
                "then `train-steps`)."
            )


@dataclass
class StepPredictor:
    """Ridge regression from a standardised prompt embedding to denoising steps (see the module docstring).

    Attributes:
        coef, intercept, mean, scale: ``steps = ((x - mean) / scale) @ coef + intercept``.
        ladder: the step counts the labels were chosen from; predictions are rounded up to one of them.
        min_steps, max_steps: the range predictions are clamped to.
        margin: steps added before rounding (a safety margin chosen at training).
        encoder: identity of the text encoder whose embeddings this reads.
        metrics: held-out evaluation written by training.
    """

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    ladder: tuple[int, ...]
    min_steps: int
    max_steps: int
    encoder: EncoderIdentity
    margin: float = 0.0
    metrics: dict = field(default_factory=dict)
    format: str = PREDICTOR_FORMAT

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64).ravel()
        self.mean = np.asarray(self.mean, dtype=np.float64).ravel()
        self.scale = np.asarray(self.scale, dtype=np.float64).ravel()
        self.ladder = tuple(int(s) for s in self.ladder)
        size = len(self.coef)
        if len(self.mean) != size or len(self.scale) != size or size != self.encoder.embedding_size:
            raise ValueError(
                f"corrupt step predictor: coef has {size} values, mean {len(self.mean)}, scale {len(self.scale)}, "
                f"embedding_size {self.encoder.embedding_size}; train it again."
            )
        arrays = (self.coef, self.mean, self.scale, np.array([self.intercept, self.margin], dtype=np.float64))
        if not all(np.isfinite(a).all() for a in arrays) or (self.scale <= 0).any():
            raise ValueError("corrupt step predictor: non-finite weights or non-positive scales; train it again.")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"step predictor range [{self.min_steps}, {self.max_steps}] is empty or not positive.")

    @property
    def embedding_size(self) -> int:
        return len(self.coef)

    def raw(self, embeddings: np.ndarray) -> np.ndarray:
        """Unrounded predictions (steps, float) for ``(n, embedding_size)`` embeddings."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(
                f"the step predictor expects embeddings of size {self.embedding_size}, got shape {x.shape}."
            )
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept + self.margin

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Step counts (int64) for ``(n, embedding_size)`` embeddings: the nearest ladder rung, clamped."""
        return self.steps_for(self.raw(embeddings))

    def steps_for(self, raw: np.ndarray) -> np.ndarray:
        """Step counts (int64) for unrounded predictions (``raw``)."""
        if not np.isfinite(raw).all():
            raise ValueError("the step predictor produced a non-finite step count (corrupt embedding?).")
        return np.array([self.snap(value) for value in raw], dtype=np.int64)

    def snap(self, value: float) -> int:
        """``value`` moved to the nearest ladder rung (the upper one on a tie) and clamped to the range."""
        steps = min(self.ladder, key=lambda rung: (abs(rung - value), -rung))
        return int(min(max(steps, self.min_steps), self.max_steps))

    def with_range(self, min_steps: Optional[int] = None, max_steps: Optional[int] = None) -> "StepPredictor":
        """A copy clamping to another range."""
        values = {**self.__dict__, "min_steps": min_steps or self.min_steps, "max_steps": max_steps or self.max_steps}
        return StepPredictor(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("coef", "mean", "scale"):
            data[key] = [float(v) for v in getattr(self, key)]
        return data

    def save(self, path: Union[str, Path]) -> Path:
        """Write as JSON (atomically); a directory gets ``step_predictor.json`` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / PREDICTOR_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "StepPredictor":
        """Read a predictor file (or a directory holding ``step_predictor.json``); errors name the problem."""
        path = Path(path)
        if path.is_dir():
            path = path / PREDICTOR_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"step predictor {path} does not exist; train one with `optimum-cli dynexec train-steps` or pass "
                "the path of a step_predictor.json."
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"step predictor {path} is not valid JSON ({error}); train it again.") from error
        if not isinstance(data, dict) or data.get("format") != PREDICTOR_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{path} is not a step predictor of this optimum-dynexec (format {found!r}, expected "
                f"{PREDICTOR_FORMAT!r}); upgrade optimum-dynexec or train the predictor again."
            )
        try:
            data["encoder"] = EncoderIdentity(**data["encoder"])
            return cls(**data)
        except (KeyError, TypeError) as error:
            raise ValueError(f"step predictor {path} is incomplete or corrupt ({error}); train it again.") from error


def _simulated_ssim(predicted: np.ndarray, ssim_to_full: np.ndarray, ladder: tuple[int, ...]) -> np.ndarray:
    """Each prompt's SSIM to its full-step image at the predicted step count (the nearest rung at or below)."""
    rungs = np.array(ladder)
    index = np.clip(np.searchsorted(rungs, predicted, side="right") - 1, 0, len(rungs) - 1)
    return ssim_to_full[np.arange(len(predicted)), index]


def train_predictor(embeddings: np.ndarray, steps: Sequence[int], ladder: Sequence[int], encoder: EncoderIdentity,
                    min_steps: Optional[int] = None, max_steps: Optional[int] = None, holdout: float = 0.25,
                    seed: int = 0, alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
                    ssim_to_full: Optional[np.ndarray] = None, target_ssim: Optional[float] = None,
                    floor_ssim: Optional[float] = None, floor_share: float = 0.95) -> StepPredictor:
    """Fit the ridge regression (alpha by leave-one-out cross-validation) and report held-out error.

    The held-out split is evaluated first (``metrics``: mean absolute error in steps, share of prompts
    predicted below their label, mean predicted vs labelled steps); the returned predictor is then refit on
    all prompts. ``min_steps`` / ``max_steps`` default to the ladder's ends.

    With the labels' ``ssim_to_full`` (prompts x rungs) and a ``target_ssim``, the safety ``margin`` is tuned on
    the held-out prompts: the smallest margin whose predictions keep the mean SSIM to the full-step image at or
    above ``target_ssim``; the metrics then also compare with one fixed step count of equal mean steps.

    With ``floor_ssim`` (and the table) and no ``min_steps``, the range starts at the quality floor: the fewest
    steps (a rung) at which ``floor_share`` of the labelled images have an SSIM of at least ``floor_ssim`` to their
    full-step images. A prompt labelled below it converged early with the labelling seed; with another seed the
    same prompt often has not (on the scenes model the labels of two seeds correlate at 0.24), and images short of
    the floor lose what a prompt asks for before they lose SSIM.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(steps, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need one embedding row per label: embeddings {x.shape}, {len(y)} labels.")
    if len(y) < 8:
        raise ValueError(f"{len(y)} labelled prompts are too few to train a step predictor; label at least 8 (100+ is better).")
    ladder = tuple(int(s) for s in ladder)
    table = None if ssim_to_full is None else np.asarray(ssim_to_full, dtype=np.float64)
    if table is not None and table.shape != (len(y), len(ladder)):
        raise ValueError(f"ssim_to_full must be prompts x rungs {(len(y), len(ladder))}, got {table.shape}.")
    floor_metrics: dict = {}
    if min_steps is None and floor_ssim is not None and table is not None:
        if not 0 < floor_ssim <= 1 or not 0 < floor_share <= 1:
            raise ValueError(f"floor_ssim and floor_share lie in (0, 1], got {floor_ssim} and {floor_share}.")
        share = (table >= floor_ssim).mean(axis=0)
        min_steps = next(rung for rung, value in zip(ladder, share) if value >= floor_share or rung == ladder[-1])
        floor_metrics = {"floor_ssim": float(floor_ssim), "floor_share": float(floor_share), "floor_steps": int(min_steps),
                         "share_at_floor_ssim_per_rung": {int(r): round(float(v), 4) for r, v in zip(ladder, share)}}
    lo, hi = int(min_steps or ladder[0]), int(max_steps or ladder[-1])
    if lo > hi:
        raise ValueError(f"the step range [{lo}, {hi}] is empty: min_steps (or the quality floor) exceeds max_steps.")

    def fit(x_fit: np.ndarray, y_fit: np.ndarray) -> StepPredictor:
        mean = x_fit.mean(axis=0)
        scale = x_fit.std(axis=0)
        scale[scale < 1e-8] = 1.0
        model = RidgeCV(alphas=list(alphas)).fit((x_fit - mean) / scale, y_fit)  # efficient leave-one-out
        return StepPredictor(model.coef_, float(model.intercept_), mean, scale, ladder, lo, hi, encoder,
                             metrics={"alpha": float(model.alpha_)})

    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=holdout, random_state=seed)
    held_out = fit(x[train_idx], y[train_idx])
    margin_metrics: dict = {}
    if table is not None and target_ssim is not None:
        held_table = table[test_idx]
        for margin in np.arange(0.0, ladder[-1] - ladder[0] + 1.0, 0.5):
            held_out.margin = float(margin)
            simulated = _simulated_ssim(held_out.predict(x[test_idx]), held_table, ladder).mean()
            if simulated >= target_ssim:
                break
        predicted = held_out.predict(x[test_idx])
        mean_steps = float(predicted.mean())
        fixed_rung = min(range(len(ladder)), key=lambda i: abs(ladder[i] - mean_steps))
        margin_metrics = {
            "target_ssim": float(target_ssim),
            "margin_steps": held_out.margin,
            "held_out_simulated_ssim": float(_simulated_ssim(predicted, held_table, ladder).mean()),
            "held_out_fixed_steps_at_equal_mean": int(ladder[fixed_rung]),
            "held_out_fixed_simulated_ssim": float(held_table[:, fixed_rung].mean()),
        }
    predicted = held_out.predict(x[test_idx])
    labelled = y[test_idx]
    metrics = {
        "train_prompts": int(len(train_idx)),
        "held_out_prompts": int(len(test_idx)),
        "held_out_mae_steps": float(np.abs(predicted - labelled).mean()),
        "held_out_under_predicted": float((predicted < labelled).mean()),
        "held_out_mean_predicted_steps": float(predicted.mean()),
        "held_out_mean_label_steps": float(labelled.mean()),
        "held_out_constant_mae_steps": float(np.abs(np.median(y[train_idx]) - labelled).mean()),
    }
    metrics.update(margin_metrics)
    metrics.update(floor_metrics)
    final = fit(x, y)
    final.margin = held_out.margin
    final.metrics.update(metrics)
    return final
