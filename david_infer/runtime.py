"""`DavidRuntime`: run a DAViD model on any image and get maps aligned with that image
(`DavidRuntime("model.onnx").predict("photo.jpg").depth`); see docs/runtime.md."""

from __future__ import annotations

import dataclasses
import inspect
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from itertools import groupby
from pathlib import Path
from typing import (
    Any,
    Callable,
    Deque,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import numpy as np

from .backends import get_backend, model_suffixes, url_scheme, url_schemes
from .backends.base import Backend, BackendOptions, Runner, Workload, parse_device, unknown_option_message
from .contract import ModelContract
from .errors import BackendUnavailable, InputError, ModelError
from .inputs import Decoded, decode
from .manifest import check_sha256, manifest_path
from .memory_estimate import guard_for
from .options import AUTO_RESOLUTION, DEFAULT_RESOLUTION, RuntimeOptions, positive_int, resolved_model
from .prediction import Prediction
from .refine import AS_OPENED, RefineOptions, as_refine_options, check_refine, refine_prediction
from .resample import PIPELINES
from .stages import ModelOutputs, PostOptions, Staged, StageOptions, Stages, choose_stages

ModelLike = Union[str, "os.PathLike[str]"]
#: what imap yields per input: the prediction, or the error that input met
Outcome = Union[Prediction, Exception]
_POST_FIELDS = tuple(f.name for f in dataclasses.fields(PostOptions))
_END = object()
T = TypeVar("T")
_CALLS = threading.Condition()  # guards every runtime's count of calls in flight (DavidRuntime._in_flight)
_NESTED = threading.local()  # depth of this thread's calls in flight


def resolve_model_path(model: ModelLike) -> Path:
    """The model file: `model` itself, or the only model file inside the folder `model`."""
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"model must be a path to a model file or folder, got {type(model).__name__}")
    path = Path(model)
    if path.is_dir():
        suffixes = model_suffixes()
        found = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise ModelError(
                f"{path}: expected exactly one model file ({', '.join(suffixes)}) in this folder, "
                f"found {len(found)} ({names}); pass the file itself"
            )
        path = found[0]
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty (0 bytes); re-download or re-export it")
    return path


def choose_backend(path: Union[Path, str], backend: str = "auto") -> str:
    """`backend`, or for "auto" the backend registered for the model file's suffix (or, for a
    server URL given as a string, for its scheme)."""
    if backend != "auto":
        return backend
    if isinstance(path, str):
        scheme = url_scheme(path)
        if scheme not in url_schemes():
            raise ModelError(
                f"{path}: no backend serves {scheme}:// URLs; expected {', '.join(s + '://' for s in url_schemes())}"
            )
        return url_schemes()[scheme]
    chosen = model_suffixes().get(path.suffix)
    if chosen is None:
        raise ModelError(
            f"{path}: cannot choose a backend for a {path.suffix or 'suffix-less'} file; "
            f"expected {', '.join(model_suffixes())} or an explicit backend="
        )
    return chosen


def with_threads(options: RuntimeOptions, threads: int) -> RuntimeOptions:
    """`options` running on `threads` threads: pre/postprocessing, and the model's own count where
    its backend has one (ONNX Runtime's intra_op_threads) and it was not given (what the CLI's
    --threads means; DavidRuntime's own `threads` sizes pre/postprocessing only)."""
    model = resolved_model(options.model)
    target = model if url_scheme(model) else resolve_model_path(model)
    backend = get_backend(choose_backend(target, options.backend))
    own = dict(options.backend_options)
    if "intra_op_threads" in {f.name for f in dataclasses.fields(backend.Options)}:
        own.setdefault("intra_op_threads", threads)
    return options.replace(threads=threads, backend_options=own)


