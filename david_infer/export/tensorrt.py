"""ONNX -> TensorRT plan + engine manifest, for TensorRT 10 and 11 (`david-infer build-engine`), on the
TensorRT backend's `_cuda`, `profiles` and `engine_manifest`; TensorRT and cuda-python are imported
inside `build_engine` only. NOT YET RUN ON A GPU: see docs/gpu.md, TensorRT."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from ..backends.tensorrt import _cuda
from ..backends.tensorrt.engine_manifest import HARDWARE_COMPAT, build_engine_manifest
from ..backends.tensorrt.profiles import DEFAULT_MAX_BATCH, compute_profiles
from ..contract import ModelContract, read_manifest
from ..errors import BackendUnavailable, ExportError, InputError, ModelError
from ..files import atomic_write, atomic_write_bytes
from ..manifest import manifest_path, write_manifest
from ..shapes import ShapeRange

DEFAULT_WORKSPACE_GB = 8.0


class NetworkPlan(NamedTuple):
    """How to create the network and configure precision for one graph on one TensorRT."""

    strongly_typed: bool
    fp16_flag: bool
    precision: str
    warning: Optional[str] = None


def plan_precision(
    graph_precision: str, has_strongly_typed: bool, has_fp16_flag: bool, trt_version: str = ""
) -> NetworkPlan:
    """Network and builder flags for a graph of `graph_precision` ("fp16" / "fp32"), given whether
    STRONGLY_TYPED (TensorRT >= 10) and BuilderFlag.FP16 (TensorRT < 11) exist: an FP16 graph
    strongly typed (precision flags are not allowed then); an FP32 one weakly typed with the FP16
    flag, or, on TensorRT 11, an FP32 engine with a warning."""
    if graph_precision not in ("fp16", "fp32"):
        raise ExportError(f"graph precision {graph_precision!r} is neither fp16 nor fp32")
    if graph_precision == "fp16":
        if has_strongly_typed:
            return NetworkPlan(True, False, "fp16")
        # Pre-10 TensorRT: weakly typed only; the flag lets the FP16 graph keep its FP16 kernels.
        return NetworkPlan(False, has_fp16_flag, "fp16" if has_fp16_flag else "fp32")
    if has_fp16_flag:
        return NetworkPlan(False, True, "fp16")
    return NetworkPlan(
        has_strongly_typed,
        False,
        "fp32",
        f"TensorRT {trt_version} has no FP16 builder flag (strongly typed only): this FP32 graph "
        "builds an FP32 engine. For FP16, export the model with FP16 precision first.",
    )


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """create_network flags; the enum's value is read, never hard-coded (it changed in 11)."""
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _check_paths(onnx_path: Path, output: Path, timing_cache: Optional[Path]) -> Dict[str, Any]:
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file not found: {onnx_path}")
    mpath = manifest_path(onnx_path)
    if not mpath.exists():
        raise ModelError(
            f"{onnx_path}: its manifest {mpath.name} is missing; the engine builder needs it for the "
            "input names and shapes. Export with: david-infer export ... -o " + onnx_path.name
        )
    manifest = read_manifest(mpath)
    if output.suffix in (".onnx", ".json"):
        raise InputError(
            f"output {output} must not end in {output.suffix}; use e.g. {output.with_suffix('.engine').name}"
        )
    if output.resolve() == onnx_path.resolve():
        raise InputError("the output must differ from the ONNX file")
    for folder, what in ((output.parent, "output"), (timing_cache.parent if timing_cache else None, "timing cache")):
        if folder is None:
            continue
        if not folder.is_dir():
            raise InputError(f"{what} folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"{what} folder {folder} is not writable")
    return manifest


def _create(trt: Any, gpu: str, what: str, factory: Any, *args: Any) -> Any:
    """Call a TensorRT factory; its null result (a bare TypeError from the bindings, or None)
    becomes a BackendUnavailable saying what could not be made and why that usually happens."""
    try:
        made = factory(*args)
    except TypeError as exc:  # pybind11: "factory function returned nullptr" when CUDA cannot start
        made, detail = None, f" ({exc})"
    else:
        detail = ""
    if made is None:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} could not create {what} on {gpu}{detail}: CUDA could not start or the "
            "GPU is out of memory (see TensorRT's message above). Check `nvidia-smi`, and that the driver "
            "supports this TensorRT's CUDA version"
        )
    return made


