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

# Heavy-ish parts load on first use so `import david_infer` stays numpy + Pillow only.
_LAZY = {"DavidRuntime": "runtime", "Prediction": "prediction", "RefineOptions": "refine", "Region": "prediction"}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
