"""Video in, video out: real clips synthesised with PyAV, decoded and encoded by PyAV, the tiny model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from david_infer import video  # noqa: E402
from david_infer.cli import main  # noqa: E402
from david_infer.errors import InputError  # noqa: E402
from tests.support.video_clips import make_clip, pattern  # noqa: E402

RES = "64"
VFR_PTS = [0, 40, 80, 200, 240, 400, 410, 420, 600, 640]
ALL = "depth,normal,foreground,vis,depth-npz,cutout"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("clips")
    return {
        "odd": make_clip(d / "odd.mp4", frames=12, size=(47, 63), pix_fmt="yuv444p"),
        "portrait": make_clip(d / "portrait.mp4", frames=12, size=(48, 64), rotation=-90, audio=True),
        "vfr": make_clip(d / "vfr.mkv", frames=10, pts=VFR_PTS, time_base=Fraction(1, 1000)),
        "full": make_clip(d / "full.mp4", frames=10, color_range=2, sar=Fraction(4, 3)),
    }


def _decode(path: Path, fmt: str = "rgb24") -> List[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]


def _times(path: Path) -> List[float]:
    return [f.time for f in video.read_frames(path)]


def predict(*args: str) -> int:
    return main(["predict", *args, "--resolution", RES, "--no-progress"])


# ------------------------------------------------------------------------------ decoding


def test_probe_reads_rotation_rate_range_and_aspect(clips: dict) -> None:
    portrait = video.probe(clips["portrait"])
    assert (portrait.width, portrait.height, portrait.frames, portrait.rotation) == (64, 48, 12, -90)
    assert portrait.display_size == (64, 48) and portrait.audio_codec == "aac"
    assert portrait.rate == 25 and abs(portrait.duration - 0.48) < 1e-6
    full = video.probe(clips["full"])
    assert full.color_range == 2 and full.sample_aspect_ratio == Fraction(4, 3)


def test_frames_come_upright_with_their_timestamps(clips: dict) -> None:
    frames = list(video.read_frames(clips["portrait"]))
    assert len(frames) == 12 and frames[0].image.shape == (64, 48, 3)
    # stored landscape, shown turned 90 degrees clockwise (rotation -90)
    upright = np.rot90(pattern(3, 48, 64), -1).astype(int)
    assert np.abs(frames[3].image.astype(int) - upright).mean() < 4
    assert [f.time for f in video.read_frames(clips["vfr"])] == pytest.approx([p / 1000 for p in VFR_PTS])


def test_frame_selection_and_max_side(clips: dict) -> None:
    sel = video.FrameSelection.parse("2:9:3")
    frames = list(video.read_frames(clips["vfr"], sel, max_side=32))
    assert [f.index for f in frames] == [2, 5, 8]
    assert [f.time for f in frames] == pytest.approx([0.08, 0.4, 0.6])
    assert frames[0].image.shape == (24, 32, 3)
    with pytest.raises(InputError, match="START:END:STEP"):
        video.FrameSelection.parse("1:2:3:4")


def test_no_video_stream_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    import av

    audio_only = tmp_path / "voice.mp4"
    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        video.probe(audio_only)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(InputError, match="not a readable video"):
        video.probe(junk)
    # a valid container whose coded frames are zeros: the codec cannot decode them
    data = bytearray(make_clip(tmp_path / "zeroed.mp4").read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    (tmp_path / "zeroed.mp4").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"cannot decode its video stream \(codec h264\)"):
        video.probe(tmp_path / "zeroed.mp4")


def test_truncated_clip_yields_what_was_decoded_then_names_the_frame(tmp_path: Path, tiny_runtime) -> None:
    whole = make_clip(tmp_path / "whole.mp4", frames=20, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    got = []
    with pytest.raises(video.VideoDecodeError, match=r"decoding stopped at frame (\d+)") as err:
        for index, _, _ in tiny_runtime.predict_video(cut):
            got.append(index)
    assert 0 < len(got) < 20 and got == list(range(len(got)))
    assert err.value.frames_decoded == len(got)


# ------------------------------------------------------------------------------ Python API


def test_predict_video_equals_predict_frame_by_frame(clips: dict, tiny_runtime) -> None:
    results = list(tiny_runtime.predict_video(clips["vfr"], batch_size=4))
    assert [i for i, _, _ in results] == list(range(10))
    assert [t for _, t, _ in results] == pytest.approx([p / 1000 for p in VFR_PTS])
    for k in (0, 5, 9):  # batched and threaded, yet each frame's own result
        expected = tiny_runtime.predict(results[k][2].image)
        np.testing.assert_allclose(results[k][2].depth, expected.depth, rtol=1e-5, atol=1e-5)


def test_predict_video_on_an_iterable_of_arrays(tiny_runtime) -> None:
    frames = (pattern(i, 40, 30) for i in range(5))
    results = list(tiny_runtime.predict_video(frames, fps=10))
    assert [(i, t) for i, t, _ in results] == [(i, pytest.approx(i / 10)) for i in range(5)]
    assert results[2][2].depth.shape == (40, 30)
    np.testing.assert_allclose(results[2][2].depth, tiny_runtime.predict(pattern(2, 40, 30)).depth, atol=1e-5)


def test_a_bgr_runtime_reads_a_clips_frames_as_rgb(clips: dict, tiny_multitask_onnx: Path, tiny_runtime) -> None:
    # channel_order is the caller's arrays' order; frames decoded from a file are RGB (they were read
    # as BGR: the image came back with red and blue swapped and the maps of the swapped frame)
    from david_infer import DavidRuntime

    with DavidRuntime(tiny_multitask_onnx, resolution=64, channel_order="bgr") as bgr:
        got = [(i, p) for i, _, p in bgr.predict_video(clips["vfr"])]
    want = list(tiny_runtime.predict_video(clips["vfr"]))
    for (i, p), (j, _, w) in zip(got, want):
        assert i == j
        np.testing.assert_array_equal(p.image, w.image)
        np.testing.assert_array_equal(p.depth, w.depth)


def test_frames_from_a_reused_buffer_keep_their_own_pixels(tiny_runtime) -> None:
    # decoding runs ahead: a camera that refills one buffer overwrote the images (and so the
    # stabiliser's motion test) of frames not yet yielded
    frames = [pattern(i, 40, 30) for i in range(6)]
    buffer = np.empty_like(frames[0])

    def camera():  # type: ignore[no-untyped-def]
        for frame in frames:
            np.copyto(buffer, frame)
            yield buffer

    for mode in ("none", "online", "offline"):
        fresh = list(tiny_runtime.predict_video(iter(frames), stabilize=mode))
        reused = list(tiny_runtime.predict_video(camera(), stabilize=mode))
        for (i, _, a), (_, _, b) in zip(fresh, reused):
            np.testing.assert_array_equal(b.image, frames[i])
            np.testing.assert_array_equal(a.depth, b.depth)
    direct = [p for _, p in tiny_runtime.imap(camera())]  # imap itself reads ahead the same way
    assert all(np.array_equal(p.image, f) for p, f in zip(direct, frames))


def test_predict_video_refuses_what_is_not_a_clip_or_a_good_fps(tiny_runtime) -> None:
    for src, said in (
        (pattern(0, 40, 50), "an array of shape (40, 50, 3); for one image use predict()"),
        (Image.new("RGB", (30, 20)), "got Image"),
        (5, "got int"),
    ):
        with pytest.raises(InputError, match=re.escape(said)):
            tiny_runtime.predict_video(src)  # at the call, not once iterated
    for fps in (0, -5, float("nan"), "30", True):
        with pytest.raises(InputError, match="fps must be a positive number"):
            tiny_runtime.predict_video([pattern(0, 20, 30)], fps=fps)
    gray_stack = np.zeros((3, 20, 30), np.uint8)  # (N, H, W): three gray frames
    assert [p.depth.shape for _, _, p in tiny_runtime.predict_video(gray_stack)] == [(20, 30)] * 3


# ------------------------------------------------------------------------------ CLI


def test_cli_writes_every_kind_with_the_source_timing(
    clips: dict, tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    src = tmp_path / "in"
    src.mkdir()
    for key in ("odd", "portrait", "vfr"):
        os.link(clips[key], src / clips[key].name)
    assert predict(str(src), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", ALL, "--stabilize", "none") == 0
    for key, n in (("odd", 12), ("portrait", 12), ("vfr", 10)):
        source = video.probe(clips[key])
        name = clips[key].stem
        for suffix in (".depth.mp4", ".normal.mp4", ".foreground.mp4", ".vis.mp4", ".cutout.mov"):
            got = video.probe(out / (name + suffix))
            assert got.rotation == source.rotation, suffix
            assert _times(out / (name + suffix)) == pytest.approx(_times(clips[key]), abs=1e-3), suffix
            assert got.duration == pytest.approx(source.duration, abs=1e-3), suffix
            assert (got.audio_codec is not None) == (suffix == ".vis.mp4" and source.audio_codec is not None)
        assert (video.probe(out / f"{name}.depth.mp4").width, video.probe(out / f"{name}.depth.mp4").height) == (
            source.width,
            source.height,
        )
        assert (out / f"{name}.done.json").is_file()
        # lossless outputs are exactly `predict` on the decoded frame
        stack = np.load(out / f"{name}.depth.npz")
        assert stack["depth"].shape[0] == n and list(stack["frame_index"]) == list(range(n))
        frames = list(video.read_frames(clips[key]))
        preds = [tiny_runtime.predict(f.image) for f in frames]
        cutouts = _decode(out / f"{name}.cutout.mov", "rgba")
        turns = source.quarter_turns
        for k in (0, n // 2, n - 1):
            np.testing.assert_allclose(stack["depth"][k], preds[k].depth, rtol=1e-5, atol=1e-5)
            alpha = np.rint(np.clip(preds[k].foreground, 0, 1) * 255).astype(np.uint8)
            shown = np.rot90(cutouts[k], turns)
            np.testing.assert_array_equal(shown[..., 3], alpha)
            np.testing.assert_array_equal(shown[..., :3], frames[k].image)
        # the depth video: one range over the clip, within the codec's loss
        rng = video.DepthRange()
        for p in preds:
            rng.update(p.depth)
        gray = [np.rot90(g, turns) for g in _decode(out / f"{name}.depth.mp4", "gray")]
        assert len(gray) == n
        for k in (0, n - 1):
            want = video.to_gray8(rng.normalise(preds[k].depth, True)).astype(int)
            assert np.abs(gray[k].astype(int) - want).mean() < 3


def test_cli_frames_max_side_and_rerun_skips_complete_clips(
    clips: dict, tiny_multitask_onnx: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = (
        str(clips["vfr"]),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--save",
        "depth,vis",
        "--frames",
        "1::2",
        "--max-side",
        "32",
    )
    assert predict(*args) == 0
    depth = out / "vfr.depth.mp4"
    info = video.probe(depth)
    assert (info.width, info.height, info.frames) == (32, 24, 5)
    assert _times(depth) == pytest.approx([VFR_PTS[i] / 1000 for i in range(1, 10, 2)], abs=1e-3)
    before = depth.stat().st_mtime_ns
    capsys.readouterr()
    assert predict(*args) == 0
    assert "1 skipped (already complete)" in capsys.readouterr().out
    assert depth.stat().st_mtime_ns == before
    # other options make another set: not silently replaced
    assert predict(*args[:-2], "--max-side", "20") == 1
    assert "written with other options (max_side: 32 then, 20 now)" in capsys.readouterr().err


@pytest.mark.parametrize("clip", ["odd", "vfr"])  # a frame count in the container (mp4), and none (mkv)
def test_cli_frames_past_the_end_fail_and_write_nothing(
    clip: str, clips: dict, tiny_multitask_onnx: Path, tmp_path: Path, capsys
) -> None:
    """`--frames 500:600` on a shorter clip reported "1 of 1 written" and left 0-byte videos PyAV
    cannot open plus a completion record; now the clip fails, naming why, and nothing is written."""
    out = tmp_path / "out"
    assert predict(str(clips[clip]), "-m", str(tiny_multitask_onnx), "-o", str(out), "--frames", "500:600") == 1
    captured = capsys.readouterr()
    assert "0 of 1 input(s) written" in captured.out
    assert f"{clips[clip]}: --frames" in captured.err and "selects no frame" in captured.err
    if video.probe(clips[clip]).frames:
        assert f"the clip has {video.probe(clips[clip]).frames} frames" in captured.err
    assert list(out.iterdir()) == []  # no video, no record, no temporary


def test_cli_truncated_clip_writes_what_was_decoded_and_exits_1(
    tmp_path: Path, tiny_multitask_onnx: Path, capsys
) -> None:
    whole = make_clip(tmp_path / "whole.mp4", frames=20, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    out = tmp_path / "out"
    assert predict(str(cut), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth,vis") == 1
    err = capsys.readouterr().err
    stopped = int(err.split("decoding stopped at frame ")[1].split(";")[0])
    for suffix in (".depth.mp4", ".vis.mp4"):  # closed and playable: every decoded frame is there
        assert len(_decode(out / ("cut" + suffix))) == stopped
    assert not (out / "cut.done.json").exists()  # incomplete: a rerun redoes it
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_refuses_bad_clips_before_any_model_call(tmp_path: Path, tiny_multitask_onnx: Path, capsys) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 4000)
    out = tmp_path / "out"
    assert predict(str(junk), "-m", str(tiny_multitask_onnx), "-o", str(out)) == 1
    assert "not a readable video file" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert predict(str(junk), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "ply") == 1
    assert "--save ply writes nothing here: the inputs are video clips" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_no_partial_outputs_and_rerun_completes(
    sig: int, tmp_path: Path, tiny_multitask_onnx: Path
) -> None:
    clip = make_clip(tmp_path / "long.mp4", frames=300, size=(48, 64))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "david_infer",
        "predict",
        str(clip),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--resolution",
        RES,
        "--no-progress",
        "--save",
        "depth,vis",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out.is_dir() and any(p.name.endswith(".david-partial") for p in out.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the run's own account when it was not interrupted (seen once in a loaded CI run: rc 0)
    assert proc.returncode != 0, proc.stderr.read().decode(errors="replace")[-2000:]
    visible = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert visible == []  # no half-written video under a final name
    if sig != signal.SIGKILL:
        assert list(out.iterdir()) == []  # Ctrl-C and SIGTERM also remove the temporaries
        return
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert video.probe(out / "long.depth.mp4").frames == 300
    assert sorted(p.name for p in out.iterdir()) == ["long.depth.mp4", "long.done.json", "long.vis.mp4"]


def test_a_stop_whose_keyboardinterrupt_was_lost_still_stops_the_clip(
    tmp_path: Path, tiny_multitask_onnx: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # the signal handler ran, but its KeyboardInterrupt was dropped (Python drops one raised while a
    # finaliser runs): the flag it set must still stop the run before anything is put in place
    from david_infer.errors import STOP_REQUESTED
    from david_infer.outputs import clips as clip_outputs

    clip = make_clip(tmp_path / "c.mp4", frames=12)
    out = tmp_path / "out"
    add = clip_outputs.ClipOutputs.add
    seen: List[int] = []

    def add_then_lose_a_stop(self, frame, pred) -> None:  # type: ignore[no-untyped-def]
        add(self, frame, pred)
        seen.append(frame.index)
        if len(seen) == 3:
            STOP_REQUESTED.set()

    monkeypatch.setattr(clip_outputs.ClipOutputs, "add", add_then_lose_a_stop)
    rc = predict(str(clip), "-m", str(tiny_multitask_onnx), "-o", str(out), "--resolution", RES, "--save", "depth")
    assert rc == 130, capsys.readouterr().err
    assert len(seen) < 12  # stopped at the next frame, not at the end
    assert list(out.iterdir()) == []  # no file in place, no temporaries, no record
    assert not STOP_REQUESTED.is_set()  # cleared when the run ends: the next run in this process goes on
    monkeypatch.undo()
    assert (
        predict(str(clip), "-m", str(tiny_multitask_onnx), "-o", str(out), "--resolution", RES, "--save", "depth") == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["c.depth.mp4", "c.done.json"]


def test_joined_clips_whose_timestamps_restart_are_written_whole(
    tmp_path: Path, tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture
) -> None:
    # two MPEG-TS files joined with `cat`: the second half's timestamps start again at 0; the muxer
    # refused them with a raw PyAV traceback that ended the whole run (the next inputs never ran)
    part = make_clip(tmp_path / "part.ts", frames=10)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.ts").write_bytes(part.read_bytes() * 2)
    Image.fromarray(pattern(0, 48, 64)).save(folder / "b.png")
    out = tmp_path / "out"
    assert predict(str(folder), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth,depth-npz") == 0
    assert "2 of 2 input(s) written" in capsys.readouterr().out
    assert video.probe(out / "a.depth.mp4").frames == 20
    times = _times(out / "a.depth.mp4")
    assert len(times) == 20 and all(b > a for a, b in zip(times, times[1:]))  # on from where the first half ended
    assert np.all(np.diff(np.load(out / "a.depth.npz")["time"]) > 0)
    assert (out / "b.depth.png").exists()


def test_a_frame_ffmpeg_refuses_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    from david_infer.video.decode import Frame
    from david_infer.video.encode import VideoWriter

    info = video.probe(make_clip(tmp_path / "c.mp4", frames=2))
    writer = VideoWriter(tmp_path / "o.mp4", tmp_path / ".o.tmp", info, (48, 64))
    image = np.zeros((48, 64, 3), np.uint8)
    writer.write(image, Frame(0, 512, 0.04, 512, image))
    with pytest.raises(InputError, match=r"cannot write .*o\.mp4 .*FFmpeg"):
        for _ in range(3):  # the same timestamp again: the muxer refuses it (when the encoder lets it out)
            writer.write(image, Frame(1, 512, 0.04, 512, image))
        writer.close()
    writer.abort()
    assert not (tmp_path / ".o.tmp").exists()


def test_missing_pyav_gives_the_install_hint() -> None:
    from david_infer._optional import install_hint

    assert install_hint("av") == 'pip install "david-infer[video]"'


def test_cli_selected_frames_get_their_audio_and_blocked_names_fail_first(
    clips: dict, tiny_multitask_onnx: Path, tmp_path: Path, capsys
) -> None:
    import av

    out = tmp_path / "out"
    (out / "portrait.depth.mp4").mkdir(parents=True)
    args = (
        str(clips["portrait"]),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--save",
        "depth,vis",
        "--frames",
        "3:9",
    )
    assert predict(*args) == 1
    assert "a folder has that name" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["portrait.depth.mp4"]  # nothing else was started
    (out / "portrait.depth.mp4").rmdir()
    assert predict(*args) == 0
    vis = out / "portrait.vis.mp4"
    assert _times(vis) == pytest.approx([i * 0.04 for i in range(3, 9)], abs=1e-3)
    with av.open(str(vis)) as c:
        starts = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.pts is not None]
    assert starts and starts[0] >= 0.12 - 0.07 and starts[-1] <= 0.36  # only around frames 3..8 (0.12-0.36 s)


def test_cli_running_range_colour_range_and_pixel_aspect(
    clips: dict, tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert (
        predict(
            str(clips["full"]),
            "-m",
            str(tiny_multitask_onnx),
            "-o",
            str(out),
            "--save",
            "depth",
            "--depth-range",
            "running",
            "--stabilize",
            "none",
        )
        == 0
    )
    got = video.probe(out / "full.depth.mp4")
    assert got.color_range == 2 and got.sample_aspect_ratio == Fraction(4, 3)  # full range, 4:3 pixels kept
    preds = [tiny_runtime.predict(f.image) for f in video.read_frames(clips["full"])]
    gray = _decode(out / "full.depth.mp4", "gray")
    for k in (0, 4, 9):  # frame k drawn with the range of frames 0..k
        rng = video.DepthRange()
        for p in preds[: k + 1]:
            rng.update(p.depth)
        want = video.to_gray8(rng.normalise(preds[k].depth, True)).astype(int)
        assert np.abs(gray[k].astype(int) - want).mean() < 3
