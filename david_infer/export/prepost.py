"""One ONNX graph from pixels to maps: the network wrapped in its pre- and postprocessing.

    image uint8 (N, H, W, 3) -> [pad, resize, 384 copy] -> network -> [resize back, crop, finish]
          -> depth (N, H, W), normal (N, H, W, 3), foreground (N, H, W), float32

Built with `onnx.helper` around an existing network graph (ours or a released file), without
PyTorch. Only operators TensorRT 10's ONNX parser takes are used (`tensorrt10_ops.json`, checked by
the tests): no antialiased Resize, no uint8 arithmetic, every `axes` a constant.

Every resampling step is one separable linear map per axis, applied as a *banded* product: the
outputs of an axis are cut into groups of g consecutive outputs; the input window each group reads
is gathered (Gather with computed indices) and multiplied by that group's (g, L) weight matrix
(batched MatMul). The weights are built inside the graph from the image's size (Range, Floor, Abs,
Where ...), so one graph serves every size:

* the centred edge padding to a square is folded into the gather indices (a virtual index v of the
  padded axis reads pixel clip(v - offset)), so the padded square is never built;
* `default` pipeline: Pillow's antialiased bilinear of the padded square with `reducing_gap=3`
  (a box reduction by k = side // (3 x resolution) first, the last box partial), exactly as
  `david_infer.preprocess.antialias_prepare`: the box reduction and the bilinear taps are one
  weight per (output, pixel), so a 4K photo is filtered in one pass, never aliased; rounding to
  8 bits after each axis as Pillow does. Back: Pillow bicubic from the crop box.
* `official` pipeline: OpenCV pyrDown while both sides of the square exceed 3 x 512, then
  INTER_LINEAR to 512 (the levels' 5-tap kernels composed into one kernel per level count, a
  table row picked in the graph; reflect-101 at the square's border). Back: INTER_CUBIC to the
  padded square, then crop (`cv2_weights`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from david_infer._optional import require
from david_infer.contract import ModelContract
from david_infer.errors import ExportError, ModelError
from david_infer.export.onnx_export import write_with_manifest
from david_infer.manifest import manifest_path
from david_infer.outputs.files import sha256_file
from david_infer.preprocess import OFFICIAL_PYRAMID_FACTOR, REDUCING_GAP

CHANNEL_ORDERS = ("rgb", "bgr")
PIPELINES = ("default", "official")
RESIZE = {"default": "pillow-bilinear-antialias", "official": "opencv-pyrdown-linear"}
RESIZE_BACK = {"default": "pillow-bicubic", "official": "opencv-cubic"}
OPS_TABLE = Path(__file__).with_name("tensorrt10_ops.json")
#: pyramid levels the official pipeline can take: squares up to 3 x 512 x 2**10 (1.57 M pixels a side)
MAX_PYRAMID_LEVELS = 10
MIN_OPSET = 13  # Squeeze/Unsqueeze/ReduceSum with axes as inputs
_GROUP = 16  # outputs per band (resolutions are multiples of 16: the pre-resizes need no slicing)
_DIVISORS = 64  # the last (full-size) pass uses the largest divisor of its size up to this
_NORMAL_EPS = 1e-12
_PYR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_I64_MAX = np.iinfo(np.int64).max


@lru_cache(maxsize=1)
def pyramid_kernels(levels: int = MAX_PYRAMID_LEVELS) -> np.ndarray:
    """(levels + 1, 2c + 1) float32: row l is the kernel of l pyrDown steps composed (row 0 is the
    identity), centred at c = 2 (2**levels - 1): z_l[p] = sum_u K_l[u] x[2**l p + u]."""
    c = 2 * (2**levels - 1)
    table = np.zeros((levels + 1, 2 * c + 1))
    kernel = np.array([1.0])
    for level in range(levels + 1):
        half = len(kernel) // 2
        table[level, c - half : c + half + 1] = kernel
        spread = np.zeros(4 * 2**level + 1)  # the 5 taps at stride 2**level
        spread[:: 2**level] = _PYR_KERNEL
        kernel = np.convolve(kernel, spread)
    return table.astype(np.float32)


class _Builder:
    """Nodes and constants of a graph under construction; every tensor gets a fresh name."""

    def __init__(self, helper: Any, numpy_helper: Any, opset: int, prefix: str = "pp/") -> None:
        self.h, self.nh, self.opset, self.prefix = helper, numpy_helper, opset, prefix
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._count = 0

    def stage(self, stage: str) -> None:
        """Name the nodes that follow `pp/<stage>/...`: a profile (benchmarks/prepost_graph.py
        --profile) or a graph viewer then shows which part of the pipeline each node belongs to."""
        self.prefix = f"pp/{stage}/"

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: Optional[str] = None, **attrs: Any) -> str:
        output = out or self.name(op_type.lower())
        self.nodes.append(self.h.make_node(op_type, list(inputs), [output], name=self.name(op_type), **attrs))
        return output

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        name = self.name("const")
        self.initializers.append(self.nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def f(self, value: float) -> str:
        return self.const(value, np.float32)

    def i(self, value: int) -> str:
        return self.const(value, np.int64)

    # -- small helpers --------------------------------------------------------------------

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] as an int64 scalar."""
        return self.op(
            "Squeeze", self.op("Slice", self.op("Shape", x), self.i([axis]), self.i([axis + 1])), self.i([0])
        )

    def to_float(self, x: str) -> str:
        return self.op("Cast", x, to=1)

    def to_int(self, x: str) -> str:
        return self.op("Cast", x, to=7)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int) -> str:
        """ReduceX with constant axes (an input from opset 18 on, ReduceSum from 13)."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, x, self.i(list(axes)), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def clip(self, x: str, lo: str, hi: str) -> str:
        return self.op("Min", self.op("Max", x, lo), hi)

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", cond, a, b)

    def round8(self, x: str) -> str:
        """Round half up, as Pillow's 8-bit resampling does (ONNX Round rounds half to even)."""
        return self.op("Floor", self.op("Add", x, self.f(0.5)))


