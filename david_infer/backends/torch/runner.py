"""The reference PyTorch model behind the Runner interface, shaped like the contract's graph, with
TorchOptions' GPU options (precision, channels-last, compile, CUDA graphs, pinned copies)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ..._optional import require
from ...contract import GraphIO, ModelContract
from ...errors import BackendUnavailable, InputError, ModelError
from ...files import sha256_file
from ...memory_estimate import allocation_error, is_allocation_failure
from ..base import Device, Runner

if TYPE_CHECKING:
    from . import TorchOptions

log = logging.getLogger("david_infer.torch")

#: (image shape, image_384 shape or None): what one compiled program or CUDA graph is made for
ShapeKey = Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]
GRAPH_WARMUP_CALLS = 2  # before a capture: lazy initialisation (cuDNN plans, allocator pools) must not be captured


def _weights_file(contract: ModelContract) -> Optional[str]:
    """The safetensors file the manifest names (absolute, or beside the model), None for random weights."""
    path, weights = contract.path, contract.weights
    if weights.origin == "random":
        return None
    if weights.origin != "file" or not weights.path:
        raise ModelError(
            f"{path}: the torch backend needs our safetensors weights or a random seed in the manifest "
            f"(weights origin {weights.origin!r}); released files have no PyTorch weights: use backend='onnxruntime'"
        )
    for candidate in (Path(weights.path), path.parent / Path(weights.path).name):
        if candidate.is_file():
            if weights.sha256 and sha256_file(candidate) != weights.sha256:
                raise ModelError(f"{candidate}: SHA-256 does not match the one recorded in {path}'s manifest")
            return str(candidate)
    raise ModelError(f"{path}: weights file {weights.path} named in the manifest was not found")


def torch_module() -> Any:
    """torch (imported by `build_runner` before any runner exists)."""
    import torch

    return torch


def reduced_dtype(torch: Any, precision: str) -> Optional[Any]:
    """The autocast dtype of a precision name (None for fp32)."""
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def check_precision(torch: Any, device: Device, precision: str) -> None:
    """BackendUnavailable when `device` cannot compute in `precision` (asked of torch, not guessed)."""
    dtype = reduced_dtype(torch, precision)
    if dtype is None:
        return
    if device.kind == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device.index)
            raise BackendUnavailable(
                f"torch backend: {name} ({device}) has no bf16 support; use precision='fp16' or 'fp32'"
            )
        return
    try:  # the CPU kernels of a type depend on the torch build: try the two op kinds the model needs
        with torch.autocast("cpu", dtype=dtype):
            x = torch.ones(1, 2, 4, 4)
            torch.nn.functional.conv2d(x, torch.ones(2, 2, 3, 3)).sum().item()
            torch.nn.functional.linear(x.flatten(1), torch.ones(3, 32)).sum().item()
    except (RuntimeError, NotImplementedError) as exc:
        raise BackendUnavailable(
            f"torch backend: this torch build ({torch.__version__}) cannot compute in "
            f"{precision} on the CPU ({exc}); use precision='fp32' or a GPU"
        ) from None


def build_runner(contract: ModelContract, device: Device, options: "TorchOptions") -> "TorchRunner":
    """A TorchRunner for the model the contract describes (variant, task, weights)."""
    torch = require("torch", "the torch backend")
    from ...model import build_model

    path = contract.path
    if not contract.variant:
        raise ModelError(
            f"{path}: the torch backend needs a david-infer manifest naming the variant and task; "
            "released files have no PyTorch weights: use backend='onnxruntime'"
        )
    if device.kind == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device {device.shown!r} asked for the torch backend, but torch sees no "
                f"CUDA GPU (a CPU build of torch, or no NVIDIA driver); drop --device "
                f"{device.shown} to run on the CPU"
            )
        if device.index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f"device {device.shown!r} asked for the torch backend, but torch sees "
                f"{torch.cuda.device_count()} CUDA GPU(s)"
            )
    check_precision(torch, device, options.precision)
    weights = _weights_file(contract)
    try:
        model = build_model(contract.variant, contract.task, weights=weights, seed=contract.weights.seed)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return TorchRunner(model, contract, device, options)


class TorchRunner(Runner):
    """Runs the PyTorch model, named and shaped as the contract's graph: `run` on numpy arrays (through
    pinned buffers on CUDA), `run_tasks` on device tensors. Calls are serialised (one model, one stream)."""

    name = "torch"

    def __init__(self, model: Any, contract: ModelContract, device: Device, options: "TorchOptions") -> None:
        import torch

        self.options = options
        self.device = device
        self.torch_device = torch.device(str(device))
        self.cuda = device.kind == "cuda"
        self.pinned = self.cuda if options.pinned is None else options.pinned
        self._io = GraphIO(contract.inputs, contract.outputs)
        self._dtype = reduced_dtype(torch, options.precision)
        self._memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        model = model.to(self.torch_device)
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():  # inference only; also lets autocast cache its weight casts
            p.requires_grad_(False)
        self._model: Any = model
        self._forward: Callable[..., Dict[str, Any]] = self._eager_forward
        if options.compile != "off":
            self._forward = self._compiled(torch)
        self._stream = torch.cuda.Stream(self.torch_device) if self.cuda else None
        self._lock = threading.Lock()
        self._host: Dict[Tuple[str, Tuple[int, ...]], Any] = {}  # pinned buffers by (name, shape)
        self._graphs: Dict[ShapeKey, Tuple[Any, Tuple[Any, ...], Dict[str, Any]]] = {}
        #: seconds the first call of each input shape took (compilation / graph capture included)
        self.first_call_seconds: Dict[ShapeKey, float] = {}

    def _eager_forward(self, image: Any, image_384: Optional[Any]) -> Dict[str, Any]:
        import torch

        with torch.autocast(self.device.kind, dtype=self._dtype, enabled=self._dtype is not None):
            out = self._model(image, image_384)
        return {task: value.float() for task, value in out.items()}

    def _compiled(self, torch: Any) -> Callable[..., Dict[str, Any]]:
        opts = self.options
        config = getattr(getattr(torch, "_dynamo", None), "config", None)
        # one program per shape (dynamic=False); room for the shapes a run meets before torch
        # falls back to eager with a warning
        for limit in ("recompile_limit", "cache_size_limit"):
            if config is not None and hasattr(config, limit):
                setattr(config, limit, max(64, getattr(config, limit)))
        mode = None if opts.compile == "default" else opts.compile
        try:
            return torch.compile(self._eager_forward, mode=mode, backend=opts.compile_backend, dynamic=False)
        except Exception as exc:  # an unknown backend is refused here, not on the first call
            raise InputError(
                f"torch backend: torch.compile(mode={opts.compile!r}, backend={opts.compile_backend!r}) failed: {exc}"
            ) from None

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with self._lock, self._on_stream():
            tensors = [self._upload(spec.name, feeds[spec.name]) for spec in self._io.inputs]
            out = self._run_locked(tensors[0], tensors[1] if len(tensors) > 1 else None)
            result = {}
            for spec in self._io.outputs:
                if spec.task is None:  # a contract's outputs always carry their task
                    raise ModelError(f"torch backend: output {spec.name!r} carries no task")
                value = out[spec.task]
                if len(spec.shape) == 3:  # the released depth layout has no channel axis
                    value = value[:, 0]
                result[spec.name] = self._download(spec.name, value)
            if self._stream is not None:
                self._stream.synchronize()
            return {name: host.numpy().copy() if self.pinned else host.numpy() for name, host in result.items()}

    def run_tasks(self, image: Any, image_384: Optional[Any] = None) -> Dict[str, Any]:
        """The model on device tensors (B, 3, H, W) and (B, 3, 384, 384) float32; task -> (B, C, H, W)
        float32 on the device, finished (the runner's stream synchronised) when this returns."""
        with self._lock, self._on_stream():
            if self._stream is not None:  # the inputs were made on the caller's stream
                self._stream.wait_stream(torch_module().cuda.default_stream(self.torch_device))
            out = self._run_locked(image, image_384)
            if self._stream is not None:
                self._stream.synchronize()
            return out

    def own_stages(self, contract: ModelContract, options: Any, kind: str) -> Optional[Any]:
        """Torch stages on this runner's device (david_infer.backends.torch.stages) when asked for,
        with output="torch", or by default on CUDA; None otherwise (on the CPU the graph stages are
        faster)."""
        keep = self.options.output == "torch"
        if keep and kind not in ("auto", "torch"):
            raise InputError(
                f"torch backend: output='torch' keeps the maps on the device with the torch stages, not {kind!r}"
            )
        if not (kind == "torch" or keep or (kind == "auto" and self.cuda)):
            return None
        from .stages import TorchStages

        return TorchStages(self, contract, options, self.options.output)

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._graphs.clear()
            self._host.clear()

    def _on_stream(self) -> Any:
        return contextlib.nullcontext() if self._stream is None else torch_module().cuda.stream(self._stream)

    def _host_buffer(self, name: str, shape: Tuple[int, ...]) -> Any:
        torch, key = torch_module(), (name, tuple(shape))
        if key not in self._host:
            self._host[key] = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        return self._host[key]

    def _upload(self, name: str, array: np.ndarray) -> Any:
        array = np.asarray(array, dtype=np.float32)
        if not self.pinned:
            return torch_module().from_numpy(np.ascontiguousarray(array)).to(self.torch_device)
        host = self._host_buffer("in:" + name, array.shape)
        host.numpy()[...] = array  # the previous call's copies are done: every call ends synchronised
        return host.to(self.torch_device, non_blocking=True)

    def _download(self, name: str, value: Any) -> Any:
        if not self.pinned:
            return value.cpu()
        host = self._host_buffer("out:" + name, tuple(value.shape))
        host.copy_(value, non_blocking=True)
        return host

    def _run_locked(self, image: Any, image_384: Optional[Any]) -> Dict[str, Any]:
        import torch

        if self._model is None:
            raise ModelError("torch runner is closed")
        image = image.contiguous(memory_format=self._memory_format)
        if image_384 is not None:
            image_384 = image_384.contiguous(memory_format=self._memory_format)
        key: ShapeKey = (tuple(image.shape), None if image_384 is None else tuple(image_384.shape))
        first = key not in self.first_call_seconds
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                if self.options.cuda_graphs:
                    out = self._replay(key, image, image_384)
                else:
                    out = self._forward(image, image_384)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_allocation_failure(exc):
                raise
            shapes = {"image": key[0], **({"image_384": key[1]} if key[1] is not None else {})}
            raise allocation_error(exc, "torch", shapes) from None
        if first:
            if self._stream is not None:
                self._stream.synchronize()
            seconds = self.first_call_seconds[key] = time.perf_counter() - t
            log.info(
                "torch backend: first call for shape %s took %.2f s (compile %s, cuda_graphs %s)",
                key,
                seconds,
                self.options.compile,
                self.options.cuda_graphs,
            )
        return out

    def _replay(self, key: ShapeKey, image: Any, image_384: Optional[Any]) -> Dict[str, Any]:
        """The forward replayed from the CUDA graph captured for this shape (captured on first use)."""
        import torch

        stream = self._stream
        assert stream is not None, "TorchOptions.check_device refuses cuda_graphs off CUDA"
        entry = self._graphs.get(key)
        if entry is None:
            static = tuple(t.clone() for t in (image, image_384) if t is not None)
            for _ in range(GRAPH_WARMUP_CALLS):
                self._forward(*static, *([None] * (2 - len(static))))
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                outputs = self._forward(*static, *([None] * (2 - len(static))))
            entry = self._graphs[key] = (graph, static, outputs)
        graph, static, outputs = entry
        for dst, src in zip(static, (image, image_384)):
            dst.copy_(src)
        graph.replay()
        return {task: value.clone() for task, value in outputs.items()}  # the next replay overwrites them
