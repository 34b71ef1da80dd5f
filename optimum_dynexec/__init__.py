"""optimum-dynexec: dynamic execution (speculative decoding, early exit, adaptive diffusion steps) for
Hugging Face Optimum on Intel hardware.

``import optimum_dynexec`` registers the dynamic-execution flags with optimum-intel, e.g.
``OVModelForCausalLM.from_pretrained(target, draft_model=draft)`` and
``OVStableDiffusionPipeline.from_pretrained(sd_dir, step_predictor="step_predictor.json")``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "OVSpeculativeModelForCausalLM": "optimum_dynexec.models.speculative",
    "SpeculationConfig": "optimum_dynexec.configuration",
    "DynExecConfig": "optimum_dynexec.configuration",
    "SpeculationStats": "optimum_dynexec.speculative.stats",
    "OVStepSaverStableDiffusionPipeline": "optimum_dynexec.models.diffusion",
    "StepPredictor": "optimum_dynexec.diffusion.predictor",
    "ConvergenceGuard": "optimum_dynexec.diffusion.convergence",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimum_dynexec' has no attribute {name!r}")


def _register() -> None:
    try:
        from .models.registration import register
    except ImportError:  # optimum-intel not installed: the numpy algorithms still import
        return
    register()


_register()
