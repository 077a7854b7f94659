"""The MLServer runtime (`MLModel`) that serves one DAViD model through our backend interface.

MLServer imports this module in each inference worker; it is the only module of the package that
imports mlserver at module level.

Batching: concurrent requests are merged here, with numpy, not by MLServer's adaptive batcher.
MLServer merges request tensors as Python lists (concatenated with `sum(lists, [])`, quadratic,
then validated again by pydantic): 16 requests of one 128x128 image with its 384x384 copy took
1.7 s to merge on our CPU, longer than the model takes for them. `_Batcher` keeps MLServer's
semantics (up to `max_batch_size` images, waiting at most `max_batch_time` for more) and costs one
np.concatenate; requests that arrive while a batch runs form the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    ResponseOutput,
    TensorData,
)

from .. import __version__
from ..contract import TensorSpec
from ..manifest import SERVED_MANIFEST_PREFIX
from ..options import RuntimeOptions
from ..runtime import DavidRuntime
from .memory import cap_log_lines, start_memory_trimmer

logger = logging.getLogger("david_infer.serving")
_BATCH_SIZES: Dict[str, Any] = {}


def batch_size_histogram() -> Any:
    """The `david_batch_size` histogram (images per model call), made on first use: MLServer sets
    prometheus_client's multi-process mode in each worker before it loads the model, and with no
    workers it exports prometheus_client's default registry, where this registers (MLServer's own
    `mlserver.log` metrics reach the endpoint only from workers)."""
    if "histogram" not in _BATCH_SIZES:
        from prometheus_client import REGISTRY, Histogram

        try:
            _BATCH_SIZES["histogram"] = Histogram(
                "david_batch_size",
                "images per model call (adaptive batching)",
                labelnames=["model"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            )
        except ValueError:  # registered by an earlier import of this module (MLServer's model reload)
            _BATCH_SIZES["histogram"] = REGISTRY._names_to_collectors["david_batch_size"]
    return _BATCH_SIZES["histogram"]


_DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}  # uint8: a pre/post graph's image


def _metadata(spec: TensorSpec) -> MetadataTensor:
    """A contract tensor as V2 metadata: symbolic dims are -1."""
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return MetadataTensor(name=spec.name, datatype=_DATATYPES.get(spec.dtype, "FP32"), shape=shape)


Feeds = Dict[str, np.ndarray]


class Request(NamedTuple):
    """One validated request waiting for its batch: its feeds, its image count (every feed holds
    `rows` rows) and the future its outputs go to."""

    feeds: Feeds
    rows: int
    future: "asyncio.Future[Mapping[str, np.ndarray]]"


class _Batcher:
    """Runs concurrent requests' feeds as one batch (same tensor shapes after the batch axis, up to
    `max_batch` images, waiting at most `max_wait` seconds for a batch to fill) through `run` on
    `executor`. Only requests `DavidModel.validate` accepted come here; each gets back exactly its
    own rows, checked by `finish` (NonFiniteOutput and the like fail that request alone)."""

    def __init__(
        self,
        run: Callable[[Feeds], Mapping[str, np.ndarray]],
        max_batch: int,
        max_wait: float,
        executor: ThreadPoolExecutor,
        observe: Callable[[int], None],
        finish: Callable[[Mapping[str, np.ndarray], int], Mapping[str, np.ndarray]],
    ) -> None:
        self._run, self._max_batch, self._max_wait, self._executor = run, max_batch, max_wait, executor
        self._observe, self._finish = observe, finish
        self._queue: "asyncio.Queue[Request]" = asyncio.Queue()
        self._held: Deque[Request] = deque()  # another size: next batch
        self._task: Optional[asyncio.Task] = None

    async def submit(self, feeds: Feeds, rows: int) -> Mapping[str, np.ndarray]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(Request(feeds, rows, future))
        return await future

    def close(self) -> None:
        """Stop collecting batches; requests still waiting fail with ServerUnavailable (503)."""
        if self._task is not None:
            self._task.cancel()
        error = MLServerError("the model is being unloaded; retry", status_code=503)
        for request in [*self._held, *_drain(self._queue)]:
            if not request.future.done():
                request.future.set_exception(error)
        self._held.clear()

    @staticmethod
    def _key(feeds: Feeds) -> tuple:
        return tuple((name, value.shape[1:]) for name, value in sorted(feeds.items()))

    async def _next(self, timeout: Optional[float]) -> Optional[Request]:
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            batch, key, size = [first], self._key(first.feeds), first.rows
            deadline = loop.time() + self._max_wait
            while size < self._max_batch:
                item = self._queue.get_nowait() if not self._queue.empty() else await self._next(deadline - loop.time())
                if item is None:
                    break
                if self._key(item.feeds) != key or size + item.rows > self._max_batch:
                    self._held.append(item)
                    break
                batch.append(item)
                size += item.rows
            await self._run_batch(batch, size)

    async def _run_batch(self, batch: List[Request], size: int) -> None:
        feeds = (
            {name: np.concatenate([r.feeds[name] for r in batch]) for name in batch[0].feeds}
            if len(batch) > 1
            else batch[0].feeds
        )
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds)
        except Exception as exc:  # the backend's typed error, passed on with its message (no traceback)
            error = exc if isinstance(exc, MLServerError) else MLServerError(_one_line(exc), status_code=500)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        del feeds
        self._observe(size)
        logger.debug("ran a batch of %d images from %d requests", size, len(batch))
        start = 0
        for request in batch:  # each request's own rows, by its own count
            rows = {name: value[start : start + request.rows] for name, value in outputs.items()}
            start += request.rows
            if request.future.done():  # the client went away
                continue
            try:
                request.future.set_result(self._finish(rows, request.rows))
            except Exception as exc:  # this request's outputs are wrong (not finite, bad shape): it alone fails
                request.future.set_exception(
                    exc if isinstance(exc, MLServerError) else MLServerError(_one_line(exc), status_code=500)
                )


def _drain(queue: "asyncio.Queue[Request]") -> List[Request]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _one_line(exc: BaseException) -> str:
    """An error as the client sees it: its type and message, capped (never a traceback or a path
    inside the server)."""
    return f"{type(exc).__name__}: {exc}"[:2000]


class DavidModel(MLModel):
    """Opens the model with `DavidRuntime` (any registered backend, the contract checked as for a
    local run) and runs `runner.run(feeds)` on each (adaptively batched) request.

    Every request is validated completely before it joins a batch (`validate`): the contract's
    input names, data types and fixed dims, one batch size across its inputs, the data filling the
    declared shapes, finite values, and the limits (images and pixels per request). A request that
    fails is answered 400 (INVALID_ARGUMENT) or 413 (RESOURCE_EXHAUSTED) alone."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {}) if params is not None else {}
        cap_log_lines()  # in a worker process too: no log line of ours or MLServer's carries a request
        options = RuntimeOptions.from_record(extra["runtime"])  # as `david-infer serve` wrote it
        self._runtime = DavidRuntime.from_options(options)
        contract = self._runtime.contract
        self._inputs = {t.name: t for t in contract.inputs}
        self._outputs = {t.name: t for t in contract.outputs}
        self._stride = contract.stride
        self._max_images = int(extra.get("max_images") or 64)
        self._max_pixels = int(extra.get("max_pixels") or 1 << 22)
        self.inputs = [_metadata(t) for t in contract.inputs]
        self.outputs = [_metadata(t) for t in contract.outputs]
        self._manifest = json.dumps(contract.as_dict(), separators=(",", ":"))
        # one model call at a time per worker: the backend's own threads use the cores
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="david-serve")
        sizes = batch_size_histogram().labels(model=self.name)
        self._batcher = _Batcher(
            self._run,
            options.batch_size,
            float(extra.get("max_batch_time") or 0.0),
            self._executor,
            sizes.observe,
            self._checked_outputs,
        )
        start_memory_trimmer()
        logger.info(
            "serving %s (%s backend, %s) as %r",
            self._runtime.path,
            self._runtime.backend,
            self._runtime.device,
            self.name,
        )
        return True

    async def metadata(self) -> MetadataModelResponse:
        response = await super().metadata()
        response.platform = f"david-infer_{self._runtime.backend}"
        response.versions = [f"david-infer/{__version__}", SERVED_MANIFEST_PREFIX + self._manifest]
        return response

    def validate(self, payload: InferenceRequest) -> Tuple[Feeds, int]:
        """The request's tensors as arrays of the contract's dtypes (float32; uint8 for a pre/post
        graph's image) and its image count, checked against the contract and the limits; MLServerError 400 / 413 naming the input and what was expected."""
        expected = sorted(self._inputs)
        given = [i.name for i in payload.inputs]
        if sorted(given) != expected:
            raise MLServerError(f"model {self.name!r} takes the inputs {expected} (each once), got {given}")
        rows: Dict[str, int] = {}
        for item in payload.inputs:  # shapes and types first: nothing is decoded for a request refused here
            spec = self._inputs[item.name]
            datatype = _DATATYPES.get(spec.dtype, "FP32")
            if item.datatype != datatype:
                raise MLServerError(f"input {item.name!r} must be {datatype}, got {item.datatype}")
            shape = list(item.shape)
            want = [d if isinstance(d, int) else -1 for d in spec.shape]
            if len(shape) != len(want) or any(
                not isinstance(d, int) or d < 1 or (w != -1 and d != w) for d, w in zip(shape, want)
            ):
                raise MLServerError(f"input {item.name!r} has shape {shape}, expected {want} (-1: any size >= 1)")
            # a pre/post graph's uint8 photo (N, H, W, 3) takes any size: the graph pads it itself
            if (
                item.name == self._runtime.contract.image_input
                and datatype != "UINT8"
                and any(w == -1 and d % self._stride for d, w in zip(shape[2:], want[2:]))
            ):
                raise MLServerError(
                    f"input {item.name!r} has shape {shape}: its height and width must be multiples of {self._stride}"
                )
            rows[item.name] = shape[0]
        if len(set(rows.values())) != 1:
            raise MLServerError(
                "every input holds one row per image, got " + ", ".join(f"{n!r}: {r}" for n, r in sorted(rows.items()))
            )
        images = rows[given[0]]
        if images > self._max_images:
            raise MLServerError(
                f"a request may hold at most {self._max_images} images (--max-images), got "
                f"{images}; send fewer per request",
                status_code=413,
            )
        image = next(i for i in payload.inputs if i.name == self._runtime.contract.image_input)
        height, width = (image.shape[1], image.shape[2]) if image.datatype == "UINT8" else image.shape[2:4]
        pixels = images * height * width
        if pixels > self._max_pixels:
            raise MLServerError(
                f"a request may hold at most {self._max_pixels} pixels (--max-pixels), got "
                f"{images} x {height}x{width} = {pixels}",
                status_code=413,
            )
        return {
            item.name: _decode(
                item, np.uint8 if _DATATYPES.get(self._inputs[item.name].dtype) == "UINT8" else np.float32
            )
            for item in payload.inputs
        }, images

    def _run(self, feeds: Feeds) -> Mapping[str, np.ndarray]:
        runner = self._runtime.runner
        if runner is None:
            raise MLServerError(f"model {self.name!r} is unloaded; retry", status_code=503)
        return runner.run(feeds)

    def _checked_outputs(self, outputs: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
        """One request's rows of the batch's outputs, as the contract describes them and finite."""
        checked = {}
        for name, spec in self._outputs.items():
            value = np.asarray(outputs[name], dtype=np.float32)
            if value.shape[0] != rows or value.ndim != len(spec.shape):
                raise MLServerError(
                    f"the model's output {name!r} has shape {list(value.shape)} for {rows} images, not the contract's",
                    status_code=500,
                )
            if not np.isfinite(value.sum(dtype=np.float64)):
                share = 1.0 - float(np.isfinite(value).mean())
                raise MLServerError(
                    f"NonFiniteOutput: the model's output {name!r} is not finite (NaN or infinity) "
                    f"in {share:.1%} of its values; the model file or engine is broken",
                    status_code=500,
                )
            checked[name] = value
        return checked

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds, rows = self.validate(payload)
        # gRPC raw tensors arrive as arrays (see `server.raw_views`) and go back as raw bytes
        raw = all(isinstance(getattr(i.data, "root", None), np.ndarray) for i in payload.inputs)
        payload.inputs = []  # the decoded feeds are the one copy kept on the way to the model
        outputs = await self._batcher.submit(feeds, rows)
        del feeds
        wanted = [o.name for o in payload.outputs] if payload.outputs else list(self._outputs)
        unknown = sorted(set(wanted) - set(self._outputs))
        if unknown:
            raise MLServerError(f"model {self.name!r} has no outputs {unknown}; it has {sorted(self._outputs)}")
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[_encode(name, outputs[name], raw) for name in wanted],
        )

    async def unload(self) -> bool:
        self._batcher.close()
        self._runtime.close()
        self._executor.shutdown(wait=False)
        return True


