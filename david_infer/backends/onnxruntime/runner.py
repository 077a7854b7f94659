"""ONNX Runtime session loading and the runner."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..._optional import install_hint, require
from ...errors import BackendUnavailable, ModelError
from ..base import Runner

GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CPU_PROVIDER = "CPUExecutionProvider"


def parse_device(device: str) -> Tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" / "cuda:N" -> ("cuda", N); anything else BackendUnavailable."""
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda" or text == "gpu":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise BackendUnavailable(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")


def _provider_list(
    ort: Any, path: Path, manifest: Optional[dict], device_id: int, providers: Sequence[str], options: dict
) -> List[Any]:
    """Explicitly configured GPU providers (in the order asked) followed by the CPU provider."""
    available = set(ort.get_available_providers())
    chosen: List[Any] = []
    for name in providers:
        if name not in GPU_PROVIDERS:
            raise BackendUnavailable(f"unknown provider {name!r}; expected one of {', '.join(GPU_PROVIDERS)}")
        ep = GPU_PROVIDERS[name]
        if ep not in available:
            raise BackendUnavailable(
                f"{ep} is not available in this onnxruntime build ({ort.__version__}; available: "
                f"{', '.join(sorted(available))}). Install the GPU build: {install_hint('tensorrt')}"
            )
        if name == "cuda":
            # EXHAUSTIVE is ORT's own default; callers running many input sizes may prefer HEURISTIC.
            cuda = {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}
            chosen.append((ep, {**cuda, **dict(options.get("cuda_options") or {})}))
        else:
            chosen.append((ep, _tensorrt_options(path, manifest, device_id, options)))
    return chosen + [CPU_PROVIDER]


def _tensorrt_options(path: Path, manifest: Optional[dict], device_id: int, options: dict) -> dict:
    try:
        from .trt_options import tensorrt_provider_options
    except ImportError as exc:
        raise BackendUnavailable(f"the TensorRT execution provider options are not available ({exc})") from None
    if manifest is None:
        manifest = inspect_manifest(path)
    cache_dir = Path(options.get("cache_dir") or path.parent / ".trt_cache")
    trt = tensorrt_provider_options(
        manifest, cache_dir, int(options.get("resolution") or 512), int(options.get("max_batch") or 1)
    )
    return {"device_id": device_id, **trt}


def inspect_manifest(path: Path) -> dict:
    """Inputs/outputs of a manifest-less ONNX file, read with a CPU session (a released file)."""
    from ...modelspec import manifest_from_shapes

    runner = open_runner(path, None, "cpu")
    return manifest_from_shapes(path, runner.input_shapes, runner.output_shapes)


def open_runner(path: Path, manifest: Optional[dict], device: str = "cpu", **options: Any) -> "OnnxRuntimeRunner":
    """An ONNX Runtime runner for `path`.

    options: providers (GPU providers in priority order, default ("cuda",) on a GPU; add "tensorrt"
    for the TensorRT provider), cuda_options (CUDA provider options overriding ours),
    intra_op_threads (default ONNX Runtime's), cache_dir, resolution and max_batch (TensorRT
    provider profiles).
    """
    ort = require("onnxruntime", "the ONNX Runtime backend")
    kind, device_id = parse_device(device)
    path = Path(path)
    if kind == "cpu":
        providers: List[Any] = [CPU_PROVIDER]
        wanted: Tuple[str, ...] = ()
    else:
        wanted = tuple(options.get("providers") or ("cuda",))
        providers = _provider_list(ort, path, manifest, device_id, wanted, options)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings about unused initialisers are noise for users
    if options.get("intra_op_threads"):
        so.intra_op_num_threads = int(options["intra_op_threads"])
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
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
    return OnnxRuntimeRunner(session, path)


def _shape(value_info: Any) -> Tuple[Any, ...]:
    return tuple(d if isinstance(d, int) else str(d) for d in value_info.shape)


class OnnxRuntimeRunner(Runner):
    """Runs an `onnxruntime.InferenceSession` (thread-safe: ORT sessions allow concurrent run())."""

    name = "onnxruntime"

    def __init__(self, session: Any, path: Path) -> None:
        self._session = session
        self.path = path
        self.input_shapes: Dict[str, Tuple[Any, ...]] = {i.name: _shape(i) for i in session.get_inputs()}
        self.output_shapes: Dict[str, Tuple[Any, ...]] = {o.name: _shape(o) for o in session.get_outputs()}
        self._inputs = list(self.input_shapes)
        self._outputs = list(self.output_shapes)

    @property
    def providers(self) -> List[str]:
        """Execution providers the session actually uses."""
        return list(self._session.get_providers())

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._session is None:
            raise ModelError(f"{self.path}: runner is closed")
        try:
            values = self._session.run(self._outputs, dict(feeds))
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise ModelError(f"{self.path}: inference failed for inputs {shapes} ({exc})") from None
        return dict(zip(self._outputs, values))

    def close(self) -> None:
        self._session = None
