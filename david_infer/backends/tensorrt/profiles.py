"""Optimization-profile shapes for a contract's dynamic inputs (`batch`, `height`, `width`), pure
Python: for the engine builder, ONNX Runtime's TensorRT provider and the runner's shape check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Mapping, Sequence, Union

from ...config import DEFAULT_RESOLUTION
from ...errors import InputError, ModelError
from ...shapes import HW, ShapeRange, check_stride, format_shape, parse_hw

if TYPE_CHECKING:
    from ...contract import ModelContract

DEFAULT_MIN: HW = (256, 256)
DEFAULT_OPT: HW = (DEFAULT_RESOLUTION, DEFAULT_RESOLUTION)
DEFAULT_MAX: HW = (1024, 1024)
DEFAULT_MAX_BATCH = 8


def compute_profiles(
    contract: "ModelContract",
    min_hw: Union[str, int, Sequence[int], None] = None,
    opt_hw: Union[str, int, Sequence[int], None] = None,
    max_hw: Union[str, int, Sequence[int], None] = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = 1,
) -> Dict[str, ShapeRange]:
    """(min, opt, max) shapes of every input of the contract: `batch` from 1 / `opt_batch` /
    `max_batch`, `height` and `width` from the three sizes (default 256, 512, 1024 square), fixed
    dimensions as they are. InputError names the offending argument."""
    mn = parse_hw(min_hw if min_hw is not None else DEFAULT_MIN, "--min")
    op = parse_hw(opt_hw if opt_hw is not None else DEFAULT_OPT, "--opt")
    mx = parse_hw(max_hw if max_hw is not None else DEFAULT_MAX, "--max")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"--max-batch {max_batch!r} must be a positive integer")
    if not isinstance(opt_batch, int) or not 1 <= opt_batch <= max_batch:
        raise InputError(f"optimal batch {opt_batch!r} must lie between 1 and --max-batch {max_batch}")
    stride = contract.stride
    for hw, what in ((mn, "--min"), (op, "--opt"), (mx, "--max")):
        check_stride(hw, stride, what)
    for axis, i in (("height", 0), ("width", 1)):
        if not mn[i] <= op[i] <= mx[i]:
            raise InputError(f"{axis}s must satisfy --min <= --opt <= --max; got {mn[i]} <= {op[i]} <= {mx[i]}")
    values = {
        "batch": (1, opt_batch, max_batch),
        "height": (mn[0], op[0], mx[0]),
        "width": (mn[1], op[1], mx[1]),
    }
    profiles: Dict[str, ShapeRange] = {}
    for spec in contract.inputs:
        name, dims = spec.name, spec.shape
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
    _check_static_graph(contract, profiles, min_hw, opt_hw, max_hw)
    return profiles


def _check_static_graph(
    contract: "ModelContract", profiles: Mapping[str, ShapeRange], *asked: Union[str, int, Sequence[int], None]
) -> None:
    """A graph without symbolic height/width (the "official" layout) accepts only its own size."""
    dynamic_hw = any(d in ("height", "width") for spec in contract.inputs for d in spec.shape)
    if dynamic_hw or all(a is None for a in asked):
        return
    fixed = next(iter(profiles.values())).min
    for value, what in zip(asked, ("--min", "--opt", "--max")):
        if value is not None and parse_hw(value, what) != tuple(fixed[-2:]):
            raise InputError(
                f"this model has a fixed input size {fixed[-2]}x{fixed[-1]} (layout "
                f"{contract.layout!r}); {what} {value} does not apply. Export with "
                "--layout dynamic for other sizes"
            )


def ort_shape_string(profiles: Mapping[str, ShapeRange], level: str) -> str:
    """ONNX Runtime's TensorRT profile syntax: "image:1x3x512x512,image_384:1x3x384x384"."""
    if level not in ("min", "opt", "max"):
        raise ValueError(f"level must be min, opt or max, not {level!r}")
    return ",".join(f"{name}:{format_shape(getattr(rng, level))}" for name, rng in profiles.items())
