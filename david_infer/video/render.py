"""Pictures of a clip's predictions, frame by frame: one depth range over a clip (`DepthRange`), grey
frames (`to_gray8`) and the vis video's picture (`VisLayout`, the image panel's tiles)."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

import numpy as np

from ..visualize import draw_regions, draw_tile, tile_names, tile_shade


class DepthRange:
    """One depth range for a whole clip (or the frames so far), so the depth shown does not flicker:
    `update(depth, mask)` widens it to a frame's pixels (within the mask when it keeps any); `span`
    is (lo, hi)."""

    def __init__(self) -> None:
        self.lo, self.hi = np.inf, -np.inf

    def update(self, depth: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        """Widen the range to `depth` (within `mask` when it keeps any pixel)."""
        d = depth if mask is None or not mask.any() else depth[mask]
        if d.size:
            self.lo, self.hi = min(self.lo, float(d.min())), max(self.hi, float(d.max()))

    @property
    def span(self) -> Tuple[float, float]:
        """(lo, hi), hi > lo; (0, 1) before any depth."""
        if not np.isfinite(self.lo):
            return (0.0, 1.0)
        return (self.lo, self.hi if self.hi > self.lo else self.lo + 1.0)

    def normalise(self, depth: np.ndarray, inverse: bool) -> np.ndarray:
        """Depth (any float type) as float32 in [0, 1], nearer = 1 (`inverse`: larger = nearer)."""
        lo, hi = self.span
        t = np.subtract(depth, lo, dtype=np.float32)  # converts float16 (the spool) in the same pass
        t *= np.float32(1.0 / (hi - lo))
        if not inverse:
            np.subtract(np.float32(1.0), t, out=t)
        return np.clip(t, 0.0, 1.0, out=t)


def to_gray8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> (H, W) uint8."""
    return (values * 255.0 + 0.5).astype(np.uint8)


def half(image: np.ndarray) -> np.ndarray:
    """Every other pixel in each direction (tiles of the visualisation video)."""
    return image[::2, ::2]


class VisLayout:
    """The vis video's picture for a model's `tasks` and frames of `height` x `width`: the image panel's
    tiles (`visualize.tile_names`, `draw_tile`) at half size, two per row, so the video is about the
    clip's own size; the depth tile is drawn apart (`draw_depth`), once the clip's range is known."""

    def __init__(self, tasks: Iterable[str], height: int, width: int) -> None:
        self.names = tile_names(tasks)
        self.tile = ((height + 1) // 2, (width + 1) // 2)
        self.shape = ((len(self.names) + 1) // 2 * self.tile[0], 2 * self.tile[1])  # (height, width)

    def _place(self, canvas: np.ndarray, name: str, tile: np.ndarray) -> None:
        row, column = divmod(self.names.index(name), 2)
        th, tw = self.tile
        canvas[row * th : (row + 1) * th, column * tw : (column + 1) * tw] = tile

    def draw(self, pred: Any) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """(canvas, shade, depth): one frame's picture without its depth tile, the half-size matte that
        fades depth and normals (None when it keeps no pixel), the half-size depth (None: none)."""
        canvas = np.zeros(self.shape + (3,), np.uint8)
        image = half(pred.image)
        alpha = None if pred.foreground is None else np.clip(half(pred.foreground), 0.0, 1.0)
        shade = tile_shade(alpha)
        maps = {"image": image, "normal": None if pred.normal is None else half(pred.normal), "foreground": alpha}
        regions = getattr(pred, "regions", None)
        for name in self.names:
            data = maps.get(name)
            if name == "image" and regions:
                data = draw_regions(image, regions, image.shape[1] / pred.image.shape[1])
            if data is not None:  # depth: by `draw_depth`
                self._place(canvas, name, draw_tile(name, data, image, shade))
        return canvas, shade, None if pred.depth is None else half(pred.depth)

    def draw_depth(
        self,
        canvas: np.ndarray,
        shade: Optional[np.ndarray],
        depth: Optional[np.ndarray],
        span: Tuple[float, float],
        inverse: bool,
    ) -> np.ndarray:
        """`canvas` with its depth tile drawn within `span` (the clip's range over the person)."""
        if depth is not None:
            self._place(canvas, "depth", draw_tile("depth", depth, shade=shade, inverse=inverse, depth_span=span))
        return canvas
