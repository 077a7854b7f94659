"""Pre- and postprocessing as torch ops on the runner's device (`TorchOptions.prepost`).

The decoded image goes to the device once; padding, resizing, the 384 ViT copy, the model, the
resize back, the crop and the per-task finishing run there; the finished maps come back once (or
stay there with `output="torch"`). The steps are those of david_infer.preprocess/postprocess, so
results agree with the numpy path (tests/backends/test_torch_prepost.py bounds the difference):

- antialias pipeline: Pillow's resampling reproduced, including its details: the reducing-gap box
  reduction of the long axis, the fractional source box that follows it, and 8-bit rounding
  between passes for 8-bit images. Each pass is a product with Pillow's own weight matrix
  (david_infer.resample.weights, cached on the device): F.interpolate(antialias=True) computes
  the same weights but cannot resample a fractional box;
- official pipeline: the Gaussian pyramid step as a strided 5-tap convolution (reflect-101 border)
  and OpenCV's bilinear resize as F.interpolate(antialias=False), 8-bit rounding per level;
- back to the image: F.interpolate(antialias=True) (Pillow's bicubic / bilinear, which torch
  implements with Pillow's kernels) or, for "official", OpenCV's cubic (a = -0.75,
  F.interpolate(antialias=False)) to the padded square, then the crop.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ModelError
from ...inputs import Decoded
from ...postprocess import PostOptions
from ...preprocess import OFFICIAL_PYRAMID_FACTOR, REDUCING_GAP, Geometry, Prepared, square_geometry
from ...resample import pillow_coeffs

if TYPE_CHECKING:
    from .runner import TorchRunner

_NORMAL_EPS = 1e-12
PILLOW_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2 bits of fixed-point coefficients
_PYRAMID_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # OpenCV pyrDown's kernel, / 16 per axis


def fixed_point(coeffs: np.ndarray) -> np.ndarray:
    """Pillow's 8-bit coefficients: each weight rounded (away from zero) to a multiple of
    2^-PRECISION_BITS, kept as the integer numerator (exact in float64)."""
    scaled = coeffs * float(1 << PILLOW_PRECISION_BITS)
    return np.where(scaled < 0, np.ceil(scaled - 0.5), np.floor(scaled + 0.5))


class TorchPrepost:
    """The device stages of a DavidRuntime whose runner is a TorchRunner (see the module doc)."""

    def __init__(self, runner: "TorchRunner", output: str = "numpy") -> None:
        import torch

        self.torch = torch
        self.runner = runner
        self.device = runner.torch_device
        self.output = output
        self._weights: Dict[Tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # -- preprocessing -------------------------------------------------------------------------

    def _matrix(self, key: Tuple[Any, ...], make: Any, dtype: Any) -> Any:
        """A weight matrix made by `make()` (numpy), cached on the device by `key` and dtype."""
        key = key + (dtype,)
        with self._lock:
            w = self._weights.get(key)
            if w is None:
                if len(self._weights) > 64:  # a long run over many sizes: keep memory bounded
                    self._weights.clear()
                w = self._weights[key] = self.torch.from_numpy(np.asarray(make(), dtype=np.float64)).to(
                    self.device, dtype
                )
            return w

    def _upload(self, decoded: Decoded) -> Tuple[Any, bool]:
        """(1, C, H, W) float32 on the device in the decoded channel order (0..255 for 8-bit data,
        which the resampling then rounds like Pillow does), and whether it is 8-bit."""
        torch = self.torch
        a = decoded.numpy()
        if self.runner.pinned:  # one page-locked staging copy (torch caches those blocks), async upload
            host = torch.empty(a.shape, dtype=torch.uint8 if a.dtype == np.uint8 else torch.float32, pin_memory=True)
            host.numpy()[...] = a
            x = host.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
        quantize = a.dtype == np.uint8  # 8-bit: integer values in float64, rounded as Pillow rounds
        return (x.double() if quantize else x.float()), quantize

    def _along(self, x: Any, axis: int, w: Any) -> Any:
        """x (1, C, H, W) times matrix `w` (out, in) along axis 2 (rows) or 3 (columns)."""
        return self.torch.matmul(w, x) if axis == 2 else self.torch.matmul(x, w.t())

    def _resample(self, x: Any, axis: int, n: int, span: float, size: int, quantize: bool) -> Any:
        """Pillow's bilinear resampling of [0, span) along one axis to `size`. 8-bit data (float64
        integers 0..255) as Pillow computes it: fixed-point weights, exact integer sums, rounding."""

        def coeffs() -> Any:
            return pillow_coeffs(n, 0.0, span, size, "bilinear")

        if not quantize:
            return self._along(x, axis, self._matrix(("bilinear", n, span, size), coeffs, self.torch.float32))
        w = self._matrix(("bilinear8", n, span, size), lambda: fixed_point(coeffs()), self.torch.float64)
        half = float(1 << (PILLOW_PRECISION_BITS - 1))
        return self._along(x, axis, w).add_(half).div_(2.0 * half).floor_().clamp_(0.0, 255.0)

    def _reduce(self, x: Any, axis: int, factor: int, quantize: bool) -> Any:
        """Pillow's `Image.reduce` by `factor` along one axis (8-bit: its rounding, n // 2 then a
        2^24 fixed-point reciprocal of the block size n)."""
        torch = self.torch
        n = x.shape[axis]
        blocks = -(-n // factor)
        extra = blocks * factor - n  # the last block holds what remains: zeros fill it, counts divide
        x = torch.nn.functional.pad(x, (0, extra) if axis == 3 else (0, 0, 0, extra))
        shape = list(x.shape)
        shape[axis : axis + 1] = [blocks, factor]
        total = x.reshape(shape).sum(dim=axis + 1)
        counts = torch.full((blocks,), float(factor), dtype=x.dtype, device=x.device)
        counts[-1] = factor - extra
        counts = counts.view(-1, 1) if axis == 2 else counts.view(1, -1)
        if not quantize:
            return total / counts
        reciprocal = torch.floor(float(1 << 24) / counts)
        return ((total + torch.floor(counts / 2)) * reciprocal).div_(float(1 << 24)).floor_()

    def _pillow_resize(self, x: Any, axis: int, size: int, span: float, quantize: bool, gap: Optional[float]) -> Any:
        """Pillow's `resize` along one axis to `size`, of the source span [0, span) (span <= length),
        with Pillow's `reducing_gap` box reduction first when `gap` is given."""
        n = x.shape[axis]
        if gap is not None:
            factor = int(span / size / gap) or 1
            if factor > 1:
                x = self._reduce(x, axis, factor, quantize)
                n, span = x.shape[axis], span / factor
        if n == size and span == n:
            return x
        return self._resample(x, axis, n, span, size, quantize)

    def _square(self, x: Any, geometry: Geometry, size: int, target: int, quantize: bool) -> Any:
        """preprocess.square_resize on the device: the long axis (after its box reduction), the
        edge padding of the short one, then the short axis with Pillow's reducing gap. `target` is
        the largest size made from this image (the box reduction is shared by all of them)."""
        torch = self.torch
        h, w, side = geometry.height, geometry.width, geometry.side
        long_axis, short_axis = (3, 2) if w >= h else (2, 3)
        k = int(side / (REDUCING_GAP * target))
        span = float(side)
        if k >= 2:  # preprocess.reduce_long_axis: once for every target size
            x = self._reduce(x, long_axis, k, quantize)
            span = side / k
        x = self._pillow_resize(x, long_axis, size, span, quantize, gap=None)
        before = geometry.top if w >= h else geometry.left
        pad = (0, 0, before, side - h - before) if w >= h else (before, side - w - before, 0, 0)
        if any(pad):
            x = torch.nn.functional.pad(x, pad, mode="replicate")
        return self._pillow_resize(x, short_axis, size, float(side), quantize, gap=REDUCING_GAP)

    def _to_bgr(self, x: Any, order: str, quantize: bool) -> Any:
        """(1, C, S, S) -> (3, S, S) BGR float32 in [0, 1]."""
        x = x[0]
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif order == "rgb":
            x = x.flip(0)
        x = (x / 255.0).float() if quantize else x
        return x.contiguous()

    def prepare(self, decoded: Decoded, resolution: int, vit_size: Optional[int], pipeline: str) -> Prepared:
        """preprocess.antialias_prepare / official_prepare, on the device; Prepared holds tensors."""
        x, quantize = self._upload(decoded)
        h, w = decoded.size
        geometry = square_geometry(h, w, resolution)
        if pipeline == "official":
            image = self._official(x, geometry, resolution, decoded.order, quantize)
            vit = None
            if vit_size is not None:  # official steps feeding a dynamic graph: preprocess.linear_resize_chw
                vit = self._interpolate(image[None], (vit_size, vit_size), "bilinear", antialias=False)[0]
            return Prepared(image, vit, geometry)
        target = max(resolution, vit_size or 0)
        square = self._square(x, geometry, resolution, target, quantize)
        image = self._to_bgr(square, decoded.order, quantize)
        if not vit_size:
            return Prepared(image, None, geometry)
        if resolution >= vit_size:
            n = square.shape[-1]  # Pillow's order: the horizontal pass, then the vertical one
            vit = self._resample(
                self._resample(square, 3, n, float(n), vit_size, quantize), 2, n, float(n), vit_size, quantize
            )
        else:
            vit = self._square(x, geometry, vit_size, target, quantize)
        return Prepared(image, self._to_bgr(vit, decoded.order, quantize), geometry)

    def _official(self, x: Any, geometry: Geometry, resolution: int, order: str, quantize: bool) -> Any:
        torch = self.torch
        side = geometry.side
        top, left = geometry.top, geometry.left
        x = torch.nn.functional.pad(
            x, (left, side - geometry.width - left, top, side - geometry.height - top), mode="replicate"
        )
        limit = OFFICIAL_PYRAMID_FACTOR * resolution
        while x.shape[-2] > limit and x.shape[-1] > limit:
            x = self._pyr_down(x, quantize)
        x = self._interpolate(x, (resolution, resolution), "bilinear", antialias=False)
        return self._to_bgr(x, order, quantize)

    def _pyr_down(self, x: Any, quantize: bool) -> Any:
        """cv2.pyrDown: [1 4 6 4 1] / 16 on rows and columns, reflect-101 border, even samples."""
        torch = self.torch
        c = x.shape[1]
        taps = torch.tensor(_PYRAMID_TAPS, device=x.device, dtype=x.dtype) / 16.0
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")  # torch's reflect is OpenCV's reflect-101
        x = torch.nn.functional.conv2d(x, taps.view(1, 1, 5, 1).repeat(c, 1, 1, 1), stride=(2, 1), groups=c)
        x = torch.nn.functional.conv2d(x, taps.view(1, 1, 1, 5).repeat(c, 1, 1, 1), stride=(1, 2), groups=c)
        return x.add_(0.5).floor_().clamp_(0.0, 255.0) if quantize else x

    def _interpolate(self, x: Any, size: Tuple[int, int], mode: str, antialias: bool) -> Any:
        return self.torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=False)

    # -- the model -----------------------------------------------------------------------------

    def infer(
        self, prepared: Sequence[Prepared], image_input: str, vit_input: Optional[str], tasks: Sequence[str]
    ) -> Dict[str, Any]:
        """task -> (N, C, R, R) float32 tensors on the device for same-sized prepared images."""
        torch = self.torch
        image = torch.stack([p.image for p in prepared])
        vit = torch.stack([p.image_384 for p in prepared]) if vit_input is not None else None
        out = self.runner.run_tasks(image, vit)
        missing = [t for t in tasks if t not in out]
        if missing:
            raise ModelError(f"the torch model has no {missing[0]!r} output (it has {', '.join(out)})")
        return {task: out[task] for task in tasks}

    # -- postprocessing ------------------------------------------------------------------------

    def postprocess(self, outputs: Dict[str, Any], geometry: Geometry, opts: PostOptions) -> Dict[str, Any]:
        """postprocess.postprocess on the device: task -> (H, W) / (H, W, 3) maps, as tensors on the
        device with output="torch", numpy arrays otherwise."""
        torch = self.torch
        t, l, h, w = geometry.top, geometry.left, geometry.height, geometry.width
        result: Dict[str, Any] = {}
        for task, value in outputs.items():
            x = value[None]
            if geometry.side != geometry.resolution:
                mode = "bilinear" if opts.interpolation == "bilinear" else "bicubic"
                official = opts.interpolation == "official"
                x = self._interpolate(x, (geometry.side, geometry.side), mode, antialias=not official)
            x = x[0, :, t : t + h, l : l + w]
            if task == "depth":
                x = -x if opts.invert_depth else x
                if opts.normalize_depth:
                    lo, hi = x.min(), x.max()
                    x = (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
            elif task == "normal":
                x = x / x.norm(dim=0, keepdim=True).clamp_min(_NORMAL_EPS)
            elif task == "foreground":
                x = x.clamp(0.0, 1.0)
                if opts.foreground_threshold is not None:
                    x = (x > opts.foreground_threshold).float()
            x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
            result[task] = x.contiguous()
        if self.output == "torch":
            return result
        return to_numpy(result)


def to_numpy(maps: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Device maps -> numpy, in one transfer: the maps travel as one flat tensor."""
    import torch

    names = list(maps)
    flat = torch.cat([maps[n].reshape(-1) for n in names]).cpu().numpy()
    out, start = {}, 0
    for n in names:
        size = maps[n].numel()
        out[n] = flat[start : start + size].reshape(tuple(maps[n].shape))
        start += size
    return out


def all_finite(value: Any) -> bool:
    """Whether a tensor holds finite values only (one float64 sum, as the numpy path checks)."""
    import torch

    return bool(value.sum(dtype=torch.float64).isfinite().item())


__all__: List[str] = ["TorchPrepost", "all_finite", "fixed_point", "to_numpy"]
