"""`david-infer predict` on video files: the video options, and every clip of a run checked, then written.

Each clip NAME (`david_infer.outputs.sets.output_name`) gets one file per --save kind of
`david_infer.outputs.clips.VIDEO_KINDS` (its docstring lists them; `ply` applies to images only,
`depth-npz` and `cutout` to clips only). Default: the model's maps + vis.

Every video keeps the source's frame timestamps (variable frame rates too), rate, duration, display
rotation, colour range/matrix tags and pixel aspect; H.264 (libx264, 4:2:0; 4:4:4 for odd sizes).
`--frames START:END:STEP` selects frames (timestamps stay the source's), `--max-side N` scales
frames down first. `--depth-range clip` (default) is two-pass, `running` one pass (see
`david_infer.outputs.clips`). `--stabilize` steadies the maps over time
(`david_infer.video.stabilize`; default online, see STABILIZE_DEFAULT).

The clip's files are one set (david_infer.outputs.sets): written to hidden temporaries, renamed into
place at the end with the completion record last, so Ctrl-C or a kill leaves the finished files
of the previous run or none, and a rerun skips a clip whose set is complete. A clip that stops
decoding early (truncated, corrupt) gets the frames decoded so far, in closed, playable files but
without a completion record; the error names the frame where decoding stopped and the exit status
is 1. Clips are probed (video stream, decoder) and the encoders checked before any model call.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import DavidError, InputError
from ..jobs import describe, plan
from ..outputs.clips import DEPTH_RANGES, VIDEO_KINDS, ClipOptions, check_encoders, write_clip
from ..video.predict import STABILIZE_CHOICES

#: --stabilize's default: online meets the flicker goals with depth, normals and mask more accurate
#: than the frames' own, holds no frames and costs the least; offline is steadier and more accurate
#: still, but holds its lookahead (9 frames' maps and images: about 190 MB at 1280x720, 1.7 GB at
#: 4K) and costs about 1.5x as much per frame (docs/video.md, benchmarks/video_stability.py)
STABILIZE_DEFAULT = "online"

#: the --save kinds that only clips have
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


def video_kinds(kinds: Sequence[str], tasks: Sequence[str]) -> List[str]:
    """The --save kinds that apply to clips, checked against the model's tasks."""
    chosen = [k for k in kinds if k in VIDEO_KINDS]
    if not chosen:
        raise InputError(
            f"--save {','.join(kinds)} writes nothing for video inputs; choose from {', '.join(VIDEO_KINDS)}"
        )
    VIDEO_KINDS.check(chosen, tasks)
    return chosen


def clip_options(args: argparse.Namespace, kinds: Sequence[str], depth_inverse: bool) -> ClipOptions:
    """The video options of `predict`, checked."""
    from ..video import FrameSelection

    if args.max_side is not None and args.max_side < 2:
        raise InputError(f"--max-side must be >= 2, got {args.max_side}")
    if not 0 <= args.video_crf <= 51:
        raise InputError(f"--video-crf must be between 0 and 51, got {args.video_crf}")
    return ClipOptions(
        tuple(kinds),
        FrameSelection.parse(args.frames),
        args.max_side,
        args.depth_range,
        args.video_preset,
        args.video_crf,
        args.batch_size,
        args.overwrite,
        depth_inverse,
        args.stabilize,
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
    """Every clip of `jobs` ((path, name)), each counted in `tally` (a jobs.Tally) as written,
    skipped (already complete) or failed. Every clip is probed, its --frames checked against its
    frame count and its set planned (david_infer.jobs.plan) before the model sees a frame. `extra`
    (the model and runtime settings) goes into each completion record."""
    from ..video import probe

    opts = clip_options(args, kinds, runtime.post_options.invert_depth)  # bad options: the run fails
    try:  # kinds or encoders that do not fit the clips: each clip fails, images still run
        chosen = video_kinds(kinds, runtime.tasks)
        check_encoders(chosen)
    except DavidError as exc:
        tally.failures.extend((str(path), str(exc)) for path, _ in jobs)
        return
    opts = dataclasses.replace(opts, kinds=tuple(chosen))
    record_options = opts.write_options(extra)
    probed: Dict[Path, Any] = {}
    for path, _ in jobs:
        try:
            probed[path] = check_frames(probe(path), opts.frames)
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
        if not getattr(args, "no_progress", False):
            took = time.perf_counter() - start
            print(f"{path}: {count} frames in {took:.1f} s ({count / max(took, 1e-9):.1f} frames/s)", file=sys.stderr)
        if stopped is not None:
            tally.failures.append(
                (str(path), f"{describe(stopped, str(path))}; the {count} frames decoded were written")
            )
        else:
            tally.written += 1


def check_frames(info: Any, frames: Any) -> Any:
    """`info` (a probed clip) when the --frames selection picks at least one of its frames, as far
    as the container states its frame count; InputError naming the count otherwise."""
    if info.frames and not frames.count(info.frames):
        stop = "" if frames.stop is None else frames.stop
        raise InputError(
            f"{info.path}: --frames {frames.start}:{stop}:{frames.step} selects no frame: the clip has "
            f"{info.frames} frames (0..{info.frames - 1})"
        )
    return info