# ------------------------------------------------------------------------- weight families


@dataclass
class _Axis:
    """One resampled axis: `n` pixels (int64 scalar tensor) in a virtual axis of `virtual` pixels
    (the padded square's side) at `offset`; `m` outputs (an int64 scalar tensor)."""

    n: str
    virtual: str
    offset: str
    m: str


class _Family:
    """A separable resampling: per output o its window [lo(o), hi(o)] of virtual indices and the
    weight of virtual index v, as graph tensors (float32, broadcasting)."""

    normalise = False

    def window(self, b: _Builder, o: str) -> Tuple[str, str]:
        raise NotImplementedError

    def weight(self, b: _Builder, o: str, v: str) -> str:
        raise NotImplementedError

    def source(self, b: _Builder, v: str, axis: _Axis) -> str:
        """Virtual index (int64) -> pixel index: the edge padding as a clamp."""
        n1 = b.op("Sub", axis.n, b.i(1))
        return b.clip(b.op("Sub", v, axis.offset), b.i(0), n1)


def _triangle(b: _Builder, x: str) -> str:
    return b.op("Max", b.op("Sub", b.f(1.0), b.op("Abs", x)), b.f(0.0))


def _keys(b: _Builder, x: str, a: float) -> str:
    """The cubic convolution kernel with parameter a (Pillow a = -0.5, OpenCV a = -0.75)."""
    ax = b.op("Abs", x)
    ax2 = b.op("Mul", ax, ax)
    ax3 = b.op("Mul", ax2, ax)
    near = b.op("Add", b.op("Sub", b.op("Mul", b.f(a + 2.0), ax3), b.op("Mul", b.f(a + 3.0), ax2)), b.f(1.0))
    far = b.op(
        "Mul",
        b.f(a),
        b.op("Add", b.op("Sub", b.op("Sub", ax3, b.op("Mul", b.f(5.0), ax2)), b.op("Mul", b.f(-8.0), ax)), b.f(-4.0)),
    )
    inside = b.where(b.op("Less", ax, b.f(1.0)), near, far)
    return b.where(b.op("Less", ax, b.f(2.0)), inside, b.f(0.0))


class _Pillow(_Family):
    """Pillow's `resize(size, filter, box=(start, start + span))` on the virtual axis after a box
    reduction by `k` (1 = none): centre_o = start + (o + 0.5) * span / m in reduced pixels, support
    widened by max(scale, 1), reduced pixel b = v // k averaging min(k, virtual - b k) pixels,
    weights renormalised over the pixels that exist."""

    normalise = True

    def __init__(self, b: _Builder, axis: _Axis, kernel: str, start: str, span: str, k: str) -> None:
        self.kernel, self.start, self.k, self.axis = kernel, start, k, axis
        self.support = 1.0 if kernel == "bilinear" else 2.0
        self.scale = b.op("Div", span, b.to_float(axis.m))
        self.fs = b.op("Max", self.scale, b.f(1.0))
        self.kf = b.to_float(k)

    def _centre(self, b: _Builder, o: str) -> str:
        return b.op("Add", self.start, b.op("Mul", b.op("Add", o, b.f(0.5)), self.scale))

    def window(self, b: _Builder, o: str) -> Tuple[str, str]:
        centre = self._centre(b, o)
        reach = b.op("Add", b.op("Mul", self.fs, b.f(self.support)), b.f(1.0))
        lo = b.op("Mul", b.op("Sub", centre, reach), self.kf)
        hi = b.op("Mul", b.op("Add", centre, reach), self.kf)
        return lo, hi

    def weight(self, b: _Builder, o: str, v: str) -> str:
        reduced = b.op("Floor", b.op("Div", v, self.kf))
        x = b.op("Div", b.op("Sub", b.op("Add", reduced, b.f(0.5)), self._centre(b, o)), self.fs)
        w = _triangle(b, x) if self.kernel == "bilinear" else _keys(b, x, -0.5)
        virtual = b.to_float(self.axis.virtual)
        count = b.op("Min", self.kf, b.op("Sub", virtual, b.op("Mul", reduced, self.kf)))
        inside = b.op("And", b.op("GreaterOrEqual", v, b.f(0.0)), b.op("Less", v, virtual))
        return b.where(inside, b.op("Div", w, count), b.f(0.0))


