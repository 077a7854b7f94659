"""Run a model on image files, folders and globs, and write the results into OUTDIR.

Per input (name N, see below), with --save choosing among:
  depth       N.depth.png (16-bit, min-max normalised per image, white = near) + N.depth.npy (float32)
  normal      N.normal.png (RGB, (n + 1) / 2 * 255, x -> red, y -> green, z -> blue) + N.normal.npy
  foreground  N.foreground.png (8-bit alpha) + N.cutout.png (RGBA: the photo with the mask as alpha)
  vis         N.vis.png (the photo and every map side by side, labelled; at most 2048 pixels a side)
  ply         N.ply (binary point cloud from depth, coloured, cut by the mask when there is one)
Default: every map the model predicts, plus vis. Each input also gets N.done.json, its completion
record, written last. Video files (VIDEO_SUFFIXES) get videos instead: see commands/predict_video.py.

Output names depend on the input alone: N is the input's path relative to the INPUT argument that
named it (a folder: that folder; a file: its own folder; a glob: the folder before the first
wildcard), without the file suffix, each part made file-name safe (characters other than letters,
digits, - _ . become _, leading dots are dropped). So `shots/` writes shots/x.jpg as OUTDIR/x.* and,
with --recursive, shots/day2/y.jpg as OUTDIR/day2/y.*; a file given alone or among others gets the
same name, however a job is split. Two inputs of one run with the same name (shots/x.jpg and
shots/x.png, or a/x.jpg and b/x.jpg given as two folders) are not renamed: the later one fails,
naming the other. Two names for one file (a link, a repeated argument) are reported as duplicates
and written once.

Resuming: an input whose completion record is present and matches its files, --save and options
is skipped (reported as skipped; exit 0). An input with files but no record (an interrupted run)
is redone, replacing them, and the run first deletes the stale temporaries of its inputs'
files (`.FILE.*.david-partial`). An input whose record does not match (other options, a file
changed since) fails unless --overwrite, which redoes every input. Each input's files are written
under temporary names and renamed into place, record last (see david_infer.writer): all or none.
SIGTERM is handled like Ctrl-C: the input being written is removed, the exit status is 130.

Options and the output folder (writable: a probe file is created and removed) are checked before
the model is loaded; the folder is created only once the model is accepted. Decoding runs ahead in
a background thread and postprocessing in worker threads (`DavidRuntime.imap`); this command
writes the files as results come, in input order. Inputs that fail are listed at the end and the
exit status is 1; the others are written.
"""
from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import DavidError, InputError
from ..progress import Progress
from ..video import VIDEO_SUFFIXES, is_video_path
from ..writer import SAVE_KINDS, SAVE_NEEDS, SetState, WriteOptions, check_ply_options
from . import predict_video
from ._common import add_runtime_arguments, open_runtime, resolve_model, split_list
from ._torch import add_torch_arguments, torch_options

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".npy"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders of them, or globs ('shots/*.jpg')")
    add_runtime_arguments(p)
    add_torch_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created if needed)")
    p.add_argument("--save", action="append", metavar="KINDS",
                   help=f"what to write, comma-separated: {', '.join(SAVE_KINDS)}; for videos also "
                        f"{', '.join(predict_video.VIDEO_ONLY_KINDS)} (default: the model's maps + vis)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default 1)")
    p.add_argument("--recursive", action="store_true",
                   help="also take images from subfolders of folder inputs (their outputs keep the subfolders)")
    p.add_argument("--overwrite", action="store_true", help="redo every input, replacing its files (default: "
                   "inputs already complete in OUTDIR are skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fov", type=float, default=60.0, help="ply: horizontal field of view in degrees, 0..180 "
                   "(default 60)")
    p.add_argument("--near", type=float, default=1.0, help="ply: distance of the nearest point, > 0 (default 1)")
    p.add_argument("--far", type=float, default=2.0, help="ply: distance of the farthest point, > near (default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for the model (ONNX Runtime's intra-op threads) and pre/postprocessing; with "
                        "--ray, per worker (default: the backend's own; 1 per worker with --ray)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (extra 'ray'): ADDRESS is 'auto', HOST:PORT or ray://HOST:PORT; "
                        "without it, the cluster `ray start` made on this machine, else a local one")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: number of model workers (default: one per CPU, or per GPU with --device cuda)")
    predict_video.add_arguments(p)


# ---------------------------------------------------------------------------------- inputs


@dataclass
class InputSet:
    """What the INPUT arguments name: (file, root) pairs in order, one per distinct file; the
    arguments that named nothing (with the reason); and warnings about what was left out."""

    inputs: List[Tuple[Path, Path]] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dangling: int = 0
    duplicates: int = 0


