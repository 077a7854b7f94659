"""The pre/post as ONNX graphs, built with `onnx.helper` (no PyTorch): the graph stages run them
around a network (`build_pre`, `build_post`), and `export --prepost` wraps a network in them (`wrap`:
one graph from pixels to maps, TensorRT 10's operators only). Each resize computes the weights of
david_infer.resample inside the graph and applies them per axis as a banded product
(docs/prepost.md, "What is inside, and why": the bands, the folded padding, the layouts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .._optional import require
from ..errors import ExportError
from ..resample import MAX_PYRAMID_LEVELS, OFFICIAL_PYRAMID_FACTOR, PIPELINES, PYRAMID_TAPS, REDUCING_GAP
from ..tasks import TASKS

CHANNEL_ORDERS = ("rgb", "bgr")
MIN_OPSET = 13  # Squeeze/Unsqueeze/ReduceSum with axes as inputs
_GROUP = 16  # outputs per band (resolutions are multiples of 16: the pre-resizes need no slicing)
#: the last (full-size) pass of the resize back works in groups of this many rows: in a wrapped
#: graph the largest divisor of the image's height up to it (so the groups tile the map and no
#: slice copies it); in the runtime's post graph exactly this many, the last group padded (the
#: runtime binds a map a few rows taller and keeps the image's rows: a view, no copy)
MAX_ROW_GROUP = 64
_I64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class GraphSpec:
    """What a pre/post graph is built for: the pipeline and resolution of the resize to the model
    (david_infer.resample), the ViT copy's side (None: the network takes none), the photo's channel
    order, and the resize back ("bicubic", "bilinear" or "official")."""

    pipeline: str
    resolution: int
    vit_size: Optional[int]
    channel_order: str = "rgb"
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ExportError(f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ExportError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")


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
        spread[:: 2**level] = np.array(PYRAMID_TAPS) / 16.0
        kernel = np.convolve(kernel, spread)
    return table.astype(np.float32)


class _Builder:
    """Nodes and constants of a graph under construction; every tensor gets a fresh name."""

    def __init__(self, opset: int) -> None:
        require("onnx", "cpu")
        from onnx import helper, numpy_helper

        self.h, self.nh, self.opset, self.prefix = helper, numpy_helper, opset, "pp/"
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

    def i(self, value: Any) -> str:
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

    def round8(self, x: str) -> str:
        """Round half up, as Pillow's 8-bit resampling does (ONNX Round rounds half to even)."""
        return self.op("Floor", self.op("Add", x, self.f(0.5)))


# ------------------------------------------------------------------------- weight families


class _Axis(NamedTuple):
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
    inside = b.op("Where", b.op("Less", ax, b.f(1.0)), near, far)
    return b.op("Where", b.op("Less", ax, b.f(2.0)), inside, b.f(0.0))


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
        return b.op("Where", inside, b.op("Div", w, count), b.f(0.0))


class _OpenCVCubic(_Family):
    """cv2.resize(INTER_CUBIC) of an R-pixel axis to the padded square's side `virtual`, outputs
    offset .. offset + m - 1 (the crop): fx = (o + offset + 0.5) R / side - 0.5, taps floor(fx) - 1
    .. + 2 with the replicated border (`david_infer.resample.cv2_cubic_coeffs`)."""

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
        f = b.op("Where", b.op("Less", sx, b.f(0.0)), b.f(0.0), f)
        sx = b.op("Max", sx, b.f(0.0))
        top = b.op("GreaterOrEqual", sx, last)
        f = b.op("Where", top, b.f(0.0), f)
        sx = b.op("Where", top, last, sx)
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
        return b.op("Where", inside, b.op("Gather", self.table, flat, axis=0), b.f(0.0))

    def weight(self, b: _Builder, o: str, v: str) -> str:
        s0, s1, f = self._taps(b, o)
        w0 = self._kernel_at(b, b.op("Sub", v, b.op("Mul", s0, self.step)))
        w1 = self._kernel_at(b, b.op("Sub", v, b.op("Mul", s1, self.step)))
        return b.op("Add", b.op("Mul", b.op("Sub", b.f(1.0), f), w0), b.op("Mul", f, w1))

    def source(self, b: _Builder, v: str, axis: _Axis) -> str:
        side1 = b.op("Sub", axis.virtual, b.i(1))
        r = b.op("Abs", v)  # reflect-101 at both ends of the square (overshoot < side)
        r = b.op("Where", b.op("Greater", r, side1), b.op("Sub", b.op("Mul", b.i(2), side1), r), r)
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


