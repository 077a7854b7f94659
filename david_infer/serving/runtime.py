"""The MLServer runtime (`MLModel`) that serves one DAViD model through our backend interface.

MLServer imports this module in each inference worker; it is the only module of the package that
imports mlserver at module level.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import numpy as np
from mlserver import MLModel
from mlserver import log as log_metric
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataTensor

from .. import __version__
from ..contract import TensorSpec
from ..runtime import DavidRuntime
from . import MANIFEST_PREFIX

logger = logging.getLogger("david_infer.serving")
_DATATYPES = {"float32": "FP32", "float16": "FP16"}


def _metadata(spec: TensorSpec) -> MetadataTensor:
    """A contract tensor as V2 metadata: symbolic dims are -1."""
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return MetadataTensor(name=spec.name, datatype=_DATATYPES.get(spec.dtype, "FP32"), shape=shape)


class DavidModel(MLModel):
    """Opens the model with `DavidRuntime` (any registered backend, the contract checked as for a
    local run) and runs `runner.run(feeds)` on each (adaptively batched) request."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {}) if params is not None else {}
        self._runtime = DavidRuntime(
            params.uri if params is not None else "", backend=extra.get("backend", "auto"),
            device=extra.get("device", "cpu"), resolution=extra.get("resolution", 512),
            batch_size=int(extra.get("max_batch") or 1), threads=1,
            backend_options=extra.get("backend_options") or None,
        )
        contract = self._runtime.contract
        self.inputs = [_metadata(t) for t in contract.inputs]
        self.outputs = [_metadata(t) for t in contract.outputs]
        self._manifest = json.dumps(contract.as_dict(), separators=(",", ":"))
        # one model call at a time per worker: the backend's own threads use the cores
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="david-serve")
        logger.info("serving %s (%s backend, %s) as %r", self._runtime.path, self._runtime.backend,
                    self._runtime.device, self.name)
        return True

    async def metadata(self) -> MetadataModelResponse:
        response = await super().metadata()
        response.platform = f"david-infer_{self._runtime.backend}"
        response.versions = [f"david-infer/{__version__}", MANIFEST_PREFIX + self._manifest]
        return response

    def _feeds(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        """The request's tensors as float32 arrays, checked against the contract (status 400)."""
        expected = {t.name: t for t in self._runtime.contract.inputs}
        given = [i.name for i in payload.inputs]
        if sorted(given) != sorted(expected):
            raise MLServerError(f"model {self.name!r} takes inputs {sorted(expected)}, got {given}")
        feeds = {}
        for item in payload.inputs:
            if item.datatype != "FP32":
                raise MLServerError(f"input {item.name!r} must be FP32, got {item.datatype}")
            try:
                value = NumpyCodec.decode_input(item)
            except ValueError as exc:  # data does not fill the shape (e.g. sizes mixed in a batch)
                raise MLServerError(f"input {item.name!r}: data does not match shape {item.shape} ({exc}); "
                                    "requests batched together must share one image size") from None
            spec = expected[item.name]
            if value.ndim != 4 or any(isinstance(d, int) and d != s for d, s in zip(spec.shape[1:], value.shape[1:])):
                raise MLServerError(f"input {item.name!r} has shape {list(value.shape)}, expected "
                                    f"{[d if isinstance(d, int) else -1 for d in spec.shape]}")
            feeds[item.name] = np.ascontiguousarray(value, dtype=np.float32)
        return feeds

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = self._feeds(payload)
        batch = next(iter(feeds.values())).shape[0]
        runner = self._runtime.runner
        if runner is None:
            raise MLServerError(f"model {self.name!r} is unloaded", status_code=503)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, runner.run, feeds)
        except Exception as exc:  # the backend's typed error, passed on with its message
            raise MLServerError(f"{type(exc).__name__}: {exc}", status_code=500) from None
        log_metric(david_batch_size=batch)
        logger.debug("ran a batch of %d", batch)
        wanted: Optional[List[str]] = [o.name for o in payload.outputs] if payload.outputs else None
        names = wanted or list(self._runtime.contract.output_names.values())
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(name, np.asarray(outputs[name])) for name in names],
        )

    async def unload(self) -> bool:
        self._runtime.close()
        self._executor.shutdown(wait=False)
        return True
