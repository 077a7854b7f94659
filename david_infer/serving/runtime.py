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
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataTensor

from .. import __version__
from ..contract import TensorSpec
from ..options import RuntimeOptions
from ..runtime import DavidRuntime
from . import MANIFEST_PREFIX

logger = logging.getLogger("david_infer.serving")
_BATCH_SIZES: Dict[str, Any] = {}


def batch_size_histogram() -> Any:
    """The `david_batch_size` histogram (images per model call), made on first use: MLServer sets
    prometheus_client's multi-process mode in each worker before it loads the model, and with no
    workers it exports prometheus_client's default registry, where this registers (MLServer's own
    `mlserver.log` metrics reach the endpoint only from workers)."""
    if "histogram" not in _BATCH_SIZES:
        from prometheus_client import Histogram

        _BATCH_SIZES["histogram"] = Histogram(
            "david_batch_size",
            "images per model call (adaptive batching)",
            labelnames=["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
    return _BATCH_SIZES["histogram"]


_DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}  # uint8: a pre/post graph's image


def _metadata(spec: TensorSpec) -> MetadataTensor:
    """A contract tensor as V2 metadata: symbolic dims are -1."""
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return MetadataTensor(name=spec.name, datatype=_DATATYPES.get(spec.dtype, "FP32"), shape=shape)


Feeds = Dict[str, np.ndarray]


class _Batcher:
    """Runs concurrent requests' feeds as one batch (same image size, up to `max_batch` images,
    waiting at most `max_wait` seconds for a batch to fill) through `run` on `executor`."""

    def __init__(
        self,
        run: Callable[[Feeds], Mapping[str, np.ndarray]],
        max_batch: int,
        max_wait: float,
        executor: ThreadPoolExecutor,
        observe: Callable[[int], None],
    ) -> None:
        self._run, self._max_batch, self._max_wait, self._executor = run, max_batch, max_wait, executor
        self._observe = observe
        self._queue: "asyncio.Queue[Tuple[Feeds, asyncio.Future]]" = asyncio.Queue()
        self._held: Deque[Tuple[Feeds, asyncio.Future]] = deque()  # another size: next batch
        self._task: Optional[asyncio.Task] = None

    async def submit(self, feeds: Feeds) -> Mapping[str, np.ndarray]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((feeds, future))
        return await future

    def close(self) -> None:
        """Stop collecting batches; requests still waiting fail with the server's cancellation."""
        if self._task is not None:
            self._task.cancel()

    @staticmethod
    def _key(feeds: Feeds) -> tuple:
        return tuple((name, value.shape[1:]) for name, value in sorted(feeds.items()))

    async def _next(self, timeout: Optional[float]) -> Optional[Tuple[Feeds, asyncio.Future]]:
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
            batch, key = [first], self._key(first[0])
            size = len(next(iter(first[0].values())))
            deadline = loop.time() + self._max_wait
            held: List[Tuple[Feeds, asyncio.Future]] = []
            while size < self._max_batch:
                item = self._queue.get_nowait() if not self._queue.empty() else await self._next(deadline - loop.time())
                if item is None:
                    break
                n = len(next(iter(item[0].values())))
                if self._key(item[0]) != key or size + n > self._max_batch:
                    held.append(item)
                    break
                batch.append(item)
                size += n
            self._held.extend(held)
            await self._run_batch(batch, size)

    async def _run_batch(self, batch: List[Tuple[Feeds, asyncio.Future]], size: int) -> None:
        feeds = (
            {name: np.concatenate([f[name] for f, _ in batch]) for name in batch[0][0]}
            if len(batch) > 1
            else batch[0][0]
        )
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds)
        except Exception as exc:  # the backend's typed error, passed on with its message
            error = MLServerError(f"{type(exc).__name__}: {exc}", status_code=500)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._observe(size)
        logger.debug("ran a batch of %d images from %d requests", size, len(batch))
        start = 0
        for request_feeds, future in batch:
            n = len(next(iter(request_feeds.values())))
            if not future.done():
                future.set_result({name: value[start : start + n] for name, value in outputs.items()})
            start += n


class DavidModel(MLModel):
    """Opens the model with `DavidRuntime` (any registered backend, the contract checked as for a
    local run) and runs `runner.run(feeds)` on each (adaptively batched) request."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {}) if params is not None else {}
        options = RuntimeOptions.from_record(extra["runtime"])  # as `david-infer serve` wrote it
        self._runtime = DavidRuntime.from_options(options)
        contract = self._runtime.contract
        self.inputs = [_metadata(t) for t in contract.inputs]
        self.outputs = [_metadata(t) for t in contract.outputs]
        self._manifest = json.dumps(contract.as_dict(), separators=(",", ":"))
        # one model call at a time per worker: the backend's own threads use the cores
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="david-serve")
        sizes = batch_size_histogram().labels(model=self.name)
        self._batcher = _Batcher(
            self._run, options.batch_size, float(extra.get("max_batch_time") or 0.0), self._executor, sizes.observe
        )
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
        response.versions = [f"david-infer/{__version__}", MANIFEST_PREFIX + self._manifest]
        return response

    def _feeds(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        """The request's tensors as arrays of the contract's dtypes (float32; uint8 for a pre/post
        graph's image), checked against the contract (status 400)."""
        expected = {t.name: t for t in self._runtime.contract.inputs}
        given = [i.name for i in payload.inputs]
        if sorted(given) != sorted(expected):
            raise MLServerError(f"model {self.name!r} takes inputs {sorted(expected)}, got {given}")
        feeds = {}
        for item in payload.inputs:
            spec = expected[item.name]
            datatype = _DATATYPES.get(spec.dtype, "FP32")
            if item.datatype != datatype:
                raise MLServerError(f"input {item.name!r} must be {datatype}, got {item.datatype}")
            try:
                value = NumpyCodec.decode_input(item)
            except ValueError as exc:  # the data do not fill the shape
                raise MLServerError(f"input {item.name!r}: data do not match shape {item.shape} ({exc})") from None
            if value.ndim != 4 or any(isinstance(d, int) and d != s for d, s in zip(spec.shape[1:], value.shape[1:])):
                raise MLServerError(
                    f"input {item.name!r} has shape {list(value.shape)}, expected "
                    f"{[d if isinstance(d, int) else -1 for d in spec.shape]}"
                )
            feeds[item.name] = np.ascontiguousarray(value, dtype=np.uint8 if datatype == "UINT8" else np.float32)
        return feeds

    def _run(self, feeds: Feeds) -> Mapping[str, np.ndarray]:
        runner = self._runtime.runner
        if runner is None:
            raise MLServerError(f"model {self.name!r} is unloaded", status_code=503)
        return runner.run(feeds)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = await self._batcher.submit(self._feeds(payload))
        wanted: Optional[List[str]] = [o.name for o in payload.outputs] if payload.outputs else None
        names = wanted or list(self._runtime.contract.output_names.values())
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, np.asarray(outputs[name])) for name in names],
        )

    async def unload(self) -> bool:
        self._batcher.close()
        self._runtime.close()
        self._executor.shutdown(wait=False)
        return True
