"""Run a model on image files, folders and globs, and write the results into OUTDIR.

Per input (name N: its path relative to the INPUT that named it, without its suffix), --save
chooses among:
  depth       N.depth.png (16-bit, min-max normalised per image, white = near) + N.depth.npy (float32)
  normal      N.normal.png (RGB, (n + 1) / 2 * 255, x -> red, y -> green, z -> blue) + N.normal.npy
  foreground  N.foreground.png (8-bit alpha) + N.cutout.png (RGBA: the photo with the mask as alpha)
  vis         N.vis.png (the photo and every map side by side, labelled; at most 2048 pixels a side)
  ply         N.ply (binary point cloud from depth, coloured, cut by the mask at 0.5)
A map alone writes both its files; MAP:FORMAT writes one: depth:png, depth:npy, normal:png,
normal:npy, foreground:png (the mask), foreground:cutout. Default: every map the model predicts
(both files each), plus vis. Video files get videos instead (the video options below).

Each input's files appear all or none, its completion record N.done.json last: a rerun skips the
complete inputs and redoes the others (--overwrite: every input). One run owns OUTDIR at a time.
Ctrl-C or SIGTERM keeps the complete inputs (exit status 130); inputs that fail are listed at the
end (exit status 1). Names, resuming, the lock and full disks in detail: docs/cli.md, docs/jobs.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from ..errors import STOP_REQUESTED, DavidError, InputError, Interrupted, stop_if_requested
from ..files import NoSpace
from ..jobs import (
    VIDEO_ONLY_KINDS,
    Job,
    JobOptions,
    Tally,
    check_save,
    check_save_media,
    claim_output_folder,
    describe,
    gather_inputs,
    load_input,
    make_output_folder,
    output_folder_lock,
    parse_save,
    plan,
    probe_output_folder,
)
from ..options import RuntimeArguments, positive_int_arg
from ..outputs.clips import DEPTH_RANGES, VIDEO_KINDS, ClipOptions, check_encoders, write_clip
from ..outputs.images import IMAGE_KINDS
from ..outputs.sets import Source, WriteOptions
from ..progress import Progress
from ..video import is_video_path
from ..video.predict import STABILIZE_CHOICES
from ._common import add_torch_arguments, open_runtime, with_torch_options

RUNTIME = RuntimeArguments(refine=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image or video files, folders of them, or globs ('shots/*.jpg')"
    )
    RUNTIME.add_to(p)
    add_torch_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created if needed)")
    p.add_argument(
        "--save",
        action="append",
        metavar="KINDS",
        help=f"what to write, comma-separated: {', '.join(k for k in IMAGE_KINDS if ':' not in k)}, or one "
        f"file of a map (MAP:FORMAT: depth:png, depth:npy, normal:png, normal:npy, foreground:png, "
        f"foreground:cutout); for videos also {', '.join(VIDEO_ONLY_KINDS)} (default: the model's maps, "
        f"both files each, + vis)",
    )
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also take images from subfolders of folder inputs (their outputs keep the subfolders)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input, replacing its files (default: inputs already complete in OUTDIR are skipped)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--fov",
        type=float,
        default=JobOptions.fov,
        help="ply: horizontal field of view in degrees, 0..180 (default 60)",
    )
    p.add_argument(
        "--near", type=float, default=JobOptions.near, help="ply: distance of the nearest point, > 0 (default 1)"
    )
    p.add_argument(
        "--far", type=float, default=JobOptions.far, help="ply: distance of the farthest point, > near (default 2)"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (extra 'ray'): ADDRESS is 'auto', HOST:PORT or ray://HOST:PORT; "
        "without it, the cluster `ray start` made on this machine, else a local one",
    )
    p.add_argument(
        "--workers",
        type=positive_int_arg,
        default=None,
        metavar="N",
        help="with --ray: number of model workers (default: one per CPU, or per GPU with --device cuda)",
    )
    add_video_arguments(p)


def warn(text: str) -> None:
    """Print a warning about the inputs (a dangling link, a second name of a file)."""
    print(f"warning: {text}", file=sys.stderr)


def run_pipeline(
    runtime: Any, jobs: Sequence[Job], outdir: Path, kinds: Sequence[str], opts: WriteOptions, tally: Tally, bar: bool
) -> None:
    """Predict (`runtime.imap`) and write each (input, name) job's set (`outputs.images.write_outputs`),
    counting each in `tally`. A full output folder stops the run at once: NoSpace, saying where,
    why, the space an input needs and how far the run got."""
    from ..outputs.images import write_outputs

    sources: Dict[Path, Source] = {}  # filled by the reader thread before each read, taken when written

    def load(job: Job) -> Any:
        sources[job[0]] = Source.before_read(job[0])
        return load_input(job[0])

    progress = Progress(len(jobs), bar)
    outcomes = runtime.imap(jobs, load=load)
    set_size = 0  # bytes of the last set written: what each input needs
    try:
        for (path, name), outcome in outcomes:
            stop_if_requested()
            error: Optional[BaseException] = outcome if isinstance(outcome, Exception) else None
            source = sources.pop(path, None)
            if error is None:
                try:
                    files = write_outputs(outcome, outdir, name, kinds, opts, source=source or path)
                    tally.written += 1
                    set_size = sum(f.stat().st_size for f in files)
                except NoSpace as exc:  # every input after it would fail the same way: stop here
                    tally.fail(path, exc)
                    message = tally.out_of_space(outdir, exc.reason, set_size or exc.written, bool(set_size))
                    raise NoSpace(message, exc.folder, exc.reason, exc.written) from None
                except Exception as exc:
                    error = exc
            if error is not None:
                tally.fail(path, error)
            progress.update(str(path), error is None)
    finally:
        outcomes.close()
        progress.close()


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block (in the main thread), SIGTERM stops the run like Ctrl-C (KeyboardInterrupt), so
    that the input being written is cleaned up; both also set `STOP_REQUESTED`, which the writers
    check (Ctrl-C only where the parent did not ignore it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        STOP_REQUESTED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signals = [signal.SIGTERM] + [signal.SIGINT] * (signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    STOP_REQUESTED.clear()
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        STOP_REQUESTED.clear()


def run(args: argparse.Namespace) -> int:
    # everything that can be checked without the model, before loading it
    job = JobOptions(tuple(check_save(args.save)), args.overwrite, args.recursive, args.fov, args.near, args.far)
    if args.ray is not None:
        return _run_on_ray(args, job)
    if args.workers is not None:
        raise InputError("--workers applies to --ray runs only")
    outdir = Path(args.output)
    jobs, found = gather_inputs(args.inputs, job.recursive, outdir, warn)
    tally = Tally(
        failures=found.problems, dangling=found.dangling, duplicates=found.duplicates, total=len(jobs), warn=warn
    )
    if jobs:  # kinds that fit no input are refused, those that fit one medium of the run named once
        clips = [j for j in jobs if is_video_path(j[0])]
        note = check_save_media(job.save, len(clips) < len(jobs), bool(clips))
        if note:
            warn(note)
        probe_output_folder(outdir)
        lock = output_folder_lock(outdir)
        try:
            if outdir.is_dir():
                lock.acquire()  # another run's folder: refused before the model loads
            with interrupt_on_signals(), open_runtime(with_torch_options(RUNTIME.options(args), args)) as runtime:
                kinds = parse_save(job.save, runtime.tasks)
                opts = job.write_options(runtime)
                make_output_folder(outdir)
                claim_output_folder(lock, outdir, jobs)
                if clips:  # each probed before any model call
                    run_videos(runtime, clips, outdir, args, kinds, dict(opts.extra), tally)
                kinds = [k for k in kinds if k in IMAGE_KINDS]
                images = [j for j in jobs if not is_video_path(j[0])]
                if images and not kinds:
                    tally.failures.extend((str(path), "--save names no kind written for images") for path, _ in images)
                todo = plan(images, outdir, kinds, opts, job.overwrite, tally) if kinds else []
                if todo:
                    run_pipeline(runtime, todo, outdir, kinds, opts, tally, not args.no_progress)
        except KeyboardInterrupt:
            raise Interrupted(tally.interrupted(outdir)) from None
        finally:
            lock.release()
    if not tally.written and not tally.skipped and tally.failures:  # said first, then the summary
        created = "" if outdir.is_dir() else f" ({outdir} was not created)"
        first = tally.failures[0]
        why = f"{first[0]}: {first[1]}" if len(tally.failures) == 1 else f"all {len(tally.failures)} inputs failed"
        print(f"nothing written{created}: {why}" + ("" if len(tally.failures) == 1 else " (listed below)"))
    return tally.report(outdir)


def _run_on_ray(args: argparse.Namespace, job: JobOptions) -> int:
    """The same job on a Ray cluster (david_infer.distributed), with the same summary."""
    from ..distributed import DatasetOptions, predict_dataset

    address = args.ray or None
    if address is not None and address not in ("auto", "local") and ":" not in address:
        raise InputError(
            f"--ray: expected no address, 'auto', 'local', HOST:PORT or ray://HOST:PORT, got "
            f"{address!r} (put --ray after the inputs, or write --ray=ADDRESS)"
        )
    options = DatasetOptions(job=job, workers=args.workers, cpus_per_worker=args.threads or 1, address=address)
    options = dataclasses.replace(options, progress=not args.no_progress, warn=warn)
    with interrupt_on_signals():
        summary = predict_dataset(args.inputs, with_torch_options(RUNTIME.options(args), args), args.output, options)
    tally = Tally(len(summary.written), len(summary.skipped), summary.failed, summary.dangling, summary.duplicates)
    tally.redone = summary.redone
    return tally.report(summary.output)


#: --stabilize's default: online meets the flicker goals with depth, normals and mask more accurate
#: than the frames' own, holds no frames and costs the least; offline is steadier and more accurate
#: still, but holds its lookahead (9 frames' maps and images: about 190 MB at 1280x720, 1.7 GB at
#: 4K) and costs about 1.3x as much per frame (docs/video.md, benchmarks/video_stability.py)
STABILIZE_DEFAULT = "online"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The video options of `predict`."""
    g = p.add_argument_group("video inputs")
    g.add_argument(
        "--frames",
        metavar="START:END:STEP",
        help="only these frames of each clip (indices of the source's frames, END excluded; e.g. 100:200, ::2)",
    )
    g.add_argument("--max-side", type=int, metavar="N", help="scale frames down so their longer side is at most N")
    g.add_argument(
        "--depth-range",
        choices=DEPTH_RANGES,
        default="clip",
        help="clip (default): one range over the whole clip, two passes; running: one pass, the "
        "range of the frames so far",
    )
    g.add_argument(
        "--stabilize",
        choices=STABILIZE_CHOICES,
        default=STABILIZE_DEFAULT,
        help=f"steady the maps over time (default {STABILIZE_DEFAULT}): online blends each frame with the frames "
        "before it; offline also with up to 8 after it (steadier, more accurate, about 1.5x the cost, 9 frames "
        "held in memory); none: each frame as predicted",
    )
    g.add_argument(
        "--video-preset",
        choices=X264_PRESETS,
        default="ultrafast",
        help="libx264 speed/size trade-off of the output videos (default ultrafast: the "
        "cheapest to encode, larger files; veryfast ~2x slower, ~half the size)",
    )
    g.add_argument(
        "--video-crf",
        type=int,
        default=18,
        metavar="Q",
        help="libx264 quality, 0 (lossless) .. 51 (worst), default 18 (visually lossless)",
    )


