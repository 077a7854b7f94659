"""david-infer: the inference SDK for DAViD (ICCV 2025) depth, normal and foreground models.

Importing this package pulls in numpy and Pillow only; torch, onnx, onnxruntime and tensorrt are
imported where they are used.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendUnavailable, DavidError, ExportError, InputError, ModelError, WeightsError

__all__ = [
    "BackendUnavailable",
    "DavidError",
    "ExportError",
    "InputError",
    "ModelError",
    "WeightsError",
    "__version__",
]