def _parse(
    trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool, gpu: str = "the GPU"
) -> Tuple[Any, Any]:
    network = _create(trt, gpu, "a network", builder.create_network, network_flags(trt, strongly_typed))
    parser = _create(trt, gpu, "an ONNX parser", trt.OnnxParser, network, logger)
    # parse_from_file (not parse(bytes)) so external weights resolve beside the file.
    ok = parser.parse_from_file(str(onnx_path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["(no parser message)"]
        raise ExportError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  " + "\n  ".join(errors))
    return network, parser


def _check_network_inputs(network: Any, profiles: Mapping[str, ShapeRange], onnx_path: Path) -> None:
    """Every dynamic network input has a profile range, and the ranks agree."""
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(d) for d in tensor.shape)
        rng = profiles.get(tensor.name)
        if rng is None:
            if any(d < 0 for d in dims):
                raise ExportError(
                    f"{onnx_path}: dynamic input {tensor.name!r} is not in the manifest; re-export the model"
                )
            continue
        if len(dims) != len(rng.min) or any(d >= 0 and d != lo for d, lo in zip(dims, rng.min)):
            raise ExportError(
                f"{onnx_path}: input {tensor.name!r} has shape {dims} in the graph, which does not fit the manifest's profile {rng.min}..{rng.max}"
            )


def _config(
    trt: Any,
    builder: Any,
    plan: NetworkPlan,
    profiles: Mapping[str, ShapeRange],
    workspace_gb: float,
    hardware_compat: str,
    tf32: bool = False,
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    # TensorRT allows TF32 for FP32 maths by default (10-bit mantissas): an "fp32" engine must
    # not use it silently, so it is cleared unless asked for (--tf32), and the engine manifest says which.
    if hasattr(trt.BuilderFlag, "TF32"):
        if tf32:
            config.set_flag(trt.BuilderFlag.TF32)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
    if hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    for name, rng in profiles.items():
        profile.set_shape(name, rng.min, rng.opt, rng.max)
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(
            "TensorRT rejected the optimization profile: "
            + ", ".join(f"{n} {r.min}..{r.max}" for n, r in profiles.items())
        )
    return config


def _attach_timing_cache(config: Any, cache_path: Optional[Path]) -> None:
    """Load the timing cache file if there is one (an empty blob: a new cache the build fills); one of
    another TensorRT or GPU is replaced, not fatal."""
    blob = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(blob)
    # set_timing_cache returns False when the cache was made by another TensorRT or device.
    if cache is None or config.set_timing_cache(cache, ignore_mismatch=False) is False:
        print(
            f"warning: timing cache {cache_path} is from another TensorRT version or GPU; starting a new one",
            file=sys.stderr,
        )
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine(
    onnx_path: Union[str, Path],
    output: Union[str, Path],
    min_hw: Optional[str] = None,
    opt_hw: Optional[str] = None,
    max_hw: Optional[str] = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    timing_cache: Optional[Union[str, Path]] = None,
    hardware_compat: str = "none",
    device: int = 0,
    tf32: bool = False,
) -> Dict[str, Any]:
    """Build `output` (plan) and `output.json` (engine manifest) from a david-infer ONNX export; both
    appear only on success; returns the engine manifest. Arguments are checked before TensorRT is
    imported; BackendUnavailable without TensorRT, cuda-python or a GPU; ExportError if TensorRT
    cannot parse or build. `tf32` allows TF32 for FP32 maths (the precision then reads "fp32+tf32")."""
    onnx_path, output = Path(onnx_path), Path(output)
    cache_path = Path(timing_cache) if timing_cache else None
    if hardware_compat not in HARDWARE_COMPAT:
        raise InputError(f"--hardware-compat {hardware_compat!r}: expected one of {', '.join(HARDWARE_COMPAT)}")
    if not workspace_gb > 0:
        raise InputError(f"--workspace {workspace_gb} GB must be positive")
    manifest = _check_paths(onnx_path, output, cache_path)
    contract = ModelContract.from_dict(onnx_path, manifest)
    profiles = compute_profiles(contract, min_hw, opt_hw, max_hw, max_batch=max_batch)

    trt = _cuda.tensorrt("building TensorRT engines")
    gpu, cc = _cuda.device_info(device)
    _cuda.set_device(device)
    plan = plan_precision(
        contract.precision,
        hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        hasattr(trt.BuilderFlag, "FP16"),
        trt.__version__,
    )
    notes: List[str] = [plan.warning] if plan.warning else []
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    logger = _cuda.logger()
    builder = _create(trt, gpu, "a builder", trt.Builder, logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, plan.strongly_typed, gpu)
    _check_network_inputs(network, profiles, onnx_path)
    config = _config(trt, builder, plan, profiles, workspace_gb, hardware_compat, tf32)
    _attach_timing_cache(config, cache_path)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path} on {gpu} (see "
            "TensorRT's messages above); a smaller --max or --max-batch, or a larger --workspace, may help"
        )
    if cache_path:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    data = memoryview(serialized)
    precision = plan.precision + ("+tf32" if tf32 and plan.precision == "fp32" else "")
    engine_manifest = build_engine_manifest(
        manifest,
        output.name,
        hashlib.sha256(data).hexdigest(),
        trt.__version__,
        gpu,
        cc,
        hardware_compat,
        profiles,
        precision,
        seconds,
        tuple(notes),
    )

    def write(tmp: Path) -> None:  # the plan, then its engine manifest, then the plan's rename
        tmp.write_bytes(data)
        write_manifest(manifest_path(output), engine_manifest)

    atomic_write(output, write, suffix=".engine.tmp")
    return engine_manifest
