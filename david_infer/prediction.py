"""The result of one `DavidRuntime.predict` call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np


@dataclass
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

    A task the model lacks is None.
    """

    image: np.ndarray
    depth: Optional[np.ndarray] = None
    normal: Optional[np.ndarray] = None
    foreground: Optional[np.ndarray] = None
    depth_inverse: bool = True
    _image: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> tuple:
        """(height, width) of the input image and of every output."""
        for value in (self.depth, self.foreground, self.normal):
            if value is not None:
                return tuple(value.shape[:2])
        return tuple(self.image.shape[:2])

    def visualize(self) -> np.ndarray:
        """An (h, w, 3) uint8 RGB panel of the image and every predicted map."""
        from . import visualize

        return visualize.panel(self)


def _get_image(self: Prediction) -> np.ndarray:
    if callable(self._image):
        self._image = self._image()
    return self._image


def _set_image(self: Prediction, value: Union[np.ndarray, Callable[[], np.ndarray]]) -> None:
    self._image = value


# A property over the dataclass field: the generated __init__ assigns through the setter.
Prediction.image = property(_get_image, _set_image, doc="(H, W, 3) uint8 RGB input image")  # type: ignore[assignment]
