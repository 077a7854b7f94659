"""Clips with the second pass per person (`refine`): regions steadied over frames, with and
without stabilisation, through the Python API and `david-infer predict --refine people` (the
colour-keyed model of tests/support/keyed_model.py, whose people are red figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("scipy")

from david_infer import DavidRuntime  # noqa: E402
from david_infer.cli import main  # noqa: E402
from tests.support import keyed_model  # noqa: E402
from tests.support.video_clips import make_clip  # noqa: E402

SIZE = (180, 320)


def _walker(index: int, height: int = SIZE[0], width: int = SIZE[1]) -> np.ndarray:
    """A red figure walking right over grass, swinging a little in height (the mask's box moves)."""
    x = 60 + 4 * index
    top = 30 + (index % 3)
    return keyed_model.scene((height, width), ((x, top, x + 50, 150 - (index % 2)),), seed=index)[0]


@pytest.fixture(scope="module")
def keyed_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keyed_model.write(tmp_path_factory.mktemp("keyed"), tiny_multitask_onnx)


def _crops(predictions: List) -> np.ndarray:
    return np.array([p.regions[0].crop for p in predictions])


@pytest.mark.parametrize("stabilize", ["none", "online"])
def test_predict_video_refines_every_frame_with_steadied_regions(keyed_onnx: Path, stabilize: str) -> None:
    frames = [_walker(i) for i in range(12)]
    with DavidRuntime(keyed_onnx, resolution=64) as runtime:
        clip = [p for _, _, p in runtime.predict_video(frames, refine="people", stabilize=stabilize)]
        alone = [runtime.predict(f, refine="people") for f in frames]  # each frame's own regions
    assert all(len(p.regions) == 1 and p.regions[0].status == "refined" for p in clip)
    tracked, own = _crops(clip), _crops(alone)
    for crop, frame in zip(tracked, alone):  # the figure always inside the steadied crop
        x0, y0, x1, y1 = frame.regions[0].box
        assert crop[0] <= x0 and crop[1] <= y0 and crop[2] >= x1 and crop[3] >= y1
    assert np.abs(np.diff(tracked, axis=0)).sum() < np.abs(np.diff(own, axis=0)).sum()
    if stabilize == "none":  # frames whose steadied region equals its own are the frame's own prediction
        same = [i for i in range(12) if (tracked[i] == own[i]).all()]
        assert same and all(np.array_equal(clip[i].depth, alone[i].depth) for i in same)


def test_cli_refines_a_clip_and_a_photo_and_records_the_regions(keyed_onnx: Path, tmp_path: Path) -> None:
    from PIL import Image

    from david_infer.visualize import REGION_COLORS

    clip = make_clip(tmp_path / "walk.mp4", frames=8, size=SIZE, draw=lambda i, h, w: _walker(i, h, w))
    photo = tmp_path / "still.png"
    Image.fromarray(_walker(0)).save(photo)
    out = tmp_path / "out"
    args = ["predict", str(clip), str(photo), "-m", str(keyed_onnx), "-o", str(out), "--resolution", "64"]
    assert main([*args, "--refine", "people", "--save", "depth,vis", "--no-progress"]) == 0
    clip_record = json.loads((out / "walk.done.json").read_text())
    assert clip_record["options"]["extra"]["refine"]["max_regions"] == 8
    assert clip_record["results"]["regions"] == {"refined": 8, "fallback": 0, "skipped": 0, "most_in_a_frame": 1}
    import av

    with av.open(str(out / "walk.vis.mp4")) as container:  # the regions outlined on the frame's tile
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    tile = first[: SIZE[0] // 2, : SIZE[1] // 2]
    yellowish = (tile[..., 0] > 200) & (tile[..., 1] > 160) & (tile[..., 2] < 90)
    assert yellowish.sum() > 20  # the scene has no yellow: red figures on grass
    record = json.loads((out / "still.done.json").read_text())
    (region,) = record["results"]["regions"]
    assert region["status"] == "refined" and region["source"] == "mask"
    assert region["model_pixels"][1] > 2 * region["model_pixels"][0]
    vis = np.asarray(Image.open(out / "still.vis.png"))
    yellow = np.all(vis == REGION_COLORS["refined"], axis=2)
    assert yellow.any() and np.nonzero(yellow)[1].max() < SIZE[1]  # outlined on the image tile only
    # without --refine the record has no results and the options differ: a rerun must be asked for
    plain = tmp_path / "plain"
    assert main([*args[:-4], "-o", str(plain), "--resolution", "64", "--save", "depth", "--no-progress"]) == 0
    assert "results" not in json.loads((plain / "still.done.json").read_text())
    assert main([*args, "--save", "depth,vis", "--no-progress"]) == 1  # other options than recorded
