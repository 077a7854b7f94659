"""Video in, video out on PyAV (FFmpeg's libraries; `pip install "david-infer[video]"`).

- `probe(path)`: what a clip holds (`VideoInfo`: size, frame count, rate, time base, rotation,
  colour range and matrix, pixel aspect, audio), checked before any model call: a file with no
  video stream or a codec this FFmpeg cannot decode is an InputError naming the file.
- `read_frames(path, selection, max_side)`: decoded frames (`Frame`: index, pts, time, RGB
  pixels turned upright by the clip's display rotation), one at a time. A clip that stops early
  (truncated or corrupt) ends the iteration and leaves the reason in `FrameReader.error`
  (`VideoDecodeError`, naming the frame where decoding stopped).
- `predict_video(runtime, src)`: `(frame_index, timestamp, Prediction)` in order, through the one
  batching path (`DavidRuntime.imap`): decoding runs ahead in its reader thread, memory is
  bounded whatever the clip's length.
- `VideoWriter`: one output video with the source's frame timestamps (variable frame rate kept),
  rate, display rotation, colour range/matrix tags and pixel aspect, written to a temporary beside
  its final name (put in place with `david_infer.writer.commit_set`); optionally with the source's
  audio stream copied.
- `NpyStackWriter`: an (N, H, W[, C]) .npy stack written frame by frame (N known at the end).

`av` is imported when a function here is called, never by `import david_infer`.
"""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ._optional import require
from .errors import InputError

#: file suffixes taken as video (lower case)
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                            ".mts", ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".y4m"})
PathLike = Union[str, "os.PathLike[str]"]


