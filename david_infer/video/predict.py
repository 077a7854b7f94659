"""Predictions of a clip's frames through the one batching path (`DavidRuntime.imap`: decoding runs
ahead, memory bounded whatever the clip's length), optionally stabilised (`video.stability`)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple, Union

from ..errors import InputError
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
) -> Iterator[Tuple[Frame, Any]]:
    """(Frame, Prediction) in order through `runtime.imap`; the first frame that fails raises.
    `refine` (RefineOptions, None for none, default: the runtime's): each frame's second pass per
    person, in frame order, its regions steadied over frames by one `RegionTracker`."""
    options: Optional[RefineOptions] = runtime.refine if refine is AS_OPENED else refine
    tracker = RegionTracker() if options is not None else None
    outcomes = runtime.imap(frames, batch_size=batch_size, prefetch=prefetch, load=lambda f: f.image, refine=None)
    try:
        for frame, outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
            if options is not None:  # the frame's own pixels, cropped as pass 1 read them
                outcome = refine_prediction(runtime, frame.image, outcome, options, tracker=tracker)
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
        source = (Frame(i, None, i / fps if fps else None, 0, image) for i, image in enumerate(src))
    return _predict_video(runtime, reader, source, batch_size, prefetch, mode, opts, refine)


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
        for frame, pred in predict_frames(runtime, source, batch_size, prefetch, refine)
    )
    if mode is not None:  # a clip that stops decoding early: what was decoded, stabilised, then the error
        pairs = stabilize_pairs(pairs, mode, options)
    for (index, time), pred in pairs:
        yield index, time, pred
    if reader is not None and reader.error is not None:
        raise reader.error