class _OpenCVCubic(_Family):
    """cv2.resize(INTER_CUBIC) of an R-pixel axis to the padded square's side `virtual`, outputs
    offset .. offset + m - 1 (the crop): fx = (o + offset + 0.5) R / side - 0.5, taps floor(fx) - 1
    .. + 2 with the replicated border (`david_infer.resample.cv2_weights`)."""

    def __init__(self, b: _Builder, axis: _Axis) -> None:
        self.axis = axis
        self.ratio = b.op("Div", b.to_float(axis.n), b.to_float(axis.virtual))
        self.offset = b.to_float(axis.offset)

    def _fx(self, b: _Builder, o: str) -> str:
        return b.op("Sub", b.op("Mul", b.op("Add", b.op("Add", o, self.offset), b.f(0.5)), self.ratio), b.f(0.5))

    def window(self, b: _Builder, o: str) -> Tuple[str, str]:
        sx = b.op("Floor", self._fx(b, o))
        return b.op("Sub", sx, b.f(1.0)), b.op("Add", sx, b.f(2.0))

    def weight(self, b: _Builder, o: str, v: str) -> str:
        return _keys(b, b.op("Sub", v, self._fx(b, o)), -0.75)

    def source(self, b: _Builder, v: str, axis: _Axis) -> str:
        return b.clip(v, b.i(0), b.op("Sub", axis.n, b.i(1)))


class _OpenCVPyramidLinear(_Family):
    """`levels` pyrDown steps of the virtual square (reflect-101 border) then cv2 INTER_LINEAR to m:
    output o blends z[s0] and z[s1] of the pyramid level, each z[s] = sum_u K[u] x[2**L s + u]."""

    def __init__(self, b: _Builder, axis: _Axis, levels: str, reduced: str) -> None:
        self.axis = axis
        table = pyramid_kernels()
        self.c = (table.shape[1] - 1) // 2
        self.width = table.shape[1]
        self.table = b.const(table.reshape(-1), np.float32)
        self.levels = levels
        self.step = b.op("Pow", b.f(2.0), b.to_float(levels))  # 2**levels input pixels per output
        self.reach = b.op("Mul", b.f(2.0), b.op("Sub", self.step, b.f(1.0)))
        self.reduced = b.to_float(reduced)  # length of the pyramid's last level
        self.scale = b.op("Div", self.reduced, b.to_float(axis.m))

    def _taps(self, b: _Builder, o: str) -> Tuple[str, str, str]:
        fx = b.op("Sub", b.op("Mul", b.op("Add", o, b.f(0.5)), self.scale), b.f(0.5))
        sx = b.op("Floor", fx)
        f = b.op("Sub", fx, sx)
        last = b.op("Sub", self.reduced, b.f(1.0))
        f = b.where(b.op("Less", sx, b.f(0.0)), b.f(0.0), f)
        sx = b.op("Max", sx, b.f(0.0))
        top = b.op("GreaterOrEqual", sx, last)
        f = b.where(top, b.f(0.0), f)
        sx = b.where(top, last, sx)
        s1 = b.op("Min", b.op("Add", sx, b.f(1.0)), last)
        return sx, s1, f

    def window(self, b: _Builder, o: str) -> Tuple[str, str]:
        s0, s1, _ = self._taps(b, o)
        return (
            b.op("Sub", b.op("Mul", s0, self.step), self.reach),
            b.op("Add", b.op("Mul", s1, self.step), self.reach),
        )

    def _kernel_at(self, b: _Builder, u: str) -> str:
        inside = b.op("LessOrEqual", b.op("Abs", u), b.f(float(self.c)))
        index = b.to_int(b.clip(b.op("Add", u, b.f(float(self.c))), b.f(0.0), b.f(float(2 * self.c))))
        flat = b.op("Add", index, b.op("Mul", self.levels, b.i(self.width)))
        return b.where(inside, b.op("Gather", self.table, flat, axis=0), b.f(0.0))

    def weight(self, b: _Builder, o: str, v: str) -> str:
        s0, s1, f = self._taps(b, o)
        w0 = self._kernel_at(b, b.op("Sub", v, b.op("Mul", s0, self.step)))
        w1 = self._kernel_at(b, b.op("Sub", v, b.op("Mul", s1, self.step)))
        return b.op("Add", b.op("Mul", b.op("Sub", b.f(1.0), f), w0), b.op("Mul", f, w1))

    def source(self, b: _Builder, v: str, axis: _Axis) -> str:
        side1 = b.op("Sub", axis.virtual, b.i(1))
        r = b.op("Abs", v)  # reflect-101 at both ends of the square (overshoot < side)
        r = b.where(b.op("Greater", r, side1), b.op("Sub", b.op("Mul", b.i(2), side1), r), r)
        return super().source(b, r, axis)


@dataclass
class _Band:
    """The banded product of one resampling, built once and applied to any tensor (the tasks'
    maps share one): `count` groups of `g` outputs, each reading `length` input indices `source`
    (int64 (G, L)) with weights `w` (float32 (G, g, L)); with trim, `lead` and `tail` groups
    (before and after the kept ones) that read only the padding."""

    geometry: _Axis
    g: str
    count: str
    length: str
    source: str
    w: str
    sliced: bool
    lead: Optional[str] = None
    tail: Optional[str] = None


