"""Stages: how a model's images become its feeds, and its outputs maps at the image's size.

    decoded image --prepare--> Staged --infer (the model call, batched)--> outputs --finish--> maps

A runtime chooses one `Stages` when its model opens (`choose_stages`) and never branches on the kind
again: "graph" (ONNX graphs on ONNX Runtime around the model, david_infer.stages.graph: the
production pre/post), "torch" (the torch runner's own, `Runner.own_stages`) or "reference" (numpy,
david_infer.stages.reference: the definition the others are tested against). All resample with the
weights of david_infer.resample and finish each map as its row of david_infer.tasks says.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..contract import ModelContract
from ..errors import InputError, ModelError, NonFiniteOutput
from ..inputs import Decoded
from ..resample import INTERPOLATIONS, Geometry, dynamic_resolution
from ..tasks import TASKS, Task

log = logging.getLogger("david_infer.stages")

#: `stages=` choices: "auto" takes the runner's own (torch), else the graph where ONNX Runtime and
#: onnx are installed, else the reference
STAGE_KINDS = ("auto", "graph", "torch", "reference")

#: one image's outputs between `infer` and `finish`: task -> the raw (C, R, R) output (an array, or
#: a tensor on the torch runner's device), or the finished map of a pre/post graph
ModelOutputs = Dict[str, Any]
#: task -> the finished map at the image's size: (H, W) or (H, W, C) float32 numpy arrays, or torch
#: tensors on the device with the torch backend's output="torch"
Maps = Dict[str, Any]


@dataclass(frozen=True)
class PostOptions:
    """Per-task output options.

    invert_depth: True (default) negates the raw depth so larger = nearer, as the official
        runtime does; False returns the raw output, larger = farther.
    normalize_depth: min-max normalise depth to [0, 1] per image (after inversion).
    foreground_threshold: None for the soft mask, or t in [0, 1] for a 0/1 mask (> t).
    interpolation: how outputs are resized back: "auto" (the runtime picks "official" with the
        official pipeline, else "bicubic"), "official" (OpenCV INTER_CUBIC on the padded square,
        as the official runtime), "bicubic" or "bilinear" (Pillow's antialiased filters).
    """

    invert_depth: bool = True
    normalize_depth: bool = False
    foreground_threshold: Optional[float] = None
    interpolation: str = "auto"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS + ("auto",):
            raise InputError(
                f"interpolation must be 'auto' or one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        for name in ("invert_depth", "normalize_depth"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        t = self.foreground_threshold
        if t is not None and not (isinstance(t, (int, float)) and 0.0 <= float(t) <= 1.0):
            raise InputError(f"foreground_threshold must be None or a number in [0, 1], got {t!r}")

    def sign(self, task: str) -> int:
        """The sign of `task`'s finished map against the raw output (depth's taken back by invert_depth=False)."""
        return -1 if task == "depth" and self.invert_depth else 1

    def normalizes(self, task: str) -> bool:
        """Whether `task`'s finished map is min-max normalised to [0, 1] (depth, normalize_depth)."""
        return task == "depth" and self.normalize_depth

    def threshold(self, task: str) -> Optional[float]:
        """The threshold `task`'s finished map is cut at to 0/1 (the foreground's), or None."""
        return self.foreground_threshold if task == "foreground" else None


@dataclass(frozen=True)
class StageOptions:
    """What a runtime's stages are made for, fixed when the model opens.

    resolution: the square side the model runs at; None: each image's padded size rounded to the
        contract's stride. pipeline: "antialias" or "official" (david_infer.resample). post: the
        output options, interpolation resolved. threads: threads the stages may use. device: the
        runner's device ("cpu", "cuda:N"). allow_nonfinite: pass NaN/infinity through."""

    resolution: Optional[int]
    pipeline: str
    post: PostOptions
    threads: int = 1
    device: str = "cpu"
    allow_nonfinite: bool = False


@dataclass
class Staged:
    """One image between the stages: its name (for errors), where it sits in its padded square,
    which images may share a model call with it (equal `batch_key`), and the feeds the stages made
    for it (network inputs without their batch axis: numpy arrays, tensors on the torch runner's
    device, or the photo itself for a pre/post graph)."""

    name: str
    geometry: Geometry
    batch_key: Hashable
    feeds: Dict[str, Any] = field(repr=False)


