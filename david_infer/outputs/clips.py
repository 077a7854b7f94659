"""The output kinds of a clip (`VIDEO_KINDS`, one row each: docs/outputs.md, docs/video.md) and one
clip's set, predicted and written frame by frame (`write_clip`).

A kind with `hold` is drawn with the clip's depth range: "clip" (two-pass) spools what `hold`
keeps of each frame (float maps as float16) to a temporary beside the outputs and draws it once the
range of the whole clip is known; "running" draws each frame with the range of the frames so far.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .._optional import require
from ..apps import cutout
from ..errors import InputError, stop_if_requested
from ..tasks import TASKS
from ..video.decode import Frame, FrameReader
from ..video.encode import ALPHA_ENCODING, Encoding, NpyStackWriter, VideoWriter
from ..video.predict import STABILIZE_CHOICES, predict_frames
from ..video.render import DepthRange, VisLayout, to_gray8
from ..video.stability import stabilize_pairs
from ..visualize import normals_to_rgb
from .sets import KindTable, Source, WriteOptions

DEPTH_RANGES = ("clip", "running")


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How a clip's set is written: its kinds, which frames (`video.FrameSelection`), the longest side
    frames are scaled to, the depth range ("clip" or "running"), libx264's preset and crf, frames per
    model call, whether depth is inverse (larger = nearer), the stabilisation ("none", "online",
    "offline")."""

    kinds: Tuple[str, ...]
    frames: Any  # video.FrameSelection
    max_side: Optional[int] = None
    depth_range: str = "clip"
    preset: str = "ultrafast"
    crf: int = 18
    batch_size: int = 1
    overwrite: bool = False
    depth_inverse: bool = True
    stabilize: str = "none"

    def __post_init__(self) -> None:
        if self.stabilize not in STABILIZE_CHOICES:
            raise InputError(f"stabilize must be one of {', '.join(STABILIZE_CHOICES)}, got {self.stabilize!r}")

    def write_options(self, extra: Dict[str, Any]) -> WriteOptions:
        """What the completion record holds (a rerun with other options redoes the clip)."""
        f = self.frames
        return WriteOptions(
            depth_inverse=self.depth_inverse,
            extra={
                **extra,
                "frames": [f.start, f.stop, f.step],
                "max_side": self.max_side,
                "depth_range": self.depth_range,
                "preset": self.preset,
                "crf": self.crf,
                "stabilize": self.stabilize,
            },
        )

    def encoding(self, input_format: str = "rgb24") -> Encoding:
        """libx264 with this preset and crf, fed `input_format` pictures."""
        return Encoding("libx264", "yuv420p", (("preset", self.preset), ("crf", str(self.crf))), input_format)


class FrameSink(Protocol):
    """What a kind's `open` returns: `write(picture, frame)` per frame, `close()` (the file complete
    under `tmp`), `abort()` (removes it); `path` is its final name."""

    path: Path
    tmp: Path

    def write(self, picture: np.ndarray, frame: Any) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class VideoKind:
    """One `--save` kind of a clip. open(clip, path, tmp): its `FrameSink` writing the temporary `tmp`;
    draw(clip, *held): the frame's picture from `hold(clip, pred)` (or from `(pred,)`). `hold`, for a
    kind drawn with the clip's depth range (`clip.range_all`, `clip.range_person`), keeps what `draw`
    needs of a frame until that range is known."""

    name: str
    suffix: str
    needs: Optional[str]
    encoder: Optional[str]
    open: Callable[["ClipOutputs", Path, Path], FrameSink]
    draw: Callable[..., np.ndarray]
    hold: Optional[Callable[["ClipOutputs", Any], Tuple[Optional[np.ndarray], ...]]] = None

    @property
    def suffixes(self) -> Tuple[str, ...]:
        return (self.suffix,)


