"""ONNX Runtime session creation and the runner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..._optional import install_hint, require
from ...config import DEFAULT_RESOLUTION
from ...contract import GraphIO, ModelContract, TensorSpec
from ...errors import BackendUnavailable, ModelError
from ...memory_estimate import allocation_error, is_allocation_failure
from ..base import Device, Runner, Workload
from .install import check_gpu, import_onnxruntime
from .placement import check_placement, dummy_feeds, profiled_placement

GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CPU_PROVIDER = "CPUExecutionProvider"
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
}


def _provider_list(
    ort: Any,
    path: Path,
    device: Device,
    providers: Sequence[str],
    options: Any,
    contract: Optional[ModelContract],
    workload: Optional[Workload],
) -> List[Any]:
    """Explicitly configured GPU providers (in the order asked) followed by the CPU provider."""
    available = set(ort.get_available_providers())
    chosen: List[Any] = []
    for name in providers:
        ep = GPU_PROVIDERS[name]
        if ep not in available:
            raise BackendUnavailable(
                f"{ep} is not available in this onnxruntime build ({ort.__version__}; available: "
                f"{', '.join(sorted(available))}). Install the GPU build: {install_hint('tensorrt')}"
            )
        if name == "cuda":
            # EXHAUSTIVE is ORT's own default; callers running many input sizes may prefer HEURISTIC.
            cuda = {"device_id": device.index, "cudnn_conv_algo_search": "EXHAUSTIVE"}
            chosen.append((ep, {**cuda, **dict(options.cuda_options or {})}))
        else:
            chosen.append((ep, _tensorrt_options(path, device, options, contract, workload)))
    return chosen + [CPU_PROVIDER]


def _tensorrt_options(
    path: Path, device: Device, options: Any, contract: Optional[ModelContract], workload: Optional[Workload]
) -> Dict[str, Any]:
    from .trt_options import tensorrt_provider_options

    if contract is None or workload is None:
        raise BackendUnavailable(f"{path}: the TensorRT provider needs the model contract and workload")
    cache_dir = Path(options.cache_dir or path.parent / ".trt_cache")
    trt = tensorrt_provider_options(contract, cache_dir, workload.resolution, workload.max_batch)
    return {"device_id": device.index, **trt}


def create_session(
    path: Path,
    device: Device,
    providers: Sequence[str],
    options: Any,
    contract: Optional[ModelContract] = None,
    workload: Optional[Workload] = None,
) -> Any:
    """An `onnxruntime.InferenceSession` for `path` on `device`; a GPU provider asked for but not
    active is BackendUnavailable, never a silent CPU run."""
    path = Path(path)
    wanted: Tuple[str, ...] = tuple(providers) if device.kind == "cuda" else ()
    # the one ONNX Runtime build (cpu/gpu extras), CUDA/cuDNN preloaded from the nvidia-* wheels
    ort = import_onnxruntime(device.kind, shown=device.shown)
    if wanted:  # driver, device and TensorRT each fail with their own error and fix
        check_gpu(ort, device.index, tensorrt="tensorrt" in wanted)
    session_providers = (
        _provider_list(ort, path, device, wanted, options, contract, workload) if wanted else [CPU_PROVIDER]
    )
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings about unused initialisers are noise for users
    if options.intra_op_threads:
        so.intra_op_num_threads = int(options.intra_op_threads)
    if wanted:  # one profiled warm-up shows which provider ran each node (placement.py)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"david-infer-placement-{os.getpid()}")
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=session_providers)
    except Exception as exc:  # ORT raises its own pybind exception types
        raise ModelError(f"{path}: ONNX Runtime cannot load this model ({type(exc).__name__}: {exc})") from None
    active = session.get_providers()
    for name in wanted:
        if GPU_PROVIDERS[name] not in active:
            raise BackendUnavailable(
                f"{GPU_PROVIDERS[name]} was requested for {path} but the session runs on {', '.join(active)} "
                f"(CUDA/cuDNN libraries missing or no GPU visible?). Not falling back to CPU. "
                f"Install: {install_hint('tensorrt')}"
            )
    if wanted:
        side = (
            (workload.resolution if workload else None)
            or (contract.fixed_resolution if contract else None)
            or DEFAULT_RESOLUTION
        )
        placement = profiled_placement(session, dummy_feeds(session_io(session).inputs, side))
        check_placement(placement, [GPU_PROVIDERS[n] for n in wanted], path)
    return session


def _spec(value_info: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in value_info.shape)
    return TensorSpec(value_info.name, shape, _ORT_TYPES.get(value_info.type, str(value_info.type)))


def session_io(session: Any) -> GraphIO:
    """A session's inputs and outputs as GraphIO."""
    return GraphIO(tuple(_spec(i) for i in session.get_inputs()), tuple(_spec(o) for o in session.get_outputs()))


class OnnxRuntimeRunner(Runner):
    """Runs an `onnxruntime.InferenceSession` (thread-safe: ORT sessions allow concurrent run())."""

    name = "onnxruntime"

    def __init__(self, session: Any, path: Path) -> None:
        self._session = session
        self.path = path
        self._io = session_io(session)

    @property
    def io(self) -> GraphIO:
        return self._io

    @property
    def providers(self) -> List[str]:
        """Execution providers the session actually uses."""
        return list(self._session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray], release_memory: bool = False) -> Dict[str, np.ndarray]:
        """The outputs for `feeds`. ONNX Runtime keeps the largest run's working memory in its arena
        for the next runs; `release_memory` gives back what this run leaves unused when it ends
        (the arena's shrinkage: a small run after a large one frees the large one's memory)."""
        session = self._session
        if session is None:
            raise ModelError(f"{self.path}: runner is closed")
        names = list(self._io.output_names)
        options = None
        if release_memory:
            options = require("onnxruntime", "the ONNX Runtime backend").RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            values = session.run(names, dict(feeds), options)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            if is_allocation_failure(exc):  # the arena's "Failed to allocate memory", as the package's error
                raise allocation_error(exc, "ONNX Runtime", shapes) from None
            raise ModelError(f"{self.path}: inference failed for inputs {shapes} ({exc})") from None
        return dict(zip(names, values))

    def close(self) -> None:
        self._session = None
