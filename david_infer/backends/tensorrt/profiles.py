"""Optimization-profile shapes for our dynamic inputs (pure Python: no torch, no TensorRT).

A TensorRT engine built from a dynamic graph needs, for every input with a dynamic dimension, the
smallest, the most common ("opt") and the largest shape it will be run at. Our manifests name the
dynamic dimensions `batch`, `height` and `width`; `image_384` is fixed at the ViT size. The same
ranges feed the engine builder (`builder.py`), the ONNX Runtime TensorRT provider options and
the runner's per-call shape check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ...errors import InputError, ModelError

Shape = Tuple[int, ...]
HW = Tuple[int, int]

DEFAULT_MIN: HW = (256, 256)
DEFAULT_OPT: HW = (512, 512)
DEFAULT_MAX: HW = (1024, 1024)
DEFAULT_MAX_BATCH = 8

_HW_RE = re.compile(r"^\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*$")


@dataclass(frozen=True)
class ShapeRange:
    """The min / opt / max shapes of one input in an optimization profile."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether `shape` has the right rank and lies inside [min, max] on every axis."""
        return len(shape) == len(self.min) and all(
            lo <= int(s) <= hi for s, lo, hi in zip(shape, self.min, self.max)
        )

    def as_dict(self) -> Dict[str, list]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShapeRange":
        return cls(*(tuple(int(d) for d in data[k]) for k in ("min", "opt", "max")))


def parse_hw(text: Union[str, int, Sequence[int]], what: str = "resolution") -> HW:
    """`"512"`, `"512x768"` (height x width), 512 or (512, 768) -> (height, width); InputError otherwise."""
    if isinstance(text, int):
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


def _check_stride(hw: HW, stride: int, what: str) -> None:
    h, w = hw
    if h % stride or w % stride:
        def near(v: int) -> int:
            return max(stride, round(v / stride) * stride)

        raise InputError(
            f"{what} {h}x{w}: height and width must be multiples of {stride} (the model halves the "
            f"resolution {stride.bit_length() - 1} times); try {near(h)}x{near(w)}"
        )


def _stride(manifest: Mapping[str, Any]) -> int:
    stride = (manifest.get("preprocessing") or {}).get("stride")
    if not isinstance(stride, int) or stride <= 0:
        raise ModelError("manifest lacks preprocessing.stride; re-export the model with david-infer export")
    return stride


def compute_profiles(
    manifest: Mapping[str, Any],
    min_hw: Union[str, int, Sequence[int], None] = None,
    opt_hw: Union[str, int, Sequence[int], None] = None,
    max_hw: Union[str, int, Sequence[int], None] = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = 1,
) -> Dict[str, ShapeRange]:
    """(min, opt, max) shapes for every input of the manifest, in input order.

    Symbolic dimensions are filled in from the arguments: `batch` from 1 / `opt_batch` /
    `max_batch`, `height` and `width` from the three resolutions (defaults 256, 512 and 1024
    square). Fixed dimensions (channels, `image_384`'s 384x384, or a whole static "official"
    graph) stay as they are. InputError names the offending argument.
    """
    mn = parse_hw(min_hw if min_hw is not None else DEFAULT_MIN, "--min")
    op = parse_hw(opt_hw if opt_hw is not None else DEFAULT_OPT, "--opt")
    mx = parse_hw(max_hw if max_hw is not None else DEFAULT_MAX, "--max")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"--max-batch {max_batch!r} must be a positive integer")
    if not isinstance(opt_batch, int) or not 1 <= opt_batch <= max_batch:
        raise InputError(f"optimal batch {opt_batch!r} must lie between 1 and --max-batch {max_batch}")
    stride = _stride(manifest)
    for hw, what in ((mn, "--min"), (op, "--opt"), (mx, "--max")):
        _check_stride(hw, stride, what)
    for axis, i in (("height", 0), ("width", 1)):
        if not mn[i] <= op[i] <= mx[i]:
            raise InputError(
                f"{axis}s must satisfy --min <= --opt <= --max; got {mn[i]} <= {op[i]} <= {mx[i]}"
            )
    values = {
        "batch": (1, opt_batch, max_batch),
        "height": (mn[0], op[0], mx[0]),
        "width": (mn[1], op[1], mx[1]),
    }
    inputs = manifest.get("inputs")
    if not inputs:
        raise ModelError("manifest lists no inputs; re-export the model with david-infer export")
    profiles: Dict[str, ShapeRange] = {}
    for spec in inputs:
        name, dims = spec["name"], spec["shape"]
        per_level: list = [[], [], []]
        for dim in dims:
            if isinstance(dim, int):
                triple = (dim, dim, dim)
            elif dim in values:
                triple = values[dim]
            else:
                raise ModelError(f"input {name!r} has a dynamic dimension {dim!r} this SDK does not know")
            for level in range(3):
                per_level[level].append(triple[level])
        profiles[name] = ShapeRange(*(tuple(p) for p in per_level))
    _check_static_graph(manifest, profiles, min_hw, opt_hw, max_hw)
    return profiles


def _check_static_graph(
    manifest: Mapping[str, Any], profiles: Mapping[str, ShapeRange], *asked: Optional[object]
) -> None:
    """A graph without symbolic height/width (the "official" layout) accepts only its own size."""
    dynamic_hw = any(d in ("height", "width") for spec in manifest["inputs"] for d in spec["shape"])
    if dynamic_hw or all(a is None for a in asked):
        return
    fixed = next(iter(profiles.values())).min
    for value, what in zip(asked, ("--min", "--opt", "--max")):
        if value is not None and parse_hw(value, what) != tuple(fixed[-2:]):
            raise InputError(
                f"this model has a fixed input size {fixed[-2]}x{fixed[-1]} (layout "
                f"{manifest.get('layout')!r}); {what} {value} does not apply. Export with "
                "--layout dynamic for other sizes"
            )


def ort_shape_string(profiles: Mapping[str, ShapeRange], level: str) -> str:
    """ONNX Runtime's TensorRT profile syntax: "image:1x3x512x512,image_384:1x3x384x384"."""
    if level not in ("min", "opt", "max"):
        raise ValueError(f"level must be min, opt or max, not {level!r}")
    return ",".join(
        f"{name}:{'x'.join(str(d) for d in getattr(rng, level))}" for name, rng in profiles.items()
    )


def check_input_shape(name: str, shape: Sequence[int], rng: ShapeRange, source: str = "the engine") -> None:
    """InputError unless `shape` lies inside the profile range `rng` of input `name`."""
    if rng.contains(shape):
        return
    got = "x".join(str(int(d)) for d in shape)
    lo = "x".join(str(d) for d in rng.min)
    hi = "x".join(str(d) for d in rng.max)
    raise InputError(
        f"input {name!r} has shape {got}, outside the range {source} was built for ({lo} to {hi}); "
        "resize to a size in that range or rebuild the engine with david-infer build-engine "
        "--min/--max/--max-batch covering it"
    )
