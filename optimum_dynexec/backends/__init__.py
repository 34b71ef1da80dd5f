"""Runtime backends: the only modules that talk to OpenVINO (or PyTorch) inference objects."""

from .base import DecoderRunner

__all__ = ["DecoderRunner"]
