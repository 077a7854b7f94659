"""The MLServer model (`MLModel`) that serves one DAViD model through our backend interface, loaded by
MLServer in each inference worker. Concurrent requests are batched here with numpy (MLServer's own
batcher merges tensors as Python lists, slower than the model); ONNX Runtime's arena memory is
given back once requests stop (docs/serving-security.md, Limits)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Mapping, NamedTuple, Optional, Tuple

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
from ..backends.onnxruntime.runner import OnnxRuntimeRunner
from ..contract import TensorSpec
from ..manifest import SERVED_MANIFEST_PREFIX
from ..options import RuntimeOptions
from ..runtime import DavidRuntime
from . import batch_size_histogram, cap_log_lines, note_batch, start_memory_trimmer

logger = logging.getLogger("david_infer.serving")
#: seconds without a request after a batch before the model's memory is given back
IDLE_SECONDS = 1.0
DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}  # uint8: a pre/post graph's image
Feeds = Dict[str, np.ndarray]


def tensor_metadata(spec: TensorSpec) -> MetadataTensor:
    """A contract tensor as V2 metadata: symbolic dims are -1."""
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return MetadataTensor(name=spec.name, datatype=DATATYPES.get(spec.dtype, "FP32"), shape=shape)


def one_line(exc: BaseException) -> str:
    """An error as the client sees it: its type and message, capped (never a traceback)."""
    return f"{type(exc).__name__}: {exc}"[:2000]


def as_answer(exc: Exception) -> MLServerError:
    """`exc` as the error a client is answered with (500 unless it carries a status)."""
    return exc if isinstance(exc, MLServerError) else MLServerError(one_line(exc), status_code=500)


class Request(NamedTuple):
    """One validated request waiting for its batch: its feeds, its image count and its future."""

    feeds: Feeds
    rows: int
    future: "asyncio.Future[Mapping[str, np.ndarray]]"


class Batcher:
    """Runs validated requests of one shape (after the batch axis) as one batch of up to the runtime's
    batch_size images, waiting at most `max_wait` seconds for it to fill, on `executor`; each request
    gets exactly its own rows back (`ServedModel.finish`: a bad one fails alone). After IDLE_SECONDS
    without a request, `ServedModel.release` runs."""

    def __init__(self, served: "ServedModel", max_wait: float, executor: ThreadPoolExecutor, observe: Any) -> None:
        self.served, self.max_wait, self.executor, self.observe = served, max_wait, executor, observe
        self.max_batch = served.options.batch_size
        self.queue: "asyncio.Queue[Request]" = asyncio.Queue()
        self.held: Deque[Request] = deque()  # another size: next batch
        self.task: Optional[asyncio.Task] = None

    async def submit(self, feeds: Feeds, rows: int) -> Mapping[str, np.ndarray]:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.collect())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Request(feeds, rows, future))
        return await future

    def close(self) -> None:
        """Stop collecting batches; requests still waiting fail with 503."""
        if self.task is not None:
            self.task.cancel()
        error = MLServerError("the model is being unloaded; retry", status_code=503)
        while not self.queue.empty():
            self.held.append(self.queue.get_nowait())
        for request in self.held:
            if not request.future.done():
                request.future.set_exception(error)
        self.held.clear()

    @staticmethod
    def key_of(feeds: Feeds) -> tuple:
        return tuple((name, value.shape[1:]) for name, value in sorted(feeds.items()))

    async def next_request(self, timeout: Optional[float]) -> Optional[Request]:
        if self.held:
            return self.held.popleft()
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return None

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        idle_after: Optional[float] = None  # after a batch: how long to wait before releasing memory
        while True:  # nothing of a batch outlives its run: its requests' feeds and answers go with it
            first = await self.next_request(idle_after)
            if first is None:
                idle_after = None
                try:
                    await loop.run_in_executor(self.executor, self.served.release)
                except Exception as exc:  # memory not given back is no reason to stop serving
                    logger.warning("after the last batch: %s", one_line(exc))
                continue
            await self.run_batch(*await self.next_batch(first))
            idle_after = IDLE_SECONDS

    async def next_batch(self, first: Request) -> Tuple[List[Request], int]:
        """`first` and the requests to run with it; their image count."""
        loop = asyncio.get_running_loop()
        batch, key, size = [first], self.key_of(first.feeds), first.rows
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            item = (
                self.queue.get_nowait() if not self.queue.empty() else await self.next_request(deadline - loop.time())
            )
            if item is None:
                break
            if self.key_of(item.feeds) != key or size + item.rows > self.max_batch:
                self.held.append(item)
                break
            batch.append(item)
            size += item.rows
        return batch, size

    async def run_batch(self, batch: List[Request], size: int) -> None:
        feeds = (
            {name: np.concatenate([r.feeds[name] for r in batch]) for name in batch[0].feeds}
            if len(batch) > 1
            else batch[0].feeds
        )
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.served.run, feeds)
        except Exception as exc:  # the backend's typed error, passed on with its message (no traceback)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(as_answer(exc))
            return
        del feeds
        note_batch()
        self.observe(size)
        logger.debug("ran a batch of %d images from %d requests", size, len(batch))
        start = 0
        for request in batch:  # each request's own rows, by its own count
            rows = {name: value[start : start + request.rows] for name, value in outputs.items()}
            start += request.rows
            if request.future.done():  # the client went away
                continue
            try:
                request.future.set_result(self.served.finish(rows, request.rows))
            except Exception as exc:  # this request's outputs are wrong (not finite, bad shape): it alone fails
                request.future.set_exception(as_answer(exc))


class ServedModel:
    """The model as the server runs it (the one place it uses `DavidRuntime`): every request is
    validated completely before it joins a batch (`validate`: 400 / 413 for it alone), and each
    request's own rows of a batch's outputs are checked (`finish`)."""

    def __init__(self, name: str, options: RuntimeOptions, max_images: int, max_pixels: int) -> None:
        self.name, self.options, self.max_images, self.max_pixels = name, options, max_images, max_pixels
        self.runtime = DavidRuntime.from_options(options)
        contract = self.runtime.contract
        self.inputs = {t.name: t for t in contract.inputs}
        self.outputs = {t.name: t for t in contract.outputs}
        self.stride, self.image_input, self.backend = contract.stride, contract.image_input, self.runtime.backend
        self.manifest = json.dumps(contract.as_dict(), separators=(",", ":"))
        #: one row of the smallest request run so far ({input: (shape, dtype)}) and its bytes
        self.smallest: Dict[str, Tuple[Tuple[int, ...], Any]] = {}
        self.smallest_bytes = 0
        self.grown = False  # a batch larger than `smallest` ran since the last release

    def datatype(self, name: str) -> str:
        """The V2 data type of input or output `name`."""
        return DATATYPES.get((self.inputs.get(name) or self.outputs[name]).dtype, "FP32")

    def validate(self, payload: InferenceRequest) -> Tuple[Feeds, int]:
        """The request's tensors as arrays of the contract's dtypes and its image count, checked
        against the contract and the limits; MLServerError 400 / 413 naming the input."""
        expected = sorted(self.inputs)
        given = [i.name for i in payload.inputs]
        if sorted(given) != expected:
            raise MLServerError(f"model {self.name!r} takes the inputs {expected} (each once), got {given}")
        rows: Dict[str, int] = {}
        for item in payload.inputs:  # shapes and types first: nothing is decoded for a request refused here
            datatype = self.datatype(item.name)
            if item.datatype != datatype:
                raise MLServerError(f"input {item.name!r} must be {datatype}, got {item.datatype}")
            shape = list(item.shape)
            want = [d if isinstance(d, int) else -1 for d in self.inputs[item.name].shape]
            if len(shape) != len(want) or any(
                not isinstance(d, int) or d < 1 or (w != -1 and d != w) for d, w in zip(shape, want)
            ):
                raise MLServerError(f"input {item.name!r} has shape {shape}, expected {want} (-1: any size >= 1)")
            # a pre/post graph's uint8 photo (N, H, W, 3) takes any size: the graph pads it itself
            if (
                item.name == self.image_input
                and datatype != "UINT8"
                and any(w == -1 and d % self.stride for d, w in zip(shape[2:], want[2:]))
            ):
                raise MLServerError(
                    f"input {item.name!r} has shape {shape}: its height and width must be multiples of {self.stride}"
                )
            rows[item.name] = shape[0]
        if len(set(rows.values())) != 1:
            raise MLServerError(
                "every input holds one row per image, got " + ", ".join(f"{n!r}: {r}" for n, r in sorted(rows.items()))
            )
        images = rows[given[0]]
        if images > self.max_images:
            raise MLServerError(
                f"a request may hold at most {self.max_images} images (--max-images), got "
                f"{images}; send fewer per request",
                status_code=413,
            )
        image = next(i for i in payload.inputs if i.name == self.image_input)
        height, width = (image.shape[1], image.shape[2]) if image.datatype == "UINT8" else image.shape[2:4]
        pixels = images * height * width
        if pixels > self.max_pixels:
            raise MLServerError(
                f"a request may hold at most {self.max_pixels} pixels (--max-pixels), got "
                f"{images} x {height}x{width} = {pixels}",
                status_code=413,
            )
        return {item.name: decode_input(item, item.datatype == "UINT8") for item in payload.inputs}, images

    def run(self, feeds: Feeds) -> Mapping[str, np.ndarray]:
        """The model's outputs for one batch's feeds."""
        runner = self.runtime.runner
        if runner is None:
            raise MLServerError(f"model {self.name!r} is unloaded; retry", status_code=503)
        outputs = runner.run(feeds)
        size = sum(value.nbytes for value in feeds.values())
        row = size // next(iter(feeds.values())).shape[0]
        if not self.smallest or row < self.smallest_bytes:
            self.smallest = {name: ((1, *value.shape[1:]), value.dtype) for name, value in feeds.items()}
            self.smallest_bytes = row
        self.grown = self.grown or size > self.smallest_bytes
        return outputs

    def release(self) -> None:
        """Give back the working memory ONNX Runtime keeps from batches larger than the smallest
        request since the last release (one run of that request's shapes, in zeros)."""
        runner = self.runtime.runner
        if self.grown and self.smallest and isinstance(runner, OnnxRuntimeRunner):
            runner.run({n: np.zeros(shape, dtype) for n, (shape, dtype) in self.smallest.items()}, release_memory=True)
        self.grown = False

    def finish(self, outputs: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
        """One request's rows of the batch's outputs, as the contract describes them and finite."""
        checked = {}
        for name, spec in self.outputs.items():
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


class DavidModel(MLModel):
    """MLServer's model: a `ServedModel` from the settings `david-infer serve` wrote, answering through
    the `Batcher`. Its attributes have public names: private ones could collide with MLModel's."""

    served: Optional[ServedModel] = None
    batcher: Optional[Batcher] = None
    executor: Optional[ThreadPoolExecutor] = None

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {}) if params is not None else {}
        cap_log_lines()  # in a worker process too: no log line of ours or MLServer's carries a request
        options = RuntimeOptions.from_record(extra["runtime"])  # as `david-infer serve` wrote it
        served = self.served = ServedModel(
            self.name, options, int(extra.get("max_images") or 64), int(extra.get("max_pixels") or 1 << 22)
        )
        self.inputs = [tensor_metadata(t) for t in served.inputs.values()]
        self.outputs = [tensor_metadata(t) for t in served.outputs.values()]
        # one model call at a time per worker: the backend's own threads use the cores
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="david-serve")
        sizes = batch_size_histogram().labels(model=self.name)
        self.batcher = Batcher(served, float(extra.get("max_batch_time") or 0.0), self.executor, sizes.observe)
        start_memory_trimmer()
        logger.info("serving %s (%s backend, %s) as %r", options.model, served.backend, options.device, self.name)
        return True

    def loaded(self) -> Tuple[ServedModel, Batcher]:
        """The model and its batcher; 503 while none is loaded."""
        if self.served is None or self.batcher is None:
            raise MLServerError(f"model {self.name!r} is not loaded; retry", status_code=503)
        return self.served, self.batcher

    async def metadata(self) -> MetadataModelResponse:
        served = self.loaded()[0]
        response = await super().metadata()
        response.platform = f"david-infer_{served.backend}"
        response.versions = [f"david-infer/{__version__}", SERVED_MANIFEST_PREFIX + served.manifest]
        return response

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        served, batcher = self.loaded()
        wanted = [o.name for o in payload.outputs] if payload.outputs else list(served.outputs)
        unknown = sorted(set(wanted) - set(served.outputs))
        if unknown:
            raise MLServerError(f"model {self.name!r} has no outputs {unknown}; it has {sorted(served.outputs)}")
        feeds, rows = served.validate(payload)
        # gRPC raw tensors arrive as arrays (see `server.RawTensorServicer`) and go back as raw bytes
        raw = all(isinstance(getattr(i.data, "root", None), np.ndarray) for i in payload.inputs)
        payload.inputs = []  # the decoded feeds are the one copy kept on the way to the model
        outputs = await batcher.submit(feeds, rows)
        del feeds
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[encode_output(name, outputs[name], raw) for name in wanted],
        )

    async def unload(self) -> bool:
        """Stop batching and close the model (also after a load that failed half-way)."""
        if self.batcher is not None:
            self.batcher.close()
        if self.served is not None:
            self.served.runtime.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        return True


