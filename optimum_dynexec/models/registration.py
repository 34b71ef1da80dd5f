"""Registers dynamic execution with optimum-intel: ``OVModelForCausalLM.from_pretrained(..., draft_model=...)``
returns an :class:`OVSpeculativeModelForCausalLM`, ``OVStableDiffusionPipeline.from_pretrained(...,
step_predictor=...)`` an :class:`OVStepSaverStableDiffusionPipeline`; so do directories exported with these.
Without those arguments nothing changes.

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
_STEP_SAVER_KWARGS = ("step_predictor", "convergence_guard")
#: where optimum-intel defines OVModelForCausalLM and the diffusion pipelines
_TARGET_MODULE = "optimum.intel.openvino.modeling_decoder"
_DIFFUSION_MODULE = "optimum.intel.openvino.modeling_diffusion"
#: module -> classes whose from_pretrained dispatches to ours
_PATCHED = {_TARGET_MODULE: ("OVModelForCausalLM",), _DIFFUSION_MODULE: ("OVStableDiffusionPipeline", "OVDiffusionPipeline")}

#: optimum-intel's own implementations (bound to whatever class they are called on), per (module, class); set by _patch
_originals: dict = {}


def _ov_causal_lm():
    """optimum-intel's OVModelForCausalLM (importing it, which also installs the dispatch)."""
    module = sys.modules.get(_TARGET_MODULE)
    if module is None or not hasattr(module, "OVModelForCausalLM"):
        module = importlib.import_module(_TARGET_MODULE)
    _patch(module)
    return module.OVModelForCausalLM


def _original(module_name: str, class_name: str):
    if (module_name, class_name) not in _originals:
        _patch(importlib.import_module(module_name))
    return _originals[(module_name, class_name)]


def original_from_pretrained(cls, model_id, *args, **kwargs):
    """optimum-intel's ``from_pretrained`` on ``cls``, bypassing the dispatch below."""
    for module_name, names in _PATCHED.items():
        module = sys.modules.get(module_name)
        for name in names:
            if module is not None and isinstance(getattr(module, name, None), type) and issubclass(cls, getattr(module, name)):
                return _original(module_name, name)(cls, model_id, *args, **kwargs)
    if issubclass(cls, _ov_causal_lm()):
        return _original(_TARGET_MODULE, "OVModelForCausalLM")(cls, model_id, *args, **kwargs)
    return cls.from_pretrained(model_id, *args, **kwargs)


def _dispatching_from_pretrained(cls, model_id, *args, **kwargs):
    module = sys.modules[_TARGET_MODULE]
    if cls is module.OVModelForCausalLM and (
        any(kwargs.get(name) is not None for name in _SPECULATIVE_KWARGS) or _saved_technique(model_id) == "speculative"
    ):
        from .speculative import OVSpeculativeModelForCausalLM

        return OVSpeculativeModelForCausalLM.from_pretrained(model_id, *args, **kwargs)
    return _original(_TARGET_MODULE, "OVModelForCausalLM")(cls, model_id, *args, **kwargs)


def _dispatching_diffusion_from_pretrained(cls, model_id, *args, **kwargs):
    module = sys.modules[_DIFFUSION_MODULE]
    if cls in (module.OVStableDiffusionPipeline, module.OVDiffusionPipeline) and (
        any(kwargs.get(name) is not None for name in _STEP_SAVER_KWARGS) or _saved_technique(model_id) == "step-saver"
    ):
        from .diffusion import step_saver_class

        return step_saver_class(cls, model_id).from_pretrained(model_id, *args, **kwargs)
    for name in _STEP_SAVER_KWARGS:
        kwargs.pop(name, None)  # explicitly None: upstream does not know them
    original = _original(_DIFFUSION_MODULE, "OVDiffusionPipeline" if cls is module.OVDiffusionPipeline else "OVStableDiffusionPipeline")
    return original(cls, model_id, *args, **kwargs)


def _saved_technique(model_id) -> Optional[str]:
    """``technique`` of a local directory's dynexec_config.json (None if there is none)."""
    from ..configuration import CONFIG_NAME

    try:
        path = Path(model_id) / CONFIG_NAME
        if not path.is_file():
            return None
    except (TypeError, OSError):
        return None
    import json

    try:
        return json.loads(path.read_text()).get("technique", "speculative")
    except (OSError, ValueError, AttributeError):
        return "speculative"  # unreadable: let the speculative loader report the problem with the file


def _patch(module) -> None:
    """Install the dispatch on the classes of ``module`` listed in _PATCHED (idempotent)."""
    dispatcher = _dispatching_from_pretrained if module.__name__ == _TARGET_MODULE else _dispatching_diffusion_from_pretrained
    for name in _PATCHED[module.__name__]:
        cls = getattr(module, name, None)
        if cls is None:
            continue
        original = cls.__dict__.get("from_pretrained", None)
        if original is not None and getattr(original.__func__ if isinstance(original, classmethod) else original,
                                            "__dynexec__", False):
            continue
        function = original.__func__ if isinstance(original, classmethod) else cls.from_pretrained.__func__
        if getattr(function, "__dynexec__", False):  # inherited from a patched parent: find upstream's
            function = _originals[(module.__name__, "OVDiffusionPipeline")]
        _originals[(module.__name__, name)] = function
        dispatch = functools.wraps(function)(dispatcher)
        dispatch.__dynexec__ = True
        cls.from_pretrained = classmethod(dispatch)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds optimum-intel's decoder module through the other finders and patches it once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _PATCHED:
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
            _patch(module)
            if all(name in sys.modules for name in _PATCHED):
                _remove_hook()

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


_hook: Optional[_PatchOnImport] = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def register() -> None:
    """Install the dispatch on optimum-intel's classes that are loaded, and on the others when they get loaded."""
    global _hook
    pending = False
    for name in _PATCHED:
        module = sys.modules.get(name)
        if module is not None and all(hasattr(module, cls) for cls in _PATCHED[name]):
            _patch(module)
        else:
            pending = True
    if not pending:
        return
    if importlib.util.find_spec("optimum.intel") is None:
        return  # optimum-intel not installed: nothing to register with
    if _hook is None:
        _hook = _PatchOnImport()
        sys.meta_path.insert(0, _hook)
