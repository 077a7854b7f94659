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
    """One person region of a refined prediction (`DavidRuntime(refine="people")`, docs/refine.md):
    the person's `box` and the `crop` pass 2 ran (x0, y0, x1, y1, image pixels, half-open), its
    `source` ("mask" or "boxes"), `status` ("refined", "fallback", "skipped") and `reason`, the
    `model_pixels` of the box in pass 1 and 2 (None: not run), the masks' `agreement` (IoU inside
    the box), and pass 2's pasted depth as `depth_scale * depth + depth_shift`, found by
    `alignment` ("least-squares" or "spread"; "" without depth)."""

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
    """Per-pixel outputs at the input image's size (EXIF orientation applied; docs/runtime.md): `image`
    (H, W, 3) uint8 RGB as decoded (or a callable that makes it on first access), `depth` (H, W)
    float32 (larger = nearer when `depth_inverse`, the default), `normal` (H, W, 3) unit vectors,
    `foreground` (H, W) in [0, 1]; None for a task the model lacks. `regions`: with `refine`, the
    person regions of the second pass (`Region`), else None."""

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