class DavidRuntime:
    """Runs one DAViD model; safe to share between threads. The arguments are the fields of one
    `david_infer.options.RuntimeOptions` (their defaults and checks; `DavidRuntime.from_options`
    opens one from such an object, `runtime.options` is the one it was opened with); see
    docs/runtime.md. The contract, device and workload are validated before the backend opens the model.

    model: an .onnx file (ours with its manifest, or a released file), an .engine/.plan (TensorRT),
        a folder holding exactly one of them, or a server URL ("grpc://host:port/name", "http://...":
        the triton backend runs the model there).
    backend: "auto" (by file suffix or URL scheme) or a registered name ("onnxruntime", "torch",
        "tensorrt", "triton", or your own: see david_infer.backends).
    device: "cpu", "cuda" or "cuda:N"; a GPU that cannot be used raises BackendUnavailable.
    resolution: side of the square the model runs at (a multiple of the stride, 16); None = the
        image's own padded size; "auto" = 512, or the model's own for a pre/post graph or a
        fixed-size (released) file, which run at their size only.
    channel_order: "rgb" or "bgr" (OpenCV) for 3/4-channel numpy arrays.
    pipeline: "auto" ("official" for fixed-size files, else "antialias") or either (david_infer.resample).
    stages: where pre/postprocessing runs: "auto", "graph", "torch" or "reference" (david_infer.stages).
    post: a PostOptions; its fields may also be given as keyword arguments (`invert_depth=False`).
    batch_size: default batch size of predict_batch and imap (default 1).
    threads: threads for pre/postprocessing (default: the CPU count, at most 4).
    verify: check the model file's SHA-256 against its manifest.
    max_image_pixels: largest image accepted, width x height (default 100 megapixels; None = no limit
        of ours), checked from a file's header before decoding.
    allow_nonfinite: pass NaN and infinity in the outputs through; by default an input whose outputs
        are not finite raises NonFiniteOutput (in `imap`, that input yields it and the others go on).
    refine: a second, zoomed pass per person (david_infer.refine): None, "none", "people" or a
        RefineOptions; per call too.
    backend_options: the backend's typed options, also accepted as keyword arguments; an unknown
        name is an InputError listing the valid ones.
    """

    def __init__(
        self,
        model: ModelLike,
        backend: str = RuntimeOptions.backend,
        device: str = RuntimeOptions.device,
        resolution: Union[int, str, None] = RuntimeOptions.resolution,
        channel_order: str = RuntimeOptions.channel_order,
        *,
        pipeline: str = RuntimeOptions.pipeline,
        stages: str = RuntimeOptions.stages,
        post: Optional[PostOptions] = None,
        batch_size: int = RuntimeOptions.batch_size,
        threads: Optional[int] = RuntimeOptions.threads,
        verify: bool = RuntimeOptions.verify,
        max_image_pixels: Optional[int] = RuntimeOptions.max_image_pixels,
        allow_nonfinite: bool = RuntimeOptions.allow_nonfinite,
        refine: Any = RuntimeOptions.refine,
        backend_options: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> None:
        self.runner: Optional[Runner] = None
        self.stages: Optional[Stages] = None
        post_kwargs = {k: options.pop(k) for k in list(options) if k in _POST_FIELDS}
        if post is not None and post_kwargs:
            raise InputError(
                f"give the postprocessing options either as post= or as keyword arguments "
                f"({', '.join(post_kwargs)}), not both"
            )
        self._kwargs_given = set(options)  # backend options given as keywords: named so in errors
        #: what this runtime was opened with
        self.options = RuntimeOptions(
            model,
            backend,
            device,
            resolution,
            channel_order,
            batch_size=batch_size,
            threads=threads,
            pipeline=pipeline,
            stages=stages,
            post=post if post is not None else PostOptions(**post_kwargs),
            verify=verify,
            max_image_pixels=max_image_pixels,
            allow_nonfinite=allow_nonfinite,
            refine=refine,
            backend_options={**dict(backend_options or {}), **options},
        )
        self.channel_order = self.options.channel_order
        self.max_image_pixels = self.options.max_image_pixels
        self.allow_nonfinite = self.options.allow_nonfinite
        post = self.options.post
        #: the model file, or the server URL of a remote backend
        self.path: Union[Path, str] = (
            model if isinstance(model, str) and url_scheme(model) else resolve_model_path(model)
        )
        self.backend = choose_backend(self.path, self.options.backend)
        backend_cls = get_backend(self.backend)
        loader: Backend = backend_cls(self._backend_options(backend_cls, self.options.backend_options))
        if bool(loader.schemes) != isinstance(self.path, str):
            raise InputError(
                f"the {self.backend} backend takes a server URL (grpc://HOST:PORT/MODEL), not a file"
                if loader.schemes
                else f"{self.path} is a server URL; the {self.backend} backend opens model files (use "
                f"backend={next(iter(url_schemes().values()), 'triton')!r})"
            )
        self.device = loader.check_device(parse_device(self.options.device))
        self.contract = self._load_contract(loader, self.options.verify)
        #: the second pass per person as opened (None: off); see david_infer.refine
        self.refine: Optional[RefineOptions] = check_refine(self.options.refine, self.contract.tasks, self.path)
        self.resolution = self._check_resolution(self.options.resolution)
        self.pipeline = self._check_pipeline(self.options.pipeline)
        built = self.contract.graph
        if built is not None and post.interpolation not in ("auto", built.interpolation):
            raise InputError(
                f"{self.path} resizes its outputs inside the graph ({built.interpolation}); "
                f"interpolation must be 'auto', got {post.interpolation!r}"
            )
        if post.interpolation == "auto":
            post = dataclasses.replace(post, interpolation="official" if self.pipeline == "official" else "bicubic")
        self.post_options = post
        self.batch_size = self._batch_size(self.options.batch_size)
        self.threads = self.options.threads if self.options.threads is not None else min(4, os.cpu_count() or 1)
        self._memory = guard_for(self.path, self.contract.variant, self.batch_size, self.device.kind)
        self._memory.check_open(self.resolution)  # OutOfMemoryError before the backend loads the model
        self.runner = loader.open(self.contract, self.device, Workload(self.resolution, self.batch_size))
        try:
            self.contract.check_graph(self.runner.io)
            settings = StageOptions(
                self.resolution, self.pipeline, post, self.threads, str(self.device), self.allow_nonfinite
            )
            #: the pre/postprocessing, chosen once (david_infer.stages)
            self.stages = choose_stages(self.options.stages, self.runner, self.contract, settings)
        except BaseException:
            self.runner.close()  # a refused model must not keep a session alive
            raise

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_options(cls, options: RuntimeOptions) -> "DavidRuntime":
        """A runtime opened with `options` (a david_infer.options.RuntimeOptions)."""
        if not isinstance(options, RuntimeOptions):
            raise InputError(f"expected a david_infer.options.RuntimeOptions, got {type(options).__name__}")
        fields = options.as_kwargs()
        return cls(fields.pop("model"), **fields)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "DavidRuntime":
        """A runtime for a model of the zoo (downloaded and cached by david_infer.zoo)."""
        try:
            from . import zoo
        except ImportError as exc:
            raise BackendUnavailable(f"the model zoo is not available in this install ({exc})") from None
        return cls(zoo.model_path(name), **kwargs)

    def _backend_options(self, backend_cls: Type[Backend], given: Mapping[str, Any]) -> BackendOptions:
        """The backend's typed options; a name given as a keyword argument that neither the runtime
        nor the backend knows is an InputError listing both (backend_options= names: the backend's)."""
        valid = [f.name for f in dataclasses.fields(backend_cls.Options)]
        moved = backend_cls.Options.moved  # said by the options' parse, with what to use now
        unknown = [k for k in given if k not in valid and k in self._kwargs_given and k not in moved]
        if unknown:
            own = [p for p in inspect.signature(DavidRuntime.__init__).parameters if p not in ("self", "options")]
            raise InputError(
                unknown_option_message(
                    f"DavidRuntime (backend {self.backend!r})", unknown, own + list(_POST_FIELDS) + valid
                )
            )
        return backend_cls.Options.parse(self.backend, given)

    def _load_contract(self, loader: Backend, verify: bool) -> ModelContract:
        """The contract from the manifest beside the file, or recognised from the graph of a
        manifest-less (released) file; a remote backend's from the server."""
        if isinstance(self.path, str):
            return loader.remote_contract(self.path)
        if manifest_path(self.path).exists():
            contract = ModelContract.load(self.path)
            if verify:
                check_sha256(self.path, contract.sha256)
            return contract
        return ModelContract.recognise(self.path, loader.inspect(self.path))

    def _check_resolution(self, resolution: Union[int, str, None]) -> Optional[int]:
        built = self.contract.built_resolution
        if built is not None:  # a pre/post graph or a fixed-size file runs at its own size only
            graph = self.contract.graph is not None
            allowed = (AUTO_RESOLUTION, None, built) if graph else (AUTO_RESOLUTION, built)
            if resolution not in allowed:
                what = (
                    f"is a pre/post graph built for resolution {built}"
                    if graph
                    else f"has a fixed {built}x{built} input"
                )
                spelled = f"{built}, 'auto' or None" if graph else f"{built} or 'auto'"
                raise InputError(f"{self.path} {what}; resolution must be {spelled}, got {resolution!r}")
            return built
        if resolution == AUTO_RESOLUTION:
            return DEFAULT_RESOLUTION
        if resolution is None:
            return None
        stride = self.contract.stride
        if (
            isinstance(resolution, bool)
            or not isinstance(resolution, int)
            or resolution < stride
            or resolution % stride
        ):
            raise InputError(f"resolution must be None or a positive multiple of {stride}, got {resolution!r}")
        return resolution

    def _batch_size(self, batch_size: int) -> int:
        """A batch size as run: checked, and at most a fixed-batch graph's batch."""
        size = positive_int("batch_size", batch_size)
        return min(size, self.contract.fixed_batch or size)

    def _check_pipeline(self, pipeline: str) -> str:
        if pipeline != "auto" and pipeline not in PIPELINES:
            raise InputError(f"pipeline must be 'auto' or one of {', '.join(PIPELINES)}, got {pipeline!r}")
        built = self.contract.built_pipeline
        if self.contract.graph is not None and pipeline not in ("auto", built):
            raise InputError(
                f"{self.path} has the {built} pipeline inside its graph; pipeline must be 'auto' or {built!r}, "
                f"got {pipeline!r}"
            )
        return (built or "antialias") if pipeline == "auto" else pipeline

    # ------------------------------------------------------------------------------ public API

    @property
    def tasks(self) -> Tuple[str, ...]:
        """Tasks the model predicts, in output order."""
        return self.contract.tasks

    def predict(self, image: Any, *, refine: Any = AS_OPENED, boxes: Any = None) -> Prediction:
        """Predict every task of the model for one image (path, PIL image or numpy array).

        `refine`: the second pass per person for this call ("people", "none", a RefineOptions;
        default as opened). `boxes`: person boxes `[(x0, y0, x1, y1), ...]` in image pixels (from
        any detector) to refine instead of those found in the mask (with the runtime's refine
        options, or the defaults when it was opened without)."""
        options = self._refine_for(refine, boxes)
        with self._in_flight():
            decoded, staged = self.preprocess(image)
            outputs = _raise_first(self._infer_outcomes([staged]))[0]
            return self._finish(decoded, staged, outputs, options, boxes)

    def predict_batch(
        self, images: Iterable[Any], batch_size: Optional[int] = None, *, refine: Any = AS_OPENED
    ) -> List[Prediction]:
        """Predict a sequence of images, `batch_size` at a time through the backend (via `imap`).
        Results equal `predict` image by image; the first input that fails raises its error."""
        with closing(self.imap(images, batch_size=batch_size, refine=refine)) as outcomes:
            return _raise_first(outcome for _, outcome in outcomes)

    def imap(
        self,
        inputs: Iterable[Any],
        batch_size: Optional[int] = None,
        prefetch: Optional[int] = None,
        load: Optional[Callable[[Any], Any]] = None,
        *,
        refine: Any = AS_OPENED,
    ) -> _BatchStream:
        """Predict a stream of inputs (read lazily, memory bounded); yields `(input, Prediction or
        the Exception it met)` in input order (docs/runtime.md, "Batching and threads").

        `prefetch`: inputs decoded ahead (default 2 x batch_size); with resolution=None only
        same-sized squares share a batch. `load(input)` (in the reader thread) turns an input into
        what `predict` accepts. A failed input yields its Exception (naming a path input by its
        path, others as `images[i]`) and the stream goes on; closing the iterator early stops the
        reader. If `inputs` itself raises, every input read before is yielded first, then the
        stream raises that error. `refine`: as in `predict` (run in the postprocessing worker).
        """
        size = self.batch_size if batch_size is None else self._batch_size(batch_size)
        depth = 2 * size if prefetch is None else positive_int("prefetch", prefetch)
        return _BatchStream(self, iter(inputs), size, depth, load, self._refine_for(refine))

    def predict_video(
        self,
        src: Any,
        *,
        batch_size: Optional[int] = None,
        frames: Any = None,
        max_side: Optional[int] = None,
        fps: Optional[float] = None,
        prefetch: Optional[int] = None,
        stabilize: Optional[str] = None,
        stabilize_options: Optional[Any] = None,
        refine: Any = AS_OPENED,
    ) -> Iterator[Tuple[int, Optional[float], Prediction]]:
        """Predict every frame of a clip; yields `(frame_index, timestamp, Prediction)` in order
        (docs/video.md; the arguments as in `david_infer.video.predict_video`)."""
        from . import video

        return video.predict_video(
            self,
            src,
            batch_size=batch_size,
            frames=frames,
            max_side=max_side,
            fps=fps,
            prefetch=prefetch,
            stabilize=stabilize,
            stabilize_options=stabilize_options,
            refine=self._refine_for(refine),
        )

    # ---------------------------------------------------- the three stages (timed by benchmarks)

    def preprocess(self, image: Any, name: Optional[str] = None) -> Tuple[Decoded, Staged]:
        """Decode and validate `image` (or take it decoded), and make the model's feeds for it."""
        decoded = (
            image if isinstance(image, Decoded) else decode(image, self.channel_order, name, self.max_image_pixels)
        )
        with self._in_flight() as stages:
            if self.resolution is None:  # each image at its own size: OutOfMemoryError unless this one fits
                h, w = decoded.size
                self._memory.check_image(stages.resolution_for(h, w), (h, w), decoded.name)
            return decoded, stages.prepare(decoded)

    def infer(self, staged: Sequence[Staged]) -> List[ModelOutputs]:
        """Run the model on prepared images (batched where they may share a call). NonFiniteOutput
        for the first image whose outputs are not finite (unless allow_nonfinite)."""
        return _raise_first(self._infer_outcomes(staged))

    def _infer_outcomes(self, staged: Sequence[Staged]) -> List[Union[ModelOutputs, Exception]]:
        """`infer`, with a NonFiniteOutput in place of each image whose outputs are not finite."""
        results: List[Union[ModelOutputs, Exception]] = []
        with self._in_flight() as stages:
            for _, run in groupby(staged, key=lambda s: s.batch_key):
                results.extend(stages.infer(list(run)))
        return results

    def postprocess(self, decoded: Decoded, staged: Staged, outputs: ModelOutputs) -> Prediction:
        """Model outputs for one image -> a Prediction at the image's size."""
        with self._in_flight() as stages:
            maps = stages.finish(staged, outputs)
        return Prediction(image=decoded.display, depth_inverse=self.post_options.invert_depth, **maps)

    def model_resolution(self, height: int, width: int) -> int:
        """The side of the square the model runs an image of height x width at."""
        with self._in_flight() as stages:
            return stages.resolution_for(height, width)

    def _refine_for(self, refine: Any, boxes: Any = None) -> Optional[RefineOptions]:
        """A call's refine options: as opened, or as given (checked against the model's tasks);
        with `boxes`, those or the defaults (boxes need no mask)."""
        if refine is AS_OPENED:
            options = self.refine
        else:
            options = as_refine_options(refine)
            if boxes is not None and options is None:
                raise InputError(f"boxes= asks for the second pass; refine={refine!r} turns it off")
        if boxes is None:
            return check_refine(options, self.tasks, self.path)
        return options or RefineOptions()

    def _finish(
        self,
        decoded: Decoded,
        staged: Staged,
        outputs: ModelOutputs,
        refine: Optional[RefineOptions],
        boxes: Any = None,
    ) -> Prediction:
        """`postprocess`, then the second pass per person when `refine` is set."""
        prediction = self.postprocess(decoded, staged, outputs)
        if refine is None:
            return prediction
        with self._in_flight():
            return refine_prediction(self, decoded, prediction, refine, boxes)

    # ---------------------------------------------------------------------------- lifetime

    #: calls running now (`_in_flight`), and whether close() began; shared by every runtime's calls
    _busy = 0
    _closing = False

    @contextmanager
    def _in_flight(self) -> Iterator[Stages]:
        """The stages (read once), for one call that close() waits for; ModelError once close() has
        begun (a call already in flight in this thread, e.g. predict's model call, goes on)."""
        nested = getattr(_NESTED, "depth", 0)
        with _CALLS:
            stages = self.stages
            if stages is None or (self._closing and not nested):
                raise ModelError(f"{self.path}: the runtime is closed")
            self._busy += 1
        _NESTED.depth = nested + 1
        try:
            yield stages
        finally:
            _NESTED.depth = nested
            with _CALLS:
                self._busy -= 1
                _CALLS.notify_all()

    def close(self) -> None:
        """Release the stages and the backend, once the calls running now have finished (later ones
        raise ModelError "the runtime is closed"). Idempotent."""
        with _CALLS:
            self._closing = True
            _CALLS.wait_for(lambda: self._busy == 0)
        if self.stages is not None:
            self.stages.close()
            self.stages = None
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    def __enter__(self) -> "DavidRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        res = self.resolution or "image size"
        stages = self.stages.kind if self.stages is not None else "closed"
        return (
            f"DavidRuntime({str(self.path)!r}, backend={self.backend!r}, tasks={list(self.tasks)}, "
            f"resolution={res}, pipeline={self.pipeline!r}, stages={stages!r})"
        )


def _raise_first(outcomes: Iterable[Union[T, Exception]]) -> List[T]:
    """The outcomes in order, or the first Exception among them raised (none read after it)."""
    results: List[T] = []
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
        results.append(outcome)
    return results


@dataclasses.dataclass
class _Slot:
    """One input's place in the output order: its prediction's future, or its error."""

    item: Any
    future: Optional["Future[Prediction]"] = None
    error: Optional[Exception] = None

    @property
    def settled(self) -> bool:
        return self.error is not None or (self.future is not None and self.future.done())

    def outcome(self) -> Tuple[Any, Outcome]:
        if self.error is not None:
            return self.item, self.error
        assert self.future is not None
        try:
            return self.item, self.future.result()
        except Exception as exc:  # postprocessing failed for this input only
            return self.item, exc


class _BatchStream(Iterator[Tuple[Any, Outcome]]):
    """The one batching path (`DavidRuntime.imap`): reader thread -> bounded queue -> batches
    through the model in the consumer's thread -> postprocessing futures -> in-order results."""

    def __init__(
        self,
        rt: DavidRuntime,
        inputs: Iterator[Any],
        batch_size: int,
        prefetch: int,
        load: Optional[Callable[[Any], Any]],
        refine: Optional[RefineOptions] = None,
    ) -> None:
        self._rt, self._batch_size, self._refine = rt, batch_size, refine
        self._ready: "queue.Queue[Any]" = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._slots: Deque[_Slot] = deque()
        self._batch: List[Tuple[_Slot, Decoded, Staged]] = []
        self._post = ThreadPoolExecutor(max(1, min(2, rt.threads)), thread_name_prefix="david-imap-post")
        self._ended = False
        self._source_error: Optional[BaseException] = None  # raised once every input read before it is out
        self._reader = threading.Thread(target=self._read, args=(inputs, load), name="david-imap-reader", daemon=True)
        self._reader.start()

    # -- reader thread ---------------------------------------------------------------------

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            with suppress(queue.Full):
                self._ready.put(item, timeout=0.1)
                return True
        return False

    def _read(self, inputs: Iterator[Any], load: Optional[Callable[[Any], Any]]) -> None:
        index = 0
        try:
            while not self._stop.is_set():
                try:
                    item = next(inputs)
                except StopIteration:
                    break
                try:
                    image = load(item) if load else item
                    if image is item and isinstance(item, np.ndarray):  # read ahead: the caller may reuse it
                        image = item.copy()
                    path = next((p for p in (image, item) if isinstance(p, (str, os.PathLike))), None)
                    name = f"images[{index}]" if path is None else str(path)
                    staged: Any = self._rt.preprocess(image, name=name)  # close() waits for it, or it fails typed
                except Exception as exc:  # one bad input must not stop the stream
                    staged = exc
                index += 1
                if not self._put((item, staged)):
                    return
        except BaseException as exc:  # the input iterable itself failed: end the stream with it
            self._put((_END, exc))
            return
        self._put((_END, None))

    # -- consumer side ---------------------------------------------------------------------

    def __iter__(self) -> "_BatchStream":
        return self

    def __next__(self) -> Tuple[Any, Outcome]:
        while True:
            if self._slots and self._slots[0].settled:
                return self._slots.popleft().outcome()
            if self._ended:
                if self._batch:
                    self._flush()
                    continue
                if not self._slots:
                    error, self._source_error = self._source_error, None
                    self.close()
                    if error is not None:
                        raise error
                    raise StopIteration
                self._slots[0].future.exception()  # type: ignore[union-attr]  # wait for the head
                continue
            pending = sum(1 for s in self._slots if s.future is not None)  # submitted, not yet yielded
            if pending >= 2 * self._batch_size and self._slots[0].future is not None:
                self._slots[0].future.exception()  # bounded: wait for the head before reading more
                continue
            self._take(self._ready.get())

    def _take(self, entry: Tuple[Any, Any]) -> None:
        item, staged = entry
        if item is _END:  # `staged`: the input iterable's own error, after what it gave is yielded
            self._ended, self._source_error = True, staged
            return
        slot = _Slot(item)
        self._slots.append(slot)
        if isinstance(staged, Exception):
            slot.error = staged
            return
        decoded, prepared = staged
        if self._batch and self._batch[0][2].batch_key != prepared.batch_key:
            self._flush()  # a different size (resolution=None) cannot share the batch
        self._batch.append((slot, decoded, prepared))
        if len(self._batch) >= self._batch_size:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        try:
            outputs = self._rt._infer_outcomes([prepared for _, _, prepared in batch])
        except Exception as exc:
            for slot, _, _ in batch:
                slot.error = exc
            return
        for (slot, decoded, prepared), out in zip(batch, outputs):
            if isinstance(out, Exception):
                slot.error = out
            else:
                # close() waits for it, or it fails typed
                slot.future = self._post.submit(self._rt._finish, decoded, prepared, out, self._refine)

    def close(self) -> None:
        """Stop the reader and the workers (idempotent); called at the end and on early exit."""
        self._stop.set()
        with suppress(queue.Empty):  # unblock a reader waiting on a full queue
            while True:
                self._ready.get_nowait()
        self._reader.join(timeout=5)
        self._post.shutdown(wait=True, cancel_futures=True)
        self._ended = True
        self._slots.clear()
        self._batch = []

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