def _band(
    b: _Builder,
    geometry: _Axis,
    family: _Family,
    group: Optional[str] = None,
    trim: bool = False,
    whole_groups: bool = False,
    size: int = _GROUP,
) -> _Band:
    """The band of resampling an axis by `family`, to geometry.m outputs.

    group None: groups of `size` outputs (the last group sliced off past m, unless `whole_groups`
    says m is a constant multiple of `size`: slicing copies the whole result); else the int64
    scalar group size, which must divide m. `trim` (for a family whose virtual indices only
    clamp): groups that read nothing but the padding are not computed; they are the first or last
    pixel row, repeated."""
    m = geometry.m
    if group is None:
        g = b.i(size)
        count = b.op("Div", b.op("Add", m, b.i(size - 1)), g)
    else:
        g = group
        count = b.op("Div", m, g)
    shape_gg = b.op("Concat", b.op("Unsqueeze", count, b.i([0])), b.op("Unsqueeze", g, b.i([0])), axis=0)
    o_int = b.op(
        "Min", b.op("Reshape", b.op("Range", b.i(0), b.op("Mul", count, g), b.i(1)), shape_gg), b.op("Sub", m, b.i(1))
    )  # (G, g); outputs past m repeat the last one
    o = b.to_float(o_int)
    lo, hi = family.window(b, o)
    first = b.to_int(b.op("Floor", b.op("Slice", lo, b.i([0]), b.i([1]), b.i([1]))))  # (G, 1)
    last = b.to_int(b.op("Ceil", b.op("Slice", hi, b.i([-1]), b.i([_I64_MAX]), b.i([1]))))
    lead = tail = None
    if trim:  # keep the groups [lead, count - tail) whose windows reach the image
        lead = b.reduce("ReduceSum", b.op("Cast", b.op("Less", last, geometry.offset), to=7), [0, 1], 0)
        end = b.op("Sub", b.op("Add", geometry.offset, geometry.n), b.i(1))
        tail = b.reduce("ReduceSum", b.op("Cast", b.op("Greater", first, end), to=7), [0, 1], 0)
        keep_to = b.op("Unsqueeze", b.op("Sub", count, tail), b.i([0]))
        keep_from = b.op("Unsqueeze", lead, b.i([0]))
        o, first, last = (b.op("Slice", t, keep_from, keep_to, b.i([0])) for t in (o, first, last))
        count = b.op("Sub", b.op("Sub", count, lead), tail)
    length = b.op("Add", b.reduce("ReduceMax", b.op("Sub", last, first), [0, 1], 0), b.i(1))
    v_int = b.op("Add", first, b.op("Unsqueeze", b.op("Range", b.i(0), length, b.i(1)), b.i([0])))  # (G, L)
    v = b.op("Unsqueeze", b.to_float(v_int), b.i([1]))  # (G, 1, L)
    w = family.weight(b, b.op("Unsqueeze", o, b.i([2])), v)  # (G, g, L)
    if family.normalise:
        w = b.op("Div", w, b.reduce("ReduceSum", w, [2], 1))
    source = family.source(b, v_int, geometry)
    return _Band(geometry, g, count, length, source, w, group is None and not whole_groups, lead, tail)


def _apply_band(b: _Builder, x: str, axis: int, band: _Band) -> str:
    """Resample `x` along `axis` (not its last) by `band`; the result has band.geometry.m entries there."""
    gathered = b.op("Gather", x, band.source, axis=axis)  # x[:axis] + (G, L) + x[axis+1:]
    shape = b.op("Shape", x)
    before = b.op("Slice", shape, b.i([0]), b.i([axis]), b.i([0]))
    after = b.op("Slice", shape, b.i([axis + 1]), b.i([_I64_MAX]), b.i([0]))
    count, length = (b.op("Unsqueeze", t, b.i([0])) for t in (band.count, band.length))
    flat = b.op("Reshape", gathered, b.op("Concat", before, count, length, b.i([-1]), axis=0))
    product = b.op("MatMul", band.w, flat)  # x[:axis] + (G, g, rest)
    total = b.op("Unsqueeze", b.op("Mul", band.count, band.g), b.i([0]))
    out = b.op("Reshape", product, b.op("Concat", before, total, after, axis=0))
    if band.lead is not None and band.tail is not None:
        edges = []
        last_row = b.op("Unsqueeze", b.op("Sub", band.geometry.n, b.i(1)), b.i([0]))
        for groups, index in ((band.lead, b.i([0])), (band.tail, last_row)):
            # the edge pixel row, repeated: a Gather copies rows whole (Expand broadcasts slowly)
            repeat = b.op("Unsqueeze", b.op("Mul", groups, band.g), b.i([0]))
            edges.append(b.op("Gather", x, b.op("Expand", index, repeat), axis=axis))
        out = b.op("Concat", edges[0], out, edges[1], axis=axis)
    if band.sliced:
        out = b.op("Slice", out, b.i([0]), b.op("Unsqueeze", band.geometry.m, b.i([0])), b.i([axis]))
    return out


def _largest_divisor(b: _Builder, m: str) -> str:
    """The largest d <= _DIVISORS dividing m (int64 scalar)."""
    candidates = b.i(np.arange(1, _DIVISORS + 1))
    fits = b.op("Equal", b.op("Mod", m, candidates), b.i(0))
    return b.reduce("ReduceMax", b.where(fits, candidates, b.i(0)), [0], 0)


# ------------------------------------------------------------------------------ the graph


@dataclass
class _Square:
    """The padded square of the input image, as graph scalars (int64)."""

    h: str
    w: str
    side: str
    top: str
    left: str


def _square(b: _Builder, image: str) -> _Square:
    h, w = b.dim(image, 1), b.dim(image, 2)
    side = b.op("Max", h, w)
    top = b.op("Div", b.op("Sub", side, h), b.i(2))
    left = b.op("Div", b.op("Sub", side, w), b.i(2))
    return _Square(h, w, side, top, left)


