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
        assert code == 1 and "out.xyz: unsupported image type '.xyz'; use one of .png, .jpg, .jpeg, .webp" in err
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


# ------------------------------------------------------------------------ a new user, third pass


def test_kinds_for_the_other_medium_are_refused_or_named_once(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--save ply,cutout,depth-npz` on photos wrote only the .ply, without a word."""
    missing_model = tmp_path / "no-such-model.onnx"  # refused before the model is looked at
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["predict", photo, "-m", missing_model, "-o", out, "--save", "ply,cutout,depth-npz"])
    assert code == 1 and "no-such-model" not in err and not out.exists()
    assert (
        "--save cutout, depth-npz writes nothing here: the inputs are images (an image's cutout is "
        "foreground:cutout; an image's depth-npz is depth:npy); images take depth, normal, foreground, vis, ply"
    ) in err
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not probed before the model")
    code, _, err = _run(capsys, ["predict", photo, clip, "-m", missing_model, "-o", out, "--save", "ply,depth,cutout"])
    assert err.count("warning: --save: this run writes ply for images only and cutout for clips only (") == 1
    code, _, err = _run(capsys, ["predict", clip, "-m", missing_model, "-o", out, "--save", "depth:png"])
    assert code == 1 and "--save depth:png writes nothing here: the inputs are video clips" in err


def test_one_file_of_a_map_is_written_alone_and_resumes(
    photo: Path, tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--save depth` always wrote the PNG and the float .npy; MAP:FORMAT writes one of them."""
    out = tmp_path / "out"
    argv = ["predict", photo, "-m", tiny_multitask_onnx, "--resolution", "64", "-o", out, "--no-progress"]
    code, _, err = _run(capsys, [*argv, "--save", "depth:png,normal:npy,foreground:cutout,depth"])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "photo.cutout.png",
        "photo.depth.npy",
        "photo.depth.png",
        "photo.done.json",
        "photo.normal.npy",
    ]  # depth:png is depth's own: dropped beside depth
    code, stdout, _ = _run(capsys, [*argv, "--save", "normal:npy,foreground:cutout,depth"])
    assert code == 0 and "1 skipped (already complete)" in stdout
    code, _, err = _run(capsys, [*argv, "--save", "depth:jpg"])
    assert code == 1 and "--save: unknown kind(s) depth:jpg; images take" in err and "depth:npy" in err


def test_a_mask_that_keeps_nothing_gives_one_warning_per_input_naming_its_files(
    photo: Path, tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """predict wrote a fully transparent cut-out without the apps' warning, and a vis tile that
    showed the plain photo (read as a mask that keeps everything)."""
    from david_infer.visualize import DIMMED

    assert float(tiny_runtime.predict(str(photo)).foreground.max()) < 0.5 / 255  # the random weights' mask
    out = tmp_path / "out"
    argv = ["predict", photo, "-m", tiny_multitask_onnx, "--resolution", "64", "-o", out, "--no-progress"]
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert err.count("warning:") == 1
    assert (
        f"warning: {photo}: the foreground mask keeps no pixel (no person found), so the cut-out is fully "
        "transparent; the picture's foreground tile is a dark photo and its depth and normals are unmasked"
    ) in err
    assert (np.asarray(Image.open(out / "photo.cutout.png"))[..., 3] == 0).all()
    vis = np.asarray(Image.open(out / "photo.vis.png")).astype(int)
    image = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    h, w = image.shape[:2]
    np.testing.assert_allclose(vis[-h:, -w:], np.rint(image * DIMMED), atol=1)  # the foreground tile, dimmed


def test_the_point_clouds_warning_names_an_option_that_exists(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """predict --save ply said "a lower mask threshold keeps more", an option predict lacks."""
    from david_infer.outputs.images import write_outputs
    from david_infer.prediction import Prediction

    faint = np.full((24, 32), 0.3, np.float32)  # a mask a lower threshold would keep
    pred = Prediction(image=np.full((24, 32, 3), 90, np.uint8), depth=np.ones((24, 32), np.float32), foreground=faint)
    with pytest.warns(Warning) as caught:
        write_outputs(pred, tmp_path, "x", ["ply", "foreground"], source="shots/x.jpg")
    assert [str(w.message) for w in caught] == [
        "shots/x.jpg: the foreground mask keeps no pixel with finite depth at mask >= 0.5 (no person found), so "
        "the point cloud has no points (the mask's highest value is 0.30: a mask threshold at or below it keeps "
        "pixels) (david-infer pointcloud shots/x.jpg --mask-threshold T writes that cloud)"
    ]
    code, out, _ = _run(capsys, ["pointcloud", "--help"])
    assert code == 0 and "--mask-threshold" in out


def test_nothing_written_is_said_first_with_why(photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing input gave "0 of 1 input(s) written to out/" although out/ was never created."""
    out, missing = tmp_path / "out", tmp_path / "missing.png"
    code, stdout, err = _run(capsys, ["predict", missing, "-m", "x.onnx", "-o", out])
    assert code == 1 and not out.exists()
    assert stdout.splitlines()[0] == f"nothing written ({out} was not created): {missing}: no such file or folder"


def test_a_misspelt_command_and_a_negative_light_are_understood(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from david_infer.cli import build_parser

    code, _, err = _run(capsys, ["predcit", photo])
    assert code == 2 and "invalid choice: 'predcit'" in err and err.rstrip().endswith("did you mean predict?")
    args = build_parser().parse_args(["relight", str(photo), "-m", "m", "-o", "lit.png", "--light", "-1,1,1"])
    assert args.light == "-1,1,1"
    args = build_parser().parse_args(["relight", str(photo), "-m", "m", "-o", "lit.png", "--light", "-1,-0.5,2e-1"])
    assert args.light == "-1,-0.5,2e-1"
    code, _, err = _run(capsys, ["relight", photo, "-m", "m", "-o", "lit.png", "--light", "-1,1"])
    assert code == 1 and "--light: expected 3 comma-separated numbers, got '-1,1'" in err


@pytest.mark.parametrize(
    "command, options, said",
    [
        ("background", ["--blur", "nan"], "--blur must be a finite radius >= 0 (pixels), got nan"),
        ("background", ["--blur", "inf"], "--blur must be a finite radius >= 0 (pixels), got inf"),
        ("relight", ["--light", "0,0,0"], "--light must be a finite, non-zero direction X,Y,Z, got '0,0,0'"),
        ("pointcloud", ["--mask-threshold", "nan"], "mask_threshold must be in [0, 1], got nan"),
        ("pointcloud", ["--mask-threshold", "2"], "mask_threshold must be in [0, 1], got 2.0"),
        ("pointcloud", ["--mask-threshold", "-1"], "mask_threshold must be in [0, 1], got -1.0"),
        ("pointcloud", ["--fov", "180"], "fov_deg must be in (0, 180), got 180.0 (--fov, --near and --far"),
        ("pointcloud", ["--near", "3", "--far", "2"], "depth_range must be (near, far) with 0 < near <= far"),
    ],
)
def test_app_options_out_of_range_are_refused_before_the_model(
    command: str, options: list, said: str, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = APPS[command][0]  # the options below replace the background's --color
    missing_model = tmp_path / "no-such-model.onnx"  # a check after the model would say it is missing
    code, _, err = _run(capsys, [command, photo, "-m", missing_model, *options, "-o", tmp_path / name])
    assert code == 1 and said in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".ico", ".icns", ".blp", ".h5", ".grib", ".bufr", ".wmf", ".xbm", ".msp", ".palm"])
def test_image_types_that_would_not_store_the_picture_are_refused_before_the_model(
    suffix: str, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """.ico wrote 256x256 and .icns an upscaled RGBA as success; the rest failed after the model."""
    out = tmp_path / f"lit{suffix}"
    code, _, err = _run(capsys, ["relight", photo, "-m", tmp_path / "no-such-model.onnx", "-o", out])
    assert code == 1 and f"{out}: unsupported image type '{suffix}'; use one of .png, .jpg, .jpeg" in err, err
    assert list(tmp_path.iterdir()) == []
