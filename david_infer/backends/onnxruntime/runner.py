"""ONNX Runtime sessions and the runner. A GPU session is checked twice: its providers after it is
made, and where one profiled warm-up run put the heavy nodes (a provider that cannot take a node
hands it to the CPU silently), so a GPU request never runs on the CPU."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..._optional import install_hint, require
from ...config import DEFAULT_RESOLUTION
from ...contract import GraphIO, ModelContract, TensorSpec
from ...errors import BackendUnavailable, ModelError
from ...memory_estimate import allocation_error, is_allocation_failure
from ..base import Device, Runner, Workload
from ..tensorrt.profiles import compute_profiles, ort_shape_string
from .install import check_gpu, import_onnxruntime

GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CPU_PROVIDER = "CPUExecutionProvider"
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
}
#: op types that carry the model's compute; any of them on the CPU defeats a GPU session
HEAVY_OPS = frozenset(
    "Conv ConvTranspose MatMul Gemm FusedConv FusedMatMul FusedGemm Attention MultiHeadAttention".split()
)
DEFAULT_WORKSPACE_BYTES = 4 << 30


def tensorrt_provider_options(
    contract: ModelContract,
    cache_dir: Union[str, Path],
    resolution: Optional[int],
    max_batch: int,
) -> Dict[str, Any]:
    """Options of ONNX Runtime's TensorRT provider (the names of its tensorrt_execution_provider_info.cc)
    for images at `resolution` (None: the default range 256..1024, optimum 512) in batches of
    1..`max_batch` (optimised for `max_batch`). Engines and the timing cache go under `cache_dir`
    (created here). An FP32 graph gets trt_fp16_enable with the LayerNorm FP32 fallback; an FP16
    graph keeps its own types (the flag would let TensorRT drop its FP32 islands)."""
    if resolution is None and contract.fixed_resolution is None:
        profiles = compute_profiles(contract, max_batch=max_batch, opt_batch=max_batch)
    else:
        side = resolution or contract.fixed_resolution
        profiles = compute_profiles(contract, side, side, side, max_batch=max_batch, opt_batch=max_batch)
    fp16_flag = contract.precision != "fp16"
    engines, timing = Path(cache_dir) / "engines", Path(cache_dir) / "timing"
    for folder in (engines, timing):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": fp16_flag,
        "trt_layer_norm_fp32_fallback": fp16_flag,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        "trt_max_workspace_size": DEFAULT_WORKSPACE_BYTES,
        **{f"trt_profile_{level}_shapes": ort_shape_string(profiles, level) for level in ("min", "opt", "max")},
    }


def profiled_placement(session: Any, feeds: Mapping[str, np.ndarray]) -> Dict[str, Counter]:
    """Provider -> Counter of the op types it ran, from one run of `session` (made with profiling
    on: each "Node" event of ONNX Runtime's profile names its provider); the profile is removed."""
    session.run(None, dict(feeds))
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    placement: Dict[str, Counter] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and args.get("provider") and args.get("op_name"):
            placement.setdefault(args["provider"], Counter())[args["op_name"]] += 1
    return placement


def heavy_ops_on_cpu(placement: Mapping[str, Counter]) -> List[Tuple[str, int]]:
    """(op type, executions) of heavy ops the CPU provider ran."""
    return sorted((op, n) for op, n in placement.get(CPU_PROVIDER, Counter()).items() if op in HEAVY_OPS)


def check_placement(placement: Mapping[str, Counter], wanted: Sequence[str], path: Path) -> None:
    """BackendUnavailable when heavy nodes ran on the CPU in a session meant for `wanted` GPU
    providers, or when no node ran on any of them."""
    on_gpu = sum(sum(c.values()) for p, c in placement.items() if p in wanted)
    fallen = heavy_ops_on_cpu(placement)
    if on_gpu and not fallen:
        return
    ran = "; ".join(f"{p}: {sum(c.values())} nodes" for p, c in placement.items()) or "no node events"
    detail = ", ".join(f"{op} x{n}" for op, n in fallen)
    raise BackendUnavailable(
        f"{path}: asked to run on {', '.join(wanted)}, but "
        + (f"heavy nodes ran on the CPU ({detail})" if fallen else "no node ran on the GPU")
        + f" [{ran}]. The GPU provider cannot take these nodes (an op or dtype it lacks, or CUDA/cuDNN "
        "libraries missing); not running on the CPU silently. Check `david-infer info` and the install "
        "table in docs/gpu.md"
    )


def dummy_feeds(inputs: Iterable[Any], side: int) -> Dict[str, np.ndarray]:
    """Zeros for every input: symbolic batch = 1, symbolic height/width = `side`."""
    return {
        spec.name: np.zeros(
            [d if isinstance(d, int) else (1 if i == 0 else side) for i, d in enumerate(spec.shape)],
            spec.dtype if spec.dtype in ("float16", "uint8") else np.float32,
        )
        for spec in inputs
    }


def create_session(
    path: Path,
    device: Device,
    providers: Sequence[str],
    options: Any,
    contract: Optional[ModelContract] = None,
    workload: Optional[Workload] = None,
) -> Any:
    """An `onnxruntime.InferenceSession` for `path` on `device` with the GPU `providers` asked for
    (then the CPU's); one asked for but not active is BackendUnavailable, never a silent CPU run."""
    path = Path(path)
    wanted: Tuple[str, ...] = tuple(providers) if device.kind == "cuda" else ()
    ort = import_onnxruntime(device.kind, shown=device.shown)  # one build; CUDA/cuDNN preloaded
    chosen: List[Any] = []
    if wanted:  # driver, device and TensorRT each fail with their own error and fix
        check_gpu(ort, device.index, tensorrt="tensorrt" in wanted)
    available = set(ort.get_available_providers()) if wanted else set()
    for name in wanted:
        ep = GPU_PROVIDERS[name]
        if ep not in available:
            raise BackendUnavailable(
                f"{ep} is not available in this onnxruntime build ({ort.__version__}; available: "
                f"{', '.join(sorted(available))}). Install the GPU build: {install_hint('tensorrt')}"
            )
        if name == "cuda":  # EXHAUSTIVE is ORT's own default; many input sizes may prefer HEURISTIC
            ep_options = {"cudnn_conv_algo_search": "EXHAUSTIVE", **dict(options.cuda_options or {})}
        elif contract is None or workload is None:
            raise BackendUnavailable(f"{path}: the TensorRT provider needs the model contract and workload")
        else:
            cache = options.cache_dir or path.parent / ".trt_cache"
            ep_options = tensorrt_provider_options(contract, cache, workload.resolution, workload.max_batch)
        chosen.append((ep, {"device_id": device.index, **ep_options}))
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings about unused initialisers are noise for users
    if options.intra_op_threads:
        so.intra_op_num_threads = int(options.intra_op_threads)
    if wanted:  # one profiled warm-up shows which provider ran each node
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"david-infer-placement-{os.getpid()}")
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=chosen + [CPU_PROVIDER])
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
        side = (workload and workload.resolution) or (contract and contract.fixed_resolution) or DEFAULT_RESOLUTION
        placement = profiled_placement(session, dummy_feeds(session_io(session).inputs, side))
        check_placement(placement, [GPU_PROVIDERS[n] for n in wanted], path)
    return session


def session_io(session: Any) -> GraphIO:
    """A session's inputs and outputs as GraphIO."""

    def spec(v: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in v.shape)
        return TensorSpec(v.name, shape, _ORT_TYPES.get(v.type, str(v.type)))

    return GraphIO(tuple(map(spec, session.get_inputs())), tuple(map(spec, session.get_outputs())))


class OnnxRuntimeRunner(Runner):
    """Runs an `onnxruntime.InferenceSession` (thread-safe: ORT sessions allow concurrent run())."""

    name = "onnxruntime"

    def __init__(self, session: Any, path: Path) -> None:
        self._session, self.path, self._io = session, path, session_io(session)

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Mapping[str, np.ndarray], release_memory: bool = False) -> Dict[str, np.ndarray]:
        """The outputs for `feeds`. `release_memory`: give back the arena memory this run leaves
        unused (ONNX Runtime keeps the largest run's otherwise)."""
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