def _resize_square(b: _Builder, x: str, down: _Band, across: _Band, pillow_rounding: bool) -> str:
    """(N, H, W, 3) -> (N, Rx, 3, Ry): the rows resampled by `down`, then the columns by `across`.

    The full-size pass is (gathered rows)^T x (weights)^T per group, so its result comes as
    (N, G, W x 3, g), each group's outputs last: ONNX Runtime runs that product (a MatMul with
    transA) about twice as fast as weights x rows, which repacks every gathered row, and the
    columns pass then needs only the blocks of g moved, (N, W, 3, G x g). Groups of the padding
    alone (trim) are the edge rows: resampled across on their own and repeated at the end, where
    the square is small. `pillow_rounding`: to 8 bits after each pass, as Pillow."""
    finish = b.round8 if pillow_rounding else (lambda t: t)
    gathered = b.op("Gather", x, down.source, axis=1)  # (N, G, L, W, 3)
    shape = b.op("Shape", x)
    n, w = (b.op("Slice", shape, b.i([i]), b.i([i + 1]), b.i([0])) for i in (0, 2))
    count, length = (b.op("Unsqueeze", t, b.i([0])) for t in (down.count, down.length))
    flat = b.op("Reshape", gathered, b.op("Concat", n, count, length, b.i([-1]), axis=0))  # (N, G, L, W x 3)
    rows_last = b.op("Transpose", flat, perm=[0, 1, 3, 2])  # (N, G, W x 3, L), fused into the MatMul
    product = finish(b.op("MatMul", rows_last, b.op("Transpose", down.w, perm=[0, 2, 1])))  # (N, G, W x 3, g)
    by_column = b.op("Transpose", product, perm=[0, 2, 1, 3])  # (N, W x 3, G, g)
    kept = b.op("Reshape", by_column, b.op("Concat", n, w, b.i([3, -1]), axis=0))  # (N, W, 3, G x g)
    xy = finish(_apply_band(b, kept, 1, across))  # (N, Rx, 3, G x g)
    if down.lead is not None and down.tail is not None:
        parts = []
        last_row = b.op("Unsqueeze", b.op("Sub", down.geometry.n, b.i(1)), b.i([0]))
        for groups, index in ((down.lead, b.i([0])), (down.tail, last_row)):
            row = b.op("Transpose", b.op("Gather", x, index, axis=1), perm=[0, 2, 3, 1])  # (N, W, 3, 1)
            row = finish(_apply_band(b, row, 1, across))  # (N, Rx, 3, 1)
            repeat = b.op("Unsqueeze", b.op("Mul", groups, down.g), b.i([0]))
            parts.append(b.op("Gather", row, b.op("Expand", b.i([0]), repeat), axis=3))
        xy = b.op("Concat", parts[0], xy, parts[1], axis=3)
    if down.sliced:
        xy = b.op("Slice", xy, b.i([0]), b.op("Unsqueeze", down.geometry.m, b.i([0])), b.i([3]))
    return xy


#: outputs per group of the full-size pass (measured: 8 beats 16 and 32 with transA)
_FIRST_GROUP = 8


def _pre_default(b: _Builder, x: str, sq: _Square, resolution: int, vit_size: Optional[int]) -> Tuple[str, str]:
    """(N, H, W, 3) float 0..255 -> (N, Rx, 3, Ry) and the ViT copy (N, 384y, 384x, 3), or ''."""
    r = b.i(resolution)
    target = max(resolution, vit_size or 0)
    k = b.op("Max", b.op("Div", sq.side, b.i(int(REDUCING_GAP * target))), b.i(1))
    span = b.op("Div", b.to_float(sq.side), b.to_float(k))
    rows = _Axis(sq.h, sq.side, sq.top, r)
    cols = _Axis(sq.w, sq.side, sq.left, r)
    # Rows first whatever the orientation, rounded to 8 bits after each pass as Pillow does; the
    # runtime goes along the long axis first, so landscapes differ by the rounding between passes.
    down = _Pillow(b, rows, "bilinear", b.f(0.0), span, k)
    down_band = _band(b, rows, down, trim=True, whole_groups=resolution % _FIRST_GROUP == 0, size=_FIRST_GROUP)
    across = _Pillow(b, cols, "bilinear", b.f(0.0), span, k)
    across_band = _band(b, cols, across, trim=True, whole_groups=resolution % _GROUP == 0)
    xy = _resize_square(b, x, down_band, across_band, pillow_rounding=True)  # (N, Rx, 3, Ry)
    if not vit_size:
        return xy, ""
    one, vit = b.i(1), b.i(vit_size)
    small = _Axis(r, r, b.i(0), vit)
    spread = b.f(float(resolution))
    vit_family = _Pillow(b, small, "bilinear", b.f(0.0), spread, one)
    vit_band = _band(b, small, vit_family, whole_groups=vit_size % _GROUP == 0)  # both axes alike
    vit_across = b.round8(_apply_band(b, xy, 1, vit_band))  # (N, 384x, 3, Ry)
    down_next = b.op("Transpose", vit_across, perm=[0, 3, 1, 2])  # (N, Ry, 384x, 3): a 2-D transpose
    return xy, b.round8(_apply_band(b, down_next, 1, vit_band))  # (N, 384y, 384x, 3)


