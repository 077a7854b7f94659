"""TensorRT backend: plans built by `david-infer build-engine`, run natively through cuda-python.

Importing this package imports neither tensorrt nor cuda-python; `open_runner` and
`builder.build_engine` (the plan builder behind `david-infer build-engine`) do.
`profiles` and `sidecar` are pure Python and usable (and tested) without a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ...errors import InputError
from ..base import Runner

KNOWN_OPTIONS = ("resolution", "max_batch")


def open_runner(path: Union[str, Path], manifest: Optional[dict] = None, device: str = "cuda", **options: Any) -> Runner:
    """Load the TensorRT plan `path` (and its sidecar `path.json`, or `manifest` if given).

    Options (both optional, checked against the engine's profile so a mismatch fails at once,
    not on the first image): `resolution` (the square size images will be run at) and
    `max_batch` (the largest batch that will be sent).

    Raises BackendUnavailable without TensorRT, cuda-python or a GPU; ModelError for a plan built
    for another TensorRT version or GPU, or whose SHA-256 does not match its sidecar; InputError
    for a device other than "cuda"/"cuda:N" or options the engine's profile does not cover.
    """
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise InputError(f"the TensorRT backend takes no options {unknown} (it takes {', '.join(KNOWN_OPTIONS)})")
    from ...errors import ModelError
    from .runner import TensorRTRunner, parse_device
    from .sidecar import check_profile_covers, read_sidecar

    parse_device(device)
    if not Path(path).is_file():
        raise ModelError(f"engine file not found: {path}")
    sidecar = manifest if manifest is not None else read_sidecar(path)
    check_profile_covers(sidecar, options.get("resolution"), options.get("max_batch"), path)
    return TensorRTRunner(path, sidecar, device)


__all__ = ["open_runner"]
