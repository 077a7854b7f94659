"""The graph stages: the pre/post as ONNX graphs on ONNX Runtime (david_infer.stages.builder).

`GraphStages` runs a pre graph (the photo -> the network's feeds) and one post graph per task (a
raw output -> its map at the photo's size, written straight into the map: ONNX Runtime's I/O
binding on its row groups) around any runner that takes numpy feeds, then finishes each map in
place (the task table, in row blocks: finishing inside the graph costs full-size temporaries over
the memory budget, benchmarks/memory.py). `InsideGraphStages` runs a model that is itself a pre/post
graph. Sessions: one thread each, no arena (docs/determinism.md, docs/benchmarks.md#memory); the
CPU, or ONNX Runtime's CUDA provider on a GPU device where installed (not yet run on a GPU).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, List, Sequence, Union

import numpy as np

from .._optional import require
from ..contract import ModelContract
from ..errors import InputError
from ..inputs import Decoded
from ..resample import square_geometry
from ..tasks import TASKS
from . import Maps, ModelOutputs, Staged, StageOptions, Stages, finish_in_place, open_options
from .builder import MAX_ROW_GROUP, GraphSpec, build_post, build_pre

#: graphs kept per runtime (a pre and a post per task for each resolution; more with resolution=None)
_KEPT_SESSIONS = 16


def _photo(decoded: Decoded, order: str) -> np.ndarray:
    """(H, W, 3) in `order`, uint8 or float32 in [0, 1], as the pre graph takes it (a view when it can be)."""
    a = decoded.numpy()
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., ::-1]) if decoded.order != order else a


class _Sessions:
    """ONNX Runtime sessions of built graphs, made on first use and kept (the last few)."""

    def __init__(self, options: StageOptions) -> None:
        self.ort = require("onnxruntime", "cpu")
        self.providers: List[Any] = ["CPUExecutionProvider"]
        if options.device.startswith("cuda") and "CUDAExecutionProvider" in self.ort.get_available_providers():
            index = int(options.device.partition(":")[2] or 0)
            self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self._kept: "OrderedDict[Hashable, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any], threads: int = 1) -> Any:
        with self._lock:
            session = self._kept.get(key)
            if session is not None:
                self._kept.move_to_end(key)
                return session
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        # threads for the pre graph only: with more than one, ONNX Runtime split the post graph's
        # long sums across threads and the maps' last bits depended on `threads`; the pre graph's
        # bits did not (docs/determinism.md). The tasks' post graphs run side by side instead
        options.intra_op_num_threads = threads
        # no arena: the full-size buffers go back to the system after each image, so the peaks
        # of the pre and the post graphs do not add up (benchmarks/memory.py)
        options.enable_cpu_mem_arena = False
        session = self.ort.InferenceSession(build().SerializeToString(), options, providers=self.providers)
        with self._lock:
            self._kept[key] = session
            while len(self._kept) > _KEPT_SESSIONS:
                self._kept.popitem(last=False)
        return session

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


class GraphStages(Stages):
    """The pre and post graphs around the runner (see the module docstring)."""

    kind = "graph"

    def __init__(self, runner: Any, contract: ModelContract, options: StageOptions) -> None:
        super().__init__(runner, contract, options)
        self._sessions = _Sessions(options)
        # the tasks' post graphs side by side, and the finishing's row blocks over `threads`
        self._pool = ThreadPoolExecutor(len(contract.tasks), "david-post") if len(contract.tasks) > 1 else None
        self._blocks = ThreadPoolExecutor(options.threads, "david-finish") if options.threads > 1 else None
        if options.resolution is not None:  # build now: a graph that cannot be built fails at open
            self._pre(options.resolution, "uint8", "rgb")
            for task in contract.tasks:
                self._post(options.resolution, task)

    def _spec(self, resolution: int, order: str = "rgb") -> GraphSpec:
        return GraphSpec(self.options.pipeline, resolution, self.vit_size, order, self.options.post.interpolation)

    def _pre(self, resolution: int, dtype: str, order: str) -> Any:
        return self._sessions.get(
            ("pre", resolution, dtype, order),
            lambda: build_pre(self._spec(resolution, order), self.contract.image_input, self.contract.vit_input, dtype),
            self.options.threads,
        )

    def _post(self, resolution: int, task: str) -> Any:
        return self._sessions.get(("post", resolution, task), lambda: build_post(self._spec(resolution), [task]))

    def prepare(self, decoded: Decoded) -> Staged:
        h, w = decoded.size
        resolution = self.resolution_for(h, w)
        order = decoded.order if decoded.numpy().ndim == 3 else "rgb"
        photo = _photo(decoded, order)
        session = self._pre(resolution, "uint8" if photo.dtype == np.uint8 else "float32", order)
        values = session.run(None, {"photo": photo[None]})
        names = [o.name for o in session.get_outputs()]
        feeds = {name: value[0] for name, value in zip(names, values)}
        return Staged(decoded.name, square_geometry(h, w, resolution), resolution, feeds)

    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        tasks = list(outputs)
        side_by_side = self._pool.map if self._pool is not None and len(tasks) > 1 else map
        maps = dict(zip(tasks, side_by_side(lambda task: self._finish(staged, task, outputs[task]), tasks)))
        return open_options(maps, self.options.post)

    def _finish(self, staged: Staged, task: str, value: Any) -> np.ndarray:
        """One task's map: the post graph writes it, resized, the task table finishes it in place."""
        g = staged.geometry
        session = self._post(g.resolution, task)
        binding = session.io_binding()
        binding.bind_cpu_input("size", np.array([g.height, g.width], np.int64))
        binding.bind_cpu_input(task + ":raw", np.ascontiguousarray(value[None], dtype=np.float32))
        row = TASKS[task]
        groups = -(-g.height // MAX_ROW_GROUP)  # the last group padded: a few rows more, kept apart
        taller = np.empty(row.shape(groups * MAX_ROW_GROUP, g.width), np.float32)
        shape = (1, groups, MAX_ROW_GROUP, g.width * row.channels)  # a view of `taller`: no copy after
        binding.bind_output(task, "cpu", 0, np.float32, shape, taller.ctypes.data)
        session.run_with_iobinding(binding)
        out = taller[: g.height]
        finish_in_place(task, out, self.options.post, self._blocks)
        return out

    def close(self) -> None:
        self._sessions.clear()
        for pool in (self._pool, self._blocks):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._blocks = None


class InsideGraphStages(Stages):
    """A model that is itself a pre/post graph (see the module docstring)."""

    kind = "graph"

    def __init__(self, runner: Any, contract: ModelContract, options: StageOptions) -> None:
        super().__init__(runner, contract, options)
        assert contract.graph is not None  # choose_stages picks this class for layout "prepost" only
        self.graph = contract.graph

    def prepare(self, decoded: Decoded) -> Staged:
        h, w = decoded.size
        if self.graph.max_side is not None and max(h, w) > self.graph.max_side:
            raise InputError(
                f"{decoded.name}: {w}x{h} has a side over {self.graph.max_side}, the largest this pre/post "
                "graph resamples; use the network file it wraps"
            )
        photo = _photo(decoded, self.graph.channel_order)
        if photo.dtype != np.uint8:  # the graph takes bytes
            photo = np.clip(np.rint(photo * 255.0), 0, 255).astype(np.uint8)
        geometry = square_geometry(h, w, self.graph.resolution)
        return Staged(decoded.name, geometry, (h, w), {self.contract.image_input: photo})

    def infer(self, batch: Sequence[Staged]) -> List[Union[ModelOutputs, Exception]]:
        name = self.contract.image_input
        photos = [s.feeds[name] for s in batch]
        raw = self.runner.run({name: photos[0][None] if len(photos) == 1 else np.stack(photos)})
        h, w = photos[0].shape[:2]
        return self.checked_outputs(raw, batch, lambda row: row.shape(h, w))

    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        post = self.options.post
        maps = {task: np.array(value, dtype=np.float32) for task, value in outputs.items()}
        for task, value in maps.items():  # the graph gives each task's default sign
            if post.sign(task) != TASKS[task].sign:
                np.negative(value, out=value)
        return open_options(maps, post)


__all__ = ["GraphStages", "InsideGraphStages"]
