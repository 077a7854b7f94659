"""`david-infer predict` on video files: per clip NAME (see david_infer.writer.output_name), per --save kind

  depth       NAME.depth.mp4       grey depth, white = near, one range for the whole clip
  normal      NAME.normal.mp4      normals as RGB, (n + 1) / 2 * 255
  foreground  NAME.foreground.mp4  the soft matte, grey
  vis         NAME.vis.mp4         half-size tiles, two per row: the frame, depth (viridis, one range
                                   for the clip), normals, and the foreground as a tint over the frame;
                                   the source's audio stream copied
  depth-npz   NAME.depth.npz       lossless: `depth` (N, H, W) float32 raw model depth, `time` (s),
                                   `pts`, `frame_index` (N,)
  cutout      NAME.cutout.mov      lossless RGBA (PNG frames in QuickTime): the frame with the matte
                                   as alpha
(`ply` applies to images only.) Default: the model's maps + vis.

Every video keeps the source's frame timestamps (variable frame rates too), rate, duration, display
rotation, colour range/matrix tags and pixel aspect; H.264 (libx264, 4:2:0; 4:4:4 for odd sizes).
`--frames START:END:STEP` selects frames (timestamps stay the source's), `--max-side N` scales
frames down first.

Depth range: `--depth-range clip` (default) is two-pass: the first pass runs the model once per
frame and spools what the depth and vis videos need to a temporary file beside them (float16 depth
plus the vis picture: about 5 bytes per output pixel per frame), the second encodes them with the
clip's range. `--depth-range running` is one pass without the spool: each frame uses the range of
the frames so far, which only widens (early frames may use less of the scale). Raw data
(depth-npz) is never normalised.

The clip's files are one set (david_infer.writer): written to hidden temporaries, renamed into
place at the end with the completion record last, so Ctrl-C or a kill leaves the finished files
of the previous run or none, and a rerun skips a clip whose set is complete. A clip that stops
decoding early (truncated, corrupt) gets the frames decoded so far, in closed, playable files but
without a completion record; the error names the frame where decoding stopped and the exit status
is 1. Clips are probed (video stream, decoder) and the encoders checked before any model call.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import queue
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DavidError, InputError

#: kind -> the files it writes after the clip's name
VIDEO_SAVE_FILES: Dict[str, Tuple[str, ...]] = {
    "depth": (".depth.mp4",),
    "normal": (".normal.mp4",),
    "foreground": (".foreground.mp4",),
    "vis": (".vis.mp4",),
    "depth-npz": (".depth.npz",),
    "cutout": (".cutout.mov",),
}
VIDEO_ONLY_KINDS = ("depth-npz", "cutout")
VIDEO_NEEDS = {"depth": "depth", "normal": "normal", "foreground": "foreground", "depth-npz": "depth",
               "cutout": "foreground"}
DEPTH_RANGES = ("clip", "running")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The video options of `predict`."""
    g = p.add_argument_group("video inputs")
    g.add_argument("--frames", metavar="START:END:STEP", help="only these frames of each clip (indices of the "
                   "source's frames, END excluded; e.g. 100:200, ::2)")
    g.add_argument("--max-side", type=int, metavar="N", help="scale frames down so their longer side is at most N")
    g.add_argument("--depth-range", choices=DEPTH_RANGES, default="clip",
                   help="clip (default): one range over the whole clip, two passes; running: one pass, the "
                        "range of the frames so far")
    g.add_argument("--video-preset", choices=X264_PRESETS, default="ultrafast",
                   help="libx264 speed/size trade-off of the output videos (default ultrafast: the "
                        "cheapest to encode, larger files; veryfast ~2x slower, ~half the size)")
    g.add_argument("--video-crf", type=int, default=18, metavar="Q",
                   help="libx264 quality, 0 (lossless) .. 51 (worst), default 18 (visually lossless)")


