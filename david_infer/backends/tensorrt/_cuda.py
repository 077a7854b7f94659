"""The little of the CUDA runtime (cuda-python's `cuda.bindings.runtime`: no torch, no pycuda) and of
TensorRT's process-wide state that the TensorRT builder and runner share. cuda-python calls return
`(err, *results)`; `call` checks `err` and raises BackendUnavailable with CUDA's own description."""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Tuple

import numpy as np

from ..._optional import require
from ...errors import BackendUnavailable
from ..gpu import check_cuda_device

PURPOSE = "the TensorRT backend (device memory and streams)"
_STATE: dict = {"lock": threading.Lock(), "logger": None}


def tensorrt(purpose: str = "the TensorRT backend") -> Any:
    """The tensorrt module, or BackendUnavailable with the install hint."""
    return require("tensorrt", purpose)


def logger() -> Any:
    """The process-wide trt.Logger (warnings and errors): TensorRT keeps the first one it is given,
    so the builder and the runner share this one."""
    with _STATE["lock"]:
        if _STATE["logger"] is None:
            trt = tensorrt()
            _STATE["logger"] = trt.Logger(trt.Logger.WARNING)
        return _STATE["logger"]


def runtime() -> Any:
    """The cuda-python runtime module, or BackendUnavailable with the install hint."""
    return require("cuda.bindings.runtime", PURPOSE)


def call(result: Any, what: str) -> Any:
    """Check a cuda-python `(err, *values)` result; return the value(s) after err."""
    cudart = runtime()
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA {what} failed: {error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def error_text(err: Any) -> str:
    """`cudaErrorNoDevice (no CUDA-capable device is detected)` for a cudaError_t."""
    cudart = runtime()
    name = getattr(err, "name", str(err))
    try:
        res = cudart.cudaGetErrorString(err)
        text = res[1] if isinstance(res, tuple) else res
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # noqa: BLE001 - a description is a nicety; the name is enough
        return name
    return f"{name} ({text})"


def device_info(device: int = 0) -> Tuple[str, str]:
    """(GPU name, "MAJOR.MINOR" compute capability) of `device`; BackendUnavailable without one."""
    cudart = runtime()
    err, version = cudart.cudaRuntimeGetVersion()
    # the CUDA runtime these bindings (and the matching TensorRT wheel) are built for
    cuda_major = int(version) // 1000 if err == cudart.cudaError_t.cudaSuccess else 12
    # no driver, a driver too old for this CUDA runtime, no device: each its own error and fix
    check_cuda_device(cuda_major, device, cudart)
    prop = call(cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.strip(), f"{prop.major}.{prop.minor}"


class Stream:
    """A non-blocking CUDA stream (does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        cudart = runtime()
        self.handle = call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The raw cudaStream_t address, as execute_async_v3 takes it."""
        try:  # cuda-bindings >= 12.9.1 deprecates int(handle) in favour of this
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            return int(self.handle)
        return int(get_cuda_native_handle(self.handle))

    def synchronize(self) -> None:
        call(runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            call(runtime().cudaStreamDestroy(handle), "cudaStreamDestroy")


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc), freed by close()."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(call(runtime().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            call(runtime().cudaFree(ptr), "cudaFree")


class PinnedBuffer:
    """`nbytes` of page-locked host memory (cudaMallocHost), viewable as numpy arrays."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(call(runtime().cudaMallocHost(max(self.nbytes, 1)), f"cudaMallocHost({self.nbytes} bytes)"))

    def view(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array of `shape` and `dtype` over the start of this buffer (no copy)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{shape} {dtype} does not fit in {self.nbytes} pinned bytes")
        raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            call(runtime().cudaFreeHost(ptr), "cudaFreeHost")


def copy_async(dst: int, src: int, nbytes: int, to_device: bool, stream: Stream) -> None:
    """cudaMemcpyAsync of `nbytes` between pinned host and device memory on `stream`."""
    cudart = runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device else cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    call(cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle), "cudaMemcpyAsync")


def set_device(device: int) -> None:
    call(runtime().cudaSetDevice(device), f"cudaSetDevice({device})")