def is_video_path(path: PathLike) -> bool:
    """True for a file name with a video suffix (`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    return require("av", "video files")


class VideoDecodeError(InputError):
    """A clip could not be decoded to its end; `frames_decoded` frames came out before it stopped."""

    def __init__(self, message: str, frames_decoded: int) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded


# ------------------------------------------------------------------------------ selection


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Frames `start, start + step, ...` before `stop` (None = to the end), like a Python slice."""

    start: int = 0
    stop: Optional[int] = None
    step: int = 1

    def __post_init__(self) -> None:
        if self.start < 0 or self.step < 1 or (self.stop is not None and self.stop < self.start):
            raise InputError(f"frame selection must have 0 <= START <= END and STEP >= 1, got "
                             f"{self.start}:{'' if self.stop is None else self.stop}:{self.step}")

    @classmethod
    def parse(cls, text: Optional[str]) -> "FrameSelection":
        """'START:END:STEP' (each part optional: '100:', ':50', '::2')."""
        if text is None or text == "":
            return cls()
        parts = text.split(":")
        if len(parts) > 3:
            raise InputError(f"--frames: expected START:END:STEP, got {text!r}")
        try:
            values = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
        except ValueError:
            raise InputError(f"--frames: expected whole numbers in START:END:STEP, got {text!r}") from None
        start, stop, step = values
        return cls(start or 0, stop, 1 if step is None else step)

    def wants(self, index: int) -> bool:
        return index >= self.start and (index - self.start) % self.step == 0 and not self.past(index)

    def past(self, index: int) -> bool:
        return self.stop is not None and index >= self.stop

    def count(self, total: int) -> int:
        """How many of `total` frames are selected."""
        stop = total if self.stop is None else min(total, self.stop)
        return max(0, -(-(stop - self.start) // self.step))


# ------------------------------------------------------------------------------ probing


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` found in a clip. Sizes are as stored (before the display rotation)."""

    path: Path
    codec: str
    width: int
    height: int
    frames: int  # as the container states it; 0 when unknown
    rate: Optional[Fraction]  # average frame rate; None when unknown
    time_base: Fraction
    duration: Optional[float]  # seconds, of the video stream
    rotation: int  # display rotation, degrees counter-clockwise (0, 90, 180, -90)
    color_range: int  # FFmpeg's AVColorRange: 0 unspecified, 1 limited (MPEG), 2 full (JPEG)
    colorspace: int  # AVColorSpace (matrix), 2 = unspecified
    color_primaries: int
    color_trc: int
    sample_aspect_ratio: Optional[Fraction]
    audio_codec: Optional[str]  # the first audio stream's codec, None without audio
    pix_fmt: str

    @property
    def quarter_turns(self) -> int:
        """np.rot90's k that turns a stored frame upright."""
        return (self.rotation // 90) % 4

    @property
    def display_size(self) -> Tuple[int, int]:
        """(height, width) as shown, after the rotation."""
        return (self.width, self.height) if self.quarter_turns % 2 else (self.height, self.width)

    def output_size(self, max_side: Optional[int] = None) -> Tuple[int, int]:
        """(height, width) as stored of the frames `read_frames(..., max_side)` gives."""
        h, w = self.height, self.width
        scale = 1.0 if not max_side else min(1.0, max_side / max(h, w))
        return (max(1, round(h * scale)), max(1, round(w * scale)))

    def duration_text(self) -> str:
        return f"{self.duration:.3f} s" if self.duration is not None else "unknown duration"


def probe(path: PathLike) -> VideoInfo:
    """Open a clip, check it has a decodable video stream and read its properties (decodes the
    first frame for the display rotation). InputError naming the file otherwise."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: not a readable video file ({exc})") from None
    try:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputError(f"{path}: the file has no video stream (it holds {kinds})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: cannot decode its video stream (codec {codec}): {exc}") from None
        if first is None:
            raise InputError(f"{path}: the video stream (codec {codec}) holds no decodable frame")
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        audio = container.streams.audio
        sar = stream.sample_aspect_ratio
        return VideoInfo(
            path=path, codec=codec, width=first.width, height=first.height, frames=int(stream.frames or 0),
            rate=Fraction(stream.average_rate) if stream.average_rate else None,
            time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000),
            duration=duration, rotation=int(round(first.rotation or 0)),
            color_range=int(first.color_range or 0), colorspace=int(first.colorspace or 2),
            color_primaries=int(first.color_primaries or 2), color_trc=int(first.color_trc or 2),
            sample_aspect_ratio=Fraction(sar) if sar else None,
            audio_codec=audio[0].codec_context.name if audio else None, pix_fmt=first.format.name,
        )
    finally:
        container.close()


# ------------------------------------------------------------------------------ decoding


@dataclasses.dataclass
class Frame:
    """One decoded frame: `index` in the source, `pts`/`duration` in the source's time base,
    `time` in seconds, `image` (H, W, 3) uint8 RGB upright (display rotation applied)."""

    index: int
    pts: Optional[int]
    time: Optional[float]
    duration: int
    image: np.ndarray


class FrameReader(Iterable[Frame]):
    """Iterates a clip's selected frames once. Decoding that stops early ends the iteration
    quietly and sets `error`, so whatever was decoded can still be used."""

    def __init__(self, info: VideoInfo, selection: FrameSelection = FrameSelection(),
                 max_side: Optional[int] = None, threads: int = 0) -> None:
        self.info, self.selection, self.max_side, self.threads = info, selection, max_side, threads
        self.error: Optional[VideoDecodeError] = None
        self.decoded = 0  # frames decoded from the source, selected or not

    def __iter__(self) -> Iterator[Frame]:
        av = _av()
        info = self.info
        out_h, out_w = info.output_size(self.max_side)
        scaled = (out_h, out_w) != (info.height, info.width)
        container = av.open(str(info.path))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads in the decoder
            stream.codec_context.thread_count = self.threads
            index, end = 0, None
            for frame in self._decoded(container, stream):
                if self.selection.past(index):
                    return
                if frame.time is not None:
                    end = float(frame.time) + float((frame.duration or 0) * info.time_base)
                if self.selection.wants(index):
                    rgb = frame.reformat(
                        width=out_w, height=out_h, format="rgb24",
                        interpolation="AREA" if scaled else None,
                        src_color_range=frame.color_range or None,
                    ).to_ndarray()
                    if info.quarter_turns:
                        rgb = np.ascontiguousarray(np.rot90(rgb, info.quarter_turns))
                    yield Frame(index, frame.pts, None if frame.time is None else float(frame.time),
                                int(frame.duration or 0), rgb)
                index += 1
                self.decoded = index
            if self.error is None:
                self.error = self._short(index, end)
        finally:
            container.close()

    def _short(self, index: int, end: Optional[float]) -> Optional[VideoDecodeError]:
        """The error for a stream that ended early: fewer frames than the header counts, or (when
        it counts none, as Matroska) an end more than two frame intervals before its duration."""
        info = self.info
        if info.frames:
            if index >= info.frames:
                return None
            said = f"{index} of the {info.frames} frames its header announces"
        else:
            interval = 1.0 / float(info.rate) if info.rate else 0.04
            if info.duration is None or end is None or end >= info.duration - 2 * interval:
                return None
            said = f"{index} frames, at {end:.3f} s of its {info.duration:.3f} s"
        return VideoDecodeError(f"{info.path}: the video stream ended after {said} (truncated file?); "
                                f"decoding stopped at frame {index}", index)

    def _decoded(self, container: Any, stream: Any) -> Iterator[Any]:
        av = _av()
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.error = VideoDecodeError(
                    f"{self.info.path}: decoding stopped at frame {self.decoded}: {exc}", self.decoded)
                return
            yield from frames


def read_frames(path: Union[PathLike, VideoInfo], selection: Optional[FrameSelection] = None,
                max_side: Optional[int] = None) -> FrameReader:
    """The clip's selected frames, upright, each at most `max_side` pixels on its longer side."""
    info = path if isinstance(path, VideoInfo) else probe(path)
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 2):
        raise InputError(f"max_side must be an integer >= 2 or None, got {max_side!r}")
    return FrameReader(info, selection or FrameSelection(), max_side)


def _array_frames(frames: Iterable[Any], fps: Optional[float]) -> Iterator[Frame]:
    """Frames given as numpy arrays or PIL images, numbered from 0 (timestamps from `fps`)."""
    for index, image in enumerate(frames):
        yield Frame(index, None, index / fps if fps else None, 0, image)


def predict_frames(runtime: Any, frames: Iterable[Frame], batch_size: Optional[int] = None,
                   prefetch: Optional[int] = None) -> Iterator[Tuple[Frame, Any]]:
    """(Frame, Prediction) in order through `runtime.imap`; the first frame that fails raises."""
    outcomes = runtime.imap(frames, batch_size=batch_size, prefetch=prefetch, load=lambda f: f.image)
    try:
        for frame, outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
            frame.image = outcome.image  # decoded once: the Prediction's own copy
            yield frame, outcome
    finally:
        outcomes.close()


def predict_video(runtime: Any, src: Any, *, batch_size: Optional[int] = None,
                  frames: Union[None, str, FrameSelection] = None, max_side: Optional[int] = None,
                  fps: Optional[float] = None, prefetch: Optional[int] = None) -> Iterator[Tuple[int, Optional[float], Any]]:
    """See `DavidRuntime.predict_video`."""
    if isinstance(src, (str, os.PathLike)):
        selection = frames if isinstance(frames, FrameSelection) else FrameSelection.parse(frames)
        reader: Optional[FrameReader] = read_frames(src, selection, max_side)
        source: Iterable[Frame] = reader
    else:
        if frames is not None or max_side is not None:
            raise InputError("frames= and max_side= apply to video files; select and resize the frames "
                             "of an iterable yourself")
        reader, source = None, _array_frames(src, fps)
    return _predict_video(runtime, reader, source, batch_size, prefetch)


def _predict_video(runtime: Any, reader: Optional[FrameReader], source: Iterable[Frame],
                   batch_size: Optional[int], prefetch: Optional[int]) -> Iterator[Tuple[int, Optional[float], Any]]:
    for frame, pred in predict_frames(runtime, source, batch_size, prefetch):
        yield frame.index, frame.time, pred
    if reader is not None and reader.error is not None:
        raise reader.error


# ------------------------------------------------------------------------------ encoding


#: muxer of each output suffix (outputs are written to temporaries whose names FFmpeg cannot read)
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


def _temporary(path: Path) -> Path:
    from .writer import temporary_for

    return temporary_for(path)


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How one output video is encoded: codec, pixel format, container options."""

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    options: Tuple[Tuple[str, str], ...] = (("preset", "veryfast"), ("crf", "18"))
    input_format: str = "rgb24"  # what `VideoWriter.write` is given: rgb24, gray, rgba

    def for_size(self, height: int, width: int) -> "Encoding":
        """4:2:0 needs even sides: odd-sized clips keep their size and get 4:4:4 instead."""
        if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            return dataclasses.replace(self, pix_fmt="yuv444p")
        return self


#: the lossless RGBA matte video (PNG frames in QuickTime: lossless, read by editors and FFmpeg)
ALPHA_ENCODING = Encoding("png", "rgba", (), "rgba")


class VideoWriter:
    """One output video shaped like a source clip (see the module docstring).

    `write(image, frame)` takes an upright (display orientation) image of the clip's output size
    and the source `Frame` it belongs to (for its timestamp); it is stored turned back to the
    source's orientation with the source's display rotation, so players show both alike.
    The file is written to `tmp` (a temporary beside `path`, see david_infer.writer); `close()`
    finishes it there, the caller puts it in place (`writer.commit_set`); `abort()` removes it.
    """

    def __init__(self, path: Path, info: VideoInfo, size: Tuple[int, int], encoding: Encoding = Encoding(),
                 audio: bool = False, threads: int = 0) -> None:
        av = _av()
        self.path, self.info = Path(path), info
        self.height, self.width = size  # as stored
        self.encoding = encoding.for_size(*size)
        self.frames = 0
        muxer = MUXERS.get(self.path.suffix.lower())
        if muxer is None:
            raise InputError(f"{self.path}: cannot write video as {self.path.suffix!r}; use one of {', '.join(MUXERS)}")
        self.tmp = _temporary(self.path)
        self._audio: Optional[_AudioCopy] = None
        self._first: Optional[float] = None  # time of the first frame written, and the end of the last
        self._end: Optional[float] = None
        try:
            self.container = av.open(str(self.tmp), "w", format=muxer)
        except av.error.FFmpegError as exc:
            self.tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write {self.path}: {exc}") from None
        try:
            self.stream = self._add_stream(threads)
            if audio and info.audio_codec is not None:
                self._audio = _AudioCopy(info, self.container)
        except BaseException:
            self.abort()
            raise
        self._closed = False

    def _add_stream(self, threads: int) -> Any:
        av = _av()
        info, enc = self.info, self.encoding
        try:
            stream = self.container.add_stream(enc.codec, rate=info.rate or Fraction(25))
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"cannot write {self.path}: this FFmpeg has no {enc.codec} encoder ({exc})") from None
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, enc.pix_fmt
        stream.time_base = info.time_base
        ctx = stream.codec_context
        ctx.time_base = info.time_base
        ctx.thread_count = threads
        ctx.max_b_frames = 0  # decode order = display order: exact timestamps and duration with VFR
        ctx.options = dict(enc.options)
        if enc.pix_fmt.startswith("yuv"):
            ctx.color_range = info.color_range
            ctx.colorspace, ctx.color_primaries, ctx.color_trc = info.colorspace, info.color_primaries, info.color_trc
        if info.sample_aspect_ratio:
            ctx.sample_aspect_ratio = info.sample_aspect_ratio
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        return stream

    def write(self, image: np.ndarray, frame: Frame) -> None:
        """Encode one upright image for the source frame `frame`."""
        av = _av()
        info = self.info
        stored = np.rot90(image, -info.quarter_turns) if info.quarter_turns else image
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format=self.encoding.input_format)
        if self.encoding.pix_fmt != self.encoding.input_format:
            yuv = self.encoding.pix_fmt.startswith("yuv")
            vf = vf.reformat(format=self.encoding.pix_fmt,
                             dst_colorspace=info.colorspace if yuv and info.colorspace != 2 else None,
                             dst_color_range=info.color_range or None if yuv else None)
        vf.pts = frame.pts if frame.pts is not None else self.frames
        vf.time_base = info.time_base
        if frame.duration:
            vf.duration = frame.duration
        if self._audio is not None and frame.time is not None:
            if self._first is None:
                self._first = frame.time
            self._audio.copy_until(frame.time, self._first)
            self._end = frame.time + float(frame.duration * info.time_base)
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (still under its temporary name)."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            if self._audio is not None:  # the audio of the frames written, not beyond
                self._audio.copy_until(self._end, self._first)
        finally:
            if self._audio is not None:
                self._audio.close()
            self.container.close()

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        try:
            if not getattr(self, "_closed", True):
                self._closed = True
                if self._audio is not None:
                    self._audio.close()
                self.container.close()
        except Exception:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


class _AudioCopy:
    """Copies the source's first audio stream packet by packet (no re-encoding), interleaved with
    the video by time."""

    def __init__(self, info: VideoInfo, container: Any) -> None:
        av = _av()
        self._input = av.open(str(info.path))
        source = self._input.streams.audio[0]
        self._stream = container.add_stream_from_template(source)
        self._packets = self._input.demux(source)
        self._pending: Any = None

    def copy_until(self, seconds: Optional[float], start: Optional[float] = None) -> None:
        """Mux every audio packet that starts before `seconds` (None: all that are left), dropping
        those that end before `start` (the first video frame kept, with --frames)."""
        while True:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                return
            if packet.dts is None or packet.pts is None:  # the demuxer's empty flush packet
                continue
            begins = float(packet.pts * packet.time_base)
            if seconds is not None and begins > seconds:
                self._pending = packet
                return
            if start is not None and begins + float((packet.duration or 0) * packet.time_base) <= start:
                continue
            packet.stream = self._stream
            self._stream.container.mux(packet)

    def close(self) -> None:
        self._input.close()


class NpyStackWriter:
    """An (N, *shape) .npy file written one frame at a time under a temporary name; the header,
    holding N, is rewritten by `close` (its length is fixed, so the data never moves)."""

    HEADER = 256

    def __init__(self, path: Path, shape: Tuple[int, ...], dtype: Any = np.float32) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.tmp = _temporary(self.path)
        self.count = 0
        self._file = open(self.tmp, "wb")
        self._file.write(self._header())

    def _header(self) -> bytes:
        fields = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.shape)}
        text = repr(fields).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        pad = self.HEADER - len(prefix) - 2 - len(text) - 1
        return prefix + (self.HEADER - len(prefix) - 2).to_bytes(2, "little") + text + b" " * pad + b"\n"

    def write(self, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array, dtype=self.dtype)
        if a.shape != self.shape:
            raise InputError(f"{self.path}: frame of shape {a.shape}, expected {self.shape}")
        a.tofile(self._file)
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.seek(0)
            self._file.write(self._header())
            self._file.close()

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ rendering


class DepthRange:
    """One depth range for a whole clip, so the depth shown does not flicker.

    `update(depth, mask)` widens the range to the frame's pixels (within the foreground mask
    when it keeps any); `span` is (lo, hi). Two-pass use updates over the whole clip first; a
    one-pass (running) use renders each frame with the range of the frames seen so far, which
    only ever widens, so early frames may use less of the colour scale than later ones.
    """

    def __init__(self) -> None:
        self.lo, self.hi = np.inf, -np.inf

    def update(self, depth: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        d = depth if mask is None or not mask.any() else depth[mask]
        if d.size:
            self.lo, self.hi = min(self.lo, float(d.min())), max(self.hi, float(d.max()))

    @property
    def span(self) -> Tuple[float, float]:
        if not np.isfinite(self.lo):
            return (0.0, 1.0)
        return (self.lo, self.hi if self.hi > self.lo else self.lo + 1.0)

    def normalise(self, depth: np.ndarray, inverse: bool) -> np.ndarray:
        """Depth (any float type) as float32 in [0, 1], nearer = 1 (`inverse`: the depth is larger =
        nearer)."""
        lo, hi = self.span
        t = np.subtract(depth, lo, dtype=np.float32)  # converts float16 (the spool) in the same pass
        t *= np.float32(1.0 / (hi - lo))
        if not inverse:
            np.subtract(np.float32(1.0), t, out=t)
        return np.clip(t, 0.0, 1.0, out=t)


def to_gray8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> (H, W) uint8."""
    return (values * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """[0, 1] float32 (finite, clipped: `DepthRange.normalise`) -> (H, W, 3) uint8 through the colour map."""
    from .visualize import colormap

    return colormap(cmap)[to_gray8(values)]


def half(image: np.ndarray) -> np.ndarray:
    """Every other pixel in each direction (tiles of the visualisation video)."""
    return image[::2, ::2]


def vis_layout(tasks: Iterable[str], height: int, width: int) -> Tuple[List[str], Tuple[int, int], Tuple[int, int]]:
    """Tiles of the visualisation video (image, then depth, normal, foreground as predicted), the
    tile size and the grid (rows, columns): half-size tiles, two per row, so the video is about
    the clip's own size whatever the number of maps."""
    names = ["image"] + [t for t in ("depth", "normal", "foreground") if t in tasks]
    tile = ((height + 1) // 2, (width + 1) // 2)
    return names, tile, ((len(names) + 1) // 2, 2)

