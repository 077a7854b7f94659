"""Parity of every production pre/post against the reference stages: the photos, the bounds, and
the reference maps (computed once per photo and pipeline, kept on disk for the session).

The model is the tiny multi-task one with random weights, seed 5: its soft mask stays inside (0, 1)
on real photos (seed 0's is 0 everywhere, which would make the foreground comparison mean nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image

#: (H, W): portrait and landscape at 3:1, near-square both ways, 4K and 12-megapixel photos both
#: ways, one below the model resolution, and the thinnest the runtime takes
SHAPES = [
    (760, 2297),
    (2297, 760),
    (1024, 1155),
    (1155, 1024),
    (3405, 3840),
    (3840, 2160),
    (3024, 4032),
    (101, 77),
    (1, 600),
    (600, 1),
]
PIPELINES = ("antialias", "official")
SEED = 5
#: depth RMSE over the reference depth's RMS (a random model's depth varies by under 1% of its
#: values: over its spread the number would mean little), normals' mean angle, the mask's MAE
BOUNDS = {"depth": 1e-4, "normal": 0.05, "foreground": 1e-4}
TASKS = ("depth", "normal", "foreground")


def case_id(pipeline: str, shape: Tuple[int, int]) -> str:
    return f"{pipeline}-{shape[0]}x{shape[1]}"


def photo(shape: Tuple[int, int]) -> np.ndarray:
    """A real photograph (scikit-image's public-domain samples) resized to (H, W), uint8 RGB."""
    from skimage import data

    h, w = shape
    source = data.astronaut() if h >= w else data.coffee()
    return np.asarray(Image.fromarray(source).resize((w, h), Image.Resampling.LANCZOS))


def metrics(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> Dict[str, float]:
    """The parity numbers of `got` against the reference maps `want` (task -> map)."""
    depth, normal, foreground = (np.asarray(want[t], np.float64) for t in TASKS)
    cos = np.clip((np.asarray(got["normal"], np.float64) * normal).sum(-1), -1.0, 1.0)
    return {
        "depth": float(np.sqrt(np.mean((got["depth"] - depth) ** 2)) / np.sqrt(np.mean(depth**2))),
        "normal": float(np.degrees(np.arccos(cos)).mean()),
        "foreground": float(np.abs(got["foreground"] - foreground).mean()),
    }


def check(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], what: str) -> Dict[str, float]:
    """Assert `got` within BOUNDS of the reference (shapes first); return the numbers."""
    for task in TASKS:
        assert np.shape(got[task]) == np.shape(want[task]), (what, task, np.shape(got[task]), np.shape(want[task]))
    found = metrics(got, want)
    over = {task: value for task, value in found.items() if not value <= BOUNDS[task]}
    assert not over, f"{what}: {over} over the bounds {BOUNDS} (all: {found})"
    return found


def maps_of(prediction: Any) -> Dict[str, np.ndarray]:
    return {task: getattr(prediction, task) for task in TASKS}


class ReferenceMaps:
    """The reference stages' maps per (pipeline, shape), computed on first use and kept as .npy
    files in `folder` (the 4K maps are hundreds of MB: on disk, not in memory)."""

    def __init__(self, folder: Path, models: Dict[str, Path]) -> None:
        self.folder, self.models = folder, models

    def __call__(self, pipeline: str, shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
        stem = self.folder / case_id(pipeline, shape)
        if not all(stem.with_suffix(f".{task}.npy").exists() for task in TASKS):
            from david_infer import DavidRuntime

            with DavidRuntime(self.models[pipeline], stages="reference") as reference:
                prediction = reference.predict(photo(shape))
            for task in TASKS:
                np.save(stem.with_suffix(f".{task}.npy"), getattr(prediction, task))
        return {task: np.load(stem.with_suffix(f".{task}.npy"), mmap_mode="r") for task in TASKS}
