"""Provider options for ONNX Runtime's TensorRT execution provider (pure Python).

`DavidRuntime(..., backend="onnxruntime", device="cuda", providers=("tensorrt", "cuda"))` passes
these to `("TensorrtExecutionProvider", options)`. Option names are those of ONNX Runtime's
`tensorrt_execution_provider_info.cc`; booleans are Python bools, as its docs ask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from ...contract import ModelContract
from ..tensorrt.profiles import compute_profiles, ort_shape_string

DEFAULT_WORKSPACE_BYTES = 4 << 30


def tensorrt_provider_options(
    contract: ModelContract,
    cache_dir: Union[str, Path],
    resolution: Optional[int],
    max_batch: int,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Dict[str, Any]:
    """TensorRT EP options for a model run at `resolution` x `resolution`, batches 1..`max_batch`
    (optimised for `max_batch`, the batch a batching runtime sends most).

    Engines and the timing cache go under `cache_dir` (created here), so the first session builds
    the engine (minutes for Large) and later ones load it. Profiles cover every input: `image` at
    (1..max_batch, 3, resolution, resolution), `image_384` at (1..max_batch, 3, 384, 384).
    `resolution=None` (each image at its own size) spans the default range, 256..1024 with 512
    as the optimum, instead of pinning one size.

    Precision: an FP32 graph gets `trt_fp16_enable` (TensorRT picks FP16 kernels) with the
    LayerNorm FP32 fallback against overflow. An FP16 graph already says which ops run in FP16;
    enabling the flag would let TensorRT drop its FP32 islands (LayerNorm, softmax) to FP16, and
    recent ONNX Runtime builds the network strongly typed only while the flag is off, so it is off.
    """
    if resolution is None and contract.fixed_resolution is None:
        profiles = compute_profiles(contract, max_batch=max_batch, opt_batch=max_batch)
    else:
        side = resolution or contract.fixed_resolution
        profiles = compute_profiles(contract, side, side, side, max_batch=max_batch, opt_batch=max_batch)
    fp16_flag = contract.precision != "fp16"
    cache_dir = Path(cache_dir)
    engines, timing = cache_dir / "engines", cache_dir / "timing"
    engines.mkdir(parents=True, exist_ok=True)
    timing.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": fp16_flag,
        "trt_layer_norm_fp32_fallback": fp16_flag,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        "trt_max_workspace_size": int(workspace_bytes),
        "trt_profile_min_shapes": ort_shape_string(profiles, "min"),
        "trt_profile_opt_shapes": ort_shape_string(profiles, "opt"),
        "trt_profile_max_shapes": ort_shape_string(profiles, "max"),
    }
