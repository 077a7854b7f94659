"""Stabilisation over time on real clips (H.264 through PyAV, the tiny model): predict_video's
modes, live iterables, the CLI's --stabilize in every output and the completion record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("av")

from david_infer import video  # noqa: E402
from david_infer.cli import main  # noqa: E402
from david_infer.errors import InputError  # noqa: E402
from tests.support.video_clips import make_clip, steady_pattern  # noqa: E402


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("steady") / "steady.mp4", frames=12, draw=steady_pattern)


def predict(*args: str) -> int:
    return main(["predict", *args, "--resolution", "64", "--no-progress"])


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_predict_video_modes_equal_stabilize_on_the_frames_predictions(steady: Path, tiny_runtime, mode: str) -> None:
    raw = list(tiny_runtime.predict_video(steady))
    got = list(tiny_runtime.predict_video(steady, stabilize=mode, batch_size=3))
    assert [(i, t) for i, t, _ in got] == [(i, t) for i, t, _ in raw]
    want = list(video.stabilize((p for _, _, p in raw), mode=mode))
    for (_, _, g), w, (_, _, r) in zip(got, want, raw):
        np.testing.assert_array_equal(g.image, r.image)
        for name in ("depth", "normal", "foreground"):
            np.testing.assert_allclose(getattr(g, name), getattr(w, name), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(g.normal, axis=-1), 1.0, atol=1e-3)
    # the model's per-frame changes where the clip stands still are smoothed
    still = slice(24, 48), slice(22, 42)  # the fixed figure (the moving square stays above it)

    def change(preds: list) -> float:
        maps = [p.normal[still] for _, _, p in preds]
        return float(np.mean([np.abs(b - a).mean() for a, b in zip(maps, maps[1:])]))

    assert change(got) < change(raw)


def test_online_on_a_live_iterable_of_frames(tiny_runtime) -> None:
    pulled = []

    def camera() -> Iterator[np.ndarray]:  # a live source: frames made as they are asked for
        for index in range(30):
            pulled.append(index)
            yield steady_pattern(index, 48, 64)

    stream = tiny_runtime.predict_video(camera(), fps=30, stabilize="online", prefetch=1)
    index, time, pred = next(stream)
    assert (index, time) == (0, 0.0) and pred.depth.shape == (48, 64)
    assert len(pulled) < 30  # the first frame out while the source is still live
    assert [i for i, _, _ in stream] == list(range(1, 30))
    with pytest.raises(InputError, match=r"stabilize must be one of none, online, offline, got 'always'"):
        tiny_runtime.predict_video(camera(), stabilize="always")
    with pytest.raises(InputError, match=r"unknown option\(s\) weight"):
        tiny_runtime.predict_video(camera(), stabilize="online", stabilize_options={"weight": 1})


def test_offline_on_a_truncated_clip_yields_the_decoded_frames_then_the_error(tmp_path: Path, tiny_runtime) -> None:
    whole = make_clip(tmp_path / "whole.mp4", frames=20, faststart=True, draw=steady_pattern)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    got = []
    with pytest.raises(video.VideoDecodeError, match=r"decoding stopped at frame"):
        for index, _, pred in tiny_runtime.predict_video(cut, stabilize="offline"):
            got.append(index)
            assert np.isfinite(pred.depth).all()
    assert 0 < len(got) < 20 and got == list(range(len(got)))


def test_cli_stabilize_reaches_every_output_and_the_record(
    steady: Path, tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = [p for _, _, p in tiny_runtime.predict_video(steady, frames="2:12:2")]
    for mode in ("online", "offline"):
        out = tmp_path / mode
        args = [str(steady), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth,vis,depth-npz,cutout"]
        assert predict(*args, "--frames", "2:12:2", "--stabilize", mode) == 0
        want = list(video.stabilize(raw, mode=mode))
        stack = np.load(out / "steady.depth.npz")
        assert list(stack["frame_index"]) == [2, 4, 6, 8, 10]
        np.testing.assert_allclose(stack["depth"], np.stack([w.depth for w in want]), atol=1e-5)
        alpha = [f.to_ndarray(format="rgba")[..., 3] for f in _frames(out / "steady.cutout.mov")]
        for a, w in zip(alpha, want):
            np.testing.assert_array_equal(a, np.rint(np.clip(w.foreground, 0, 1) * 255).astype(np.uint8))
        assert len(list(_frames(out / "steady.vis.mp4"))) == 5
        record = json.loads((out / "steady.done.json").read_text())
        assert json.dumps(record).count(f'"stabilize": "{mode}"') == 1
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no spool left
    # the default is online: a rerun with it over the offline outputs is told they differ, then redoes them
    args = [str(steady), "-m", str(tiny_multitask_onnx), "-o", str(tmp_path / "offline"), "--frames", "2:12:2"]
    args += ["--save", "depth,vis,depth-npz,cutout"]
    assert predict(*args) == 1
    assert "stabilize: 'offline' then, 'online' now" in capsys.readouterr().err
    assert predict(*args, "--overwrite") == 0
    record = json.loads((tmp_path / "offline" / "steady.done.json").read_text())
    assert '"stabilize": "online"' in json.dumps(record)


def _frames(path: Path) -> Iterator[object]:
    import av

    with av.open(str(path)) as c:
        yield from c.decode(video=0)
