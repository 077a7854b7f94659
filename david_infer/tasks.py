"""The task table: every fact about DAViD's three maps, written once.

Each task's channels, output name, default sign, finishing (unit length, clipping), picture and
files are read from here by the reference and torch pre/post, the graph builder, visualisation,
the output writers and the manifest (whose `task_table` the C++ host and the page read). Adding a
task is a row here and a head on the model (ARCHITECTURE.md, "Adding a task").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class Task:
    """One dense map the models predict.

    name:      the task's name, also the output name in our exports and pre/post graphs.
    channels:  values per pixel (1: a plane (H, W); 3: vectors (H, W, 3), channels last).
    sign:      the sign the finished map carries by default against the raw output (-1 for depth:
               larger = nearer, as the official runtime's `is_inverse`; the runtime's
               `invert_depth=False` takes it back).
    unit_eps:  renormalise each pixel's vector to unit length after resizing, dividing by
               max(length, unit_eps); None: no renormalisation.
    clip:      (low, high) the finished map is clipped to; None: unclipped.
    picture:   how pictures show it: "relative" (min-max: a colour map in panels, 16 bits in a PNG),
               "vectors" ((v + 1) / 2 * 255 as RGB), "matte" (0..1 as 0..255; a tint in panels).
    files:     (format, suffix) of each file the output writers give it: "png" (its picture),
               "npy" (the float32 map), "cutout" (the photo with the matte as alpha).
    released_axes: how Microsoft's released files give it: "NHW" (no channel axis) or "NCHW".
    meaning:   one line for the manifest and the docs.
    """

    name: str
    channels: int
    sign: int = 1
    unit_eps: Optional[float] = None
    clip: Optional[Tuple[float, float]] = None
    picture: str = "relative"
    files: Tuple[Tuple[str, str], ...] = ()
    released_axes: str = "NCHW"
    meaning: str = ""

    def shape(self, height: int, width: int) -> Tuple[int, ...]:
        """The finished map's shape for an image of height x width."""
        return (height, width) if self.channels == 1 else (height, width, self.channels)

    def finish(self, block: np.ndarray, sign: Optional[int] = None) -> None:
        """Finish a block of the resized map in place (rows of (H, W) or (H, W, C), float32): the
        sign (default `self.sign`), unit length, clipping."""
        if (self.sign if sign is None else sign) < 0:
            np.negative(block, out=block)
        if self.unit_eps is not None:  # elementwise on each component (an einsum is 1.5x slower)
            length = block[..., 0] * block[..., 0]
            for c in range(1, self.channels):
                length += block[..., c] * block[..., c]
            np.sqrt(length, out=length)
            np.maximum(length, np.float32(self.unit_eps), out=length)
            np.divide(np.float32(1.0), length, out=length)
            block *= length[..., None]
        if self.clip is not None:
            np.clip(block, self.clip[0], self.clip[1], out=block)

    def postprocessing(self) -> str:
        """What a host does with the raw output, in words (the manifest's `postprocessing`)."""
        steps = ["resize back to the padded square, crop the padding"]
        if self.sign < 0:
            steps.append("negate (the default; larger = nearer)")
        if self.unit_eps is not None:
            steps.append(f"renormalise each pixel to unit length (divide by max(length, {self.unit_eps:g}))")
        if self.clip is not None:
            steps.append(f"clip to [{self.clip[0]:g}, {self.clip[1]:g}]")
        return f"{self.meaning}: " + "; ".join(steps)

    def as_record(self) -> Dict[str, Any]:
        """The row as JSON (the manifest's `task_table`)."""
        return {
            "channels": self.channels,
            "sign": self.sign,
            "unit_eps": self.unit_eps,
            "clip": list(self.clip) if self.clip is not None else None,
            "picture": self.picture,
            "files": dict(self.files),
            "meaning": self.meaning,
        }


#: the tasks in the multi-task model's output order
TASKS: Dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "depth",
            1,
            sign=-1,
            picture="relative",
            files=(("png", ".depth.png"), ("npy", ".depth.npy")),
            released_axes="NHW",
            meaning="relative depth; the raw output is larger = farther, the finished map larger = nearer",
        ),
        Task(
            "normal",
            3,
            unit_eps=1e-12,
            picture="vectors",
            files=(("png", ".normal.png"), ("npy", ".normal.npy")),
            meaning="unit surface normals (x right, y up, z toward the camera)",
        ),
        Task(
            "foreground",
            1,
            clip=(0.0, 1.0),
            picture="matte",
            files=(("png", ".foreground.png"), ("cutout", ".cutout.png")),
            meaning="soft foreground mask in [0, 1]",
        ),
    )
}
TASK_ORDER: Tuple[str, ...] = tuple(TASKS)
#: a model's task names: one map, or all of them
MODEL_TASKS: Tuple[str, ...] = TASK_ORDER + ("multitask",)


def task_outputs(task: str) -> Tuple[str, ...]:
    """The maps a model of `task` ("multitask" or one task) produces, in output order."""
    if task == "multitask":
        return TASK_ORDER
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(MODEL_TASKS)}")
    return (task,)


def task_table(tasks: Tuple[str, ...] = TASK_ORDER) -> Dict[str, Dict[str, Any]]:
    """The rows of `tasks` as JSON, for a manifest."""
    return {name: TASKS[name].as_record() for name in tasks}
