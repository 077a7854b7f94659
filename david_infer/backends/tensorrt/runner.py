"""The native TensorRT runner (TensorRT 10/11 tensor-name API): a plan and its engine manifest,
device and pinned host buffers allocated once for the profile's largest shapes, copies and
`execute_async_v3` on the runner's own non-blocking stream, one call at a time.
NOT YET RUN ON A GPU: see docs/gpu.md, TensorRT."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ...contract import GraphIO, ModelContract
from ...errors import DavidError, InputError, ModelError
from ...shapes import ShapeRange, check_input_shape
from ..base import Device, Runner
from . import _cuda
from .engine_manifest import check_compatible, check_plan_sha256, profile_ranges


def _dims(shape: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in shape)


class _Binding:
    """One IO tensor: its dtype and its reused device + pinned host buffers (sized for the max)."""

    def __init__(self, name: str, dtype: np.dtype, max_shape: Tuple[int, ...]) -> None:
        self.name, self.dtype, self.max_shape = name, np.dtype(dtype), max_shape
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
        self.path = contract.path
        self._bindings: Dict[str, _Binding] = {}
        self._stream: Optional[_cuda.Stream] = None
        self._lock = threading.Lock()
        self._device = index = device.index
        self._io = GraphIO(contract.inputs, contract.outputs)
        self._manifest = contract.document  # the "tensorrt" block: version, GPU, profiles
        trt = _cuda.tensorrt()
        gpu, cc = _cuda.device_info(index)
        check_compatible(self._manifest, trt.__version__, cc, self.path, gpu_name=gpu)
        check_plan_sha256(self.path, self._manifest)
        _cuda.set_device(index)
        self._inputs = list(self._io.input_names)
        self._outputs = list(self._io.output_names)
        self._runtime = trt.Runtime(_cuda.logger())
        # The runtime must outlive the engine, the engine its context: keep all three.
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
            self._ranges = self._engine_ranges(trt)
            self._allocate(trt)
        except BaseException:
            self.close()
            raise

    def _engine_ranges(self, trt: Any) -> Dict[str, ShapeRange]:
        """Profile 0's ranges as the engine reports them, checked against the engine manifest's."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {n: engine.get_tensor_mode(n) for n in names}
        ins = {n for n in names if modes[n] == trt.TensorIOMode.INPUT}
        if ins != set(self._inputs) or set(names) - ins != set(self._outputs):
            raise ModelError(
                f"{self.path}: engine tensors {sorted(names)} do not match its engine manifest "
                f"(inputs {self._inputs}, outputs {self._outputs}); rebuild the engine"
            )
        recorded = profile_ranges(self._manifest)
        ranges = {}
        for name in self._inputs:
            lo, opt, hi = (_dims(s) for s in engine.get_tensor_profile_shape(name, 0))
            ranges[name] = ShapeRange(lo, opt, hi)
            if ranges[name] != recorded.get(name):
                raise ModelError(
                    f"{self.path}: profile of {name!r} in the plan differs from its engine manifest; rebuild the engine"
                )
        return ranges

    def _np_dtype(self, trt: Any, name: str) -> np.dtype:
        trt_dtype = self._engine.get_tensor_dtype(name)
        try:
            return np.dtype(trt.nptype(trt_dtype))
        except (TypeError, KeyError):
            raise ModelError(f"{self.path}: tensor {name!r} has type {trt_dtype}, which numpy cannot hold") from None

    def _allocate(self, trt: Any) -> None:
        """Buffers for the maximum shapes: set every input to its max, read the output shapes."""
        ctx = self._context
        for name in self._inputs:
            if not ctx.set_input_shape(name, self._ranges[name].max):
                raise ModelError(f"{self.path}: TensorRT refused the profile's max shape for {name!r}")
        max_shapes: Dict[str, Tuple[int, ...]] = {n: self._ranges[n].max for n in self._inputs}
        for name in self._outputs:
            shape = _dims(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError(f"{self.path}: output {name!r} has no static size at the max input shapes ({shape})")
            max_shapes[name] = shape
        self._stream = _cuda.Stream()
        for name in self._inputs + self._outputs:
            self._bindings[name] = _Binding(name, self._np_dtype(trt, name), max_shapes[name])
            # Addresses never change (buffers are reused), so they are set once.
            if not ctx.set_tensor_address(name, self._bindings[name].device.ptr):
                raise ModelError(f"{self.path}: TensorRT refused the device address of {name!r}")

    @property
    def io(self) -> GraphIO:
        return self._io

    @property
    def profile(self) -> Dict[str, ShapeRange]:
        """Input name -> (min, opt, max) shapes this engine accepts."""
        return dict(self._ranges)

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        extra = [n for n in feeds if n not in self._inputs]
        if missing or extra:
            raise InputError(f"{self.path.name} takes inputs {self._inputs}; missing {missing}, unexpected {extra}")
        arrays = {}
        for name in self._inputs:
            arr = np.asarray(feeds[name])
            if arr.dtype.kind != "f":
                raise InputError(f"input {name!r} must be a float array (float32 NCHW), got {arr.dtype}")
            check_input_shape(name, arr.shape, self._ranges[name], f"engine {self.path.name}")
            arrays[name] = arr
        return arrays

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the engine on float NCHW arrays; returns float32 outputs keyed by name."""
        arrays = self._check_feeds(feeds)
        with self._lock:  # checked under the lock: `close` clears the stream under it
            stream = self._stream
            if stream is None:
                raise DavidError(f"{self.path.name}: runner is closed")
            return self._run(arrays, stream)

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
        shapes: List[Tuple[str, Tuple[int, ...]]] = []
        for name in self._outputs:
            b = self._bindings[name]
            shape = _dims(ctx.get_tensor_shape(name))
            nbytes = int(np.prod(shape, dtype=np.int64)) * b.dtype.itemsize
            _cuda.copy_async(b.host.ptr, b.device.ptr, nbytes, False, stream)
            shapes.append((name, shape))
        stream.synchronize()
        # Copy out of the pinned staging buffers: the next call overwrites them.
        return {
            name: self._bindings[name].host.view(shape, self._bindings[name].dtype).astype(np.float32)
            for name, shape in shapes
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
            for attr in ("_context", "_engine", "_runtime"):
                if hasattr(self, attr):
                    setattr(self, attr, None)