class Stages(abc.ABC):
    """The pre/post of one opened model (see the module docstring)."""

    kind: ClassVar[str] = ""

    def __init__(self, runner: Any, contract: ModelContract, options: StageOptions) -> None:
        self.runner, self.contract, self.options = runner, contract, options
        #: the side of the network's ViT copy, None if it takes none
        self.vit_size = contract.vit_size if contract.vit_input is not None else None

    def resolution_for(self, height: int, width: int) -> int:
        """The model resolution an image of height x width runs at."""
        return self.options.resolution or dynamic_resolution(height, width, self.contract.stride)

    def network_feeds(self, image: Any, vit: Any) -> Dict[str, Any]:
        """The feeds of one image: the network's image input, and its ViT copy where it takes one."""
        feeds = {self.contract.image_input: image}
        if self.contract.vit_input is not None and vit is not None:
            feeds[self.contract.vit_input] = vit
        return feeds

    @abc.abstractmethod
    def prepare(self, decoded: Decoded) -> Staged:
        """The model's feeds for one decoded image."""

    def infer(self, batch: Sequence[Staged]) -> List[Union[ModelOutputs, Exception]]:
        """The model on images of one batch_key, batched: each image's outputs, or the
        NonFiniteOutput of an image whose outputs are not finite (unless allowed)."""
        feeds = {name: np.stack([s.feeds[name] for s in batch]) for name in batch[0].feeds}
        side = next(iter(feeds.values())).shape[-1]
        return self.checked_outputs(self.runner.run(feeds), batch, lambda row: (row.channels, side, side), True)

    def checked_outputs(
        self,
        raw: Mapping[str, Any],
        batch: Sequence[Staged],
        shape: Callable[[Task], Tuple[int, ...]],
        add_c: bool = False,
    ) -> List[Union[ModelOutputs, Exception]]:
        """`split_outputs` of the runner's outputs of a batch, each float32 and checked to be
        (N,) + shape(its task's row); `add_c`: a 3-D output gains its C axis (the released depth has none)."""
        per_task = {}
        for task, name in self.contract.output_names.items():
            value = np.asarray(raw[name], dtype=np.float32)
            value = value[:, None] if add_c and value.ndim == 3 else value
            expected = (len(batch),) + shape(TASKS[task])
            if value.shape != expected:
                raise ModelError(f"{self.contract.path}: output {name!r} has shape {value.shape}, expected {expected}")
            per_task[task] = value
        return split_outputs(per_task, [s.name for s in batch], self.options.allow_nonfinite)

    @abc.abstractmethod
    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        """One image's outputs -> its finished maps at its own size."""

    def close(self) -> None:  # noqa: B027 (optional: stages may hold nothing to release)
        """Release what the stages hold (sessions, device buffers). Idempotent."""


# ----------------------------------------------------------------------- shared finishing steps


def split_outputs(
    per_task: Mapping[str, Any], names: Sequence[str], allow_nonfinite: bool, finite: Any = None
) -> List[Union[ModelOutputs, Exception]]:
    """Per-image outputs of a batch (task -> (N, ...) arrays or tensors), with a NonFiniteOutput in
    place of each image whose outputs are not finite, unless allowed. One float64 sum per map of
    the batch says whether all is finite; per-image counts only for a batch that fails. `finite`
    checks one (N, ...) value (default: numpy's)."""
    outputs = [{task: value[i] for task, value in per_task.items()} for i in range(len(names))]
    check = finite or (lambda v: bool(np.isfinite(np.asarray(v).sum(dtype=np.float64))))
    bad = [] if allow_nonfinite else [task for task, value in per_task.items() if not check(value)]
    return [_nonfinite(out, name, bad) for out, name in zip(outputs, names)] if bad else list(outputs)


def _nonfinite(outputs: ModelOutputs, name: str, tasks: Sequence[str]) -> Union[ModelOutputs, NonFiniteOutput]:
    for task in tasks:
        value = outputs[task]
        host = value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
        finite = np.isfinite(host)
        if not finite.all():
            share = 1.0 - float(finite.mean())
            return NonFiniteOutput(
                f"{name}: the model's {task} output is not finite (NaN or infinity) in {share:.1%} of its "
                f"values; the model file or engine is broken (a bad export, an FP16 overflow). "
                f"DavidRuntime(allow_nonfinite=True) passes such values through.",
                task=task,
                input=name,
                share=share,
            )
    return outputs


def open_options(maps: Dict[str, np.ndarray], post: PostOptions) -> Dict[str, np.ndarray]:
    """What the finished maps leave to the output options, in place: depth normalised to [0, 1],
    the foreground thresholded."""
    for task, value in maps.items():
        if post.normalizes(task):
            lo, hi = float(value.min()), float(value.max())
            value -= np.float32(lo)
            if hi > lo:
                value *= np.float32(1.0 / (hi - lo))
        cut = post.threshold(task)
        if cut is not None:
            maps[task] = (value > cut).astype(np.float32)
    return maps


def finish_in_place(task: str, value: np.ndarray, post: PostOptions, pool: Any = None, rows: int = 256) -> None:
    """The table's finishing of one resized map, in place, in blocks of `rows` rows (spread over
    `pool`'s threads): the block stays in cache and no full-size temporary is made."""
    row = TASKS[task]
    sign = post.sign(task)
    blocks = [value[i : i + rows] for i in range(0, value.shape[0], rows)]
    list((pool.map if pool is not None and len(blocks) > 1 else map)(lambda block: row.finish(block, sign), blocks))


# ----------------------------------------------------------------------------------- choosing


def choose_stages(kind: str, runner: Any, contract: ModelContract, options: StageOptions) -> Stages:
    """The stages of an opened model (`kind` one of STAGE_KINDS; see the module docstring)."""
    if kind not in STAGE_KINDS:
        raise InputError(f"stages must be one of {', '.join(STAGE_KINDS)}, got {kind!r}")
    if contract.layout == "prepost":
        if kind not in ("auto", "graph"):
            raise InputError(f"{contract.path} is a pre/post graph: its stages are inside it; stages must be 'auto'")
        from .graph import InsideGraphStages

        return InsideGraphStages(runner, contract, options)
    own = runner.own_stages(contract, options, kind)
    if own is not None:
        return own
    if kind == "torch":
        raise InputError(f"stages='torch' runs on the torch backend's device; the {runner.name} backend has none")
    # onnx builds the graphs, ONNX Runtime runs them
    graph_available = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
    if kind == "graph" or (kind == "auto" and graph_available):
        from .graph import GraphStages

        return GraphStages(runner, contract, options)
    if kind == "auto":
        log.info("onnx or onnxruntime is not installed: the reference (numpy) pre/post runs instead of the graph")
    from .reference import ReferenceStages

    return ReferenceStages(runner, contract, options)