def _apply_band(b: _Builder, x: str, axis: int, band: _Band, groups: Optional[str] = None) -> str:
    """Resample `x` along `axis` (not its last) by `band`; the result has band.geometry.m entries
    there. With `groups` (a name; for an untrimmed band whose groups tile the axis) the product is
    written to that tensor as it comes, x[:axis] + (G, g, rest), with no reshape (no copy) after."""
    gathered = b.op("Gather", x, band.source, axis=axis)  # x[:axis] + (G, L) + x[axis+1:]
    shape = b.op("Shape", x)
    before = b.op("Slice", shape, b.i([0]), b.i([axis]), b.i([0]))
    after = b.op("Slice", shape, b.i([axis + 1]), b.i([_I64_MAX]), b.i([0]))
    count, length = (b.op("Unsqueeze", t, b.i([0])) for t in (band.count, band.length))
    flat = b.op("Reshape", gathered, b.op("Concat", before, count, length, b.i([-1]), axis=0))
    product = b.op("MatMul", band.w, flat, out=groups)  # x[:axis] + (G, g, rest)
    if groups:
        return product
    total = b.op("Unsqueeze", b.op("Mul", band.count, band.g), b.i([0]))
    out = b.op("Reshape", product, b.op("Concat", before, total, after, axis=0))
    return _edges(b, out, band, axis, lambda index: (x, index))


def _edges(b: _Builder, out: str, band: _Band, axis: int, edge: Callable[[str], Tuple[str, Optional[str]]]) -> str:
    """`out` with the groups a trimmed band left out put back along `axis` (the first or last pixel
    row, repeated), cut to band.geometry.m outputs. `edge(index)`: the tensor holding pixel row
    `index` (int64 (1,)) as `out` has it, and where along `axis` (None: at 0)."""
    if band.lead is not None and band.tail is not None:
        parts = []
        last_row = b.op("Unsqueeze", b.op("Sub", band.geometry.n, b.i(1)), b.i([0]))
        for groups, index in ((band.lead, b.i([0])), (band.tail, last_row)):
            row, at = edge(index)
            # the edge row, repeated: a Gather copies rows whole (Expand broadcasts slowly)
            repeat = b.op("Unsqueeze", b.op("Mul", groups, band.g), b.i([0]))
            parts.append(b.op("Gather", row, b.op("Expand", at or b.i([0]), repeat), axis=axis))
        out = b.op("Concat", parts[0], out, parts[1], axis=axis)
    if band.sliced:
        out = b.op("Slice", out, b.i([0]), b.op("Unsqueeze", band.geometry.m, b.i([0])), b.i([axis]))
    return out


def _largest_divisor(b: _Builder, m: str) -> str:
    """The largest d <= MAX_ROW_GROUP dividing m (int64 scalar)."""
    candidates = b.i(np.arange(1, MAX_ROW_GROUP + 1))
    fits = b.op("Equal", b.op("Mod", m, candidates), b.i(0))
    return b.reduce("ReduceMax", b.op("Where", fits, candidates, b.i(0)), [0], 0)


# ------------------------------------------------------------------------------ the graph


class _Square(NamedTuple):
    """The padded square of the input image, as graph scalars (int64)."""

    h: str
    w: str
    side: str
    top: str
    left: str


def _square(b: _Builder, h: str, w: str) -> _Square:
    side = b.op("Max", h, w)
    top = b.op("Div", b.op("Sub", side, h), b.i(2))
    left = b.op("Div", b.op("Sub", side, w), b.i(2))
    return _Square(h, w, side, top, left)


Cast = Callable[[str], str]