def run_videos(
    runtime: Any,
    jobs: Sequence[Job],
    outdir: Path,
    args: argparse.Namespace,
    kinds: Sequence[str],
    extra: Dict[str, Any],
    tally: Any,
) -> None:
    """Every clip of `jobs` ((path, name)) probed, checked and planned before the model sees a frame,
    then written as one set (docs/video.md), skipped (complete) or failed, counted in `tally` (a
    jobs.Tally); `extra` (the model and runtime settings) goes into each completion record."""
    from ..video import FrameSelection, probe

    frames = FrameSelection.parse(args.frames)  # bad options: the run fails
    if args.max_side is not None and args.max_side < 2:
        raise InputError(f"--max-side must be >= 2, got {args.max_side}")
    if not 0 <= args.video_crf <= 51:
        raise InputError(f"--video-crf must be between 0 and 51, got {args.video_crf}")
    chosen = [k for k in kinds if k in VIDEO_KINDS]
    try:  # kinds or encoders that do not fit the clips: each clip fails, images still run
        if not chosen:
            raise InputError(
                f"--save {','.join(kinds)} writes nothing for video inputs; choose from {', '.join(VIDEO_KINDS)}"
            )
        VIDEO_KINDS.check(chosen, runtime.tasks)
        check_encoders(chosen)
    except DavidError as exc:
        tally.failures.extend((str(path), str(exc)) for path, _ in jobs)
        return
    opts = ClipOptions(
        tuple(chosen),
        frames,
        args.max_side,
        args.depth_range,
        args.video_preset,
        args.video_crf,
        args.batch_size,
        args.overwrite,
        runtime.post_options.invert_depth,
        args.stabilize,
    )
    record_options = opts.write_options(extra)
    probed: Dict[Path, Any] = {}
    for path, _ in jobs:
        try:
            probed[path] = check_frames(probe(path), frames)
        except DavidError as exc:
            tally.fail(path, exc)
    todo = plan(
        [j for j in jobs if j[0] in probed], outdir, chosen, record_options, args.overwrite, tally, table=VIDEO_KINDS
    )
    for path, name in todo:
        start = time.perf_counter()
        try:
            count, stopped = write_clip(runtime, probed[path], outdir, name, opts, record_options)
        except Exception as exc:  # as for images: one clip that fails (cleaned up) must not stop the others
            tally.fail(path, exc)
            continue
        if not args.no_progress:
            took = time.perf_counter() - start
            print(f"{path}: {count} frames in {took:.1f} s ({count / max(took, 1e-9):.1f} frames/s)", file=sys.stderr)
        if stopped is None:
            tally.written += 1
        else:
            tally.failures.append(
                (str(path), f"{describe(stopped, str(path))}; the {count} frames decoded were written")
            )


def check_frames(info: Any, frames: Any) -> Any:
    """`info` (a probed clip) when --frames picks one of its frames (as far as the container states its
    frame count); InputError naming the count otherwise."""
    if info.frames and not frames.count(info.frames):
        stop = "" if frames.stop is None else frames.stop
        raise InputError(
            f"{info.path}: --frames {frames.start}:{stop}:{frames.step} selects no frame: the clip has "
            f"{info.frames} frames (0..{info.frames - 1})"
        )
    return info