def collect_inputs(specs: Sequence[str], recursive: bool = False, exclude: Optional[Path] = None) -> InputSet:
    """Expand files, folders and globs into image files, each with the root its output name is
    taken relative to (each folder's images sorted by name). Dangling links found in folders and
    globs, and second names for a file already taken, are warnings (counted), not inputs."""
    found = InputSet()
    seen: Dict[str, Path] = {}

    def add(path: Path, root: Path) -> None:
        real = os.path.realpath(path)
        if real in seen:
            found.duplicates += 1
            same = "given more than once" if str(path) == str(seen[real]) else f"the same file as {seen[real]}"
            found.warnings.append(f"{path}: {same}; written once")
            return
        seen[real] = path
        found.inputs.append((path, root))

    def dangling(path: Path) -> None:
        found.dangling += 1
        found.warnings.append(f"{path}: a symbolic link to a missing file ({os.readlink(path)}); skipped")

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images, broken = _folder_images(path, recursive, exclude)
            for link in broken:
                dangling(link)
            if not images and not broken:
                found.problems.append((spec, f"folder holds no images or videos ({', '.join(sorted(INPUT_SUFFIXES))})"))
            for image in images:
                add(image, path)
        elif path.exists():
            add(path, path.parent)
        elif path.is_symlink():
            found.problems.append((spec, f"a symbolic link to a missing file ({os.readlink(path)})"))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            files = [m for m in matches if m.is_file()]
            for link in (m for m in matches if m.is_symlink() and not m.exists()):
                dangling(link)
            if not matches:
                found.problems.append((spec, "the pattern matched no file"))
            root = _glob_root(spec)
            for match in files:
                add(match, root)
        else:
            found.problems.append((spec, "no such file or folder"))
    return found


def _glob_root(spec: str) -> Path:
    """The folder part of a glob before its first wildcard ('shots/**/*.jpg' -> 'shots')."""
    parts = Path(spec).parts
    plain = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def _folder_images(folder: Path, recursive: bool, exclude: Optional[Path]) -> Tuple[List[Path], List[Path]]:
    """(image files, dangling links with an image suffix) of a folder, each sorted by path."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    skip = os.path.realpath(exclude) + os.sep if exclude is not None else None
    images, broken = [], []
    for entry in entries:
        if entry.name.startswith(".") or entry.suffix.lower() not in INPUT_SUFFIXES:
            continue
        if skip and os.path.realpath(entry).startswith(skip):
            continue  # our own outputs when OUTDIR lies inside an input folder
        if entry.is_file():
            images.append(entry)
        elif entry.is_symlink() and not entry.exists():
            broken.append(entry)
    return sorted(images, key=str), sorted(broken, key=str)


def name_inputs(inputs: Sequence[Tuple[Path, Path]]) -> Tuple[List[Tuple[Path, str]], List[Tuple[str, str]]]:
    """(path, output name) per input, and a failure for each input whose name an earlier input of
    the run already has (compared case-insensitively, as some file systems do)."""
    from ..writer import output_name

    jobs: List[Tuple[Path, str]] = []
    clashes: List[Tuple[str, str]] = []
    taken: Dict[str, Path] = {}
    for path, root in inputs:
        name = output_name(path, root)
        other = taken.setdefault(name.lower(), path)
        if other is not path:
            clashes.append((str(path), f"its output name {name!r} is also that of {other}; rename one, or run "
                                       f"them with separate output folders"))
        else:
            jobs.append((path, name))
    return jobs, clashes


def load_input(path: Path, data: Optional[bytes] = None) -> Any:
    """What the runtime gets for a file: the path itself (or `data`, its contents when already
    read), or the array inside a .npy."""
    if path.suffix.lower() != ".npy":
        return path if data is None else data
    import io

    import numpy as np

    try:
        return np.load(path if data is None else io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy image array ({exc})") from None


# ---------------------------------------------------------------------------------- outputs


def check_save(values: Optional[List[str]]) -> List[str]:
    """The --save kinds as given (empty = the default), refusing unknown ones; no model needed."""
    kinds = list(dict.fromkeys(split_list(values)))
    known = (*SAVE_KINDS, *predict_video.VIDEO_ONLY_KINDS)
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise InputError(f"--save: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return kinds


def parse_save(values: Optional[List[str]], tasks: Sequence[str]) -> List[str]:
    """The --save kinds, checked against the model's tasks (default: its maps + vis)."""
    kinds = check_save(values) or [t for t in ("depth", "normal", "foreground") if t in tasks] + ["vis"]
    for kind in kinds:
        if kind in SAVE_NEEDS and SAVE_NEEDS[kind] not in tasks:
            raise InputError(f"--save {kind} needs a model that predicts {SAVE_NEEDS[kind]}; this one predicts "
                             f"{', '.join(tasks)} only")
    return kinds


