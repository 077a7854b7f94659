"""Batch prediction on a Ray cluster (Ray Data), writing what `david-infer predict` writes; the inputs
are planned on the driver by `david_infer.jobs`, Ray's restarts and retries handle dead workers, and
Ray is imported only when `predict_dataset` runs. See docs/scale-out.md.

    summary = predict_dataset("photos/", "model.onnx", "out/", DatasetOptions(workers=4))
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import jobs
from ._optional import quiet_logger, require
from .errors import InputError
from .jobs import JobOptions, Tally, describe, plan
from .options import RuntimeOptions, positive_int, resolved_model
from .progress import Progress

#: result columns of the predictor: the input's path, "written" | "skipped" | "failed", the reason
RESULT_COLUMNS = ("path", "status", "reason")


@dataclass
class DistributedSummary:
    """What a `predict_dataset` run did, input by input (inputs named as they were given): written,
    skipped (complete before this run), redone and failed (input, why), and the input warnings."""

    output: Path
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    redone: List[Tuple[str, str]] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dangling: int = 0
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed


@dataclass(frozen=True)
class DatasetOptions:
    """How `predict_dataset` runs, beside the model's RuntimeOptions.

    job: what is written (save, overwrite, recursive, fov, near, far: as `predict`'s options).
    workers: actors (default: the cluster's CPUs / cpus_per_worker, or GPUs / gpus_per_worker on a
        GPU device; never more than there are tasks). cpus_per_worker: CPUs reserved per actor, also
        its model's threads unless the RuntimeOptions give them. gpus_per_worker: default 1 on a GPU.
    task_size: at most this many inputs per Ray task (the unit redone when its actor dies).
    max_restarts, max_task_retries: Ray's actor restarts and task retries after a worker dies.
    address: the Ray cluster ("auto", "HOST:PORT", "ray://HOST:PORT"; None: the one `ray start` made
        here, else a local one; ignored when Ray is initialised). progress: a progress bar. warn:
        called with each input warning (also in the summary).
    """

    job: JobOptions = field(default_factory=JobOptions)
    workers: Optional[int] = None
    cpus_per_worker: float = 1
    gpus_per_worker: Optional[float] = None
    task_size: int = 16
    max_restarts: int = 3
    max_task_retries: int = 3
    address: Optional[str] = None
    progress: bool = False
    warn: Optional[Callable[[str], None]] = None

    def __post_init__(self) -> None:
        positive_int("task_size", self.task_size)
        positive_int("workers", self.workers, allow_none=True)
        cpus = self.cpus_per_worker
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
            raise InputError(f"cpus_per_worker must be a positive number, got {cpus!r}")

    def with_keywords(self, keywords: Dict[str, Any]) -> "DatasetOptions":
        """A copy with the keywords that name its fields or JobOptions' (taken out of `keywords`)."""
        own = _take(keywords, DatasetOptions)
        return dataclasses.replace(
            self, **own, job=dataclasses.replace(own.get("job", self.job), **_take(keywords, JobOptions))
        )


def _take(keywords: Dict[str, Any], cls: type) -> Dict[str, Any]:
    """The keywords that name fields of `cls`, taken out of `keywords`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: keywords.pop(k) for k in list(keywords) if k in names}


@dataclass(frozen=True)
class _Job:
    """What every actor needs to know about the run (sent once, to each actor's constructor)."""

    runtime: RuntimeOptions
    output: str
    kinds: Tuple[str, ...]
    write: Any  # outputs.sets.WriteOptions
    overwrite: bool
    names: Optional[Mapping[str, str]]  # absolute input path -> output name; None: from the path alone
    started: float  # the run's start (time.time()): a completion record since then is this run's work
    sources: Optional[Mapping[str, Any]] = None  # absolute input path -> outputs.sets.Source, stamped when planned


class _Input(str):
    """An input's path (`imap` names it so), with its contents as read by Ray in `data`."""

    data: Any

    def __new__(cls, path: str, data: Any) -> "_Input":
        item = super().__new__(cls, path)
        item.data = data
        return item


def _load(item: _Input) -> Any:
    """What the runtime decodes for an input: its bytes, its pixel array (e.g. ray.data.read_images),
    or its path."""
    if isinstance(item.data, np.ndarray) and item.data.dtype != object:
        return item.data
    return jobs.load_input(Path(item), None if item.data is None else bytes(item.data))


class DavidPredictor:
    """The Ray Data callable class: one `DavidRuntime` per actor, one call per batch of inputs (a
    `path` column, and `bytes` or `image`, else the actor reads the path); returns one row per input
    in RESULT_COLUMNS. An input completed since the run started (by an earlier attempt of this
    task) is not redone; the rest are planned with `jobs.plan`, run through `imap` and written with
    `outputs.images.write_outputs`."""

    def __init__(self, job: _Job) -> None:
        from .runtime import DavidRuntime

        self.job, self.output = job, Path(job.output)
        self.runtime = DavidRuntime.from_options(job.runtime)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from .outputs.images import IMAGE_KINDS, write_outputs
        from .outputs.sets import Source, output_name

        job = self.job
        paths = [str(p) for p in batch["path"]]
        data = batch.get("bytes", batch.get("image"))
        status: Dict[str, Tuple[str, str]] = {}
        named: List[Tuple[Path, str]] = []
        names: Dict[str, str] = {}
        given: Dict[str, str] = {}  # str(Path(path)) (what plan reports) -> the path as in the batch
        for path in paths:
            names[path] = output_name(path) if job.names is None else job.names[path]
            local = path if os.path.isfile(path) else None
            image_set = IMAGE_KINDS.set(self.output, names[path], job.kinds)
            recorded = image_set.record.stat().st_mtime if os.path.exists(image_set.record) else 0.0
            if recorded >= job.started and image_set.is_complete(job.write, source=local):
                status[path] = ("written", "")
            else:
                named.append((Path(path), names[path]))
                given[str(Path(path))] = path
        tally = Tally()
        todo = {given[str(path)] for path, _ in plan(named, self.output, job.kinds, job.write, job.overwrite, tally)}
        status.update((given[path], ("failed", reason)) for path, reason in tally.failures)
        status.update((path, ("skipped", "")) for path in given.values() if path not in todo and path not in status)
        inputs = [_Input(p, None if data is None else data[i]) for i, p in enumerate(paths) if p in todo]
        planned = job.sources or {}  # else stamped now, before the read; None: no local file (S3)
        sources = {i: planned.get(i) or (Source.before_read(i) if os.path.isfile(i) else None) for i in inputs}
        outcomes = self.runtime.imap(inputs, load=_load)
        try:
            for item, outcome in outcomes:
                error: Optional[BaseException] = outcome if isinstance(outcome, Exception) else None
                if error is None:
                    try:
                        write_outputs(outcome, self.output, names[item], job.kinds, job.write, source=sources[item])
                    except Exception as exc:  # one input's write failing must not stop the batch
                        error = exc
                status[item] = ("written", "") if error is None else ("failed", describe(error, item))
        finally:
            outcomes.close()
        rows = [(p, *status[p]) for p in paths]
        return {col: np.array([r[i] for r in rows], dtype=object) for i, col in enumerate(RESULT_COLUMNS)}

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


def predict_dataset(
    inputs: Any,
    model: Union[str, "os.PathLike[str]", RuntimeOptions],
    output: Union[str, "os.PathLike[str]"],
    options: Optional[DatasetOptions] = None,
    **keywords: Any,
) -> DistributedSummary:
    """Predict every input on a Ray cluster into `output` (shared by every node) as `david-infer
    predict` does; returns a DistributedSummary. `inputs`: files, folders, globs (listed and named on
    the driver), or a `ray.data.Dataset` with a `path` column and `bytes` or `image` (named by
    `output_name(path)`); `model`: a model path (the same on every node), a released model's name,
    or a `RuntimeOptions`; `keywords`: fields of DatasetOptions, JobOptions or RuntimeOptions, else
    backend options. Options, inputs, the folder and the model (opened once on the driver, on the
    CPU when its backend can) are checked before any work starts."""
    from .outputs.images import IMAGE_KINDS
    from .outputs.sets import Source
    from .video import is_video_path

    ray = require("ray", "batch prediction on a Ray cluster")
    require("ray.data", "batch prediction on a Ray cluster")
    started = time.time()
    options = (options or DatasetOptions()).with_keywords(keywords)
    runtime = _runtime_options(model, keywords)
    job = options.job
    outdir = Path(output)
    summary = DistributedSummary(outdir)

    is_dataset = _is_dataset(inputs)
    named: List[Tuple[Path, str]] = []
    if not is_dataset:
        specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        named, found = jobs.gather_inputs(
            [os.fspath(s) for s in specs], job.recursive, outdir, options.warn or (lambda text: None)
        )
        summary.warnings, summary.dangling, summary.duplicates = found.warnings, found.dangling, found.duplicates
        summary.failed.extend(found.problems)
        # clips are decoded frame by frame with PyAV on one machine (david-infer predict without --ray)
        why = "video files are predicted locally (david-infer predict without --ray); this run takes images only"
        summary.failed.extend((str(path), why) for path, _ in named if is_video_path(path))
        named = [j for j in named if not is_video_path(j[0])]
        if not named:
            return summary
    jobs.probe_output_folder(outdir)

    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1 if str(runtime.device).startswith("cuda") else 0
    runtime = _worker_runtime_options(runtime, options.cpus_per_worker)
    with _driver_runtime(runtime) as driver:
        kinds = tuple(jobs.parse_save(job.save, driver.tasks))
        write = job.write_options(driver)
    jobs.make_output_folder(outdir)
    lock = jobs.output_folder_lock(outdir)  # the driver owns the folder; its actors write in it
    try:
        jobs.claim_output_folder(lock, outdir, named)
        names: Optional[Dict[str, str]] = None  # absolute path -> output name
        sources: Optional[Dict[str, Source]] = None  # absolute path -> the input's stamp before Ray reads it
        shown: Dict[str, str] = {}  # absolute path -> the input as given (for messages)
        if not is_dataset:
            tally = Tally(warn=options.warn)
            todo = plan(named, outdir, kinds, write, job.overwrite, tally)
            summary.failed.extend(tally.failures)
            summary.redone.extend(tally.redone)
            left = {str(path) for path, _ in todo} | {path for path, _ in tally.failures}
            summary.skipped.extend(str(path) for path, _ in named if str(path) not in left)
            names = {os.path.abspath(path): name for path, name in todo}
            sources = {os.path.abspath(path): Source.before_read(path) for path, _ in todo}
            shown = {os.path.abspath(path): str(path) for path, _ in todo}
            if not names:
                return summary

        _connect(ray, options.address)
        workers, task_size = options.workers, options.task_size
        resources = ray.cluster_resources()
        # a Dataset's own read tasks take a CPU each (Ray's default num_cpus=1): a pool holding every
        # CPU would leave them none and the run would wait forever, so one CPU stays free for them
        cpus = resources.get("CPU", 1) - (1 if is_dataset else 0)
        if is_dataset and cpus < options.cpus_per_worker:
            raise InputError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPU(s): a Dataset input needs one for its read "
                f"tasks besides the {options.cpus_per_worker:g} of a worker; give the cluster more CPUs, "
                f"or lower cpus_per_worker"
            )
        if workers is None:
            free = resources.get("GPU", 0) // gpus if gpus else cpus // options.cpus_per_worker
            workers = max(1, int(free))
        if is_dataset:
            workers = max(1, min(workers, int(cpus // options.cpus_per_worker)))
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
            dataset = ray.data.read_binary_files(
                sorted(names), include_paths=True, num_cpus=0, override_num_blocks=blocks, concurrency=1
            )
        actor_job = _Job(runtime, os.fspath(outdir), kinds, write, job.overwrite, names, started, sources)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options this way but names no replacement for these
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            results = dataset.map_batches(
                DavidPredictor,
                fn_constructor_kwargs={"job": actor_job},
                batch_size=task_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=options.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=options.max_restarts,  # Ray's actor restarts after a worker process dies
                max_task_retries=options.max_task_retries,  # and resubmission of the task it was running
            )
        for key, value in _DATA_SETTINGS.items():
            setattr(results.context, key, value)  # the context of this run's dataset only (a copy)
        pending = set(names or ())
        with Progress(len(pending), options.progress) as bar, quiet_logger("ray.data"):
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for path, status, reason in (map(str, row) for row in zip(*(batch[c] for c in RESULT_COLUMNS))):
                    pending.discard(path)
                    label = shown.get(path, path)
                    if status == "failed":
                        summary.failed.append((label, reason))
                    else:
                        (summary.written if status == "written" else summary.skipped).append(label)
                    bar.update(label, status != "failed")
        for name in (names or {}).values():  # what a killed worker left; no writer of this run is left
            IMAGE_KINDS.set(outdir, name, kinds).remove_temporaries()
        lost = f"no result: the Ray task holding it failed after {options.max_task_retries} retries (see the Ray logs); run again to retry it"
        summary.failed.extend((shown.get(path, path), lost) for path in sorted(pending))
        return summary
    finally:
        lock.release()


def _is_dataset(inputs: Any) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:
        return False
    return isinstance(inputs, Dataset)


def _runtime_options(model: Any, keywords: Dict[str, Any]) -> RuntimeOptions:
    """The RuntimeOptions of `model` (a RuntimeOptions, or the model alone) with the keywords left
    over: RuntimeOptions' fields, else backend options; the model resolved."""
    runtime = model if isinstance(model, RuntimeOptions) else RuntimeOptions(model)
    own = _take(keywords, RuntimeOptions)
    if keywords:
        own["backend_options"] = {**own.get("backend_options", runtime.backend_options), **keywords}
    resolved = resolved_model(runtime.model)
    return runtime.replace(**own, model=resolved if isinstance(resolved, str) else os.fspath(resolved))


def _worker_runtime_options(options: RuntimeOptions, cpus: float) -> RuntimeOptions:
    """Each actor's runtime options: the model's threads follow the actor's CPUs unless given; a GPU
    device is the actor's own GPU (Ray sets CUDA_VISIBLE_DEVICES)."""
    from .runtime import with_threads

    options = with_threads(options, options.threads if options.threads is not None else max(1, int(cpus)))
    return options.replace(device="cuda") if str(options.device).startswith("cuda:") else options


def _driver_runtime(options: RuntimeOptions) -> Any:
    """The model opened once on the driver (on the CPU when its backend can, so a head node without
    a GPU can check a GPU job) to refuse a bad model or option before any work starts."""
    from .backends import get_backend, url_scheme
    from .runtime import DavidRuntime, choose_backend, resolve_model_path

    model = options.model
    backend = choose_backend(model if url_scheme(model) else resolve_model_path(model), options.backend)
    if "cpu" in get_backend(backend).devices:
        options = options.replace(device="cpu")
    return DavidRuntime.from_options(options)


def _connect(ray: Any, address: Optional[str]) -> None:
    """Connect to (or start) the cluster. What Ray prints while starting goes to stderr only when it
    fails; its C++ core's logs below `fatal` are silenced unless RAY_BACKEND_LOG_LEVEL is set (it
    logs every actor of a pool with restarts as an error)."""
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
                raise InputError(
                    f"cannot reach the Ray cluster at {address!r}: {exc}. Start one with "
                    f"`ray start --head`, or pass no address to start a local one"
                ) from None
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# Our progress bar replaces Ray Data's and its per-run log lines; a task that fails after its
# retries drops its block instead of aborting the run (its inputs are then listed as failed).
_DATA_SETTINGS = {
    "enable_progress_bars": False,
    "print_on_execution_start": False,
    "enable_auto_log_stats": False,
    "max_errored_blocks": -1,
}


__all__ = ["DatasetOptions", "DavidPredictor", "DistributedSummary", "predict_dataset", "RESULT_COLUMNS"]
