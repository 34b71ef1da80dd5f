"""The convergence guard: stop denoising once the predicted clean latent stops changing.

After every step the pipeline knows the model's current estimate of the clean latent x0. When it changes by
less than ``tolerance`` (relative L2) for ``patience`` consecutive steps, further steps would only polish
it: the pipeline decodes that estimate and stops. A run that ends without converging is flagged (the prompt
may have needed more steps than it got).

numpy only; the pipeline (``optimum_dynexec.models.diffusion``) feeds the estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


def predicted_clean_latent(sample: np.ndarray, model_output: np.ndarray, alpha_cumprod: float,
                           prediction_type: str = "epsilon") -> np.ndarray:
    """x0 from the UNet's (scheduler-scaled) input ``sample`` at a timestep with ``alpha_cumprod``.

    Every diffusers scheduler hands the UNet a variance-preserving ``sample`` (``scale_model_input``), so
    this one formula serves DDIM, PNDM, Euler, DPM-Solver and the rest.
    """
    a = float(alpha_cumprod)
    if prediction_type == "epsilon":
        return (sample - np.sqrt(1 - a) * model_output) / np.sqrt(a)
    if prediction_type == "v_prediction":
        return np.sqrt(a) * sample - np.sqrt(1 - a) * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown scheduler prediction_type {prediction_type!r} (epsilon, v_prediction, sample).")


@dataclass
class ConvergenceGuard:
    """Stops when x0 moved by less than ``tolerance`` (relative) for ``patience`` steps in a row, never before
    ``min_steps`` steps.

    ``observe(x0)`` after each step returns True when it is time to stop; ``steps`` counts observations.
    """

    tolerance: float = 0.01
    patience: int = 2
    min_steps: int = 4

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ValueError(f"convergence tolerance must be > 0, got {self.tolerance}.")
        if self.patience < 1 or self.min_steps < 1:
            raise ValueError(f"convergence patience and min_steps must be >= 1, got {self.patience}, {self.min_steps}.")
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.calm = 0
        self.converged = False
        self.last_change: Optional[float] = None
        self._previous: Optional[np.ndarray] = None

    def observe(self, x0: np.ndarray) -> bool:
        x0 = np.asarray(x0, dtype=np.float32)
        self.steps += 1
        if self._previous is not None:
            change = float(np.linalg.norm(x0 - self._previous) / (np.linalg.norm(self._previous) + 1e-8))
            self.last_change = change
            self.calm = self.calm + 1 if change < self.tolerance else 0
        self._previous = x0
        self.converged = self.calm >= self.patience and self.steps >= self.min_steps
        return self.converged
