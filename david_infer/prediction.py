"""The result of one `DavidRuntime.predict` call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple, Union

import numpy as np

ImageSource = Union[np.ndarray, Callable[[], np.ndarray]]


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

    A task the model lacks is None.
    """

    image_source: ImageSource = field(repr=False, compare=False)
    depth: Optional[np.ndarray] = None
    normal: Optional[np.ndarray] = None
    foreground: Optional[np.ndarray] = None
    depth_inverse: bool = True

    def __init__(
        self,
        image: ImageSource,
        depth: Optional[np.ndarray] = None,
        normal: Optional[np.ndarray] = None,
        foreground: Optional[np.ndarray] = None,
        depth_inverse: bool = True,
    ) -> None:
        self.image_source = image
        self.depth, self.normal, self.foreground = depth, normal, foreground
        self.depth_inverse = depth_inverse

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
