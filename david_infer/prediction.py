"""The result of one `DavidRuntime.predict` call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

ImageSource = Union[np.ndarray, Callable[[], np.ndarray]]
#: (x0, y0, x1, y1) in image pixels, half-open: columns x0..x1-1, rows y0..y1-1
Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class Region:
    """One person region of a refined prediction (`DavidRuntime(refine="people")`, david_infer.refine).

    box:      the person's box (x0, y0, x1, y1), image pixels, half-open: the bounds of the mask's
              part (parts merged into one region: their union), or the box a caller passed.
    crop:     the square around `box` and its margin (clamped to the image) that pass 2 ran and
              pasted back; not square only where the image is narrower than it.
    source:   "mask" (found in pass 1's foreground) or "boxes" (given by the caller).
    status:   "refined" (pass 2 pasted), "fallback" (pass 2 ran and looked worse: pass 1 kept) or
              "skipped" (pass 2 not run); `reason` says why for the last two.
    model_pixels: the model pixels `box` got in pass 1 and in pass 2 (its area times each pass's
              scale squared; pass 2's None when it did not run).
    agreement: pass 2's mask against pass 1's inside `box` (intersection over union of the pixels
              at or above the threshold); None without a mask or where neither has such pixels.
    depth_scale, depth_shift: pass 2's depth as pasted: `scale * depth + shift` (aligned to pass 1
              inside the box); None where nothing was pasted or the model has no depth.
    alignment: how the scale and shift were found: "least-squares" (robust, Huber-weighted) or
              "spread" (the median and interquartile range matched, where least squares gives no
              positive scale); "" without depth.
    """

    box: Box
    crop: Box
    source: str
    status: str
    reason: str = ""
    model_pixels: Tuple[float, Optional[float]] = (0.0, None)
    agreement: Optional[float] = None
    depth_scale: Optional[float] = None
    depth_shift: Optional[float] = None
    alignment: str = ""

    def as_record(self) -> Dict[str, Any]:
        """The region as JSON values (the completion record's `regions`)."""
        return {
            "box": list(self.box),
            "crop": list(self.crop),
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "model_pixels": [round(self.model_pixels[0], 1), _rounded(self.model_pixels[1], 1)],
            "agreement": _rounded(self.agreement, 4),
            "depth_scale": _rounded(self.depth_scale, 6),
            "depth_shift": _rounded(self.depth_shift, 6),
            "alignment": self.alignment,
        }


def _rounded(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(float(value), digits)


@dataclass(init=False)
class Prediction:
    """Per-pixel outputs aligned with the input image (H x W, EXIF orientation applied).

    image:      (H, W, 3) uint8 RGB, the input as decoded (may share memory with an input array).
                It may be given as a zero-argument callable, made into the array on first access
                (so predict does not pay for it when nobody looks).
    depth:      (H, W) float32 relative depth, finite. By default larger = nearer (the raw output
                negated, as the official runtime's `is_inverse` default); with `invert_depth=False`
                the raw output, larger = farther. Optionally min-max normalised to [0, 1].
    normal:     (H, W, 3) float32 unit surface normals (x, y, z).
    foreground: (H, W) float32 soft mask in [0, 1] (0/1 when a threshold is set).
    depth_inverse: True when `depth` is larger = nearer (the default), False for larger = farther;
                visualisation and the point cloud read it.
    regions:    with `refine` (david_infer.refine): the person regions of the second pass, each a
                `Region` (found, refined, fallen back or skipped, and why); None when not refined.

    A task the model lacks is None.
    """

    image_source: ImageSource = field(repr=False, compare=False)
    depth: Optional[np.ndarray] = None
    normal: Optional[np.ndarray] = None
    foreground: Optional[np.ndarray] = None
    depth_inverse: bool = True
    regions: Optional[List[Region]] = None

    def __init__(
        self,
        image: ImageSource,
        depth: Optional[np.ndarray] = None,
        normal: Optional[np.ndarray] = None,
        foreground: Optional[np.ndarray] = None,
        depth_inverse: bool = True,
        regions: Optional[List[Region]] = None,
    ) -> None:
        self.image_source = image
        self.depth, self.normal, self.foreground = depth, normal, foreground
        self.depth_inverse = depth_inverse
        self.regions = regions

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB input image (made on first access when given as a callable)."""
        if callable(self.image_source):
            self.image_source = self.image_source()
        return self.image_source

    @image.setter
    def image(self, value: ImageSource) -> None:
        self.image_source = value

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) of the input image and of every output."""
        for value in (self.depth, self.foreground, self.normal):
            if value is not None:
                return (int(value.shape[0]), int(value.shape[1]))
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def visualize(self) -> np.ndarray:
        """An (h, w, 3) uint8 RGB panel of the image and every predicted map."""
        from . import visualize

        return visualize.panel(self)
