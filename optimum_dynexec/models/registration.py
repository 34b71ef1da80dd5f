"""Registers dynamic execution with optimum-intel: ``OVModelForCausalLM.from_pretrained(..., draft_model=...)``
returns an :class:`OVSpeculativeModelForCausalLM`. Without those arguments nothing changes.

Registration is lazy so that ``import optimum_dynexec`` stays fast (and ``optimum-cli``, which imports the
command classes of this package at start-up, does not pay for torch / OpenVINO): when optimum-intel's
``OVModelForCausalLM`` is already imported, ``register()`` patches it at once; otherwise it installs a
post-import hook that patches the class as soon as optimum-intel defines it, before any user code sees it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Optional

_SPECULATIVE_KWARGS = ("draft_model", "draft", "speculation", "draft_ov_config", "draft_device", "draft_export")
#: where optimum-intel defines OVModelForCausalLM
_TARGET_MODULE = "optimum.intel.openvino.modeling_decoder"

#: optimum-intel's own implementation (bound to whatever class it is called on); set by _patch
_original_function = None


def _ov_causal_lm():
    """optimum-intel's OVModelForCausalLM (importing it, which also installs the dispatch)."""
    module = sys.modules.get(_TARGET_MODULE)
    if module is None or not hasattr(module, "OVModelForCausalLM"):
        module = importlib.import_module(_TARGET_MODULE)
    _patch(module)
    return module.OVModelForCausalLM


def original_from_pretrained(cls, model_id, *args, **kwargs):
    """optimum-intel's ``from_pretrained`` on ``cls``, bypassing the dispatch below."""
    if _original_function is None:
        _ov_causal_lm()
    return _original_function(cls, model_id, *args, **kwargs)


def _dispatching_from_pretrained(cls, model_id, *args, **kwargs):
    if cls is sys.modules[_TARGET_MODULE].OVModelForCausalLM and (
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


def _patch(module) -> None:
    """Install the dispatch on ``module.OVModelForCausalLM`` (idempotent)."""
    global _original_function
    cls = module.OVModelForCausalLM
    if getattr(cls.from_pretrained, "__dynexec__", False):
        return
    original = cls.__dict__.get("from_pretrained", None)
    _original_function = original.__func__ if isinstance(original, classmethod) else cls.from_pretrained.__func__
    dispatch = functools.wraps(_original_function)(_dispatching_from_pretrained)
    dispatch.__dynexec__ = True
    cls.from_pretrained = classmethod(dispatch)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds optimum-intel's decoder module through the other finders and patches it once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET_MODULE:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            _remove_hook()
            _patch(module)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


_hook: Optional[_PatchOnImport] = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def register() -> None:
    """Install the dispatch now if optimum-intel's ``OVModelForCausalLM`` is loaded, else when it gets loaded."""
    global _hook
    module = sys.modules.get(_TARGET_MODULE)
    if module is not None and hasattr(module, "OVModelForCausalLM"):
        _patch(module)
        return
    if module is None and importlib.util.find_spec("optimum.intel") is None:
        return  # optimum-intel not installed: nothing to register with
    if _hook is None:
        _hook = _PatchOnImport()
        sys.meta_path.insert(0, _hook)