def _video(input_format: str) -> Callable[["ClipOutputs", Path, Path], FrameSink]:
    """open: a libx264 video of the frame's size, fed `input_format` pictures."""

    def open_video(clip: "ClipOutputs", path: Path, tmp: Path) -> FrameSink:
        return VideoWriter(path, tmp, clip.info, clip.size, clip.opts.encoding(input_format))

    return open_video


def _vis_video(clip: "ClipOutputs", path: Path, tmp: Path) -> FrameSink:
    shape = clip.vis.shape[::-1] if clip.info.quarter_turns % 2 else clip.vis.shape  # as stored
    return VideoWriter(path, tmp, clip.info, shape, clip.opts.encoding(), audio=True)


def _matte_video(clip: "ClipOutputs", path: Path, tmp: Path) -> FrameSink:
    return VideoWriter(path, tmp, clip.info, clip.size, ALPHA_ENCODING)


class _DepthStack:
    """NAME.depth.npz: the raw depth of every frame, spooled as a .npy stack frame by frame, put
    with the frames' times in a stored (uncompressed: streamed) .npz by `close`."""

    def __init__(self, clip: "ClipOutputs", path: Path, tmp: Path) -> None:
        self.path, self.tmp = path, tmp
        self._stack = NpyStackWriter(path, clip.set.temporary(path), clip.display)
        self._frames: List[Tuple[int, int, float]] = []  # index, pts (-1: none), time (NaN: none)

    def write(self, depth: np.ndarray, frame: Any) -> None:
        self._stack.write(depth)
        self._frames.append(
            (frame.index, -1 if frame.pts is None else frame.pts, np.nan if frame.time is None else frame.time)
        )

    def close(self) -> None:
        self._stack.close()
        meta = np.asarray([f[:2] for f in self._frames], np.int64).reshape(-1, 2)
        times = np.asarray([f[2] for f in self._frames], np.float64)
        with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            z.write(self._stack.tmp, "depth.npy")
            for key, value in (("time", times), ("pts", meta[:, 1]), ("frame_index", meta[:, 0])):
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=False)
                z.writestr(key + ".npy", buf.getvalue())
        self._stack.abort()  # its data is in the .npz now

    def abort(self) -> None:
        self._stack.abort()
        self.tmp.unlink(missing_ok=True)


VIDEO_KINDS: KindTable[VideoKind] = KindTable(
    "video inputs",
    [
        VideoKind(
            "depth",
            ".depth.mp4",
            "depth",
            "libx264",
            _video("gray"),
            draw=lambda clip, depth: to_gray8(clip.range_all.normalise(depth, clip.opts.depth_inverse)),
            hold=lambda clip, pred: (pred.depth,),
        ),
        VideoKind(
            "normal", ".normal.mp4", "normal", "libx264", _video("rgb24"), lambda clip, p: normals_to_rgb(p.normal)
        ),
        VideoKind(
            "foreground",
            ".foreground.mp4",
            "foreground",
            "libx264",
            _video("gray"),
            draw=lambda clip, pred: to_gray8(np.clip(pred.foreground, 0.0, 1.0)),
        ),
        VideoKind(
            "vis",
            ".vis.mp4",
            None,
            "libx264",
            _vis_video,
            draw=lambda clip, canvas, shade, depth: clip.vis.draw_depth(
                canvas, shade, depth, clip.range_person.span, clip.opts.depth_inverse
            ),
            hold=lambda clip, pred: clip.vis.draw(pred),
        ),
        VideoKind("depth-npz", ".depth.npz", "depth", None, _DepthStack, draw=lambda clip, pred: pred.depth),
        VideoKind(
            "cutout", ".cutout.mov", "foreground", "png", _matte_video, lambda clip, p: cutout(p.image, p.foreground)
        ),
    ],
)