def probe_output_folder(outdir: Path) -> None:
    """InputError unless OUTDIR is (or can be made as) a folder we can write in: a temporary file
    is created and removed in OUTDIR, or in its nearest existing parent when OUTDIR is missing.
    Nothing is created for OUTDIR itself."""
    from ..manifest import make_temp_path
    from ..writer import TEMP_SUFFIX

    existing = Path(os.path.abspath(outdir))
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot use {outdir} as the output folder: {existing} exists and is not a folder")
    try:
        make_temp_path(existing / "write-probe", TEMP_SUFFIX).unlink()
    except OSError as exc:
        where = "" if existing == Path(os.path.abspath(outdir)) else f" (its nearest existing parent {existing})"
        raise InputError(f"cannot write in the output folder {outdir}{where}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------- pipeline


def _describe(exc: BaseException, name: str) -> str:
    text = str(exc) if isinstance(exc, DavidError) else f"{type(exc).__name__}: {exc}"
    return text[len(name) + 2:] if text.startswith(name + ": ") else text  # the summary names the input


def run_pipeline(
    runtime: Any,
    jobs: Sequence[Tuple[Path, str]],
    outdir: Path,
    kinds: Sequence[str],
    opts: WriteOptions,
    batch_size: int = 1,
    progress: bool = True,
) -> Tuple[int, List[Tuple[str, str]]]:
    """Predict and write every (input, name) job; returns (how many succeeded, [(input, reason)]).

    `runtime.imap` decodes ahead, batches and postprocesses; this loop only writes each input's
    set with `writer.write_outputs` (all or none, completion record last).
    """
    from ..writer import write_outputs

    failures: List[Tuple[str, str]] = []
    succeeded = 0
    bar = Progress(len(jobs), progress)
    outcomes = runtime.imap(jobs, batch_size=batch_size, load=lambda job: load_input(job[0]))
    try:
        for (path, name), outcome in outcomes:
            error: Optional[BaseException] = outcome if isinstance(outcome, Exception) else None
            if error is None:
                try:
                    write_outputs(outcome, outdir, name, kinds, opts, source=path)
                    succeeded += 1
                except Exception as exc:
                    error = exc
            if error is not None:
                failures.append((str(path), _describe(error, str(path))))
            bar.update(str(path), error is None)
    finally:
        outcomes.close()
        bar.close()
    return succeeded, failures


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (like Ctrl-C) so that the input being
    written is cleaned up; the previous handler is restored after. Only in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------- command


@dataclass
class Tally:
    """The run's counts and failures, for the summary."""

    written: int = 0
    skipped: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    dangling: int = 0
    duplicates: int = 0


def run(args: argparse.Namespace) -> int:
    # everything that can be checked without the model, before loading it
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    check_ply_options(args.fov, args.near, args.far)
    check_save(args.save)
    if args.ray is not None:
        return _run_on_ray(args)
    if args.workers is not None:
        raise InputError("--workers applies to --ray runs only")
    outdir = Path(args.output)
    found = collect_inputs(args.inputs, args.recursive, exclude=outdir)
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not found.inputs and not found.problems:
        raise InputError("no inputs given" if not found.warnings else "no inputs left (see the warnings)")
    jobs, clashes = name_inputs(found.inputs)
    tally = Tally(failures=found.problems + clashes, dangling=found.dangling, duplicates=found.duplicates)
    if jobs:
        probe_output_folder(outdir)
        threads = thread_options(resolve_model(args.model), args.backend, args.threads) if args.threads else {}
        threads.update(torch_options(args, [args.backend]))
        with sigterm_as_interrupt(), open_runtime(args, batch_size=args.batch_size, **threads) as runtime:
            kinds = parse_save(args.save, runtime.tasks)
            opts = WriteOptions(args.fov, (args.near, args.far), runtime.post_options.invert_depth,
                                extra=_model_record(runtime))
            try:
                outdir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the output folder {outdir}: {exc}") from None
            clips = [job for job in jobs if is_video_path(job[0])]
            if clips:  # video files: commands/predict_video.py (each probed before any model call)
                written, skipped, failed = predict_video.run_videos(runtime, clips, outdir, args, kinds,
                                                                    dict(opts.extra))
                tally.written += written
                tally.skipped += skipped
                tally.failures.extend(failed)
            kinds = [k for k in kinds if k in SAVE_KINDS]
            images = [job for job in jobs if not is_video_path(job[0])]
            todo = _plan(images, outdir, kinds, opts, args.overwrite, tally) if kinds else []
            if images and not kinds:
                tally.failures.extend((str(path), "--save names no kind written for images") for path, _ in images)
            if todo:
                done, failed = run_pipeline(runtime, todo, outdir, kinds, opts, args.batch_size,
                                            not args.no_progress)
                tally.written += done
                tally.failures.extend(failed)
    return _summary(tally, outdir)


def thread_options(model: Any, backend: str, threads: Optional[int]) -> Dict[str, int]:
    """Runtime keyword arguments for `threads` threads: pre/postprocessing, and the model's own
    count where the backend has one (ONNX Runtime's intra_op_threads). None: the defaults."""
    if threads is None:
        return {}
    import dataclasses

    from ..backends import get_backend, url_scheme
    from ..runtime import choose_backend, resolve_model_path

    target = model if url_scheme(model) else resolve_model_path(model)  # a server URL, or a file
    fields = {f.name for f in dataclasses.fields(get_backend(choose_backend(target, backend)).Options)}
    return {"threads": threads, **({"intra_op_threads": threads} if "intra_op_threads" in fields else {})}


def _model_record(runtime: Any) -> Dict[str, Any]:
    """What of the model and runtime shapes the files, for the completion record."""
    model = runtime.path.name if isinstance(runtime.path, Path) else str(runtime.path)  # a file, or a server URL
    return {"model": model, "model_sha256": runtime.contract.sha256,
            "resolution": runtime.resolution, "pipeline": runtime.pipeline}


def _plan(jobs: Sequence[Tuple[Path, str]], outdir: Path, kinds: Sequence[str], opts: WriteOptions,
          overwrite: bool, tally: Tally) -> List[Tuple[Path, str]]:
    """The jobs to run: complete sets are skipped (unless overwrite), sets whose record does not
    match fail (unless overwrite); stale temporaries of the rest are removed."""
    from ..writer import remove_temporaries, status

    todo = []
    for path, name in jobs:
        try:
            # an input on other storage (a Ray Dataset read from S3) has no local file to compare
            state = status(outdir, name, kinds, opts, source=path if os.path.isfile(path) else None)
            if not overwrite and state.state is SetState.DONE:
                tally.skipped += 1
                continue
            if not overwrite and state.state is SetState.CHANGED:
                raise InputError(f"its outputs in {outdir} do not match its completion record: {state.reason}; "
                                 f"pass --overwrite to redo it (or choose another output folder)")
            remove_temporaries(outdir, name, kinds)
            todo.append((path, name))
        except DavidError as exc:
            tally.failures.append((str(path), str(exc)))
    return todo


def _run_on_ray(args: argparse.Namespace) -> int:
    """The same job on a Ray cluster (david_infer.distributed), with the same summary."""
    from ..distributed import predict_dataset

    address = args.ray or None
    if address is not None and address not in ("auto", "local") and ":" not in address:
        raise InputError(f"--ray: expected no address, 'auto', 'local', HOST:PORT or ray://HOST:PORT, got "
                         f"{address!r} (put --ray after the inputs, or write --ray=ADDRESS)")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    with sigterm_as_interrupt():
        summary = predict_dataset(
            args.inputs, resolve_model(args.model), args.output, save=check_save(args.save) or None,
            overwrite=args.overwrite, recursive=args.recursive, batch_size=args.batch_size, workers=args.workers,
            cpus_per_worker=args.threads or 1, address=address, progress=not args.no_progress,
            warn=lambda text: print(f"warning: {text}", file=sys.stderr), fov=args.fov, near=args.near, far=args.far,
            backend=args.backend, device=args.device, resolution=args.resolution, channel_order=args.channel_order,
        )
    tally = Tally(len(summary.written), len(summary.skipped), summary.failed, summary.dangling, summary.duplicates)
    return _summary(tally, summary.output)


def _summary(tally: Tally, outdir: Path) -> int:
    total = tally.written + tally.skipped + len(tally.failures)
    line = f"{tally.written} of {total} input(s) written to {outdir}"
    if tally.skipped:
        line += f", {tally.skipped} skipped (already complete)"
    notes = [f"{n} {what}" for n, what in ((tally.dangling, "dangling link(s) skipped"),
                                          (tally.duplicates, "duplicate name(s) of one file")) if n]
    if notes:
        line += f"; warnings: {', '.join(notes)}"
    print(line)
    if not tally.failures:
        return 0
    print(f"{len(tally.failures)} input(s) failed:", file=sys.stderr)
    for name, reason in tally.failures:
        print(f"  {name}: {reason}", file=sys.stderr)
    return 1