def _resize_square(b: _Builder, x: str, down: _Band, across: _Band, eight_bit: bool, to_float: Cast) -> str:
    """(N, H, W, 3) -> (N, Rx, 3, Ry): the rows resampled by `down`, then the columns by `across`.

    The full-size pass is (gathered rows)^T x (weights)^T per group, so its result comes as
    (N, G, W x 3, g), each group's outputs last: ONNX Runtime runs that product (a MatMul with
    transA) about twice as fast as weights x rows, which repacks every gathered row, and the
    columns pass then needs only the blocks of g moved, (N, W, 3, G x g). Groups of the padding
    alone (trim) are the edge rows: resampled across on their own and repeated at the end, where
    the square is small. `eight_bit`: rounded to 8 bits after each pass, as Pillow. `to_float`
    casts what is gathered from `x` (identity when `x` is float already; the runtime's graphs
    gather 8-bit rows and cast the rows only, a quarter of the memory)."""
    finish = b.round8 if eight_bit else (lambda t: t)
    gathered = to_float(b.op("Gather", x, down.source, axis=1))  # (N, G, L, W, 3)
    shape = b.op("Shape", x)
    n, w = (b.op("Slice", shape, b.i([i]), b.i([i + 1]), b.i([0])) for i in (0, 2))
    count, length = (b.op("Unsqueeze", t, b.i([0])) for t in (down.count, down.length))
    flat = b.op("Reshape", gathered, b.op("Concat", n, count, length, b.i([-1]), axis=0))  # (N, G, L, W x 3)
    rows_last = b.op("Transpose", flat, perm=[0, 1, 3, 2])  # (N, G, W x 3, L), fused into the MatMul
    product = finish(b.op("MatMul", rows_last, b.op("Transpose", down.w, perm=[0, 2, 1])))  # (N, G, W x 3, g)
    by_column = b.op("Transpose", product, perm=[0, 2, 1, 3])  # (N, W x 3, G, g)
    kept = b.op("Reshape", by_column, b.op("Concat", n, w, b.i([3, -1]), axis=0))  # (N, W, 3, G x g)
    xy = finish(_apply_band(b, kept, 1, across))  # (N, Rx, 3, G x g)

    def edge(index: str) -> Tuple[str, Optional[str]]:  # the pixel row, resampled across: (N, Rx, 3, 1)
        row = b.op("Transpose", to_float(b.op("Gather", x, index, axis=1)), perm=[0, 2, 3, 1])  # (N, W, 3, 1)
        return finish(_apply_band(b, row, 1, across)), None

    return _edges(b, xy, down, 3, edge)


#: outputs per group of the full-size pass (measured: 8 beats 16 and 32 with transA)
_FIRST_GROUP = 8
#: Transpose perms to the network's (N, 3, Y, X) from the pre-resize's (N, X, 3, Y) and the ViT
#: copy's (N, Y, X, 3)
_FROM_XCY, _FROM_YXC = [0, 2, 3, 1], [0, 3, 1, 2]


def _square_bands(
    b: _Builder, sq: _Square, size: int, make: Callable[[_Axis], _Family], trim: bool
) -> Tuple[_Band, _Band]:
    """The bands (down, across) of resizing the padded square to size x size by the family `make`
    gives each axis; `trim` for a family whose virtual indices only clamp (see `_band`)."""
    m = b.i(size)
    rows, cols = _Axis(sq.h, sq.side, sq.top, m), _Axis(sq.w, sq.side, sq.left, m)
    down = _band(b, rows, make(rows), trim=trim, whole_groups=size % _FIRST_GROUP == 0, size=_FIRST_GROUP)
    across = _band(b, cols, make(cols), trim=trim, whole_groups=size % _GROUP == 0)
    return down, across


def _vit_from_square(b: _Builder, xy: str, spec: GraphSpec, eight_bit: bool) -> str:
    """The ViT copy (N, Vy, Vx, 3) of the model-resolution square (N, Rx, 3, Ry): columns, then rows."""
    finish = b.round8 if eight_bit else (lambda t: t)
    r, vit = b.i(spec.resolution), b.i(int(spec.vit_size or 0))
    small = _Axis(r, r, b.i(0), vit)
    if spec.pipeline == "official":
        family: _Family = _OpenCVPyramidLinear(b, small, b.i(0), r)
    else:
        family = _Pillow(b, small, "bilinear", b.f(0.0), b.f(float(spec.resolution)), b.i(1))
    band = _band(b, small, family, whole_groups=int(spec.vit_size or 0) % _GROUP == 0)  # both axes alike
    across = finish(_apply_band(b, xy, 1, band))  # (N, Vx, 3, Ry)
    down_next = b.op("Transpose", across, perm=[0, 3, 1, 2])  # (N, Ry, Vx, 3): a 2-D transpose
    return finish(_apply_band(b, down_next, 1, band))  # (N, Vy, Vx, 3)