def video_kinds(kinds: Sequence[str], tasks: Sequence[str]) -> List[str]:
    """The --save kinds that apply to clips, checked against the model's tasks."""
    chosen = [k for k in kinds if k in VIDEO_SAVE_FILES]
    if not chosen:
        raise InputError(f"--save {','.join(kinds)} writes nothing for video inputs; choose from "
                         f"{', '.join(VIDEO_SAVE_FILES)}")
    for kind in chosen:
        if VIDEO_NEEDS.get(kind, "depth") not in tasks and kind != "vis":
            raise InputError(f"--save {kind} needs a model that predicts {VIDEO_NEEDS[kind]}; this one predicts "
                             f"{', '.join(tasks)} only")
    return chosen


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    kinds: Tuple[str, ...]
    frames: Any  # video.FrameSelection
    max_side: Optional[int] = None
    depth_range: str = "clip"
    preset: str = "ultrafast"
    crf: int = 18
    batch_size: int = 1
    overwrite: bool = False
    depth_inverse: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace, kinds: Sequence[str], depth_inverse: bool) -> "ClipOptions":
        from ..video import FrameSelection

        if args.max_side is not None and args.max_side < 2:
            raise InputError(f"--max-side must be >= 2, got {args.max_side}")
        if not 0 <= args.video_crf <= 51:
            raise InputError(f"--video-crf must be between 0 and 51, got {args.video_crf}")
        return cls(tuple(kinds), FrameSelection.parse(args.frames), args.max_side, args.depth_range,
                   args.video_preset, args.video_crf, args.batch_size, args.overwrite, depth_inverse)

    def write_options(self, extra: Dict[str, Any]) -> Any:
        """What the completion record holds (a rerun with other options redoes the clip)."""
        from ..writer import WriteOptions

        f = self.frames
        return WriteOptions(depth_inverse=self.depth_inverse, extra={
            **extra, "frames": [f.start, f.stop, f.step], "max_side": self.max_side,
            "depth_range": self.depth_range, "preset": self.preset, "crf": self.crf})

    def encoding(self, input_format: str = "rgb24") -> Any:
        from ..video import Encoding

        return Encoding("libx264", "yuv420p", (("preset", self.preset), ("crf", str(self.crf))), input_format)


def check_encoders(kinds: Sequence[str]) -> None:
    """InputError when this PyAV's FFmpeg lacks an encoder the kinds need (before any model call)."""
    from .._optional import require

    av = require("av", "video files")
    needed = {"libx264"} if set(kinds) - {"depth-npz", "cutout"} else set()
    if "cutout" in kinds:
        needed.add("png")
    for name in sorted(needed):
        try:
            av.codec.Codec(name, "w")
        except Exception:
            raise InputError(f"this PyAV's FFmpeg has no {name} encoder, needed for the video outputs; "
                             f"install the PyAV wheel from PyPI (pip install \"david-infer[video]\")") from None


# ---------------------------------------------------------------------------------- one clip


