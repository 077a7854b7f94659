"""TensorRT backend: plans built by `david-infer build-engine`, run natively through cuda-python.

Importing this package imports neither tensorrt nor cuda-python; `open_runner` does.
`profiles` and `sidecar` are pure Python and usable (and tested) without a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ...errors import InputError
from ..base import Runner

KNOWN_OPTIONS = ()


def open_runner(path: Union[str, Path], manifest: Optional[dict] = None, device: str = "cuda", **options: Any) -> Runner:
    """Load the TensorRT plan `path` (and its sidecar `path.json`, or `manifest` if given).

    Raises BackendUnavailable without TensorRT, cuda-python or a GPU; ModelError for a plan built
    for another TensorRT version or GPU, or whose SHA-256 does not match its sidecar.
    """
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise InputError(f"the TensorRT backend takes no options {unknown}")
    from .runner import TensorRTRunner

    return TensorRTRunner(path, manifest, device)


__all__ = ["open_runner"]
