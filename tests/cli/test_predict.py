"""`david-infer predict` on the tiny model and a real photo: files, failures, overwriting, safe names."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from david_infer.cli import main
from david_infer.files import inside
from david_infer.outputs.sets import RECORD_SUFFIX, output_name

RES = "64"
ALL = "depth,normal,foreground,vis,ply"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture()
def folder(tmp_path: Path, photo: np.ndarray) -> Path:
    """A folder with the astronaut (JPEG) and a smaller, non-square crop of it (PNG)."""
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(photo).save(d / "astronaut.jpg", quality=95)
    Image.fromarray(photo[40:240, 100:420]).save(d / "crop.png")
    return d


def predict(*args: str) -> int:
    return main(["predict", *args, "--resolution", RES, "--no-progress"])


def _files(folder: Path) -> List[str]:
    """The result files in `folder` (completion records left out)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(RECORD_SUFFIX))


def test_folder_writes_every_requested_file(
    tiny_multitask_onnx: Path, tiny_runtime, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert predict(str(folder), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", ALL, "--batch-size", "2") == 0
    from plyfile import PlyData

    for name, size in (("astronaut", (512, 512)), ("crop", (200, 320))):
        expected = tiny_runtime.predict(folder / (name + (".jpg" if name == "astronaut" else ".png")))
        depth = np.load(out / f"{name}.depth.npy")
        assert depth.dtype == np.float32 and depth.shape == size
        # batched, threaded pipeline gives this input's own result (no mix-up between inputs)
        np.testing.assert_allclose(depth, expected.depth, rtol=1e-5, atol=1e-5)
        png = Image.open(out / f"{name}.depth.png")
        assert png.mode == "I;16" and png.size == size[::-1]
        d16 = np.asarray(png).astype(np.int64)
        assert d16.min() == 0 and d16.max() == 65535
        assert d16.flat[np.argmax(depth)] == 65535 and d16.flat[np.argmin(depth)] == 0  # normalised, same order
        normal = np.load(out / f"{name}.normal.npy")
        assert normal.shape == (*size, 3)
        np.testing.assert_allclose(np.linalg.norm(normal, axis=2), 1.0, atol=1e-4)
        assert Image.open(out / f"{name}.normal.png").mode == "RGB"
        fg = np.asarray(Image.open(out / f"{name}.foreground.png"))
        assert fg.dtype == np.uint8 and fg.shape == size
        np.testing.assert_array_equal(fg, np.rint(expected.foreground * 255).astype(np.uint8))
        cutout = np.asarray(Image.open(out / f"{name}.cutout.png"))
        assert cutout.shape == (*size, 4)
        np.testing.assert_array_equal(cutout[..., 3], fg)
        vis = Image.open(out / f"{name}.vis.png")
        assert vis.width == 4 * size[1] and vis.height > size[0]
        ply = PlyData.read(str(out / f"{name}.ply"))
        vertex = ply["vertex"]
        # cut by the mask as predicted: the tiny model's random mask keeps the pixels >= 0.5, here none
        kept = int((expected.foreground >= 0.5).sum())
        assert vertex.count == kept and {"x", "y", "z", "red", "green", "blue"} <= set(vertex.data.dtype.names)
        assert np.all(vertex["z"] <= -1.0 + 1e-5) and np.all(vertex["z"] >= -2.0 - 1e-5)
    assert not [n for n in _files(out) if n.startswith(".")], "temporary files left behind"


def test_failing_inputs_summarised_and_others_written(
    tiny_multitask_onnx: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    rc = predict(
        str(folder), str(tmp_path / "missing.jpg"), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth"
    )
    assert rc == 1
    err = capsys.readouterr()
    assert "2 of 5 input(s) written" in err.out
    assert "3 input(s) failed" in err.err
    for name in ("broken.jpg", "empty.png", "missing.jpg"):
        assert name in err.err
    assert "no such file or folder" in err.err and "empty (0 bytes)" in err.err
    assert _files(out) == ["astronaut.depth.npy", "astronaut.depth.png", "crop.depth.npy", "crop.depth.png"]


def test_changed_output_is_redone_saying_so(
    tiny_multitask_onnx: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = [str(folder / "crop.png"), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth"]
    assert predict(*args) == 0
    target = out / "crop.depth.npy"
    target.write_bytes(b"sentinel")  # changed after the run: the set no longer holds the model's maps
    capsys.readouterr()
    assert predict(*args) == 0
    captured = capsys.readouterr()
    assert f"{folder / 'crop.png'}: redone: its output crop.depth.npy has 8 bytes" in captured.err
    assert "1 of 1 input(s) written" in captured.out
    assert np.load(target).shape == (200, 320)
    assert not [n for n in _files(out) if n.startswith(".")]


def test_output_names_never_escape(tiny_multitask_onnx: Path, folder: Path, tmp_path: Path) -> None:
    # an input reached through '..', and an absolute path: outputs land flat inside OUTDIR
    work = tmp_path / "work"
    (work / "deep").mkdir(parents=True)
    out = work / "out"
    odd = tmp_path / "..weird name?.png"
    Image.open(folder / "crop.png").save(odd)
    before = set(os.listdir(tmp_path)) | set(os.listdir(work))
    rc = predict(
        str(work / "deep" / ".." / ".." / "in" / "crop.png"),
        str(odd.resolve()),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--save",
        "depth",
    )
    assert rc == 0
    assert set(os.listdir(tmp_path)) | set(os.listdir(work)) == before | {"out"}
    assert _files(out) == ["crop.depth.npy", "crop.depth.png", "weird_name_.depth.npy", "weird_name_.depth.png"]


@pytest.mark.parametrize(
    "name, base",
    [
        ("../x.jpg", "x"),
        ("/abs/dir/y.png", "y"),
        ("...", "image"),
        ("../../.hidden.jpg", "hidden"),
        ("a b?*.jpg", "a_b__"),
        ("..\\..\\evil.png", "_.._evil"),
        ("con|sole.jpg", "con_sole"),
        ("ünï.png", "_n_"),
    ],
)
def test_safe_base_names(name: str, base: str) -> None:
    got = output_name(name)
    assert got == base
    assert "/" not in got and "\\" not in got and not got.startswith(".")


def test_inside_refuses_escaping_names(tmp_path: Path) -> None:
    from david_infer.errors import InputError

    for bad in ("../x.png", "/etc/passwd", "..", "a/b.png", ""):
        with pytest.raises(InputError, match="would leave"):
            inside(tmp_path, bad)
    assert inside(tmp_path, output_name("../x.png") + ".ply") == tmp_path / "x.ply"


def test_output_name_does_not_depend_on_the_other_inputs(
    tiny_multitask_onnx: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.open(folder / "crop.png").save(a / "x.png")
    Image.open(folder / "crop.png").convert("RGB").save(b / "x.jpg")
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert predict(str(a / "x.png"), "-m", str(tiny_multitask_onnx), "-o", str(alone), "--save", "depth") == 0
    assert _files(alone) == ["x.depth.npy", "x.depth.png"]
    capsys.readouterr()
    # next to a clashing name: the first keeps the same name, the clash is a failure naming both
    rc = predict(
        str(a / "x.png"), str(b / "x.jpg"), "-m", str(tiny_multitask_onnx), "-o", str(together), "--save", "depth"
    )
    assert rc == 1
    assert _files(together) == ["x.depth.npy", "x.depth.png"]
    np.testing.assert_array_equal(np.load(together / "x.depth.npy"), np.load(alone / "x.depth.npy"))
    err = capsys.readouterr().err
    assert f"{b / 'x.jpg'}: its output name 'x' is also that of {a / 'x.png'}" in err
    # given as a folder tree with --recursive, subfolders keep the names apart
    tree = tmp_path / "tree"
    assert (
        predict(
            str(tmp_path / "a"), str(tmp_path / "b"), "-m", str(tiny_multitask_onnx), "-o", str(tree), "--save", "depth"
        )
        == 1
    )  # two roots, one name: still a clash, never renamed
    capsys.readouterr()
    nested = tmp_path / "nested"
    root = tmp_path / "root"
    root.mkdir()
    a.rename(root / "a")
    b.rename(root / "b")
    assert predict(str(root), "--recursive", "-m", str(tiny_multitask_onnx), "-o", str(nested), "--save", "depth") == 0
    assert _files(nested / "a") == ["x.depth.npy", "x.depth.png"] and _files(nested / "b") == _files(nested / "a")
    np.testing.assert_array_equal(np.load(nested / "a" / "x.depth.npy"), np.load(alone / "x.depth.npy"))


def test_glob_and_recursive_inputs(
    tiny_multitask_onnx: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert predict(str(folder / "*.png"), "-m", str(tiny_multitask_onnx), "-o", str(out), "--save", "depth") == 0
    assert _files(out) == ["crop.depth.npy", "crop.depth.png"]
    (folder / "sub").mkdir()
    Image.open(folder / "crop.png").save(folder / "sub" / "inner.png")
    out2 = folder / "results"  # inside the input folder: its own outputs are not taken as inputs
    args = [str(folder), "-m", str(tiny_multitask_onnx), "-o", str(out2), "--save", "foreground"]
    assert predict(*args) == 0
    assert "inner.foreground.png" not in _files(out2)
    assert predict(*args, "--recursive") == 0  # the complete ones skipped, the new one written
    assert "inner.foreground.png" in _files(out2 / "sub") and "crop.foreground.foreground.png" not in _files(out2)
    capsys.readouterr()
    assert predict(str(folder / "*.tiff"), "-m", str(tiny_multitask_onnx), "-o", str(out)) == 1
    assert "matched no file" in capsys.readouterr().err


def test_bad_save_kind_is_one_line_error(
    tiny_multitask_onnx: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert predict(str(folder), "-m", str(tiny_multitask_onnx), "-o", str(tmp_path / "o"), "--save", "dpth") == 1
    err = capsys.readouterr().err
    assert "unknown kind(s) dpth" in err and "Traceback" not in err


def test_progress_bar_and_plain_fallback(
    tiny_multitask_onnx: Path,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    base = [str(folder), "-m", str(tiny_multitask_onnx), "--save", "depth", "--resolution", RES]
    assert main(["predict", *base, "-o", str(tmp_path / "a")]) == 0
    assert "predict: 100%" in capsys.readouterr().err  # tqdm
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    assert main(["predict", *base, "-o", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "[1/2] ok" in err and "[2/2] ok" in err


def test_outputs_are_never_inputs_when_the_output_folder_is_the_input_folder(
    tiny_multitask_onnx: Path, folder: Path, capsys: pytest.CaptureFixture
) -> None:
    """`predict 'same/*' -o same/` twice read its own outputs (astronaut.depth.depth.png, ...), and
    `predict same/ -o same/` found no images at all: outputs are left out of collection instead."""
    model = ["-m", str(tiny_multitask_onnx), "-o", str(folder)]
    assert predict(str(folder / "*"), *model) == 0
    written = _files(folder)
    assert "astronaut.depth.png" in written and "crop.vis.png" in written
    capsys.readouterr()
    for given in (str(folder / "*"), str(folder)):  # the glob, then the folder itself
        assert predict(given, *model) == 0
        out = capsys.readouterr().out
        assert "0 of 2 input(s) written" in out and "2 skipped (already complete)" in out, (given, out)
    assert _files(folder) == written  # nothing like astronaut.depth.depth.png
    # a folder holding nothing but outputs says so, naming it as the output folder
    for source in ("astronaut.jpg", "crop.png"):
        (folder / source).unlink()
    assert predict(str(folder), *model) == 1
    err = capsys.readouterr().err
    assert "holds no images or videos" in err and "it is also the output folder" in err
    assert predict(str(folder / "*"), *model) == 1
    assert "matched only the outputs of a run in the output folder" in capsys.readouterr().err
