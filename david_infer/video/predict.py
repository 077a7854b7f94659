"""Predictions of a clip's frames through the one batching path (`DavidRuntime.imap`): decoding
runs ahead in its reader thread, memory is bounded whatever the clip's length; optionally
stabilised over time (`david_infer.video.stability`)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple, Union

from ..errors import InputError
from ..refine import AS_OPENED, RefineOptions, RegionTracker, refine_prediction
from .decode import Frame, FrameReader, FrameSelection, read_frames
from .stability import STABILIZE_MODES, StabilizeOptions, stabilize_pairs

#: `stabilize=` of predict_video and --stabilize: "none", or a mode of `stabilize`
STABILIZE_CHOICES = ("none",) + STABILIZE_MODES


def check_stabilize(mode: Optional[str]) -> Optional[str]:
    """The stabilisation mode asked for ("online", "offline"), None for none; InputError otherwise."""
    if mode is None or mode == "none":
        return None
    if mode not in STABILIZE_MODES:
        raise InputError(f"stabilize must be one of {', '.join(STABILIZE_CHOICES)}, got {mode!r}")
    return mode


def as_stabilize_options(options: Union[None, Mapping[str, Any], StabilizeOptions]) -> StabilizeOptions:
    """`StabilizeOptions` from a mapping of its fields (or as given)."""
    if isinstance(options, StabilizeOptions):
        return options
    return StabilizeOptions.from_keywords(options or {})


def _array_frames(frames: Iterable[Any], fps: Optional[float]) -> Iterator[Frame]:
    """Frames given as numpy arrays or PIL images, numbered from 0 (timestamps from `fps`)."""
    for index, image in enumerate(frames):
        yield Frame(index, None, index / fps if fps else None, 0, image)


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
    mode, opts = check_stabilize(stabilize), as_stabilize_options(stabilize_options)
    if isinstance(src, (str, os.PathLike)):
        selection = frames if isinstance(frames, FrameSelection) else FrameSelection.parse(frames)
        file_reader = read_frames(src, selection, max_side)
        reader: Optional[FrameReader] = file_reader
        source: Iterable[Frame] = file_reader
    else:
        if frames is not None or max_side is not None:
            raise InputError(
                "frames= and max_side= apply to video files; select and resize the frames of an iterable yourself"
            )
        reader, source = None, _array_frames(src, fps)
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
