"""`DavidRuntime`: run a DAViD model on any image and get maps aligned with that image.

    from david_infer import DavidRuntime
    rt = DavidRuntime("model.onnx")
    pred = rt.predict("photo.jpg")       # pred.depth (H, W), pred.normal (H, W, 3), pred.foreground (H, W)

The model is our export (an .onnx with its .json manifest beside it), a released Microsoft file
(recognised from its shapes), or a folder holding exactly one model file. Backends live in
`david_infer/backends/<name>/`, imported only when used.
"""
from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import BackendUnavailable, InputError, ModelError
from .inputs import MAX_IMAGE_PIXELS, Decoded, check_channel_order, check_max_pixels, decode
from .manifest import check_sha256, manifest_path, read_manifest
from .modelspec import ModelSpec, check_graph, manifest_from_shapes, spec_from_manifest
from .postprocess import PostOptions, postprocess
from .prediction import Prediction
from .preprocess import (
    PIPELINES,
    Prepared,
    antialias_prepare,
    dynamic_resolution,
    linear_resize_chw,
    official_prepare,
)

#: backend name -> package implementing `open_runner(path, manifest, device, **options)`
BACKENDS: Dict[str, str] = {
    "onnxruntime": "david_infer.backends.onnxruntime",
    "torch": "david_infer.backends.torch",
    "tensorrt": "david_infer.backends.tensorrt",
}
_BACKEND_TITLES = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch", "tensorrt": "TensorRT"}
#: model file suffix -> backend chosen by backend="auto"
AUTO_BACKEND = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}

ModelLike = Union[str, "os.PathLike[str]"]


def resolve_model_path(model: ModelLike) -> Path:
    """The model file: `model` itself, or the only model file inside the folder `model`."""
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"model must be a path to a model file or folder, got {type(model).__name__}")
    path = Path(model)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in AUTO_BACKEND and p.is_file())
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise ModelError(
                f"{path}: expected exactly one model file ({', '.join(AUTO_BACKEND)}) in this folder, "
                f"found {len(found)} ({names}); pass the file itself"
            )
        path = found[0]
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty (0 bytes); re-download or re-export it")
    return path