def _pre(b: _Builder, x: str, sq: _Square, spec: GraphSpec, eight_bit: bool, to_float: Cast) -> List[Tuple[str, Any]]:
    """(N, H, W, 3) -> [(the square, its perm to NCHW), (the ViT copy, its perm)] (0..255 for 8-bit
    photos, else as given)."""
    r, vit = spec.resolution, spec.vit_size
    official = spec.pipeline == "official"
    if official:
        eight_bit = False  # float data all through, as the official runtime
        limit = b.i(OFFICIAL_PYRAMID_FACTOR * r)
        length, levels = sq.side, b.i(0)
        for _ in range(MAX_PYRAMID_LEVELS):  # levels = how many halvings while the side exceeds the limit
            more = b.op("Greater", length, limit)
            levels = b.op("Add", levels, b.op("Cast", more, to=7))
            length = b.op("Where", more, b.op("Div", b.op("Add", length, b.i(1)), b.i(2)), length)

        def family(axis: _Axis) -> _Family:
            return _OpenCVPyramidLinear(b, axis, levels, length)

    else:
        k = b.op("Max", b.op("Div", sq.side, b.i(REDUCING_GAP * max(r, vit or 0))), b.i(1))
        span = b.op("Div", b.to_float(sq.side), b.to_float(k))

        def family(axis: _Axis) -> _Family:
            return _Pillow(b, axis, "bilinear", b.f(0.0), span, k)

    def resize(size: int) -> str:  # trimmed where the virtual indices only clamp
        return _resize_square(b, x, *_square_bands(b, sq, size, family, trim=not official), eight_bit, to_float)

    xy = resize(r)
    if vit and (r >= vit or official):
        return [(xy, _FROM_XCY), (_vit_from_square(b, xy, spec, eight_bit), _FROM_YXC)]
    # below the ViT size the copy comes from the photo itself, with its detail
    return [(xy, _FROM_XCY)] + ([(resize(vit), _FROM_XCY)] if vit else [])


def _network_inputs(
    b: _Builder, resized: List[Tuple[str, Any]], names: List[str], spec: GraphSpec, scale: float
) -> None:
    """The resized squares (axes as their perms say, in the photo's channel order) -> the tensors
    `names`, (N, 3, Y, X) BGR, times `scale`."""
    for (square, perm), name in zip(resized, names):
        chw = b.op("Transpose", square, perm=perm)
        if spec.channel_order == "rgb":
            chw = b.op("Gather", chw, b.i([2, 1, 0]), axis=1)
        b.op("Mul", chw, b.f(scale), out=name)


class _PostBands(NamedTuple):
    """The resize back's bands, which every task's map shares, and the model rows [first, last)
    that the down band reads (int64 (1,) tensors)."""

    across: _Band
    down: _Band
    first: str
    last: str


def _post_bands(b: _Builder, sq: _Square, spec: GraphSpec, padded: bool = False) -> _PostBands:
    """The resize back from the network's R x R to the image, as the bands across (x: R -> W) and
    down (y: R -> H), which every task's map shares; `padded`: the down band in groups of exactly
    MAX_ROW_GROUP rows, the last one padded (see MAX_ROW_GROUP)."""
    r = b.i(spec.resolution)
    s = b.op("Div", b.f(float(spec.resolution)), b.to_float(sq.side))
    cols, rows = _Axis(r, sq.side, sq.left, sq.w), _Axis(r, sq.side, sq.top, sq.h)
    if spec.interpolation == "official":
        across_family: _Family = _OpenCVCubic(b, cols)
        down_family: _Family = _OpenCVCubic(b, rows)
    else:  # Pillow's filter from the crop box in model pixels: R of them, none virtual
        one, zero = b.i(1), b.i(0)

        def pillow(axis: _Axis) -> Tuple[_Axis, _Family]:
            start, span = (b.op("Mul", b.to_float(t), s) for t in (axis.offset, axis.m))
            crop = _Axis(r, r, zero, axis.m)
            return crop, _Pillow(b, crop, spec.interpolation, start, span, one)

        (cols, across_family), (rows, down_family) = pillow(cols), pillow(rows)
    if padded:
        down = _band(b, rows, down_family, size=MAX_ROW_GROUP)
    else:
        down = _band(b, rows, down_family, group=_largest_divisor(b, sq.h))  # no slicing of the full-size result
    # only the model rows the image's rows read are resampled across (a 16:9 photo: 296 of 512),
    # so the map is cut to them first and the down band reads the cut rows
    first = b.op("Unsqueeze", b.reduce("ReduceMin", down.source, [0, 1], 0), b.i([0]))
    last = b.op("Unsqueeze", b.op("Add", b.reduce("ReduceMax", down.source, [0, 1], 0), b.i(1)), b.i([0]))
    down = replace(down, source=b.op("Sub", down.source, first))
    return _PostBands(_band(b, cols, across_family), down, first, last)


