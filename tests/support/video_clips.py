"""Short clips synthesised with PyAV for the video tests (real files, real codecs)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np


def pattern(index: int, height: int, width: int) -> np.ndarray:
    """A frame with a bright figure moving across a gradient (differs from frame to frame)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.full_like(x, (index * 37) % 256)], axis=-1
    ).astype(np.uint8)
    cx = (index * 5) % width
    img[height // 4 : 3 * height // 4, max(0, cx - width // 8) : cx + width // 8] = (230, 200, 180)
    return img


def steady_pattern(index: int, height: int, width: int) -> np.ndarray:
    """A steady shot: a fixed gradient with a fixed figure, and a small square moving slowly."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 200 // max(1, width - 1), y * 200 // max(1, height - 1), np.full_like(x, 90)], axis=-1)
    img = img.astype(np.uint8)
    img[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (230, 200, 180)
    top, left = height // 8, (2 + index) % max(1, width - 8)
    img[top : top + 6, left : left + 6] = (40, 60, 220)
    return img


def make_clip(
    path: Path,
    frames: int = 12,
    size: Sequence[int] = (48, 64),
    rate: int = 25,
    rotation: int = 0,
    pts: Optional[Sequence[int]] = None,
    time_base: Optional[Fraction] = None,
    audio: bool = False,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    color_range: int = 0,
    sar: Optional[Fraction] = None,
    faststart: bool = False,
    draw: Callable[[int, int, int], np.ndarray] = pattern,
) -> Path:
    """Write a clip of `frames` frames of `size` (height, width) as stored; `pts` (in `time_base`)
    gives a variable frame rate; `rotation` is the display rotation (degrees counter-clockwise);
    `draw(index, height, width)` makes each frame."""
    import av

    height, width = size
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "crf": "10"}
        if color_range:
            stream.codec_context.color_range = color_range
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation:
            stream.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=16000)
            astream.layout = "mono"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(i, height, width), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_color_range=color_range or None)
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            else:
                frame.pts = i
                frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            seconds = frames / rate if pts is None else float((pts[-1] + 1) * time_base)
            total = int(seconds * 16000)
            t = np.arange(total) / 16000.0
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = samples[None, start : start + 1024]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                af.sample_rate = 16000
                af.pts = start
                af.time_base = Fraction(1, 16000)
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path