def load_backend(name: str) -> Any:
    """The backend package `name` (imported now), or BackendUnavailable."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; expected one of auto, {', '.join(BACKENDS)}")
    module = BACKENDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise BackendUnavailable(
                f"the {_BACKEND_TITLES[name]} backend is not available in this david-infer install "
                f"({module} is missing)"
            ) from None
        raise


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class DavidRuntime:
    """Runs one DAViD model; safe to share between threads.

    Arguments:
        model: an .onnx file (ours with its manifest, or a released file), an .engine/.plan
            (TensorRT backend), or a folder holding exactly one of them.
        backend: "auto" (onnxruntime for .onnx, tensorrt for .engine/.plan), "onnxruntime",
            "torch" (the reference PyTorch model from our weights) or "tensorrt".
        device: "cpu", "cuda" or "cuda:N". A GPU that cannot be used raises BackendUnavailable;
            nothing falls back to the CPU silently.
        resolution: side of the square the model runs at (a multiple of the model's stride, 16);
            None = the image's own padded size rounded to the stride. Fixed-size (released)
            files run at their size only.
        channel_order: "rgb" or "bgr" (OpenCV) for 3/4-channel numpy arrays.
        invert_depth: True (default) negates the raw depth so larger = nearer, as the official
            runtime does; False returns the raw output, larger = farther.
        normalize_depth: min-max normalise depth to [0, 1] per image (after inversion).
        foreground_threshold: None for the soft mask, or t in [0, 1] for a 0/1 mask (> t).
        interpolation: how outputs are resized back: "auto" ("official" with the official
            pipeline, else "bicubic"), "official" (OpenCV INTER_CUBIC on the padded square, as the
            official runtime), "bicubic" or "bilinear" (Pillow's antialiased filters).
        pipeline: "auto" ("official" for fixed-size files, else "antialias"), or either explicitly;
            see david_infer.preprocess.
        batch_size: default batch size of predict_batch.
        threads: threads for pre/postprocessing (default: the CPU count, at most 4).
        verify: check the model file's SHA-256 against its manifest.
        max_image_pixels: largest image accepted, width x height (default 100 megapixels,
            david_infer.inputs.MAX_IMAGE_PIXELS; None = no limit of ours). Files are checked from
            their header before decoding, so a decompression bomb is refused without allocating.
        backend_options: passed to the backend's open_runner (for onnxruntime: providers,
            cuda_options, intra_op_threads, cache_dir).
    """

    def __init__(
        self,
        model: ModelLike,
        backend: str = "auto",
        device: str = "cpu",
        resolution: Optional[int] = 512,
        channel_order: str = "rgb",
        *,
        invert_depth: bool = True,
        normalize_depth: bool = False,
        foreground_threshold: Optional[float] = None,
        interpolation: str = "auto",
        pipeline: str = "auto",
        batch_size: int = 4,
        threads: Optional[int] = None,
        verify: bool = True,
        max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
        **backend_options: Any,
    ) -> None:
        self.channel_order = check_channel_order(channel_order)
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        post = (invert_depth, normalize_depth, foreground_threshold)
        PostOptions(*post, interpolation if interpolation != "auto" else "bicubic")  # validate early
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.path = resolve_model_path(model)
        self.backend = AUTO_BACKEND.get(self.path.suffix) if backend == "auto" else backend
        if self.backend is None:
            raise ModelError(
                f"{self.path}: cannot choose a backend for a {self.path.suffix or 'suffix-less'} file; "
                f"expected {', '.join(AUTO_BACKEND)} or an explicit backend="
            )
        manifest = self._read_manifest(verify)
        released = manifest is None
        module = load_backend(self.backend)
        self.runner = module.open_runner(
            self.path, manifest, device,
            **{"resolution": resolution, "max_batch": batch_size, **backend_options},
        )
        try:
            self._configure(manifest, released, resolution, pipeline, interpolation, post)
        except BaseException:
            self.runner.close()  # a refused configuration must not keep a session alive
            raise
        self.batch_size = min(batch_size, self.spec.fixed_batch or batch_size)
        workers = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="david-prepost") if workers > 1 else None

    # ------------------------------------------------------------------ construction helpers

    def _configure(self, manifest: Optional[dict], released: bool, resolution: Optional[int], pipeline: str,
                   interpolation: str, post: tuple) -> None:
        if manifest is None:
            manifest = self._recognise(self.runner)
        self.manifest = manifest
        self.spec: ModelSpec = spec_from_manifest(self.path, manifest, released=released)
        self._check_graph()
        self.resolution = self._check_resolution(resolution)
        self.pipeline = self._check_pipeline(pipeline)
        if interpolation == "auto":
            interpolation = "official" if self.pipeline == "official" else "bicubic"
        self.post_options = PostOptions(*post, interpolation)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "DavidRuntime":
        """A runtime for a model of the zoo (downloaded and cached by david_infer.zoo)."""
        try:
            from . import zoo
        except ImportError as exc:
            raise BackendUnavailable(f"the model zoo is not available in this install ({exc})") from None
        return cls(zoo.model_path(name), **kwargs)

    def _read_manifest(self, verify: bool) -> Optional[dict]:
        mpath = manifest_path(self.path)
        if not mpath.exists():
            return None
        manifest = read_manifest(mpath)
        if verify:
            check_sha256(self.path, manifest)
        return manifest

    def _recognise(self, runner: Any) -> dict:
        """The in-memory manifest of a manifest-less (released) file, from the runner's shapes."""
        inputs, outputs = getattr(runner, "input_shapes", None), getattr(runner, "output_shapes", None)
        if inputs is None or outputs is None:
            raise ModelError(f"{self.path}: no manifest beside it ({manifest_path(self.path)}) and the "
                             f"{self.backend} backend cannot describe its inputs and outputs")
        return manifest_from_shapes(self.path, inputs, outputs)

    def _check_graph(self) -> None:
        """The runner's inputs/outputs against the manifest (names from the Runner interface;
        shapes where the runner reports them)."""
        names_in, names_out = list(self.runner.input_names), list(self.runner.output_names)
        shapes_in = getattr(self.runner, "input_shapes", None) or {}
        shapes_out = getattr(self.runner, "output_shapes", None) or {}
        check_graph(self.spec, {n: shapes_in.get(n, ()) for n in names_in}, {n: shapes_out.get(n, ()) for n in names_out})

    def _check_resolution(self, resolution: Optional[int]) -> Optional[int]:
        fixed = self.spec.fixed_resolution
        if fixed is not None:
            if resolution != fixed:
                raise InputError(f"{self.path} has a fixed {fixed}x{fixed} input; resolution must be {fixed}, "
                                 f"got {resolution!r}")
            return fixed
        if resolution is None:
            return None
        stride = self.spec.stride
        if not isinstance(resolution, int) or resolution < stride or resolution % stride:
            raise InputError(f"resolution must be None or a positive multiple of {stride}, got {resolution!r}")
        return resolution

    def _check_pipeline(self, pipeline: str) -> str:
        if pipeline == "auto":
            return "official" if self.spec.vit_input is None else "antialias"
        if pipeline not in PIPELINES:
            raise InputError(f"pipeline must be 'auto' or one of {', '.join(PIPELINES)}, got {pipeline!r}")
        return pipeline

    # ------------------------------------------------------------------------------ public API

    @property
    def tasks(self) -> Tuple[str, ...]:
        """Tasks the model predicts, in output order."""
        return self.spec.tasks

    def predict(self, image: Any) -> Prediction:
        """Predict every task of the model for one image (path, PIL image or numpy array)."""
        decoded, prepared = self.preprocess(image)
        outputs = self.infer([prepared])[0]
        return self.postprocess(decoded, prepared, outputs)

    def predict_batch(self, images: Sequence[Any], batch_size: Optional[int] = None) -> List[Prediction]:
        """Predict a sequence of images, `batch_size` at a time through the backend. Results equal
        `predict` image by image. Images of different sizes batch together (all run at
        `resolution`); with resolution=None only same-sized squares share a batch."""
        size = self.batch_size if batch_size is None else batch_size
        if not isinstance(size, int) or size < 1:
            raise InputError(f"batch_size must be a positive integer, got {size!r}")
        size = min(size, self.spec.fixed_batch or size)
        results: List[Prediction] = []
        for chunk in _chunks(list(images), size):
            staged = [self.preprocess(image, name=f"images[{len(results) + i}]") for i, image in enumerate(chunk)]
            outputs = self.infer([p for _, p in staged])
            results.extend(self.postprocess(d, p, o) for (d, p), o in zip(staged, outputs))
        return results

    # ---------------------------------------------------- the three stages (timed by benchmarks)

    def preprocess(self, image: Any, name: Optional[str] = None) -> Tuple[Decoded, Prepared]:
        """Decode and validate `image`, and make the model inputs for it."""
        decoded = decode(image, self.channel_order, name, self.max_image_pixels)
        h, w = decoded.size
        resolution = self.resolution or dynamic_resolution(h, w, self.spec.stride)
        if self.pipeline == "official":
            prepared = official_prepare(decoded, resolution)
            if self.spec.vit_input is not None:  # official steps feeding a dynamic graph
                prepared.image_384 = linear_resize_chw(prepared.image, self.spec.vit_size)
        else:
            vit = self.spec.vit_size if self.spec.vit_input is not None else None
            prepared = antialias_prepare(decoded, resolution, vit, self._pool)
        return decoded, prepared

    def infer(self, prepared: Sequence[Prepared]) -> List[Dict[str, np.ndarray]]:
        """Run the backend on prepared images (batched where sizes agree); per image task -> (C, R, R)."""
        results: List[Dict[str, np.ndarray]] = []
        start = 0
        while start < len(prepared):
            side = prepared[start].image.shape[-1]
            stop = start
            while stop < len(prepared) and prepared[stop].image.shape[-1] == side:
                stop += 1
            results.extend(self._infer_same_size(prepared[start:stop]))
            start = stop
        return results

    def _infer_same_size(self, prepared: Sequence[Prepared]) -> List[Dict[str, np.ndarray]]:
        feeds = {self.spec.image_input: np.stack([p.image for p in prepared])}
        if self.spec.vit_input is not None:
            feeds[self.spec.vit_input] = np.stack([p.image_384 for p in prepared])
        raw = self.runner.infer(feeds)
        n, side = len(prepared), feeds[self.spec.image_input].shape[-1]
        per_task = {}
        for task in self.spec.tasks:
            value = np.asarray(raw[self.spec.outputs[task]], dtype=np.float32)
            if value.ndim == 3:
                value = value[:, None]
            channels = 3 if task == "normal" else 1
            if value.shape != (n, channels, side, side):
                raise ModelError(f"{self.path}: output {self.spec.outputs[task]!r} has shape {value.shape}, "
                                 f"expected {(n, channels, side, side)}")
            per_task[task] = value
        return [{task: per_task[task][i] for task in self.spec.tasks} for i in range(n)]

    def postprocess(self, decoded: Decoded, prepared: Prepared, outputs: Dict[str, np.ndarray]) -> Prediction:
        """Model outputs for one image -> a Prediction at the image's size."""
        maps = postprocess(outputs, prepared.geometry, self.post_options, self._pool)
        return Prediction(image=decoded.display, depth_inverse=self.post_options.invert_depth, **maps)

    # ---------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the backend and the worker threads. Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.runner is not None:
            self.runner.close()

    def __enter__(self) -> "DavidRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        res = self.resolution or "image size"
        return (f"DavidRuntime({str(self.path)!r}, backend={self.backend!r}, tasks={list(self.tasks)}, "
                f"resolution={res}, pipeline={self.pipeline!r})")