#: what FP32 image inputs may hold: [0, 1] and the overshoot of a resampled copy (a bicubic 384x384)
FLOAT_RANGE = (-0.5, 1.5)


def decode_input(item: Any, uint8: bool = False) -> np.ndarray:
    """A request input's data as a float32 (or, for a pre/post graph's image, uint8) array of its
    shape (a gRPC raw buffer's view, its size checked when read), refused unless it fills the shape
    with finite numbers in FLOAT_RANGE (uint8: integers 0-255)."""
    data = getattr(item.data, "root", item.data)
    shape = tuple(item.shape)
    if isinstance(data, np.ndarray):
        value = data.reshape(shape)
    else:
        try:
            value = np.asarray(data, dtype=np.float64 if uint8 else np.float32)
        except (TypeError, ValueError):
            raise MLServerError(f"input {item.name!r}: the data are not a flat or nested list of numbers") from None
        if uint8:
            if value.size and (
                not np.all(np.isfinite(value))
                or value.min() < 0
                or value.max() > 255
                or np.any(value != np.round(value))
            ):
                raise MLServerError(f"input {item.name!r} is UINT8: its values must be integers 0-255")
            value = value.astype(np.uint8)
        if value.size != int(np.prod(shape)):
            raise MLServerError(
                f"input {item.name!r}: {value.size} values do not fill the shape {list(shape)} "
                f"({int(np.prod(shape))} values)"
            )
        value = value.reshape(shape)
    if uint8 or not value.size:
        return value
    low, high = float(value.min()), float(value.max())  # NaN in either if any; infinity as itself
    if not (np.isfinite(low) and np.isfinite(high)):
        raise MLServerError(f"input {item.name!r} holds NaN or infinity; images are finite values in [0, 1]")
    if not FLOAT_RANGE[0] <= low <= high <= FLOAT_RANGE[1]:  # 0..255 pixels as FP32: answered 200, wrong maps
        raise MLServerError(
            f"input {item.name!r}: values {low:g}..{high:g}; images are values in [0, 1] (divide 0..255 data by 255)"
        )
    return value


def encode_output(name: str, value: np.ndarray, raw: bool) -> ResponseOutput:
    """An output tensor; for gRPC raw replies the array itself (packed by `server.raw_reply`), else
    the list MLServer's JSON needs."""
    if not raw:
        return NumpyCodec.encode_output(name, value)
    data = TensorData.model_construct(np.ascontiguousarray(value))
    return ResponseOutput.model_construct(name=name, shape=list(value.shape), datatype="FP32", data=data)