def _pre_official(b: _Builder, x: str, sq: _Square, resolution: int) -> str:
    """(N, H, W, 3) float 0..255 -> (N, Rx, 3, Ry): pyramid levels, then INTER_LINEAR."""
    limit = b.i(OFFICIAL_PYRAMID_FACTOR * resolution)
    length, levels = sq.side, b.i(0)
    for _ in range(MAX_PYRAMID_LEVELS):  # levels = how many halvings while the side exceeds the limit
        more = b.op("Greater", length, limit)
        levels = b.op("Add", levels, b.op("Cast", more, to=7))
        length = b.where(more, b.op("Div", b.op("Add", length, b.i(1)), b.i(2)), length)
    r = b.i(resolution)
    rows = _Axis(sq.h, sq.side, sq.top, r)
    cols = _Axis(sq.w, sq.side, sq.left, r)
    down = _OpenCVPyramidLinear(b, rows, levels, length)
    down_band = _band(b, rows, down, whole_groups=resolution % _FIRST_GROUP == 0, size=_FIRST_GROUP)
    across = _OpenCVPyramidLinear(b, cols, levels, length)
    across_band = _band(b, cols, across, whole_groups=resolution % _GROUP == 0)
    return _resize_square(b, x, down_band, across_band, pillow_rounding=False)


#: Transpose perms to the network's (N, 3, Y, X) from the pre-resize's (N, X, 3, Y) and the ViT
#: copy's (N, Y, X, 3)
_FROM_XCY, _FROM_YXC = [0, 2, 3, 1], [0, 3, 1, 2]


def _network_input(b: _Builder, resized: str, perm: List[int], channel_order: str, name: str) -> str:
    """The resized square (0..255 in `channel_order`, axes as `perm` says) -> (N, 3, Y, X) BGR in [0, 1]."""
    chw = b.op("Transpose", resized, perm=perm)
    if channel_order == "rgb":
        chw = b.op("Gather", chw, b.i([2, 1, 0]), axis=1)
    return b.op("Mul", chw, b.f(1.0 / 255.0), out=name)


@dataclass
class _PostBands:
    """The resize back's bands, which every task's map shares, and the model rows [first, last)
    that the down band reads (int64 (1,) tensors)."""

    across: _Band
    down: _Band
    first: str
    last: str


def _post_bands(b: _Builder, sq: _Square, resolution: int, pipeline: str) -> _PostBands:
    """The resize back from the network's R x R to the image, as the bands across (x: R -> W) and
    down (y: R -> H), which every task's map shares."""
    r = b.i(resolution)
    rf, sidef = b.f(float(resolution)), b.to_float(sq.side)
    s = b.op("Div", rf, sidef)
    cols = _Axis(r, sq.side, sq.left, sq.w)
    rows = _Axis(r, sq.side, sq.top, sq.h)
    if pipeline == "official":
        across_family: _Family = _OpenCVCubic(b, cols)
        down_family: _Family = _OpenCVCubic(b, rows)
    else:  # Pillow bicubic from the crop box in model pixels: R of them, none virtual
        one, zero = b.i(1), b.i(0)
        cols, rows = _Axis(r, r, zero, sq.w), _Axis(r, r, zero, sq.h)
        across_family = _Pillow(
            b, cols, "bicubic", b.op("Mul", b.to_float(sq.left), s), b.op("Mul", b.to_float(sq.w), s), one
        )
        down_family = _Pillow(
            b, rows, "bicubic", b.op("Mul", b.to_float(sq.top), s), b.op("Mul", b.to_float(sq.h), s), one
        )
    group = _largest_divisor(b, sq.h)  # no slicing of the full-size result
    down = _band(b, rows, down_family, group=group)
    # only the model rows the image's rows read are resampled across (a 16:9 photo: 296 of 512),
    # so the map is cut to them first and the down band reads the cut rows
    first = b.op("Unsqueeze", b.reduce("ReduceMin", down.source, [0, 1], 0), b.i([0]))
    last = b.op("Unsqueeze", b.op("Add", b.reduce("ReduceMax", down.source, [0, 1], 0), b.i(1)), b.i([0]))
    down = replace(down, source=b.op("Sub", down.source, first))
    return _PostBands(_band(b, cols, across_family), down, first, last)


def _post(b: _Builder, value: str, bands: _PostBands, task: str, name: str) -> str:
    """Network output (N, C, R, R) -> the task's map at the image's size, finished."""
    across_band, down_band = bands.across, bands.down
    value = b.op("Slice", value, bands.first, bands.last, b.i([2]))  # (N, C, rows read, R)
    if task == "normal":
        # channels last while small, so the full-size pass writes the output's (N, H, W, 3) itself
        # (a full-size transpose costs more than the whole pass); both transposes are 2-D ones
        xcy = b.op("Transpose", value, perm=[0, 3, 1, 2])  # (N, Rx, 3, Ry)
        across = _apply_band(b, xcy, 1, across_band)  # (N, W, 3, Ry)
        ywc = b.op("Transpose", across, perm=[0, 3, 1, 2])  # (N, Ry, W, 3)
        return _unit_length(b, _apply_band(b, ywc, 1, down_band), name)
    xt = b.op("Transpose", value, perm=[0, 1, 3, 2])  # (N, 1, Rx, Ry)
    across = _apply_band(b, xt, 2, across_band)  # (N, 1, W, Ry)
    # one channel: squeezed while small, so the full-size pass writes (N, H, W) itself
    plane = b.op("Squeeze", b.op("Transpose", across, perm=[0, 1, 3, 2]), b.i([1]))  # (N, Ry, W)
    full = _apply_band(b, plane, 1, down_band)
    if task == "foreground":
        return b.op("Clip", full, b.f(0.0), b.f(1.0), out=name)
    # the runtime's default depth: negated, larger = nearer; a node that writes the output (the
    # band product's Reshape into a graph output would be one more copy)
    return b.op("Neg", full, out=name)


