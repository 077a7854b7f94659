"""Optional heavy dependencies: imported with an install hint instead of a bare ImportError, and their
loggers quieted for the span of one call."""

from __future__ import annotations

import contextlib
import importlib
import logging
from types import ModuleType
from typing import Iterator

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
    "numba": "video",
    "scipy": "refine",
}


#: The one way to the export stage in every message and page (README.md, docs/install.md): PyTorch
#: first, so that pip keeps it (CI has torch==2.13.0 as a local CPU wheel), then the `export` extra.
EXPORT_INSTALL = 'pip install torch==2.13.0 && pip install "david-infer[export]"'
#: what the pages and messages add for a machine without that wheel
TORCH_ELSEWHERE = (
    "where torch 2.13.0 is no local CPU wheel, add --index-url https://download.pytorch.org/whl/cpu to the first "
    "command: a bare torch from PyPI is the CUDA build on Linux, several GB"
)


def install_hint(module: str) -> str:
    """The pip command that installs an optional module (torch: EXPORT_INSTALL, with TORCH_ELSEWHERE)."""
    if module.split(".")[0] == "torch":
        return f"{EXPORT_INSTALL} ({TORCH_ELSEWHERE})"
    extra = _EXTRA_FOR.get(module.split(".")[0], _EXTRA_FOR.get(module, ""))
    return f'pip install "david-infer[{extra}]"' if extra else "pip install david-infer"


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise BackendUnavailable with the pip command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" (needed for {purpose})" if purpose else ""
        raise BackendUnavailable(
            f"{module} is not installed{why}: {exc}. Install it with: {install_hint(module)}"
        ) from None


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger `name` to `level` inside the block (a library's chatter: torch.onnx, Ray Data)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
