"""Registers dynamic execution with optimum-intel: ``OVModelForCausalLM.from_pretrained(..., draft_model=...)``
returns an :class:`OVSpeculativeModelForCausalLM`. Without those arguments nothing changes."""

from __future__ import annotations

import functools
from pathlib import Path

from optimum.intel import OVModelForCausalLM

_SPECULATIVE_KWARGS = ("draft_model", "draft", "speculation", "draft_ov_config", "draft_device", "draft_export")

#: optimum-intel's own implementation (bound to whatever class it is called on)
_original = OVModelForCausalLM.__dict__.get("from_pretrained", None)
_original_function = (
    _original.__func__ if isinstance(_original, classmethod) else OVModelForCausalLM.from_pretrained.__func__
)


def original_from_pretrained(cls, model_id, *args, **kwargs):
    """optimum-intel's ``from_pretrained`` on ``cls``, bypassing the dispatch below."""
    return _original_function(cls, model_id, *args, **kwargs)


@functools.wraps(_original_function)
def _dispatching_from_pretrained(cls, model_id, *args, **kwargs):
    if cls is OVModelForCausalLM and (
        any(kwargs.get(name) is not None for name in _SPECULATIVE_KWARGS) or _is_saved_pair(model_id)
    ):
        from .speculative import OVSpeculativeModelForCausalLM

        return OVSpeculativeModelForCausalLM.from_pretrained(model_id, *args, **kwargs)
    return _original_function(cls, model_id, *args, **kwargs)


def _is_saved_pair(model_id) -> bool:
    from ..configuration import CONFIG_NAME

    try:
        return (Path(model_id) / CONFIG_NAME).is_file()
    except (TypeError, OSError):
        return False


def register() -> None:
    """Install the dispatch (idempotent)."""
    if getattr(OVModelForCausalLM.from_pretrained, "__dynexec__", False):
        return
    _dispatching_from_pretrained.__dynexec__ = True
    OVModelForCausalLM.from_pretrained = classmethod(_dispatching_from_pretrained)
