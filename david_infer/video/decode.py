"""Decoded frames of a clip (`FrameSelection`, `FrameReader` / `read_frames`): one `Frame` at a time,
upright; a clip that stops early ends the iteration and leaves the reason in `FrameReader.error`."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from .._optional import require
from ..errors import InputError
from .probe import PathLike, VideoInfo, probe


class VideoDecodeError(InputError):
    """A clip could not be decoded to its end; `frames_decoded` frames came out before it stopped."""

    def __init__(self, message: str, frames_decoded: int) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Frames `start, start + step, ...` before `stop` (None = to the end), like a Python slice."""

    start: int = 0
    stop: Optional[int] = None
    step: int = 1

    def __post_init__(self) -> None:
        if self.start < 0 or self.step < 1 or (self.stop is not None and self.stop < self.start):
            raise InputError(
                f"frame selection must have 0 <= START <= END and STEP >= 1, got "
                f"{self.start}:{'' if self.stop is None else self.stop}:{self.step}"
            )

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
        """Whether frame `index` is selected."""
        return index >= self.start and (index - self.start) % self.step == 0 and not self.past(index)

    def past(self, index: int) -> bool:
        """Whether frame `index` is past the selection's end."""
        return self.stop is not None and index >= self.stop

    def count(self, total: int) -> int:
        """How many of `total` frames are selected."""
        stop = total if self.stop is None else min(total, self.stop)
        return max(0, -(-(stop - self.start) // self.step))


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
    """Iterates a clip's selected frames once; decoding that stops early ends the iteration quietly
    and sets `error`, so whatever was decoded can still be used."""

    def __init__(self, info: VideoInfo, selection: FrameSelection = FrameSelection(), max_side: Optional[int] = None):
        self.info, self.selection, self.max_side = info, selection, max_side
        self.error: Optional[VideoDecodeError] = None
        self.decoded = 0  # frames decoded from the source, selected or not

    def __iter__(self) -> Iterator[Frame]:
        av = require("av", "video files")
        info = self.info
        out_h, out_w = info.output_size(self.max_side)
        scaled = (out_h, out_w) != (info.height, info.width)
        container = av.open(str(info.path))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads in the decoder
            stream.codec_context.thread_count = 0  # FFmpeg's choice
            index, end = 0, None
            offset, last = 0, None  # added to the pts; the previous frame's (pts, duration)
            for frame in self._decoded(container, stream):
                if self.selection.past(index):
                    return
                pts = frame.pts
                if pts is not None:
                    if last is not None and pts + offset <= last[0]:  # timestamps restart (joined clips): go on
                        offset = last[0] + max(1, last[1]) - pts
                    pts += offset
                    last = (pts, int(frame.duration or 0))
                seconds = None if frame.time is None else float(frame.time) + float(offset * info.time_base)
                if seconds is not None:
                    end = seconds + float((frame.duration or 0) * info.time_base)
                if self.selection.wants(index):
                    rgb = frame.reformat(
                        width=out_w,
                        height=out_h,
                        format="rgb24",
                        interpolation="AREA" if scaled else None,
                        src_color_range=frame.color_range or None,
                    ).to_ndarray()
                    if info.quarter_turns:
                        rgb = np.ascontiguousarray(np.rot90(rgb, info.quarter_turns))
                    yield Frame(index, pts, seconds, int(frame.duration or 0), rgb)
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
        return VideoDecodeError(
            f"{info.path}: the video stream ended after {said} (truncated file?); decoding stopped at frame {index}",
            index,
        )

    def _decoded(self, container: Any, stream: Any) -> Iterator[Any]:
        av = require("av", "video files")
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.error = VideoDecodeError(
                    f"{self.info.path}: decoding stopped at frame {self.decoded}: {exc}", self.decoded
                )
                return
            yield from frames


def read_frames(
    path: Union[PathLike, VideoInfo], selection: Optional[FrameSelection] = None, max_side: Optional[int] = None
) -> FrameReader:
    """The clip's selected frames, upright, each at most `max_side` pixels on its longer side."""
    info = path if isinstance(path, VideoInfo) else probe(path)
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 2):
        raise InputError(f"max_side must be an integer >= 2 or None, got {max_side!r}")
    return FrameReader(info, selection or FrameSelection(), max_side)
