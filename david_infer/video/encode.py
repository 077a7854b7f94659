"""Output videos shaped like a source clip, on PyAV: `VideoWriter` (the source's timestamps, rate,
rotation, colour tags and pixel aspect, optionally its audio, into a temporary file the caller puts
in place) and `NpyStackWriter` (an (N, H, W[, C]) .npy stack written frame by frame)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from .._optional import require
from ..errors import InputError
from .decode import Frame
from .probe import VideoInfo

#: muxer of each output suffix (outputs are written to temporaries whose names FFmpeg cannot read)
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


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
    """One output video shaped like the source clip `info`, written to `tmp`, an empty temporary the
    caller made beside `path` (whose suffix names the container): `write(image, frame)` per upright
    image (stored turned back, with the source's display rotation), `close()` finishes the file,
    `abort()` removes it."""

    def __init__(
        self,
        path: Path,
        tmp: Path,
        info: VideoInfo,
        size: Tuple[int, int],
        encoding: Encoding = Encoding(),
        audio: bool = False,
    ) -> None:
        av = require("av", "video files")
        self.path, self.tmp, self.info = Path(path), Path(tmp), info
        self.height, self.width = size  # as stored
        self.encoding = encoding.for_size(*size)
        self.frames = 0
        muxer = MUXERS.get(self.path.suffix.lower())
        if muxer is None:
            self.tmp.unlink(missing_ok=True)
            raise InputError(f"{self.path}: cannot write video as {self.path.suffix!r}; use one of {', '.join(MUXERS)}")
        self._audio: Optional[_AudioCopy] = None
        self._first: Optional[float] = None  # time of the first frame written, and the end of the last
        self._end: Optional[float] = None
        try:
            self.container = av.open(str(self.tmp), "w", format=muxer)
        except av.error.FFmpegError as exc:
            self.tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write {self.path}: {exc}") from None
        try:
            self.stream = self._add_stream()
            if audio and info.audio_codec is not None:
                self._audio = _AudioCopy(info, self.container)
        except BaseException:
            self.abort()
            raise
        self._closed = False

    def _add_stream(self) -> Any:
        av = require("av", "video files")
        info, enc = self.info, self.encoding
        try:
            stream = self.container.add_stream(enc.codec, rate=info.rate or Fraction(25))
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"cannot write {self.path}: this FFmpeg has no {enc.codec} encoder ({exc})") from None
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, enc.pix_fmt
        stream.time_base = info.time_base
        ctx = stream.codec_context
        ctx.time_base = info.time_base
        ctx.thread_count = 0  # FFmpeg's choice
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
        av = require("av", "video files")
        info = self.info
        stored = np.rot90(image, -info.quarter_turns) if info.quarter_turns else image
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format=self.encoding.input_format)
        if self.encoding.pix_fmt != self.encoding.input_format:
            yuv = self.encoding.pix_fmt.startswith("yuv")
            vf = vf.reformat(
                format=self.encoding.pix_fmt,
                dst_colorspace=info.colorspace if yuv and info.colorspace != 2 else None,
                dst_color_range=info.color_range or None if yuv else None,
            )
        vf.pts = frame.pts if frame.pts is not None else self.frames
        vf.time_base = info.time_base
        if frame.duration:
            vf.duration = frame.duration
        if self._audio is not None and frame.time is not None:
            if self._first is None:
                self._first = frame.time
            self._audio.copy_until(frame.time, self._first)
            self._end = frame.time + float(frame.duration * info.time_base)
        self._encode(vf, frame.index)
        self.frames += 1

    def _encode(self, frame: Any, index: Optional[int]) -> None:
        """Encode and mux `frame` (None: flush); FFmpeg's refusal as an InputError naming the file."""
        av = require("av", "video files")
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except av.error.FFmpegError as exc:
            at = "at the end" if index is None else f"at the source's frame {index}"
            raise InputError(f"cannot write {self.path} {at}: FFmpeg: {exc}") from None

    def close(self) -> None:
        """Flush the encoder and finish the file (still under its temporary name)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._encode(None, None)
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
        av = require("av", "video files")
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

    def __init__(self, path: Path, tmp: Path, shape: Tuple[int, ...], dtype: Any = np.float32) -> None:
        self.path, self.tmp, self.shape, self.dtype = Path(path), Path(tmp), tuple(shape), np.dtype(dtype)
        self.count = 0
        self._file = open(self.tmp, "wb")
        self._file.write(self._header())

    def _header(self) -> bytes:
        fields = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.shape),
        }
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
