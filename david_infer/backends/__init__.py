"""Inference backends: one folder each, one interface (`base.Backend` + `base.Runner`).

Built in: `onnxruntime` (.onnx, CPU or CUDA/TensorRT providers), `torch` (the reference PyTorch
model from our weights or the manifest's seed) and `tensorrt` (.engine/.plan, NVIDIA GPUs). Each
folder's `__init__` defines the `Backend` subclass and its typed options; `runner.py` the
`Runner`. Importing this package imports no backend and no heavy library.

Adding a backend: subclass `base.Backend` (name, suffixes, devices, an `Options` dataclass,
`open(contract, device, workload) -> Runner`) and either call `register_backend("name", cls)` or
declare it in your package's metadata:

    [project.entry-points."david_infer.backends"]
    mybackend = "my_package.my_module:MyBackend"
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Type, Union

from ..errors import BackendUnavailable

ENTRY_POINT_GROUP = "david_infer.backends"

# name -> the Backend class, or "module:Class" imported on first use (keeps imports light)
_REGISTRY: Dict[str, Union[str, type]] = {
    "onnxruntime": "david_infer.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "david_infer.backends.torch:TorchBackend",
    "tensorrt": "david_infer.backends.tensorrt:TensorRTBackend",
}
_entry_points_loaded = False


def register_backend(name: str, backend: Union[str, type]) -> None:
    """Register a `Backend` subclass (or its "module:Class" path) under `name`; replaces an
    earlier registration of that name."""
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
            raise BackendUnavailable(f"the {name} backend is not available in this install ({module_name} is "
                                     "missing)") from None
        raise
    cls = getattr(module, attr)
    _REGISTRY[name] = cls
    return cls


def model_suffixes() -> Dict[str, str]:
    """Model file suffix -> the backend `backend="auto"` picks for it (first registered wins).
    Backend packages import no heavy library, so asking them is cheap."""
    found: Dict[str, str] = {}
    for name in backend_names():
        try:
            suffixes = get_backend(name).suffixes
        except BackendUnavailable:
            continue
        for suffix in suffixes:
            found.setdefault(suffix, name)
    return found
