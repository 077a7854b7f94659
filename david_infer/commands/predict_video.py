"""`david-infer predict` on video files: the video options, and every clip of a run probed, checked
and planned before the model sees a frame, then written as one set each (docs/video.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from ..errors import DavidError, InputError
from ..jobs import describe, plan
from ..outputs.clips import DEPTH_RANGES, VIDEO_KINDS, ClipOptions, check_encoders, write_clip
from ..video.predict import STABILIZE_CHOICES

#: --stabilize's default: it meets the flicker and cost goals; offline costs several times more (docs/video.md)
STABILIZE_DEFAULT = "online"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        "before it; offline also with those after it (steadier, slower, a temporary file of about 15 bytes "
        "per pixel per frame beside the outputs); none: each frame as predicted",
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
    jobs: Sequence[Tuple[Path, str]],
    outdir: Path,
    args: argparse.Namespace,
    kinds: Sequence[str],
    extra: Dict[str, Any],
    tally: Any,
) -> None:
    """Every clip of `jobs` ((path, name)) written, skipped (complete) or failed, counted in `tally` (a
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
        except DavidError as exc:
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
