"""Video in, video out on PyAV (`pip install "david-infer[video]"`, imported when used; docs/video.md):
I/O (`probe`, `decode`, `encode`), `predict` (frames through `imap`), `render`, `stability` (steadied maps, following the camera: `camera`)."""

from .decode import Frame, FrameReader, FrameSelection, VideoDecodeError, read_frames
from .encode import ALPHA_ENCODING, MUXERS, Encoding, NpyStackWriter, VideoWriter
from .predict import STABILIZE_CHOICES, predict_frames, predict_video
from .probe import VIDEO_SUFFIXES, VideoInfo, is_video_path, probe
from .render import DepthRange, VisLayout, to_gray8
from .stability import STABILIZE_MODES, StabilizeOptions, stabilize

__all__ = [
    "ALPHA_ENCODING",
    "MUXERS",
    "VIDEO_SUFFIXES",
    "DepthRange",
    "Encoding",
    "Frame",
    "FrameReader",
    "FrameSelection",
    "NpyStackWriter",
    "STABILIZE_CHOICES",
    "STABILIZE_MODES",
    "StabilizeOptions",
    "VideoDecodeError",
    "VideoInfo",
    "VideoWriter",
    "VisLayout",
    "is_video_path",
    "predict_frames",
    "predict_video",
    "probe",
    "read_frames",
    "stabilize",
    "to_gray8",
]
