"""Image sizes and input shapes: the one HxW parser and the one input-shape check, pure Python, so the
model, the export stage, TensorRT and the command line validate sizes alike, with the same messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import InputError

Shape = Tuple[int, ...]
HW = Tuple[int, int]
HWLike = Union[str, int, Sequence[int]]

_HW_RE = re.compile(r"^\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*$")


def parse_hw(text: HWLike, what: str = "resolution") -> HW:
    """`"512"`, `"512x768"` (height x width), 512 or (512, 768) -> (height, width); InputError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        h = w = text
    elif isinstance(text, (tuple, list)) and len(text) == 2:
        h, w = (int(v) for v in text)
    else:
        m = _HW_RE.match(str(text))
        if not m:
            raise InputError(f"{what} {text!r} is not HEIGHTxWIDTH (e.g. 512x512) or a single size (e.g. 512)")
        h = int(m.group(1))
        w = int(m.group(2)) if m.group(2) else h
    if h <= 0 or w <= 0:
        raise InputError(f"{what} {h}x{w} must be positive")
    return h, w


def parse_hw_list(text: str, what: str = "resolution") -> List[HW]:
    """`"256x256,384x640,512"` -> [(256, 256), (384, 640), (512, 512)]; InputError otherwise."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"no {what} in {text!r}; give e.g. 256x256,384x640")
    return [parse_hw(item.strip(), what) for item in items]


def check_stride(hw: Sequence[int], stride: int, what: str = "resolution") -> None:
    """InputError unless height and width are positive multiples of `stride`, suggesting the nearest."""
    h, w = (int(v) for v in hw)
    if h <= 0 or w <= 0 or h % stride or w % stride:
        near = "x".join(str(max(stride, round(v / stride) * stride)) for v in (h, w))
        raise InputError(
            f"{what} {h}x{w}: height and width must be positive multiples of {stride} (the model halves the "
            f"resolution {stride.bit_length() - 1} times); try {near}"
        )


@dataclass(frozen=True)
class ShapeRange:
    """The min / opt / max shapes of one input (a TensorRT optimization profile, or any bound)."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether `shape` has the right rank and lies inside [min, max] on every axis."""
        return len(shape) == len(self.min) and all(lo <= int(s) <= hi for s, lo, hi in zip(shape, self.min, self.max))

    def as_dict(self) -> Dict[str, list]:
        """{"min": [...], "opt": [...], "max": [...]}."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShapeRange":
        """The range `as_dict` wrote."""
        return cls(*(tuple(int(d) for d in data[k]) for k in ("min", "opt", "max")))


def format_shape(shape: Sequence[int]) -> str:
    """(1, 3, 512, 768) -> "1x3x512x768"; (512, 768) -> "512x768" (the form parse_hw reads)."""
    return "x".join(str(int(d)) for d in shape)


def check_input_shape(
    name: str,
    shape: Sequence[int],
    shape_range: Optional[ShapeRange] = None,
    source: str = "the engine",
    stride: Optional[int] = None,
) -> None:
    """InputError unless `shape` is an image batch (B, 3, H, W) the model can take: H and W positive
    multiples of `stride` (when given), inside `shape_range` (what `source`, e.g. an engine, was
    built for)."""
    if len(shape) != 4 or int(shape[1]) != 3:
        raise InputError(
            f"input {name!r} has shape {format_shape(shape)}; expected an image tensor of shape (B, 3, H, W)"
        )
    if stride is not None:
        check_stride(shape[2:], stride, f"input {name!r}")
    if shape_range is None or shape_range.contains(shape):
        return
    raise InputError(
        f"input {name!r} has shape {format_shape(shape)}, outside the range {source} was built for "
        f"({format_shape(shape_range.min)} to {format_shape(shape_range.max)}); resize to a size in that range "
        "or rebuild the engine with david-infer build-engine --min/--max/--max-batch covering it"
    )
