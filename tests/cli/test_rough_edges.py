"""What a new user hits first on the command line: options, messages, output paths, empty masks,
GPU devices without a GPU, huge photos. Real CLI runs (`david_infer.cli.main`) on the tiny model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from david_infer.backends.gpu import nvidia_driver_present
from david_infer.cli import main
from tests.support.image_corpus import honest_png_bomb

APPS = {"relight": ("lit.png", []), "background": ("bg.png", ["--color", "0,0,0"]), "pointcloud": ("person.ply", [])}


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    y, x = np.mgrid[0:48, 0:40]
    Image.fromarray(np.stack([x * 6, y * 5, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def _run(capsys: pytest.CaptureFixture, argv: list) -> tuple:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", sorted(APPS))
def test_app_output_is_checked_before_the_model_and_named_as_given(
    command: str, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name, extra = APPS[command]
    missing_model = tmp_path / "no-such-model.onnx"  # the output is refused before the model is looked at
    base = [command, photo, "-m", missing_model, *extra, "-o"]
    code, _, err = _run(capsys, [*base, tmp_path / "nowhere" / name])
    assert code == 1 and f"{tmp_path / 'nowhere' / name}: its folder {tmp_path / 'nowhere'} does not exist" in err
    assert ".tmp" not in err and "no-such-model" not in err
    code, _, err = _run(capsys, [*base, tmp_path])
    assert code == 1 and f"{tmp_path} is a folder; -o names the file to write" in err
    taken = tmp_path / name
    taken.write_bytes(b"keep")
    code, _, err = _run(capsys, [*base, taken])
    assert code == 1 and f"{taken} already exists; pass --overwrite" in err and taken.read_bytes() == b"keep"
    if command != "pointcloud":
        code, _, err = _run(capsys, [*base, tmp_path / "out.xyz", "--overwrite"])
        assert code == 1 and "out.xyz: unknown image type '.xyz'; use .png or .jpg" in err
    assert list(tmp_path.iterdir()) == [taken]  # no temporaries left


def test_a_mask_that_keeps_nothing_is_written_as_it_says_with_a_warning(
    photo: Path, tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The tiny model's random weights predict no person at all: the case under test.
    assert float(tiny_runtime.predict(str(photo)).foreground.max()) < 0.5 / 255
    model = ["-m", tiny_multitask_onnx, "--resolution", "64"]
    warning = "warning: the foreground mask keeps no pixel (no person found)"

    code, _, err = _run(capsys, ["relight", photo, *model, "-o", tmp_path / "lit.png"])
    assert code == 0 and f"{warning}, so the re-lit photo is the photo unchanged" in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lit.png")), np.asarray(Image.open(photo)))

    code, _, err = _run(capsys, ["background", photo, *model, "--color", "10,20,30", "-o", tmp_path / "bg.png"])
    assert code == 0 and f"{warning}, so the result is the new background alone" in err
    assert (np.asarray(Image.open(tmp_path / "bg.png")) == [10, 20, 30]).all()

    code, out, err = _run(capsys, ["pointcloud", photo, *model, "-o", tmp_path / "p.ply"])
    assert code == 0 and "(0 points)" in out and "so the point cloud has no points" in err
    assert b"element vertex 0\n" in (tmp_path / "p.ply").read_bytes()

    # predict --save ply follows the same rule (it used to write the uncut cloud instead)
    code, _, err = _run(capsys, ["predict", photo, *model, "--save", "ply", "--no-progress", "-o", tmp_path / "set"])
    assert code == 0 and "so the point cloud has no points" in err
    assert b"element vertex 0\n" in (tmp_path / "set" / "photo.ply").read_bytes()


def test_gpu_device_on_a_machine_without_a_driver(
    photo: Path, tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if nvidia_driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    code, _, err = _run(
        capsys,
        ["predict", photo, "-m", tiny_multitask_onnx, "--device", "gpu", "--no-progress", "-o", tmp_path / "out"],
    )
    assert code == 1
    assert "device 'gpu' asks for an NVIDIA GPU, but this machine has no NVIDIA driver" in err
    assert "drop --device gpu" in err and "'cuda" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "typo, meant", [("--resoluton", "--resolution"), ("--sav", "--save"), ("--batch-sise", "--batch-size")]
)
def test_misspelled_or_abbreviated_options_are_refused_by_the_subcommand(
    typo: str, meant: str, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _run(capsys, ["predict", photo, "-m", "x.onnx", "-o", tmp_path, typo, "1"])
    assert code == 2
    assert err.startswith("usage: david-infer predict ")  # the subcommand's usage, not the top level's
    assert f"unrecognized arguments: {typo} 1 (did you mean {meant}?)" in err


def test_resolution_is_refused_in_command_line_terms(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _run(capsys, ["predict", photo, "-m", "x.onnx", "-o", tmp_path, "--resolution", "500"])
    assert code == 2 and "--resolution: 500 is not a positive multiple of 16" in err
    assert "use 496 or 512, or 'image'" in err and "None" not in err
    code, _, err = _run(capsys, ["relight", photo, "-m", "x.onnx", "-o", tmp_path / "a.png", "--resolution", "0"])
    assert code == 2 and "use 16, or 'image'" in err


def test_help_texts_keep_their_example_blocks(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(capsys, ["relight", "--help"])
    assert code == 0
    assert "\n    david-infer relight photo.jpg -m multitask-large -o lit.png --light=-1,1,1 --ambient 0.3\n" in out
    code, out, _ = _run(capsys, ["predict", "--help"])
    assert code == 0 and "VIDEO_SUFFIXES" not in out and "commands/predict_video.py" not in out
    assert "\n  depth       N.depth.png" in out  # the table of kinds stays a table


def test_a_large_photo_within_our_limit_decodes_without_pillows_warning(tmp_path: Path) -> None:
    from david_infer.inputs import MAX_IMAGE_PIXELS, decode

    path = tmp_path / "big.png"
    path.write_bytes(honest_png_bomb(10_000))  # 100 MP: over Pillow's warning threshold, within ours
    assert 10_000 * 10_000 <= MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        decoded = decode(path)
    assert decoded.display().shape[:2] == (10_000, 10_000)