def _post(b: _Builder, value: str, bands: _PostBands, task: str, finish: bool) -> str:
    """Network output (N, C, R, R) -> the task's map at the image's size, the tensor named `task`:
    finished as its row of the task table says, (N, H, W) or (N, H, W, C); or unfinished (`finish`
    False) in row groups, (N, G, g, W x C), which the runtime finishes in place."""
    row = TASKS[task]
    across_band, down_band = bands.across, bands.down
    value = b.op("Slice", value, bands.first, bands.last, b.i([2]))  # (N, C, rows read, R)
    if row.channels > 1:
        # channels last while small, so the full-size pass writes the output's (N, H, W, C) itself
        # (a full-size transpose costs more than the whole pass); both transposes are 2-D ones
        xcy = b.op("Transpose", value, perm=[0, 3, 1, 2])  # (N, Rx, C, Ry)
        across = _apply_band(b, xcy, 1, across_band)  # (N, W, C, Ry)
        plane = b.op("Transpose", across, perm=[0, 3, 1, 2])  # (N, Ry, W, C)
    else:
        xt = b.op("Transpose", value, perm=[0, 1, 3, 2])  # (N, 1, Rx, Ry)
        across = _apply_band(b, xt, 2, across_band)  # (N, 1, W, Ry)
        # one channel: squeezed while small, so the full-size pass writes (N, H, W) itself
        plane = b.op("Squeeze", b.op("Transpose", across, perm=[0, 1, 3, 2]), b.i([1]))  # (N, Ry, W)
    if not finish:
        return _apply_band(b, plane, 1, down_band, groups=task)
    steps: List[Callable[[str, Optional[str]], str]] = []
    if row.sign < 0:
        steps.append(lambda t, out: b.op("Neg", t, out=out))
    if row.unit_eps is not None:
        eps = row.unit_eps
        steps.append(lambda t, out: _unit_length(b, t, row.channels, eps, out))
    if row.clip is not None:
        lo, hi = row.clip
        steps.append(lambda t, out: b.op("Clip", t, b.f(lo), b.f(hi), out=out))
    full = _apply_band(b, plane, 1, down_band)
    if not steps:
        return b.op("Identity", full, out=task)
    for i, step in enumerate(steps):  # the last step writes the output itself (no extra copy)
        full = step(full, task if i == len(steps) - 1 else None)
    return full


def _unit_length(b: _Builder, vectors: str, channels: int, eps: float, name: Optional[str]) -> str:
    """(N, H, W, C) divided by max(length, eps) per pixel. The sum of squares and its spreading
    over the channels are MatMuls with ones: ONNX Runtime reduces over, and broadcasts along, a
    short last axis several times slower than it runs an elementwise op or a MatMul."""
    ones = np.ones((channels, 1), np.float32)
    squares = b.op("MatMul", b.op("Mul", vectors, vectors), b.const(ones, np.float32))  # (N, H, W, 1)
    length = b.op("Clip", b.op("Sqrt", squares), b.f(eps))  # max(., eps): Max broadcasts slowly
    spread = b.op("MatMul", length, b.const(ones.T, np.float32))  # (N, H, W, C)
    return b.op("Div", vectors, spread, out=name)


# ------------------------------------------------------------------------------ the builders

#: the opset of the runtime's own pre/post graphs (onnx >= 1.12, ONNX Runtime >= 1.12)
GRAPH_OPSET = 17


def _model(b: _Builder, name: str, inputs: List[Any], outputs: List[Any]) -> Any:
    graph = b.h.make_graph(b.nodes, name, inputs, outputs, initializer=b.initializers)
    opsets = [b.h.make_opsetid("", b.opset)]
    return b.h.make_model(graph, opset_imports=opsets, ir_version=8, producer_name="david-infer")


