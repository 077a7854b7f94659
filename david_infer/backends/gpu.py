"""The NVIDIA driver and CUDA device checks that every GPU backend shares (ONNX Runtime's CUDA and
TensorRT providers, the TensorRT backend), and the pip command of each CUDA major's GPU extra."""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Callable, Optional

from .._optional import require
from ..errors import DriverTooOldError, NoGpuError

# setup.py's extra per CUDA major of onnxruntime-gpu, and the TensorRT package built for it.
GPU_EXTRA = {13: "gpu", 12: "gpu-cu12"}
TENSORRT_PACKAGE = {13: "tensorrt-cu13", 12: "tensorrt-cu12"}
# Oldest Linux driver for each CUDA major (NVIDIA's CUDA / TensorRT documentation).
MIN_DRIVER = {12: "525.60.13", 13: "580"}


def install_command(device: str = "cpu", cuda_major: Optional[int] = None) -> str:
    """The pip command that installs the right ONNX Runtime build for `device`."""
    if device == "cpu":
        return 'pip install "david-infer[cpu]"'
    return f'pip install "david-infer[{GPU_EXTRA.get(cuda_major or 13, "gpu")}]"'


def nvidia_driver_present(load: Callable[[str], Any] = ctypes.CDLL) -> bool:
    """Whether the NVIDIA driver's CUDA library (libcuda.so.1 / nvcuda.dll, installed with the
    driver, never by pip) can be loaded: without it no GPU package can help. `load` loads a
    shared library by name (ctypes.CDLL)."""
    for name in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so"):
        try:
            load(name)
            return True
        except OSError:
            continue
    return False


def check_cuda_device(cuda_major: int, device_id: int = 0, cudart: Any = None) -> int:
    """The number of CUDA devices; NoGpuError (no driver, no device, `device_id` out of range) or
    DriverTooOldError (the driver's CUDA version is below `cuda_major`), each with its fix.

    `cudart` is cuda-python's runtime module (imported when None)."""
    cudart = cudart or require("cuda.bindings.runtime", "checking the NVIDIA driver and GPU")
    success = cudart.cudaError_t.cudaSuccess
    err, driver = cudart.cudaDriverGetVersion()
    driver = int(driver or 0) if err == success else 0
    err, count = cudart.cudaGetDeviceCount()
    count = int(count or 0) if err == success else 0
    driver_major = driver // 1000
    if driver == 0:
        raise NoGpuError(
            "no NVIDIA driver is installed (the CUDA driver reports no version), so no GPU is usable. "
            'Install the NVIDIA driver (nvidia-smi must list the GPU), or use device="cpu" with '
            f"{install_command('cpu')}"
        )
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver or driver_major < cuda_major:
        older, alternative = cuda_major - 1, ""
        if older in GPU_EXTRA:
            alternative = (
                f", or keep this driver and install the CUDA {older} build: pip uninstall -y "
                f"onnxruntime-gpu {TENSORRT_PACKAGE.get(cuda_major, '')} cuda-python && "
                f"{install_command('cuda', older)}"
            )
        raise DriverTooOldError(
            f"the NVIDIA driver supports CUDA up to {driver_major}.{driver % 1000 // 10}, older than the CUDA "
            f"{cuda_major} runtime the installed GPU packages are built for (cudaErrorInsufficientDriver). "
            f"Upgrade the driver to {MIN_DRIVER.get(cuda_major, 'a newer one')} or newer{alternative}"
        )
    if count == 0:
        why = getattr(err, "name", str(err)) if err != success else "the driver lists no device"
        raise NoGpuError(
            f'no NVIDIA GPU is visible ({why}); check nvidia-smi and CUDA_VISIBLE_DEVICES, or use device="cpu"'
        )
    if not 0 <= device_id < count:
        raise NoGpuError(f"CUDA device {device_id} does not exist; this machine has {count} (0..{count - 1})")
    return count
