"""Batch prediction on a Ray cluster (Ray Data), writing what `david-infer predict` writes.

    from david_infer.distributed import predict_dataset
    summary = predict_dataset("photos/", "model.onnx", "out/", workers=4)
    print(summary.written, summary.skipped, summary.failed)

The inputs are listed and named on the driver as `david-infer predict` does, read by Ray
(`ray.data.read_binary_files`), and `map_batches` runs `DavidPredictor` in a pool of actors (one
`DavidRuntime` per actor, so the model is loaded once per actor). Each actor writes its inputs'
sets into the output folder with `david_infer.outputs` (the names, files, all-or-none writes and
completion records of `david-infer predict`), so a rerun, local or on Ray, skips what is complete.

Faults are handled by Ray, configured here rather than written by hand: an actor whose process
dies is restarted (`max_restarts`) and the task it was running is resubmitted (`max_task_retries`);
inputs of that task completed before the death are found complete and not written again, the
unfinished one is redone and its stale temporaries removed. A task that still fails after its
retries drops only its inputs, which are listed as failed; a bad image fails only itself.

Paths (inputs, model, output) must be visible at the same path on every node (a shared file
system); inputs on other storage (S3, GCS, HDFS) can be given as a `ray.data.Dataset`.
Importing this module does not import Ray; calling `predict_dataset` without Ray installed raises
BackendUnavailable with the install command (`pip install "david-infer[ray]"`).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from ._logging import quiet_logger
from ._optional import require
from .errors import InputError

#: result columns of the predictor: the input's path, "written" | "skipped" | "failed", the reason
RESULT_COLUMNS = ("path", "status", "reason")


@dataclass
class DistributedSummary:
    """What a `predict_dataset` run did, input by input (inputs named as they were given)."""

    output: Path
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # complete before this run
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (input, reason)
    warnings: List[str] = field(default_factory=list)  # dangling links, second names of a file
    dangling: int = 0
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed


@dataclass(frozen=True)
class _Job:
    """What every actor needs to know about the run (sent once, to each actor's constructor)."""

    model: str
    output: str
    runtime_options: Mapping[str, Any]
    kinds: Tuple[str, ...]
    write: Any  # outputs.sets.WriteOptions
    overwrite: bool
    names: Optional[Mapping[str, str]]  # absolute input path -> output name; None: from the path alone
    batch_size: int
    started: float  # the run's start (time.time()): a completion record since then is this run's work


class _Input(os.PathLike):
    """An input file and its contents as read by Ray; named by its path in errors (`imap` names
    path-like inputs by their path)."""

    __slots__ = ("path", "data")

    def __init__(self, path: str, data: Any) -> None:
        self.path, self.data = path, data

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def _load(item: _Input) -> Any:
    """What the runtime decodes for an input: its bytes, its pixel array, or its path."""
    from .commands.predict import load_input

    if item.data is None:
        return load_input(Path(item.path))
    if isinstance(item.data, np.ndarray) and item.data.dtype != object:
        return item.data  # pixels already decoded (e.g. ray.data.read_images)
    return load_input(Path(item.path), bytes(item.data))


class DavidPredictor:
    """The Ray Data callable class: one `DavidRuntime` per actor, one call per batch of inputs.

    A batch holds a `path` column and optionally `bytes` (the file's contents) or `image` (decoded
    pixels); without either the actor reads the path itself. An input whose set was completed since
    the run started is not redone (an earlier attempt of this task wrote it before its actor died),
    so nothing is written twice, even with overwrite. The rest are planned as `david-infer predict`
    plans them (complete sets skipped, a mismatching record refused unless overwrite, stale
    temporaries removed), run through `DavidRuntime.imap` (the one batching path) and written with
    `outputs.images.write_outputs` (all or none, completion record last). Returns one row per input, in
    RESULT_COLUMNS.
    """

    def __init__(self, job: _Job) -> None:
        from .runtime import DavidRuntime

        self.job = job
        self.output = Path(job.output)
        self.runtime = DavidRuntime(job.model, batch_size=job.batch_size, **job.runtime_options)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from .commands.predict import Tally, _plan

        job = self.job
        paths = [str(p) for p in batch["path"]]
        data = batch.get("bytes", batch.get("image"))
        status: Dict[str, Tuple[str, str]] = {}
        jobs: List[Tuple[Path, str]] = []
        given: Dict[str, str] = {}  # str(Path(path)) (what _plan reports) -> the path as in the batch
        for path in paths:
            name = self._name(path)
            if self._written_by_this_run(path, name):
                status[path] = ("written", "")
            else:
                jobs.append((Path(path), name))
                given[str(Path(path))] = path
        tally = Tally()
        todo = {given[str(path)] for path, _ in _plan(jobs, self.output, job.kinds, job.write, job.overwrite, tally)}
        status.update((given[path], ("failed", reason)) for path, reason in tally.failures)
        for path in given.values():
            if path not in todo:
                status.setdefault(path, ("skipped", ""))
        inputs = [_Input(p, None if data is None else data[i]) for i, p in enumerate(paths) if p in todo]
        outcomes = self.runtime.imap(inputs, batch_size=job.batch_size, load=_load)
        try:
            for item, outcome in outcomes:
                status[item.path] = self._finish(item.path, outcome)
        finally:
            outcomes.close()
        rows = [(p, *status[p]) for p in paths]
        return {col: np.array([r[i] for r in rows], dtype=object) for i, col in enumerate(RESULT_COLUMNS)}

    def _name(self, path: str) -> str:
        from .outputs.sets import output_name

        names = self.job.names
        return names[path] if names is not None else output_name(path)

    def _written_by_this_run(self, path: str, name: str) -> bool:
        from .outputs.images import IMAGE_KINDS

        job = self.job
        image_set = IMAGE_KINDS.set(self.output, name, job.kinds)
        try:
            recorded = image_set.record.stat().st_mtime
        except OSError:
            return False
        return recorded >= job.started and image_set.is_complete(job.write,
                                                                 source=path if os.path.isfile(path) else None)

    def _finish(self, path: str, outcome: Any) -> Tuple[str, str]:
        from .commands.predict import _describe
        from .outputs.images import write_outputs

        error: Optional[BaseException] = outcome if isinstance(outcome, Exception) else None
        if error is None:
            try:
                write_outputs(outcome, self.output, self._name(path), self.job.kinds, self.job.write,
                              source=path if os.path.isfile(path) else None)
                return "written", ""
            except Exception as exc:  # one input's write failing must not stop the batch
                error = exc
        return "failed", _describe(error, path)

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


# ---------------------------------------------------------------------------------- driver


def predict_dataset(
    inputs: Any,
    model: Union[str, "os.PathLike[str]"],
    output: Union[str, "os.PathLike[str]"],
    *,
    save: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    recursive: bool = False,
    batch_size: int = 1,
    workers: Optional[int] = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: Optional[float] = None,
    task_size: int = 16,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    address: Optional[str] = None,
    progress: bool = False,
    warn: Optional[Callable[[str], None]] = None,
    fov: float = 60.0,
    near: float = 1.0,
    far: float = 2.0,
    **runtime_options: Any,
) -> DistributedSummary:
    """Predict every input on a Ray cluster and write the files `david-infer predict` writes.

    Arguments:
        inputs: image files, folders of images, globs (a str/path or a list of them; listed and
            named on the driver exactly as `david-infer predict` does), or a `ray.data.Dataset`
            with a `path` column and optionally `bytes` (as from `ray.data.read_binary_files(...,
            include_paths=True)`, from any file system Ray reaches) or `image` (decoded pixels);
            a Dataset's inputs are named by `outputs.sets.output_name(path)` (the file's stem).
        model: the model file or folder (at the same path on every node).
        output: the output folder (shared by every node); created if needed.
        save, overwrite, recursive, fov, near, far: as the `predict` command's options.
        batch_size: images per model call inside an actor.
        workers: number of actors (default: the cluster's CPUs / cpus_per_worker, or its GPUs /
            gpus_per_worker on a GPU device; never more than there are tasks).
        cpus_per_worker: CPUs reserved per actor; also the model's thread count per actor
            (`threads` and, for ONNX Runtime, `intra_op_threads`) unless given.
        gpus_per_worker: GPUs per actor (default 1 when `device` is a GPU, else 0).
        task_size: at most this many inputs per Ray task: the unit an actor is given, and redone
            if its process dies.
        max_restarts, max_task_retries: Ray's actor restarts and task retries after a worker
            process dies (per actor and per task).
        address: the Ray cluster ("auto", "HOST:PORT", "ray://HOST:PORT"); None connects to the
            cluster `ray start` made on this machine or starts a local one. Ignored when Ray is
            already initialised in this process.
        progress: show a progress bar (as `david-infer predict` does).
        warn: called with each warning (dangling links, second names of a file); they are also
            in the summary.
        runtime_options: `DavidRuntime` arguments (backend, device, resolution, threads, ...).

    Returns a DistributedSummary: inputs written, skipped (complete before this run) and failed
    (with the reason). Options, the inputs, the output folder and the model are checked on the
    driver (the model opened once, on the CPU when its backend can) before any work starts.
    """
    from .commands.predict import (
        Progress,
        Tally,
        _model_record,
        _plan,
        check_save,
        collect_inputs,
        name_inputs,
        parse_save,
        probe_output_folder,
    )
    from .outputs.images import IMAGE_KINDS
    from .outputs.sets import WriteOptions, check_ply_options
    from .video import is_video_path

    ray = require("ray", "batch prediction on a Ray cluster")
    require("ray.data", "batch prediction on a Ray cluster")
    started = time.time()
    for arg, value in (("batch_size", batch_size), ("task_size", task_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{arg} must be a positive integer, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, (int, float)) or cpus_per_worker <= 0:
        raise InputError(f"cpus_per_worker must be a positive number, got {cpus_per_worker!r}")
    check_ply_options(fov, near, far)
    check_save(list(save) if save else None)
    outdir = Path(output)
    summary = DistributedSummary(outdir)

    is_dataset = _is_dataset(inputs)
    jobs: List[Tuple[Path, str]] = []
    if not is_dataset:
        specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        found = collect_inputs([os.fspath(s) for s in specs], recursive, exclude=outdir)
        summary.warnings, summary.dangling, summary.duplicates = found.warnings, found.dangling, found.duplicates
        for text in found.warnings:
            if warn is not None:
                warn(text)
        if not found.inputs and not found.problems:
            raise InputError("no inputs given" if not found.warnings else "no inputs left (see the warnings)")
        jobs, clashes = name_inputs(found.inputs)
        summary.failed.extend(found.problems + clashes)
        # clips are decoded frame by frame with PyAV on one machine (david-infer predict without --ray)
        clips = [(path, "video files are predicted locally (david-infer predict without --ray); this run "
                  "takes images only") for path, _ in jobs if is_video_path(path)]
        summary.failed.extend((str(path), why) for path, why in clips)
        jobs = [job for job in jobs if not is_video_path(job[0])]
        if not jobs:
            return summary
    probe_output_folder(outdir)

    on_gpu = str(runtime_options.get("device", "cpu")).startswith("cuda")
    gpus = (1 if on_gpu else 0) if gpus_per_worker is None else gpus_per_worker
    options = _worker_runtime_options(model, runtime_options, cpus_per_worker)
    with _driver_runtime(model, options) as runtime:
        kinds = tuple(parse_save(list(save) if save else None, runtime.tasks))
        write = WriteOptions(fov, (near, far), runtime.post_options.invert_depth, extra=_model_record(runtime))
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {outdir}: {exc}") from None

    names: Optional[Dict[str, str]] = None  # absolute path -> output name
    shown: Dict[str, str] = {}  # absolute path -> the input as given (for messages)
    if not is_dataset:
        tally = Tally()
        todo = _plan(jobs, outdir, kinds, write, overwrite, tally)
        summary.failed.extend(tally.failures)
        left = {str(path) for path, _ in todo} | {path for path, _ in tally.failures}
        summary.skipped.extend(str(path) for path, _ in jobs if str(path) not in left)
        names = {os.path.abspath(path): name for path, name in todo}
        shown = {os.path.abspath(path): str(path) for path, _ in todo}
        if not names:
            return summary

    _connect(ray, address)
    if workers is None:
        resources = ray.cluster_resources()
        workers = max(1, int(resources.get("GPU", 0) // gpus if gpus else resources.get("CPU", 1) // cpus_per_worker))
    if names is None:
        dataset = inputs
    else:
        # blocks are what Ray hands to the actors (and redoes): at most task_size inputs each and
        # at least one per actor; no more actors than blocks (each one loads the model)
        blocks = min(len(names), max(-(-len(names) // task_size), workers))
        workers = min(workers, blocks)
        task_size = -(-len(names) // blocks)  # one batch per block: Ray would bundle smaller blocks
        # reading is I/O: it takes no CPU slot, so a pool that fills the cluster cannot starve it;
        # one read task at a time, else Ray starts a worker process per block at once (measured:
        # 16 blocks on 2 cores took 18 s to the first result, against 5.5 s for 4 blocks)
        dataset = ray.data.read_binary_files(sorted(names), include_paths=True, num_cpus=0,
                                             override_num_blocks=blocks, concurrency=1)
    job = _Job(os.fspath(model), os.fspath(outdir), options, kinds, write, overwrite, names, batch_size, started)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options this way but names no replacement for these
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        results = dataset.map_batches(
            DavidPredictor,
            fn_constructor_kwargs={"job": job},
            batch_size=task_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus,
            max_restarts=max_restarts,  # Ray's actor restarts after a worker process dies
            max_task_retries=max_task_retries,  # and resubmission of the task it was running
        )
    for key, value in _DATA_SETTINGS.items():
        setattr(results.context, key, value)  # the context of this run's dataset only (a copy)
    pending = set(names or ())
    bar = Progress(len(pending), progress)
    try:
        with quiet_logger("ray.data"):
            for row in _rows(results):
                path, status, reason = (str(row[c]) for c in RESULT_COLUMNS)
                pending.discard(path)
                label = shown.get(path, path)
                if status == "written":
                    summary.written.append(label)
                elif status == "skipped":
                    summary.skipped.append(label)
                else:
                    summary.failed.append((label, reason))
                bar.update(label, status != "failed")
    finally:
        bar.close()
    for name in (names or {}).values():  # what a killed worker left; no writer of this run is left
        IMAGE_KINDS.set(outdir, name, kinds).remove_temporaries()
    for path in sorted(pending):
        summary.failed.append((shown.get(path, path), "no result: the Ray task holding it failed after "
                               f"{max_task_retries} retries (see the Ray logs); run again to retry it"))
    return summary


def _rows(dataset: Any) -> Iterator[Dict[str, Any]]:
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["path"])):
            yield {c: batch[c][i] for c in RESULT_COLUMNS}


def _is_dataset(inputs: Any) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:
        return False
    return isinstance(inputs, Dataset)


def _worker_runtime_options(model: Any, given: Mapping[str, Any], cpus: float) -> Dict[str, Any]:
    """The runtime options for each actor: the model's threads follow the actor's CPUs unless
    given; a GPU device is the actor's own GPU (Ray sets CUDA_VISIBLE_DEVICES)."""
    from .commands.predict import thread_options

    options = dict(given)
    own = dict(options.get("backend_options") or {})
    for key, value in thread_options(model, options.get("backend", "auto"), max(1, int(cpus))).items():
        if key not in options and key not in own:
            options[key] = value
    if str(options.get("device", "cpu")).startswith("cuda:"):
        options["device"] = "cuda"
    return options


def _driver_runtime(model: Any, options: Mapping[str, Any]) -> Any:
    """The model opened once on the driver (on the CPU when its backend can, so a head node without
    a GPU can check a GPU job) to refuse a bad model or option before any work starts."""
    from .backends import get_backend
    from .runtime import DavidRuntime, choose_backend, resolve_model_path

    probe = dict(options)
    backend = choose_backend(resolve_model_path(model), probe.get("backend", "auto"))
    if "cpu" in get_backend(backend).devices:
        probe["device"] = "cpu"
    return DavidRuntime(model, **probe)


def _connect(ray: Any, address: Optional[str]) -> None:
    """Connect to (or start) the cluster. What Ray prints while starting goes to stderr only when
    it fails; its C++ core logs below `fatal` are silenced unless RAY_BACKEND_LOG_LEVEL is set (it
    logs every actor of a Ray Data pool with restarts as an error)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    with tempfile.TemporaryFile() as chatter:
        saved = os.dup(2)
        os.dup2(chatter.fileno(), 2)  # file descriptor level: Ray's C++ core writes there directly
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except BaseException as exc:
            os.dup2(saved, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            if isinstance(exc, ConnectionError):
                raise InputError(f"cannot reach the Ray cluster at {address!r}: {exc}. Start one with "
                                 f"`ray start --head`, or pass no address to start a local one") from None
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# Our progress bar replaces Ray Data's and its per-run log lines; a task that fails after its
# retries drops its block instead of aborting the run (its inputs are then listed as failed).
_DATA_SETTINGS = {"enable_progress_bars": False, "print_on_execution_start": False,
                  "enable_auto_log_stats": False, "max_errored_blocks": -1}


__all__ = ["DavidPredictor", "DistributedSummary", "predict_dataset", "RESULT_COLUMNS"]
