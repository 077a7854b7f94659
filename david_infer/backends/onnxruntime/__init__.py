"""ONNX Runtime backend: CPU by default; CUDA (and TensorRT) execution providers when asked, checked
after the session is made so a GPU request never runs silently on the CPU."""
from __future__ import annotations

from .runner import OnnxRuntimeRunner, open_runner

__all__ = ["OnnxRuntimeRunner", "open_runner"]
