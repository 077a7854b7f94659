"""`david-infer predict` runs that are interrupted, rerun, misconfigured or given odd inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from david_infer.cli import main
from david_infer.outputs.images import IMAGE_KINDS
from david_infer.outputs.sets import RECORD_SUFFIX, TEMP_SUFFIX
from tests.support import wait_for

RES = "64"
KINDS = ["depth", "foreground", "vis"]


def predict(*args: str) -> int:
    return main(["predict", *args, "--resolution", RES, "--no-progress"])


def _images(folder: Path, count: int, size: int = 48) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _contents(folder: Path) -> Dict[str, bytes]:
    """The files of a folder by name, records aside (they hold each file's inode and times)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(RECORD_SUFFIX)}


def _hidden(folder: Path) -> List[Path]:
    return [p for p in folder.rglob(".*")]


def test_rerun_skips_complete_and_redoes_unfinished(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", ",".join(KINDS)]
    assert predict(*args) == 0
    reference = _contents(out)
    # what a kill leaves: img01 without its record and one file, a stale temporary
    (out / f"img01{RECORD_SUFFIX}").unlink()
    (out / "img01.vis.png").unlink()
    (out / "img01.depth.npy").write_bytes(b"half")
    stale = out / f".img01.depth.png.k1ll3d{TEMP_SUFFIX}"
    stale.write_bytes(b"partial")
    capsys.readouterr()
    assert predict(*args) == 0  # the old code: "already exists" failures, exit 1
    summary = capsys.readouterr().out
    assert "1 of 3 input(s) written" in summary and "2 skipped (already complete)" in summary
    assert not stale.exists() and not _hidden(out)
    assert _contents(out) == reference
    assert all(IMAGE_KINDS.set(out, p.stem, KINDS).is_complete(verify=True) for p in paths)
    # --overwrite redoes everything
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.01)
    assert predict(*args, "--overwrite") == 0
    assert all(p.stat().st_mtime_ns > mtime for p, mtime in before.items())
    assert _contents(out) == reference


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_whole_sets_and_resumes(sig: int, tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 24, size=160)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "david_infer",
        "predict",
        str(tmp_path / "in"),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--resolution",
        RES,
        "--no-progress",
        "--save",
        "depth,normal,foreground,vis,ply",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = wait_for(lambda: len(list(out.glob(f"*{RECORD_SUFFIX}"))) >= 2, timeout=60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert started, "the run wrote nothing within 60 s"
    kinds = ["depth", "normal", "foreground", "vis", "ply"]
    complete = [p for p in paths if IMAGE_KINDS.set(out, p.stem, kinds).is_complete(verify=True)]
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err.decode()
        # says how far it got and that a rerun resumes (it said only "interrupted")
        said = err.decode()
        assert f"interrupted: {len(complete)} of {len(paths)} input(s) complete in {out}" in said, said
        assert "run the same command again to resume" in said
        assert not _hidden(out)  # handled like Ctrl-C: no temporaries
        for p in paths:  # every input has all of its files or none of them
            present = [f.exists() for f in IMAGE_KINDS.set(out, p.stem, kinds).files]
            assert all(present) == (p in complete) and (any(present) == all(present)), p
    else:
        assert proc.returncode == -signal.SIGKILL
    assert 2 <= len(complete) < len(paths), "kill the run midway"
    rc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert rc.returncode == 0, rc.stderr.decode()
    assert f"{len(paths) - len(complete)} of {len(paths)} input(s) written".encode() in rc.stdout
    assert all(IMAGE_KINDS.set(out, p.stem, kinds).is_complete(verify=True) for p in paths)
    assert not _hidden(out)


def test_impossible_options_fail_before_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _images(tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    missing_model = str(tmp_path / "no-such-model.onnx")  # loading it would fail: the option error comes first
    for extra, message in (
        (["--fov", "500"], "--fov must be between 0 and 180"),
        (["--near", "3", "--far", "1"], "0 < near < far"),
        (["--near", "nan"], "0 < near < far"),
        (["--save", "depth,dpeth"], "unknown kind(s) dpeth"),
    ):
        assert predict(str(image), "-m", missing_model, "-o", str(out), *extra) == 1
        err = capsys.readouterr().err
        assert message in err and "no-such-model" not in err
    assert not out.exists()


def test_unwritable_output_folder_fails_before_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _images(tmp_path / "in", 1)[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    missing_model = str(tmp_path / "no-such-model.onnx")
    for outdir in (blocker, blocker / "out"):
        assert predict(str(image), "-m", missing_model, "-o", str(outdir)) == 1
        err = capsys.readouterr().err
        assert f"cannot use {outdir} as the output folder" in err and "not a folder" in err
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder stops only other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert predict(str(image), "-m", missing_model, "-o", str(locked / "out")) == 1
        assert "cannot write in the output folder" in capsys.readouterr().err


def test_rejected_model_creates_no_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _images(tmp_path / "in", 1)[0]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    out = tmp_path / "deep" / "out"
    assert predict(str(image), "-m", str(bad), "-o", str(out)) == 1
    assert "bad.onnx" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "in"]  # the probe file is gone too


def test_dangling_links_and_duplicate_names_are_reported(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    first, second = _images(folder, 2)
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")
    (folder / "alias.png").symlink_to(first)  # a second name for img00
    out = tmp_path / "out"
    rc = predict(
        str(folder),
        str(second),
        str(folder / "*.jpg"),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--save",
        "depth",
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert f"warning: {folder / 'gone.jpg'}: a symbolic link to a missing file" in captured.err
    assert captured.err.count("a symbolic link to a missing file") == 2  # from the folder and from the glob
    assert f"warning: {first}: the same file as {folder / 'alias.png'}; written once" in captured.err
    assert f"warning: {second}: given more than once; written once" in captured.err
    assert "2 of 2 input(s) written" in captured.out
    assert "2 dangling link(s) skipped, 2 duplicate name(s) of one file" in captured.out
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".npy") == ["alias.depth.npy", "img01.depth.npy"]


def test_a_set_written_for_another_input_is_not_taken_as_done(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = _images(tmp_path / "a", 1)[0]
    other = _images(tmp_path / "b", 2)[1]
    other = other.rename(tmp_path / "b" / first.name)  # same name, another image of another size
    out = tmp_path / "out"
    assert predict(str(first), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth") == 0
    reference = np.load(out / "img00.depth.npy")
    capsys.readouterr()
    assert predict(str(other), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth") == 1
    assert f"written for another input ({first}" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "img00.depth.npy"), reference)
    assert predict(str(other), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth", "--overwrite") == 0
    assert np.load(out / "img00.depth.npy").shape != reference.shape


def test_a_changed_input_and_a_damaged_output_are_redone_saying_why(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    np.save(folder / "a.npy", np.zeros((64, 64, 3), np.float32))
    np.save(folder / "b.npy", rng.random((64, 64, 3), dtype=np.float32))
    out = tmp_path / "out"
    args = [str(folder), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth"]
    assert predict(*args) == 0
    first_a, first_b = np.load(out / "a.depth.npy"), (out / "b.depth.npy").read_bytes()
    capsys.readouterr()
    # a.npy replaced by other values of the same shape (same size), then touched
    np.save(folder / "a.npy", rng.random((64, 64, 3), dtype=np.float32))
    os.utime(folder / "a.npy")
    assert predict(*args) == 0
    captured = capsys.readouterr()
    assert "1 of 2 input(s) written" in captured.out and "1 skipped (already complete)" in captured.out
    assert "(1 redone: changed since written)" in captured.out
    assert (
        f"warning: {folder / 'a.npy'}: redone: the input changed since its outputs were written: it has other "
        "contents (SHA-256 differs from the record)" in captured.err
    )
    assert not np.array_equal(np.load(out / "a.depth.npy"), first_a)  # the old code kept the old input's map
    # one byte of an output flipped (same size): redone, and the file is as the model wrote it
    damaged = bytearray(first_b)
    damaged[-3] ^= 0x10
    (out / "b.depth.npy").write_bytes(bytes(damaged))
    assert predict(*args) == 0
    captured = capsys.readouterr()
    assert "1 of 2 input(s) written" in captured.out
    assert f"warning: {folder / 'b.npy'}: redone: its output b.depth.npy has other contents" in captured.err
    assert (out / "b.depth.npy").read_bytes() == first_b
    # nothing changed: all skipped, nothing hashed again
    assert predict(*args) == 0
    captured = capsys.readouterr()
    assert "0 of 2 input(s) written" in captured.out and "2 skipped" in captured.out and not captured.err


def test_a_fifo_and_a_link_loop_in_a_folder_are_named(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    _images(folder, 1)
    os.mkfifo(folder / "x.jpg")  # the old code skipped it without a word or a count
    (folder / "a.png").symlink_to("b.png")
    (folder / "b.png").symlink_to("a.png")  # the old code: "a symbolic link to a missing file"
    out = tmp_path / "out"
    for spec in (str(folder), str(folder / "*")):
        assert predict(spec, "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth") == 1
        captured = capsys.readouterr()
        assert "1 input(s) failed:" in captured.err
        assert f"{folder / 'x.jpg'}: not a regular file but a named pipe (FIFO); expected an image or video" in (
            captured.err
        )
        assert f"warning: {folder / 'a.png'}: a symbolic link into a loop of links (a.png -> b.png -> ...)" in (
            captured.err
        )
        assert "a symbolic link to a missing file" not in captured.err
        assert "2 dangling link(s) skipped" in captured.out
    assert predict(str(folder / "x.jpg"), "-m", str(tiny_multitask_onnx), "-o", str(out)) == 1  # given alone
    assert "not a regular file but a named pipe (FIFO)" in capsys.readouterr().err


def test_options_that_change_the_maps_are_compared_on_a_rerun(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # both were left out of the record: a rerun with the other value skipped the input as complete,
    # keeping maps that differ (channel order: the array's red and blue swapped; bf16: ~6% of the range)
    folder = tmp_path / "in"
    folder.mkdir()
    array = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    array[..., 0] = 255
    np.save(folder / "x.npy", array)
    Image.fromarray(array).save(folder / "y.png")
    model = ["-m", str(tiny_multitask_onnx)]
    cases = (
        ([str(folder / "x.npy")], [], ["--channel-order", "bgr"], "channel_order: None then, 'bgr' now"),
        (
            [str(folder / "y.png")],
            ["--backend", "torch", "--precision", "bf16"],
            ["--backend", "torch"],
            "precision: 'bf16' then, None now",
        ),
    )
    for number, (inputs, first, second, said) in enumerate(cases):
        out = str(tmp_path / f"out{number}")
        assert predict(*inputs, *model, "-o", out, "--save", "depth", *first) == 0
        capsys.readouterr()
        assert predict(*inputs, *model, "-o", out, "--save", "depth", *second) == 1
        assert f"written with other options ({said})" in capsys.readouterr().err
        assert predict(*inputs, *model, "-o", out, "--save", "depth", *first) == 0  # the same again: skipped
        assert "1 skipped (already complete)" in capsys.readouterr().out


def test_overwrite_with_fewer_kinds_removes_the_replaced_sets_other_files(
    tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    (path,) = _images(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = [str(path), "-m", str(tiny_multitask_onnx), "-o", str(out)]
    assert predict(*args, "--save", "depth,foreground,vis") == 0
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(path)  # another photo under the same name
    (out / "notes.txt").write_text("mine")  # not the set's: kept
    assert predict(*args, "--save", "depth", "--overwrite") == 0
    # the old photo's foreground and vis stayed beside the new record, looking like its outputs
    assert sorted(p.name for p in out.iterdir()) == [
        "img00.depth.npy",
        "img00.depth.png",
        "img00.done.json",
        "notes.txt",
    ]
    assert IMAGE_KINDS.set(out, "img00", ["depth"]).is_complete(verify=True)
