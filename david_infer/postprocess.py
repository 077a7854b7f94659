"""Postprocessing: model outputs (C, R, R) -> maps aligned with the input image.

Each map is resampled straight from the crop box of the model output to the image size
(david_infer.resample: Pillow's filters as banded matrix products). That equals "resize the output
to the padded square, then crop the padding off" (what the official runtime does) without ever
building the padded square at full resolution.

Then per task: depth optionally negated (`invert`: larger = nearer) and min-max normalised to
[0, 1]; normals renormalised to unit length after resizing; foreground clipped to [0, 1] and
optionally thresholded to 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from .errors import InputError
from .preprocess import Geometry
from .resample import KERNELS, cv2_weights, resize_box, resize_separable

#: "official" = OpenCV INTER_CUBIC on the full padded square, then crop (the official runtime).
INTERPOLATIONS = tuple(KERNELS) + ("official",)
_NORMAL_EPS = 1e-12


@dataclass(frozen=True)
class PostOptions:
    """Per-task output options.

    invert_depth: True (default) negates the raw depth so larger = nearer, as the official
        runtime does; False returns the raw output, larger = farther.
    normalize_depth: min-max normalise depth to [0, 1] per image (after inversion).
    foreground_threshold: None for the soft mask, or t in [0, 1] for a 0/1 mask (> t).
    interpolation: how outputs are resized back: "auto" (the runtime picks "official" with the
        official pipeline, else "bicubic"), "official" (OpenCV INTER_CUBIC on the padded square,
        as the official runtime), "bicubic" or "bilinear" (Pillow's antialiased filters).
    """

    invert_depth: bool = True
    normalize_depth: bool = False
    foreground_threshold: Optional[float] = None
    interpolation: str = "auto"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS + ("auto",):
            raise InputError(
                f"interpolation must be 'auto' or one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        for name in ("invert_depth", "normalize_depth"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        t = self.foreground_threshold
        if t is not None and not (isinstance(t, (int, float)) and 0.0 <= float(t) <= 1.0):
            raise InputError(f"foreground_threshold must be None or a number in [0, 1], got {t!r}")


def _finisher(task: str, opts: PostOptions) -> Callable[[np.ndarray], None]:
    """In-place per-block finishing for a task (runs while the block is in cache)."""
    if task == "depth":
        return (lambda block: np.negative(block, out=block)) if opts.invert_depth else (lambda block: None)
    if task == "foreground":

        def clip(block: np.ndarray) -> None:
            np.clip(block, 0.0, 1.0, out=block)
            if opts.foreground_threshold is not None:
                np.greater(block, opts.foreground_threshold, out=block)

        return clip

    def unit(block: np.ndarray) -> None:  # only for the crop path; resize_box normalises itself
        vectors = block.reshape(-1, 3)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1), _NORMAL_EPS)[:, None]

    return unit


def _crop(plane: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model output (C, R, R) at the square's own size: crop the padding, channels last."""
    t, l, h, w = geometry.top, geometry.left, geometry.height, geometry.width
    cropped = plane[:, t : t + h, l : l + w]
    # order="C": the finishers work on reshaped views, which must not silently be copies
    return np.array(cropped[0] if plane.shape[0] == 1 else cropped.transpose(1, 2, 0), dtype=np.float32, order="C")


def _resize(value: np.ndarray, geometry: Geometry, interpolation: str, finish, pool, unit) -> np.ndarray:
    if interpolation == "auto":  # a runtime resolves "auto" by its pipeline; alone it is bicubic
        interpolation = "bicubic"
    if interpolation == "official":
        r, side = geometry.resolution, geometry.side
        wy = cv2_weights(r, side, geometry.top, geometry.height)
        wx = cv2_weights(r, side, geometry.left, geometry.width)
        return resize_separable(value, wy, wx, finish, pool, unit_eps=unit)
    size = (geometry.height, geometry.width)
    return resize_box(value, geometry.crop_box(), size, interpolation, finish, pool, unit_eps=unit)


def postprocess(
    outputs: Dict[str, np.ndarray], geometry: Geometry, opts: PostOptions, pool=None
) -> Dict[str, np.ndarray]:
    """`outputs`: task -> (C, R, R) float32 for one image. Returns task -> map at the image size:
    depth (H, W), normal (H, W, 3), foreground (H, W)."""
    result: Dict[str, np.ndarray] = {}
    for task, value in outputs.items():
        finish = _finisher(task, opts)
        if geometry.side == geometry.resolution:  # the model ran at the square's own size
            out = _crop(value, geometry)
            finish(out.reshape(out.shape[0], -1))
        else:
            unit = _NORMAL_EPS if task == "normal" else None
            out = _resize(value, geometry, opts.interpolation, finish, pool, unit)
        if task == "depth" and opts.normalize_depth:
            lo, hi = float(out.min()), float(out.max())
            out -= lo
            if hi > lo:
                out *= np.float32(1.0 / (hi - lo))
        result[task] = out
    return result