def _unit_length(b: _Builder, normal: str, name: str) -> str:
    """(N, H, W, 3) divided by max(length, 1e-12) per pixel. The sum of squares and its spreading
    over the 3 channels are MatMuls with ones: ONNX Runtime reduces over, and broadcasts along, a
    last axis of 3 several times slower than it runs an elementwise op or a MatMul."""
    squares = b.op("MatMul", b.op("Mul", normal, normal), b.const(np.ones((3, 1)), np.float32))  # (N, H, W, 1)
    length = b.op("Clip", b.op("Sqrt", squares), b.f(_NORMAL_EPS))  # max(., eps): Max broadcasts slowly
    spread = b.op("MatMul", length, b.const(np.ones((1, 3)), np.float32))  # (N, H, W, 3)
    return b.op("Div", normal, spread, out=name)


# ------------------------------------------------------------------------------- wrapping


def _default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _load_source(source: Path) -> Tuple[Any, ModelContract]:
    """The network graph and its contract; ModelError naming the file when it cannot be wrapped."""
    onnx = require("onnx", "export")
    from david_infer.backends.onnxruntime import OnnxRuntimeBackend

    if source.suffix != ".onnx":
        raise ModelError(
            f"{source}: --prepost wraps an .onnx file (ours or a released one), not "
            f"{source.suffix or 'a suffix-less file'}"
        )
    if not source.is_file():
        raise ModelError(f"model file not found: {source}")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise ModelError(
            f"{source}: not a readable ONNX file ({type(exc).__name__}: {exc}); re-download or re-export it"
        ) from None
    io = OnnxRuntimeBackend().inspect(source)
    contract = ModelContract.load(source) if manifest_path(source).exists() else ModelContract.recognise(source, io)
    contract.check_graph(io)
    if contract.layout == "prepost":
        raise ModelError(
            f'{source}: already a pre/post graph (its manifest says layout "prepost"); wrap the '
            "network file it was made from"
        )
    if contract.precision != "fp32" and any(t.dtype != "float32" for t in contract.inputs):
        raise ModelError(f"{source}: inputs {[t.dtype for t in contract.inputs]}; the pre/post graph feeds float32")
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(
            f"{source}: ONNX opset {opset}; wrapping needs opset {MIN_OPSET} or newer "
            "(re-export it, or convert it with onnx.version_converter)"
        )
    return model, contract


def build_prepost_model(
    network: Any, contract: ModelContract, channel_order: str = "rgb", resolution: int = 512
) -> Tuple[Any, Dict[str, Any]]:
    """The network ModelProto wrapped in pre/post (a new ModelProto) and the manifest's `prepost`
    section. `contract` describes the network; fixed-size (official layout) networks get the
    official pipeline and run at their own size."""
    onnx = require("onnx", "export")
    from onnx import TensorProto, compose, helper, numpy_helper

    if channel_order not in CHANNEL_ORDERS:
        raise ExportError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    fixed = contract.fixed_resolution
    pipeline = "official" if fixed is not None else "default"
    if fixed is not None:
        resolution = fixed
    vit = contract.vit_size if contract.vit_input is not None else None
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or resolution < contract.stride
        or resolution % contract.stride
    ):
        raise ExportError(f"resolution must be a positive multiple of {contract.stride}, got {resolution!r}")
    if vit and resolution < vit:
        raise ExportError(
            f"resolution {resolution} is below the ViT size {vit}: the pre/post graph makes the ViT "
            f"copy from the model-resolution square; use {vit} or more"
        )
    opset = _default_opset(network)
    net = onnx.ModelProto()
    net.CopyFrom(network)
    compose.add_prefix(net, "net/", inplace=True)
    b = _Builder(helper, numpy_helper, opset)
    image = "image"
    batch = contract.fixed_batch or "batch"
    b.stage("cast")
    x = b.to_float(image)  # first: TensorRT takes uint8 only at the boundary (even Shape reads float)
    b.stage("pre")
    sq = _square(b, x)
    if pipeline == "official":
        xy, vit_xy = _pre_official(b, x, sq, resolution), ""
    else:
        xy, vit_xy = _pre_default(b, x, sq, resolution, vit)
    pre_nodes = list(b.nodes)
    b.nodes = []
    b.stage("input")
    _network_input(b, xy, _FROM_XCY, channel_order, "net/" + contract.image_input)
    if vit_xy:
        _network_input(b, vit_xy, _FROM_YXC, channel_order, "net/" + str(contract.vit_input))
    pre_nodes += b.nodes
    b.nodes = []
    outputs = []
    b.stage("post/bands")
    bands = _post_bands(b, sq, resolution, pipeline)
    for task, out_name in contract.output_names.items():
        b.stage(f"post/{task}")
        value = "net/" + out_name
        spec = next(t for t in contract.outputs if t.name == out_name)
        if len(spec.shape) == 3:  # the released depth output has no channel axis
            value = b.op("Unsqueeze", value, b.i([1]))
        _post(b, value, bands, task, task)
        shape = [batch, "height", "width"] + ([3] if task == "normal" else [])
        outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        pre_nodes + list(net.graph.node) + b.nodes,
        "david_prepost",
        [helper.make_tensor_value_info(image, TensorProto.UINT8, [batch, "height", "width", 3])],
        outputs,
        initializer=list(net.graph.initializer) + b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=list(network.opset_import),
        ir_version=network.ir_version,
        producer_name="david-infer prepost",
    )
    section = {
        "input": image,
        "layout": "NHWC",
        "dtype": "uint8",
        "channel_order": channel_order,
        "pipeline": pipeline,
        "resolution": resolution,
        "vit_size": vit,
        "resize": RESIZE[pipeline],
        "resize_back": RESIZE_BACK[pipeline],
        "depth_sign": -1,
        "normal": "unit length",
        "foreground": "clipped to [0, 1]",
        "tensorrt": f"onnx-tensorrt 10 operators only ({OPS_TABLE.name})",
    }
    if pipeline == "official":
        section["max_side"] = OFFICIAL_PYRAMID_FACTOR * resolution * 2**MAX_PYRAMID_LEVELS
    return model, section


