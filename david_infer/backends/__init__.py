"""Inference backends: one folder each (`onnxruntime`, `torch`, `tensorrt`, `triton`), one interface
(`base.Backend` + `base.Runner`), found by name, file suffix or URL scheme. Importing this package
imports no backend. How to add one: ARCHITECTURE.md, "Adding a backend"."""

from __future__ import annotations

import importlib
import re
from typing import Any, Dict, List, Optional, Type, Union

from ..errors import BackendUnavailable

ENTRY_POINT_GROUP = "david_infer.backends"

# name -> the Backend class, or "module:Class" imported on first use (keeps imports light)
_REGISTRY: Dict[str, Union[str, type]] = {
    "onnxruntime": "david_infer.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "david_infer.backends.torch:TorchBackend",
    "tensorrt": "david_infer.backends.tensorrt:TensorRTBackend",
    "triton": "david_infer.backends.triton:TritonBackend",
}
_entry_points_loaded = False


def register_backend(name: str, backend: Union[str, type]) -> None:
    """Register a `Backend` subclass (or its "module:Class" path) under `name`, replacing any earlier one."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto', got {name!r}")
    _REGISTRY[name] = backend


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _REGISTRY.setdefault(ep.name, ep.value)


def backend_names() -> List[str]:
    """Every registered backend name (entry points included)."""
    _load_entry_points()
    return list(_REGISTRY)


def get_backend(name: str) -> Type:
    """The Backend class registered as `name` (imported now), or BackendUnavailable."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; expected one of auto, {', '.join(_REGISTRY)}")
    target = _REGISTRY[name]
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise BackendUnavailable(
                f"the {name} backend is not available in this install ({module_name} is missing)"
            ) from None
        raise
    cls = getattr(module, attr)
    _REGISTRY[name] = cls
    return cls


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(model: Any) -> Optional[str]:
    """The lower-case scheme of a "scheme://..." model string (a server URL), else None."""
    match = _URL.match(model) if isinstance(model, str) else None
    return match.group(1).lower() if match else None


def url_schemes() -> Dict[str, str]:
    """URL scheme -> the backend `backend="auto"` picks for it (first registered wins)."""
    return _first_by(lambda cls: cls.schemes)


def model_suffixes() -> Dict[str, str]:
    """Model file suffix -> the backend `backend="auto"` picks for it (first registered wins)."""
    return _first_by(lambda cls: cls.suffixes)


def _first_by(keys: Any) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for name in backend_names():
        try:
            values = keys(get_backend(name))
        except BackendUnavailable:
            continue
        for value in values:
            found.setdefault(value, name)
    return found
