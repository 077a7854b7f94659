"""Predictions of a clip's frames through the one batching path (`DavidRuntime.imap`: decoding runs
ahead, memory bounded whatever the clip's length), optionally stabilised (`video.stability`)."""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import InputError
from ..inputs import Decoded, decode
from ..refine import AS_OPENED, RefineOptions, RegionTracker, refine_prediction
from .decode import Frame, FrameReader, FrameSelection, read_frames
from .stability import STABILIZE_MODES, StabilizeOptions, stabilize_pairs

#: `stabilize=` of predict_video and --stabilize: "none", or a mode of `stabilize`
STABILIZE_CHOICES = ("none",) + STABILIZE_MODES


def predict_frames(
    runtime: Any,
    frames: Iterable[Frame],
    batch_size: Optional[int] = None,
    prefetch: Optional[int] = None,
    refine: Any = AS_OPENED,
    channel_order: Optional[str] = "rgb",
) -> Iterator[Tuple[Frame, Any]]:
    """(Frame, Prediction) in order through `runtime.imap`; the first frame that fails raises.
    `refine` (RefineOptions, None for none, default: the runtime's): each frame's second pass per
    person, in frame order, its regions steadied over frames by one `RegionTracker`. `channel_order`:
    the frames' (decoded from a file: RGB whatever the runtime's); None: the runtime's."""
    options: Optional[RefineOptions] = runtime.refine if refine is AS_OPENED else refine
    tracker = RegionTracker() if options is not None else None
    order = channel_order or runtime.channel_order
    held: Dict[int, Decoded] = {}  # with refine: each frame as decoded in the reader thread, for its second pass

    def load(frame: Frame) -> Decoded:
        decoded = decode(frame.image, order, f"frame {frame.index}", runtime.max_image_pixels)
        if options is not None:
            held[frame.index] = decoded
        return decoded

    outcomes = runtime.imap(frames, batch_size=batch_size, prefetch=prefetch, load=load, refine=None)
    try:
        for frame, outcome in outcomes:
            pixels = held.pop(frame.index, None)
            if isinstance(outcome, Exception):
                raise outcome
            if options is not None:  # the frame's own pixels, cropped as pass 1 read them
                outcome = refine_prediction(runtime, pixels, outcome, options, tracker=tracker)
            frame.image = outcome.image  # decoded once: the Prediction's own copy
            yield frame, outcome
    finally:
        outcomes.close()


def predict_video(
    runtime: Any,
    src: Any,
    *,
    batch_size: Optional[int] = None,
    frames: Union[None, str, FrameSelection] = None,
    max_side: Optional[int] = None,
    fps: Optional[float] = None,
    prefetch: Optional[int] = None,
    stabilize: Optional[str] = None,
    stabilize_options: Union[None, Mapping[str, Any], StabilizeOptions] = None,
    refine: Optional[RefineOptions] = None,
) -> Iterator[Tuple[int, Optional[float], Any]]:
    """See `DavidRuntime.predict_video` (`refine`: as resolved by the runtime, None for none)."""
    if stabilize not in (None, "none", *STABILIZE_MODES):
        raise InputError(f"stabilize must be one of {', '.join(STABILIZE_CHOICES)}, got {stabilize!r}")
    mode = None if stabilize in (None, "none") else stabilize
    if isinstance(stabilize_options, StabilizeOptions):
        opts = stabilize_options
    else:
        opts = StabilizeOptions.from_keywords(stabilize_options or {})
    reader: Optional[FrameReader] = None
    if isinstance(src, (str, os.PathLike)):
        selection = frames if isinstance(frames, FrameSelection) else FrameSelection.parse(frames)
        reader = read_frames(src, selection, max_side)
        source: Iterable[Frame] = reader
    elif frames is not None or max_side is not None:
        raise InputError(
            "frames= and max_side= apply to video files; select and resize the frames of an iterable yourself"
        )
    else:
        source = _caller_frames(src, fps)
    return _predict_video(runtime, reader, source, batch_size, prefetch, mode, opts, refine)


def _caller_frames(src: Any, fps: Optional[float]) -> Iterator[Frame]:
    """An iterable's images as Frames (each array copied: decoding runs ahead, and a camera may reuse
    its buffer), timed at `fps`; InputError for what is not an iterable of frames or a bad `fps`."""
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0
    ):
        raise InputError(f"fps must be a positive number of frames per second or None, got {fps!r}")
    one_image = isinstance(src, np.ndarray) and (src.ndim < 3 or src.ndim == 3 and src.shape[-1] in (1, 3, 4))
    if one_image or isinstance(src, Image.Image) or not isinstance(src, Iterable):
        what = f"an array of shape {src.shape}" if isinstance(src, np.ndarray) else type(src).__name__
        raise InputError(
            f"predict_video takes a video file, an array of frames (N, H, W[, C]) or an iterable of frames, got "
            f"{what}; for one image use predict()"
        )
    copied = (np.array(image) if isinstance(image, np.ndarray) else image for image in src)
    return (Frame(i, None, i / fps if fps else None, 0, image) for i, image in enumerate(copied))


def _predict_video(
    runtime: Any,
    reader: Optional[FrameReader],
    source: Iterable[Frame],
    batch_size: Optional[int],
    prefetch: Optional[int],
    mode: Optional[str],
    options: StabilizeOptions,
    refine: Optional[RefineOptions],
) -> Iterator[Tuple[int, Optional[float], Any]]:
    pairs: Iterator[Tuple[Any, Any]] = (
        ((frame.index, frame.time), pred)
        for frame, pred in predict_frames(
            runtime, source, batch_size, prefetch, refine, None if reader is None else "rgb"
        )
    )
    if mode is not None:  # a clip that stops decoding early: what was decoded, stabilised, then the error
        pairs = stabilize_pairs(pairs, mode, options)
    for (index, time), pred in pairs:
        yield index, time, pred
    if reader is not None and reader.error is not None:
        raise reader.error