def _prepost_manifest(
    output: Path, source: Path, contract: ModelContract, section: Dict[str, Any], sha256: str, batch: Union[int, str]
) -> Dict[str, Any]:
    doc = contract.as_dict()
    tasks = list(contract.tasks)
    doc.update(
        {
            "model_file": output.name,
            "sha256": sha256,
            "layout": "prepost",
            "task": tasks[0] if len(tasks) == 1 else "multitask",
            "tasks": tasks,
            "output_order": tasks,
            "inputs": [
                {
                    "name": "image",
                    "shape": [batch, "height", "width", 3],
                    "dtype": "uint8",
                    "layout": "NHWC",
                    "channel_order": section["channel_order"],
                }
            ],
            "outputs": [
                {
                    "name": t,
                    "task": t,
                    "shape": [batch, "height", "width"] + ([3] if t == "normal" else []),
                    "dtype": "float32",
                    "layout": "NHWC" if t == "normal" else "NHW",
                }
                for t in tasks
            ],
            "preprocessing": {
                "inside_the_graph": f"{section['resize']} at {section['resolution']}",
                "stride": contract.stride,
                "vit_size": contract.vit_size,
                "resolution": section["resolution"],
                "default_resolution": section["resolution"],
            },
            "postprocessing": {t: "inside the graph" for t in tasks},
            "prepost": {
                **section,
                "source": {
                    "file": source.name,
                    "sha256": contract.sha256 or sha256_file(source),
                    "layout": contract.layout,
                },
            },
        }
    )
    return doc


def wrap_prepost(
    source: Union[str, Path], output: Union[str, Path], channel_order: str = "rgb", resolution: int = 512
) -> Dict[str, Any]:
    """Write `output` (.onnx): the network file `source` (ours with its manifest, or a released
    file) wrapped in pre/post, with its manifest beside it; return the manifest. Both files appear
    only when everything succeeded."""
    onnx = require("onnx", "export")
    source, output = Path(source), Path(output)
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} must end in .onnx (the manifest goes beside it as .json)")
    if output.resolve() == source.resolve():
        raise ExportError(f"output {output} is the source file; write the pre/post graph to another file")
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    network, contract = _load_source(source)
    model, section = build_prepost_model(network, contract, channel_order, resolution)

    def write(tmp: Path) -> Dict[str, Any]:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        return _prepost_manifest(output, source, contract, section, sha256_file(tmp), contract.fixed_batch or "batch")

    return write_with_manifest(output, write)


def tensorrt_ops_table() -> Dict[str, Any]:
    """The operator table of TensorRT 10's ONNX parser kept beside this module (its source named inside)."""
    return json.loads(OPS_TABLE.read_text(encoding="utf-8"))


def tensorrt_problems(model: Any) -> List[str]:
    """What in `model` (a ModelProto) TensorRT 10's ONNX parser does not take, by the table
    (`tensorrt10_ops.json`): operators it lacks, attributes outside its rules, inputs that must be
    constants and are not, uint8 tensors read by anything but Cast, an opset outside 9..20.
    Empty when the graph is portable."""
    from onnx import TensorProto, helper, shape_inference

    table = tensorrt_ops_table()
    low, high = table["opsets"]
    problems = []
    opset = _default_opset(model)
    if not low <= opset <= high:
        problems.append(f"opset {opset} outside {low}..{high}")
    inferred = shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.op_type not in table["operators"]:
            problems.append(f"{where}: not an operator of TensorRT 10's ONNX parser")
            continue
        rules = table["rules"].get(node.op_type, {})
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name, allowed in rules.items():
            if name == "constant_inputs":
                for index in allowed:
                    if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                        problems.append(f"{where}: input {index} ({node.input[index]!r}) must be a constant")
                continue
            value = attrs.get(name)
            value = value.decode() if isinstance(value, bytes) else value
            if value is not None and value not in allowed:
                problems.append(f"{where}: {name}={value!r} (TensorRT 10 takes {allowed})")
        if node.op_type != "Cast" and any(types.get(i) == TensorProto.UINT8 for i in node.input):
            problems.append(f"{where}: reads a uint8 tensor ({table['uint8']})")
    return problems


__all__ = [
    "CHANNEL_ORDERS",
    "PIPELINES",
    "build_prepost_model",
    "pyramid_kernels",
    "tensorrt_ops_table",
    "tensorrt_problems",
    "wrap_prepost",
]