def check_encoders(kinds: Sequence[str]) -> None:
    """InputError when this PyAV's FFmpeg lacks an encoder the kinds need (before any model call)."""
    av = require("av", "video files")
    for name in sorted({encoder for encoder in (VIDEO_KINDS[k].encoder for k in kinds) if encoder is not None}):
        try:
            av.codec.Codec(name, "w")
        except Exception:
            raise InputError(
                f"this PyAV's FFmpeg has no {name} encoder, needed for the video outputs; "
                f'install the PyAV wheel from PyPI (pip install "david-infer[video]")'
            ) from None


class _Spool:
    """What the ranged kinds hold of each frame until the clip's range is known, .npy records in a
    temporary file: floats as float16 (the 8-bit pictures show no difference), None as empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = open(path, "wb")

    def put(self, held: Sequence[Optional[np.ndarray]]) -> None:
        np.lib.format.write_array(self._file, np.asarray(len(held)), allow_pickle=False)
        for array in held:
            a = np.empty(0, np.uint8) if array is None else np.asarray(array)
            if np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float16)
            np.lib.format.write_array(self._file, np.ascontiguousarray(a), allow_pickle=False)

    def replay(self, records: int) -> Iterator[Tuple[Optional[np.ndarray], ...]]:
        """The first `records` things put, in order."""
        self._file.close()
        with open(self.path, "rb") as f:
            for _ in range(records):
                count = int(np.lib.format.read_array(f, allow_pickle=False))
                arrays = [np.lib.format.read_array(f, allow_pickle=False) for _ in range(count)]
                yield tuple(None if a.size == 0 else a for a in arrays)

    def remove(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ClipOutputs:
    """The output files of one clip (an `OutputSet` of `VIDEO_KINDS`), fed frame by frame (`add`),
    finished by `finish` (the (temporary, final) pairs to commit) or removed by `abort`."""

    def __init__(self, info: Any, outdir: Path, name: str, opts: ClipOptions, tasks: Sequence[str]) -> None:
        self.info, self.opts, self.tasks = info, opts, tuple(tasks)
        self.set = VIDEO_KINDS.set(outdir, name, opts.kinds)
        self.set.make_folder()
        self.size = info.output_size(opts.max_side)  # as stored
        self.display = self.size[::-1] if info.quarter_turns % 2 else self.size
        self.vis: VisLayout = VisLayout(self.tasks, *self.display)
        self.range_all, self.range_person = DepthRange(), DepthRange()
        self.meta: List[Tuple[int, Optional[int], Optional[float], int]] = []  # index, pts, time, duration
        #: refined frames: the regions by status, and the most in one frame (None: not refined)
        self.regions: Optional[Dict[str, int]] = None
        kinds = [VIDEO_KINDS[k] for k in opts.kinds]
        two_pass = opts.depth_range == "clip" and any(TASKS[t].picture == "relative" for t in self.tasks)
        #: the kinds drawn in the second pass, with the clip's range
        self.late = [k for k in kinds if k.hold is not None] if two_pass else []
        self.sinks: Dict[str, FrameSink] = {}
        self.spool: Optional[_Spool] = None
        try:
            for kind in kinds:
                final = self.set.by_kind[kind.name][0]
                self.sinks[kind.name] = kind.open(self, final, self.set.temporary(final))
            if self.late:
                self.spool = _Spool(self.set.temporary(self.set.by_kind[self.late[0].name][0]))
        except BaseException:
            self.abort()
            raise

    def add(self, frame: Any, pred: Any) -> None:
        """Write (or spool) everything of one predicted frame."""
        self.meta.append((frame.index, frame.pts, frame.time, frame.duration))
        regions = getattr(pred, "regions", None)
        if regions is not None:
            counts = self.regions if self.regions is not None else {"refined": 0, "fallback": 0, "skipped": 0}
            for region in regions:
                counts[region.status] = counts.get(region.status, 0) + 1
            counts["most_in_a_frame"] = max(counts.get("most_in_a_frame", 0), len(regions))
            self.regions = counts
        if pred.depth is not None:
            self.range_all.update(pred.depth)
            self.range_person.update(pred.depth, None if pred.foreground is None else pred.foreground >= 0.5)
        for name, sink in self.sinks.items():
            kind = VIDEO_KINDS[name]
            held = kind.hold(self, pred) if kind.hold is not None else (pred,)
            if kind in self.late:
                self.spool.put(held)  # type: ignore[union-attr]
            else:
                sink.write(kind.draw(self, *held), frame)

    def finish(self) -> List[Tuple[Path, Path]]:
        """Close every file (second pass first when two-pass); returns (temporary, final) pairs."""
        if self.late:
            held = self.spool.replay(len(self.meta) * len(self.late))  # type: ignore[union-attr]
            for index, pts, t, duration in self.meta:
                frame = Frame(index, pts, t, duration, None)  # type: ignore[arg-type]  # timestamps only
                for kind in self.late:
                    self.sinks[kind.name].write(kind.draw(self, *next(held)), frame)
        for sink in self.sinks.values():
            sink.close()
        if self.spool is not None:
            self.spool.remove()
        return [(sink.tmp, sink.path) for sink in self.sinks.values()]

    def abort(self) -> None:
        """Remove every temporary (on failure or interruption)."""
        for sink in self.sinks.values():
            sink.abort()
        if self.spool is not None:
            self.spool.remove()


class _Background:
    """Runs `work(*item)` in one thread, at most `depth` items ahead, so rendering and encoding overlap
    the model call; the first error is raised by the next `put` or by `close`."""

    def __init__(self, work: Callable[..., None], depth: int) -> None:
        self._work, self._depth = work, max(1, depth)
        self._pending: Deque[Future] = collections.deque()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="david-video-writer")

    def put(self, *item: Any) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()  # raises the work's error
        self._pending.append(self._pool.submit(self._work, *item))

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued work (dropped when `cancel`), then raise its error if any."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        while self._pending and not cancel:
            self._pending.popleft().result()


def write_clip(
    runtime: Any, info: Any, outdir: Path, name: str, opts: ClipOptions, record_options: WriteOptions
) -> Tuple[int, Optional[str]]:
    """Predict and write one clip's set (temporaries renamed into place at the end, the completion
    record last, with `record_options`, `ClipOptions.write_options`); returns (frames written, why
    decoding stopped early or None). A clip that stops early gets the frames decoded so far, in
    closed, playable files, without a record."""
    source = Source.before_read(info.path)  # before the first frame is read
    outputs = ClipOutputs(info, outdir, name, opts, runtime.tasks)
    background = _Background(outputs.add, 2 * opts.batch_size)
    try:
        reader = FrameReader(info, opts.frames, opts.max_side)
        predicted: Iterator[Tuple[Any, Any]] = predict_frames(runtime, reader, opts.batch_size)
        if opts.stabilize != "none":
            timing = ((_timing(frame), pred) for frame, pred in predicted)  # offline holds these: no pixels
            predicted = stabilize_pairs(timing, opts.stabilize)
        for frame, pred in predicted:
            stop_if_requested()
            background.put(frame, pred)
        background.close()
        if not outputs.meta and reader.error is None:  # a clip whose stated frame count was unknown or wrong
            raise InputError(f"{info.path}: --frames selects no frame of the clip; nothing was written")
        staged = outputs.finish()
        stopped = reader.error
        results = None if outputs.regions is None else {"regions": outputs.regions}
        outputs.set.commit(staged, record_options, record=stopped is None, source=source, results=results)
    except BaseException:
        background.close(cancel=True)
        outputs.abort()
        raise
    return len(outputs.meta), None if stopped is None else str(stopped)


def _timing(frame: Frame) -> Frame:
    """The frame's index and timestamps without its pixels."""
    return Frame(frame.index, frame.pts, frame.time, frame.duration, None)  # type: ignore[arg-type]
