"""What a clip holds, checked before any model call (`probe` -> `VideoInfo`), and which files are video;
a file without a video stream or with a codec this FFmpeg cannot decode is an InputError naming it."""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple, Union

from .._optional import require
from ..errors import InputError

#: file suffixes taken as video (lower case)
VIDEO_SUFFIXES = frozenset(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv .y4m".split())
PathLike = Union[str, "os.PathLike[str]"]


def is_video_path(path: PathLike) -> bool:
    """True for a file name with a video suffix (`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


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


def probe(path: PathLike) -> VideoInfo:
    """Open a clip, check it has a decodable video stream and read its properties (decodes the
    first frame for the display rotation). InputError naming the file otherwise."""
    av = require("av", "video files")
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
            path=path,
            codec=codec,
            width=first.width,
            height=first.height,
            frames=int(stream.frames or 0),
            rate=Fraction(stream.average_rate) if stream.average_rate else None,
            time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000),
            duration=duration,
            rotation=int(round(first.rotation or 0)),
            color_range=int(first.color_range or 0),
            colorspace=int(first.colorspace or 2),
            color_primaries=int(first.color_primaries or 2),
            color_trc=int(first.color_trc or 2),
            sample_aspect_ratio=Fraction(sar) if sar else None,
            audio_codec=audio[0].codec_context.name if audio else None,
            pix_fmt=first.format.name,
        )
    finally:
        container.close()