class ClipOutputs:
    """The output files of one clip, fed frame by frame (`add`), finished by `finish`."""

    def __init__(self, info: Any, outdir: Path, name: str, opts: ClipOptions, tasks: Sequence[str]) -> None:
        from .. import video
        from ..writer import planned_files, record_path, temporary_for

        self.info, self.opts, self.tasks = info, opts, tuple(tasks)
        self.targets = dict(zip(opts.kinds, planned_files(outdir, name, opts.kinds, VIDEO_SAVE_FILES)))
        try:  # names may hold subfolders (inputs found by --recursive)
            record_path(outdir, name).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the folder {record_path(outdir, name).parent}: {exc}") from None
        self.size = info.output_size(opts.max_side)  # as stored
        turned = info.quarter_turns % 2
        self.display = self.size[::-1] if turned else self.size
        self.writers: Dict[str, Any] = {}
        self.spool: Optional[Path] = None
        self._spool_file: Any = None
        self.meta: List[Tuple[int, Optional[int], Optional[float], int]] = []  # index, pts, time, duration
        self.range_all, self.range_person = video.DepthRange(), video.DepthRange()
        has_depth = "depth" in self.tasks
        self.vis_tiles, tile, grid = video.vis_layout(self.tasks, *self.display)
        self.tile = tile
        vis_shape = (grid[0] * tile[0], grid[1] * tile[1])
        self.two_pass = opts.depth_range == "clip" and has_depth and bool({"depth", "vis"} & set(opts.kinds))
        try:
            for kind, path in self.targets.items():
                if kind == "depth-npz":
                    self.writers[kind] = video.NpyStackWriter(path, self.display)
                elif kind == "cutout":
                    self.writers[kind] = video.VideoWriter(path, info, self.size, video.ALPHA_ENCODING)
                elif kind == "vis":
                    stored = vis_shape[::-1] if turned else vis_shape
                    self.writers[kind] = video.VideoWriter(path, info, stored, opts.encoding(), audio=True)
                else:
                    fmt = "rgb24" if kind == "normal" else "gray"
                    self.writers[kind] = video.VideoWriter(path, info, self.size, opts.encoding(fmt))
            if self.two_pass:
                self.spool = temporary_for(self.targets.get("depth") or self.targets["vis"])
                self._spool_file = open(self.spool, "wb")
        except BaseException:
            self.abort()
            raise

    # -- pass 1 ------------------------------------------------------------------------------

    def add(self, frame: Any, pred: Any) -> None:
        """Write (or spool) everything of one predicted frame."""
        from .. import apps, video, visualize

        w = self.writers
        self.meta.append((frame.index, frame.pts, frame.time, frame.duration))
        alpha = None if pred.foreground is None else np.clip(pred.foreground, 0.0, 1.0)
        if "normal" in w:
            w["normal"].write(visualize.normals_to_rgb(pred.normal), frame)
        if "foreground" in w:
            w["foreground"].write(video.to_gray8(alpha), frame)
        if "cutout" in w:
            w["cutout"].write(apps.cutout(pred.image, pred.foreground), frame)
        if "depth-npz" in w:
            w["depth-npz"].write(pred.depth)
        canvas = shade = None
        if "vis" in w:
            canvas, shade = self._vis_canvas(pred, alpha)
        if pred.depth is not None:
            person = alpha >= 0.5 if alpha is not None else None
            self.range_all.update(pred.depth)
            self.range_person.update(pred.depth, person)
        if self.two_pass:
            f = self._spool_file
            pred.depth.astype(np.float16).tofile(f)
            if canvas is not None:
                canvas.tofile(f)
                if alpha is not None:
                    (shade if shade is not None else np.zeros(self.tile, np.float32)).astype(np.float16).tofile(f)
        else:
            self._depth_outputs(frame, pred.depth, canvas, shade)

    def _vis_canvas(self, pred: Any, alpha: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The vis picture without its depth tile (drawn with the clip's range later), and the half-size
        matte that masks depth and normals when it keeps any pixel (as the image panel does)."""
        from .. import video, visualize

        th, tw = self.tile
        rows = (len(self.vis_tiles) + 1) // 2
        canvas = np.zeros((rows * th, 2 * tw, 3), np.uint8)
        image = video.half(pred.image)
        small_alpha = None if alpha is None else video.half(alpha)
        shade = small_alpha if small_alpha is not None and float(small_alpha.max()) >= 0.5 else None
        for i, name in enumerate(self.vis_tiles):
            if name == "image":
                tile = image
            elif name == "normal":
                tile = visualize.normals_to_rgb(video.half(pred.normal), shade)
            elif name == "foreground":
                tile = visualize.overlay_mask(image, small_alpha)
            else:
                continue  # depth: later
            r, c = divmod(i, 2)
            canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
        return canvas, shade

    def _depth_outputs(self, frame: Any, depth: Optional[np.ndarray], canvas: Optional[np.ndarray],
                       shade: Optional[np.ndarray]) -> None:
        from .. import video, visualize
        from .._arrays import blend

        w, inverse = self.writers, self.opts.depth_inverse
        if "depth" in w:
            w["depth"].write(video.to_gray8(self.range_all.normalise(depth, inverse)), frame)
        if canvas is not None:
            if depth is not None:
                th, tw = self.tile
                i = self.vis_tiles.index("depth")
                r, c = divmod(i, 2)
                tile = video.colorize(self.range_person.normalise(video.half(depth), inverse))
                if shade is not None:
                    tile = blend(tile, visualize.BACKGROUND, shade)
                canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
            w["vis"].write(canvas, frame)

    # -- pass 2 and the end -----------------------------------------------------------------------

    def _second_pass(self) -> None:
        from ..video import Frame

        self._spool_file.close()
        h, w = self.display
        th, tw = self.tile
        rows = (len(self.vis_tiles) + 1) // 2
        with open(self.spool, "rb") as f:
            for index, pts, t, duration in self.meta:
                depth = np.fromfile(f, np.float16, h * w).reshape(h, w)
                canvas = shade = None
                if "vis" in self.writers:
                    canvas = np.fromfile(f, np.uint8, rows * th * 2 * tw * 3).reshape(rows * th, 2 * tw, 3)
                    if "foreground" in self.tasks:
                        shade = np.fromfile(f, np.float16, th * tw).reshape(th, tw).astype(np.float32)
                        if not shade.any():
                            shade = None
                self._depth_outputs(Frame(index, pts, t, duration, canvas), depth, canvas, shade)

    def finish(self) -> List[Tuple[Path, Path]]:
        """Close every file (second pass first when two-pass); returns (temporary, final) pairs."""
        if self.two_pass:
            self._second_pass()
        staged = []
        for kind, writer in self.writers.items():
            writer.close()
            if kind == "depth-npz":
                staged.append((self._npz(writer), writer.path))
            else:
                staged.append((writer.tmp, writer.path))
        self._drop_spool()
        return staged

    def _npz(self, stack: Any) -> Path:
        """The .npz of the depth stack and the frames' times (stored, not compressed: streamed)."""
        from ..writer import temporary_for

        tmp = temporary_for(stack.path)
        meta = np.asarray([(m[0], -1 if m[1] is None else m[1]) for m in self.meta], np.int64).reshape(-1, 2)
        times = np.asarray([np.nan if m[2] is None else m[2] for m in self.meta], np.float64)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            z.write(stack.tmp, "depth.npy")
            for key, value in (("time", times), ("pts", meta[:, 1]), ("frame_index", meta[:, 0])):
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=False)
                z.writestr(key + ".npy", buf.getvalue())
        stack.abort()  # its data is in the .npz now
        stack.tmp = tmp
        return tmp

    def _drop_spool(self) -> None:
        if self._spool_file is not None:
            self._spool_file.close()
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every temporary (on failure or interruption)."""
        for writer in self.writers.values():
            writer.abort()
        self._drop_spool()


class _Background:
    """Runs `work(*item)` in one thread behind a bounded queue, so rendering and encoding overlap
    the model call (and decoding, in imap's reader thread). The first error is raised by the next
    `put` or by `close`."""

    _DONE = object()

    def __init__(self, work: Any, depth: int) -> None:
        self._work, self._error, self._cancelled = work, None, False
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._run, name="david-video-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if self._error is None and not self._cancelled:
                try:
                    self._work(*item)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def put(self, *item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued work (skipped when `cancel`), then raise its error if any."""
        self._cancelled = self._cancelled or cancel
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()
        if self._error is not None and not cancel:
            raise self._error


def process_clip(runtime: Any, info: Any, outdir: Path, name: str, opts: ClipOptions,
                 record_options: Any) -> Tuple[int, Optional[str]]:
    """Predict and write one clip; returns (frames written, why decoding stopped early or None)."""
    from ..video import FrameReader, predict_frames
    from ..writer import commit_set

    outputs = ClipOutputs(info, outdir, name, opts, runtime.tasks)
    background = _Background(outputs.add, 2 * opts.batch_size)
    try:
        reader = FrameReader(info, opts.frames, opts.max_side)
        for frame, pred in predict_frames(runtime, reader, opts.batch_size):
            background.put(frame, pred)
        background.close()
        staged = outputs.finish()
        stopped = reader.error
        commit_set(staged, outdir, name, opts.kinds, record_options, record=stopped is None, source=info.path)
    except BaseException:
        background.close(cancel=True)
        outputs.abort()
        raise
    return len(outputs.meta), None if stopped is None else str(stopped)


def run_videos(runtime: Any, jobs: Sequence[Tuple[Path, str]], outdir: Path, args: argparse.Namespace,
               kinds: Sequence[str], extra: Optional[Dict[str, Any]] = None) -> Tuple[int, int, List[Tuple[str, str]]]:
    """Every clip of `jobs` ((path, name)); returns (how many written, how many skipped as already
    complete, failures). `extra` (the model and runtime settings) goes into each completion record."""
    from .. import video, writer

    opts = ClipOptions.from_args(args, kinds, runtime.post_options.invert_depth)  # bad options: the run fails
    try:  # kinds or encoders that do not fit the clips: each clip fails, images still run
        chosen = video_kinds(kinds, runtime.tasks)
        check_encoders(chosen)
    except DavidError as exc:
        return 0, 0, [(str(path), str(exc)) for path, _ in jobs]
    opts = dataclasses.replace(opts, kinds=tuple(chosen))
    record_options = opts.write_options(extra or {})
    failures: List[Tuple[str, str]] = []
    todo = []
    skipped = 0
    for path, name in jobs:  # every clip probed and its outputs checked before the model sees a frame
        try:
            info = video.probe(path)
            state = writer.status(outdir, name, chosen, record_options, source=path, files=VIDEO_SAVE_FILES)
            if state.state is writer.SetState.DONE and not args.overwrite:
                skipped += 1
                continue
            if state.state is writer.SetState.CHANGED and not args.overwrite:
                raise InputError(f"its outputs exist ({state.reason}); pass --overwrite to replace them")
            blocked = [t for t in writer.planned_files(outdir, name, chosen, VIDEO_SAVE_FILES) if t.is_dir()]
            if blocked:
                raise InputError(f"cannot write {blocked[0]}: a folder has that name")
            todo.append((path, name, info))
        except DavidError as exc:
            failures.append((str(path), _without(str(exc), str(path))))
    succeeded = 0
    for path, name, info in todo:
        writer.remove_temporaries(outdir, name, chosen, files=VIDEO_SAVE_FILES)
        start = time.perf_counter()
        try:
            count, stopped = process_clip(runtime, info, outdir, name, opts, record_options)
        except DavidError as exc:
            failures.append((str(path), _without(str(exc), str(path))))
            continue
        if not getattr(args, "no_progress", False):
            took = time.perf_counter() - start
            print(f"{path}: {count} frames in {took:.1f} s ({count / max(took, 1e-9):.1f} frames/s)", file=sys.stderr)
        if stopped is not None:
            failures.append((str(path), f"{_without(stopped, str(path))}; the {count} frames decoded were written"))
        else:
            succeeded += 1
    return succeeded, skipped, failures


def _without(text: str, name: str) -> str:
    return text[len(name) + 2:] if text.startswith(name + ": ") else text
