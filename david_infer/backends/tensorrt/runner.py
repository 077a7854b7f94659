"""The native TensorRT runner (TensorRT 10/11 tensor-name API): a plan and its engine manifest,
device and pinned host buffers allocated once for the profile's largest shapes, copies and
`execute_async_v3` on the runner's own non-blocking stream, one call at a time.
NOT YET RUN ON A GPU: see docs/gpu.md, TensorRT."""

from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ...contract import GraphIO, ModelContract
from ...errors import DavidError, InputError, ModelError
from ...shapes import check_input_shape
from ..base import Device, Runner
from . import _cuda
from .engine_manifest import check_compatible, check_plan_sha256, profile_ranges


def _dims(shape: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in shape)


class _Binding:
    """One IO tensor: its dtype and its reused device + pinned host buffers (sized for the max)."""

    def __init__(self, dtype: np.dtype, max_shape: Tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        nbytes = int(np.prod(max_shape, dtype=np.int64)) * self.dtype.itemsize
        self.device = _cuda.DeviceBuffer(nbytes)
        try:
            self.host = _cuda.PinnedBuffer(nbytes)
        except BaseException:
            self.device.close()
            raise

    def close(self) -> None:
        self.device.close()
        self.host.close()


class TensorRTRunner(Runner):
    """Runs a TensorRT plan built by `david-infer build-engine` (see `open_runner`)."""

    name = "tensorrt"

    def __init__(self, contract: ModelContract, device: Device) -> None:
        self.path, self._device, self._io = contract.path, device.index, GraphIO(contract.inputs, contract.outputs)
        self._bindings: Dict[str, _Binding] = {}
        self._stream: Optional[_cuda.Stream] = None
        self._lock = threading.Lock()
        manifest = contract.document  # its "tensorrt" block: version, GPU, profiles
        trt = _cuda.tensorrt()
        gpu, cc = _cuda.device_info(device.index)
        check_compatible(manifest, trt.__version__, cc, self.path, gpu_name=gpu)
        check_plan_sha256(self.path, manifest)  # so the plan is the one whose profile the manifest records
        self._ranges = profile_ranges(manifest)
        self._inputs, self._outputs = list(self._io.input_names), list(self._io.output_names)
        _cuda.set_device(device.index)
        # The runtime must outlive the engine, the engine its context: keep all three.
        self._runtime = trt.Runtime(_cuda.logger())
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ModelError(
                f"{self.path}: TensorRT {trt.__version__} could not deserialize this plan on {gpu} "
                "(see TensorRT's message above); rebuild it with david-infer build-engine"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        try:
            self._allocate(trt)
        except BaseException:
            self.close()
            raise

    def _allocate(self, trt: Any) -> None:
        """Buffers for the maximum shapes: every input set to its max, the output shapes read."""
        ctx = self._context
        shapes: Dict[str, Tuple[int, ...]] = {n: self._ranges[n].max for n in self._inputs}
        for name in self._inputs:
            if not ctx.set_input_shape(name, shapes[name]):
                raise ModelError(f"{self.path}: TensorRT refused the profile's max shape for {name!r}")
        for name in self._outputs:
            shapes[name] = _dims(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shapes[name]):
                raise ModelError(f"{self.path}: output {name!r} has no static size at the max input shapes")
        self._stream = _cuda.Stream()
        for name, shape in shapes.items():
            dtype = self._engine.get_tensor_dtype(name)
            try:
                self._bindings[name] = _Binding(np.dtype(trt.nptype(dtype)), shape)
            except (TypeError, KeyError):
                raise ModelError(f"{self.path}: tensor {name!r} has type {dtype}, which numpy cannot hold") from None
            # Addresses never change (buffers are reused), so they are set once.
            if not ctx.set_tensor_address(name, self._bindings[name].device.ptr):
                raise ModelError(f"{self.path}: TensorRT refused the device address of {name!r}")

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the engine on float NCHW arrays; returns float32 outputs keyed by name."""
        if sorted(feeds) != sorted(self._inputs):
            raise InputError(f"{self.path.name} takes inputs {self._inputs}, got {sorted(feeds)}")
        arrays = {name: np.asarray(feeds[name]) for name in self._inputs}
        for name, arr in arrays.items():
            if arr.dtype.kind != "f":
                raise InputError(f"input {name!r} must be a float array (float32 NCHW), got {arr.dtype}")
            check_input_shape(name, arr.shape, self._ranges[name], f"engine {self.path.name}")
        with self._lock:  # checked under the lock: `close` clears the stream under it
            if self._stream is None:
                raise DavidError(f"{self.path.name}: runner is closed")
            return self._run(arrays, self._stream)

    def _run(self, arrays: Mapping[str, np.ndarray], stream: _cuda.Stream) -> Dict[str, np.ndarray]:
        ctx = self._context
        _cuda.set_device(self._device)  # the current device is per host thread
        for name, arr in arrays.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise InputError(f"TensorRT refused shape {arr.shape} for input {name!r}")
            b = self._bindings[name]
            staged = b.host.view(arr.shape, b.dtype)
            np.copyto(staged, arr, casting="same_kind")
            _cuda.copy_async(b.device.ptr, b.host.ptr, staged.nbytes, True, stream)
        unresolved = ctx.infer_shapes()
        if unresolved:
            raise InputError(f"TensorRT could not infer the shapes of {list(unresolved)} from the inputs")
        if not ctx.execute_async_v3(stream.ptr):
            stream.synchronize()
            raise DavidError(f"{self.path.name}: TensorRT execute_async_v3 failed (see TensorRT's message above)")
        shapes = {name: _dims(ctx.get_tensor_shape(name)) for name in self._outputs}
        for name, shape in shapes.items():
            b = self._bindings[name]
            _cuda.copy_async(b.host.ptr, b.device.ptr, int(np.prod(shape)) * b.dtype.itemsize, False, stream)
        stream.synchronize()
        # Copied out of the pinned staging buffers: the next call overwrites them.
        return {
            n: self._bindings[n].host.view(s, self._bindings[n].dtype).astype(np.float32) for n, s in shapes.items()
        }

    def close(self) -> None:
        """Free device and pinned memory, the stream, the context and the engine. Idempotent."""
        with self._lock:
            bindings, self._bindings = self._bindings, {}
            for b in bindings.values():
                b.close()
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            self._context = self._engine = self._runtime = None
