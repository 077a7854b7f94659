"""Imports of optional heavy dependencies with an install hint instead of a bare ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendUnavailable

# Which extra of setup.py provides each optional module.
_EXTRA_FOR = {
    "torch": "export",
    "onnx": "export",
    "safetensors": "export",
    "onnxruntime": "cpu",  # or gpu / gpu-cu12: see backends.gpu.install_command
    "tensorrt": "gpu",
    "cuda": "gpu",
    "cuda.bindings": "gpu",
    "tqdm": "",
    "matplotlib": "plot",
    "tritonclient": "triton",
    "mlserver": "serve",
    "ray": "ray",
    "av": "video",
}


# torch first from PyTorch's own CPU index: from PyPI a Linux machine gets the CUDA build (several GB).
TORCH_CPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def install_hint(module: str) -> str:
    """The pip command that installs an optional module."""
    extra = _EXTRA_FOR.get(module.split(".")[0], _EXTRA_FOR.get(module, ""))
    command = f'pip install "david-infer[{extra}]"' if extra else "pip install david-infer"
    if module.split(".")[0] == "torch":
        return (
            f"{TORCH_CPU_INSTALL} && {command} (CPU; for a CUDA build of torch use the index of its CUDA "
            f"version instead, e.g. https://download.pytorch.org/whl/cu130)"
        )
    return command


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise BackendUnavailable with the pip command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" (needed for {purpose})" if purpose else ""
        raise BackendUnavailable(
            f"{module} is not installed{why}: {exc}. Install it with: {install_hint(module)}"
        ) from None