def _decode(item: Any, dtype: Any = np.float32) -> np.ndarray:
    """A request input's data as an array of `dtype` (float32, or uint8 for a pre/post graph's
    image) and of its shape (a view of a gRPC raw buffer, checked for size when it was read),
    refused unless it fills the shape with finite numbers (uint8: integers 0-255)."""
    data = getattr(item.data, "root", item.data)
    shape = tuple(item.shape)
    if isinstance(data, np.ndarray):
        value = data.reshape(shape)
    else:
        try:
            value = np.asarray(data, dtype=np.float64 if dtype == np.uint8 else np.float32)
        except (TypeError, ValueError):
            raise MLServerError(f"input {item.name!r}: the data are not a flat or nested list of numbers") from None
        if dtype == np.uint8:
            if value.size and (
                not np.all(np.isfinite(value))
                or value.min() < 0
                or value.max() > 255
                or not np.all(value == np.round(value))
            ):
                raise MLServerError(f"input {item.name!r} is UINT8: its values must be integers 0-255")
            value = value.astype(np.uint8)
        if value.size != int(np.prod(shape)):
            raise MLServerError(
                f"input {item.name!r}: {value.size} values do not fill the shape {list(shape)} "
                f"({int(np.prod(shape))} values)"
            )
        value = value.reshape(shape)
    if dtype != np.uint8 and not np.isfinite(value.sum(dtype=np.float64)):
        raise MLServerError(f"input {item.name!r} holds NaN or infinity; images are finite values in [0, 1]")
    return value


def _encode(name: str, value: np.ndarray, raw: bool) -> ResponseOutput:
    """An output tensor; for gRPC raw replies the array itself (packed by `server.raw_views`), else
    the list MLServer's JSON needs."""
    if not raw:
        return NumpyCodec.encode_output(name, value)
    return ResponseOutput.model_construct(
        name=name,
        shape=list(value.shape),
        datatype="FP32",
        data=TensorData.model_construct(np.ascontiguousarray(value)),
    )