def build_pre(spec: GraphSpec, image_input: str, vit_input: Optional[str], dtype: str = "uint8") -> Any:
    """The pre graph: the photo "photo" (N, H, W, 3), uint8 or float32 in [0, 1], in the spec's
    channel order -> the network's feeds `image_input` (N, 3, R, R) and `vit_input` (N, 3, V, V), BGR
    float32 in [0, 1]. For ONNX Runtime (it gathers 8-bit rows before casting)."""
    from onnx import TensorProto, helper

    b = _Builder(GRAPH_OPSET)
    eight_bit = dtype == "uint8"
    sq = _square(b, b.dim("photo", 1), b.dim("photo", 2))
    resized = _pre(b, "photo", sq, spec, eight_bit, b.to_float if eight_bit else (lambda t: t))
    names = [image_input] + ([vit_input] if vit_input else [])
    _network_inputs(b, resized, names, spec, 1.0 / 255.0 if eight_bit else 1.0)
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, "side", "side"]) for name in names]
    elem = TensorProto.UINT8 if eight_bit else TensorProto.FLOAT
    photo = helper.make_tensor_value_info("photo", elem, ["batch", "height", "width", 3])
    return _model(b, "david_pre", [photo], outputs)


def build_post(spec: GraphSpec, tasks: Sequence[str]) -> Any:
    """The post graph: the network's outputs, one (N, C, R, R) input per task named by the task,
    and "size" (int64 [H, W]) -> per task its map resized to the image, unfinished, in row groups
    (N, G, g, W x C), g = MAX_ROW_GROUP and G = ceil(H / g): the rows past H repeat the last one
    (the runtime binds a view of a map g x G rows tall and keeps H of them)."""
    from onnx import TensorProto, helper

    b = _Builder(GRAPH_OPSET)
    size = "size"
    h, w = (b.op("Squeeze", b.op("Slice", size, b.i([i]), b.i([i + 1]), b.i([0])), b.i([0])) for i in (0, 1))
    bands = _post_bands(b, _square(b, h, w), spec, padded=True)
    inputs, outputs = [helper.make_tensor_value_info(size, TensorProto.INT64, [2])], []
    for task in tasks:
        shape: List[Any] = ["batch", TASKS[task].channels, "side", "side"]
        inputs.append(helper.make_tensor_value_info(task + ":raw", TensorProto.FLOAT, shape))
        _post(b, task + ":raw", bands, task, finish=False)
        outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, ["batch", "groups", "rows", "row"]))
    return _model(b, "david_post", inputs, outputs)


def wrap(
    network: Any,
    spec: GraphSpec,
    image_input: str,
    vit_input: Optional[str],
    outputs: Mapping[str, Tuple[str, int]],
    batch: Any,
) -> Any:
    """`network` (a ModelProto) wrapped in its pre/post: one graph from the photo "image" uint8
    (N, H, W, 3) to the finished maps (N, H, W[, C]) named by task, with TensorRT 10's operators
    only (the photo is cast to float first: TensorRT takes uint8 only at the boundary)."""
    onnx = require("onnx", "export")
    from onnx import TensorProto, compose, helper

    opset = default_opset(network)
    net = onnx.ModelProto()
    net.CopyFrom(network)
    compose.add_prefix(net, "net/", inplace=True)
    b = _Builder(opset)
    b.stage("cast")
    x = b.to_float("image")  # first: TensorRT takes uint8 only at the boundary (even Shape reads float)
    b.stage("pre")
    sq = _square(b, b.dim(x, 1), b.dim(x, 2))
    resized = _pre(b, x, sq, spec, eight_bit=True, to_float=lambda t: t)
    b.stage("input")
    _network_inputs(
        b, resized, ["net/" + name for name in [image_input] + ([vit_input] if vit_input else [])], spec, 1.0 / 255.0
    )
    pre_nodes, b.nodes = b.nodes, []  # the network's nodes go between
    b.stage("post/bands")
    bands = _post_bands(b, sq, spec)
    graph_outputs = []
    for task, (name, rank) in outputs.items():
        b.stage(f"post/{task}")
        value = b.op("Unsqueeze", "net/" + name, b.i([1])) if rank == 3 else "net/" + name
        _post(b, value, bands, task, finish=True)
        shape = [batch, "height", "width"] + ([TASKS[task].channels] if TASKS[task].channels > 1 else [])
        graph_outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        pre_nodes + list(net.graph.node) + b.nodes,
        "david_prepost",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, "height", "width", 3])],
        graph_outputs,
        initializer=list(net.graph.initializer) + b.initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=list(network.opset_import),
        ir_version=network.ir_version,
        producer_name="david-infer prepost",
    )


def default_opset(model: Any) -> int:
    """The default-domain opset a ModelProto imports (0 if none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0
