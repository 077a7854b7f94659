"""`david-infer relight / background / pointcloud` on the tiny model and a real photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from david_infer import apps
from david_infer.cli import main
from david_infer.contract import read_manifest
from david_infer.files import sha256_file
from david_infer.manifest import manifest_path, write_manifest


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"  # lossless, so pixels can be compared
    Image.fromarray(data.astronaut()[64:448, 96:384]).save(path)
    return path


def _single_task(multitask: Path, task: str, folder: Path) -> Path:
    """The tiny multi-task graph with only `task`'s output kept, and a matching manifest."""
    import onnx

    model = onnx.load(str(multitask))
    keep = [o for o in model.graph.output if o.name == task]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    path = folder / f"tiny-{task}.onnx"
    onnx.save(model, str(path))
    manifest = read_manifest(manifest_path(multitask))
    manifest.update(
        task=task,
        tasks=[task],
        model_file=path.name,
        sha256=sha256_file(path),
        outputs=[o for o in manifest["outputs"] if o["task"] == task],
    )
    write_manifest(manifest_path(path), manifest)
    return path


@pytest.fixture(scope="module")
def depth_only_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _single_task(tiny_multitask_onnx, "depth", tmp_path_factory.mktemp("depth_only"))


@pytest.fixture(scope="module")
def normal_only_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _single_task(tiny_multitask_onnx, "normal", tmp_path_factory.mktemp("normal_only"))


def app(command: str, photo: Path, model: Path, out: Path, *extra: str) -> int:
    return main([command, str(photo), "-m", str(model), "-o", str(out), "--resolution", "64", *extra])


def test_relight_with_full_ambient_returns_the_photo(
    tiny_multitask_onnx: Path, photo_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lit.png"
    assert app("relight", photo_file, tiny_multitask_onnx, out, "--ambient", "1", "--light", "0,0,1") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(photo_file)))


def test_relight_matches_the_shading_formula(
    tiny_runtime, tiny_multitask_onnx: Path, normal_only_onnx: Path, photo_file: Path, tmp_path: Path
) -> None:
    img = np.asarray(Image.open(photo_file)).astype(np.float64)
    pred = tiny_runtime.predict(photo_file)
    n = pred.normal / np.linalg.norm(pred.normal, axis=2, keepdims=True)
    shade = (0.3 + 0.7 * np.maximum(0.0, n @ (np.array([-1.0, 2.0, 3.0]) / np.sqrt(14.0))))[..., None]
    # a normals-only model re-lights every pixel; with a mask only the person (soft blend)
    for model, alpha in ((normal_only_onnx, 1.0), (tiny_multitask_onnx, pred.foreground[..., None])):
        out = tmp_path / f"lit-{model.stem}.png"
        assert app("relight", photo_file, model, out, "--ambient", "0.3", "--light=-1,2,3") == 0
        got = np.asarray(Image.open(out)).astype(np.float64)
        expected = alpha * img * shade + (1 - alpha) * img
        assert np.abs(got - expected).max() <= 1.0
        if model == normal_only_onnx:
            assert np.abs(got - img).max() > 10  # the light did change the picture


def test_background_colour_blends_by_the_mask(
    tiny_runtime, tiny_multitask_onnx: Path, photo_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bg.png"
    assert app("background", photo_file, tiny_multitask_onnx, out, "--color", "0,0,255") == 0
    got = np.asarray(Image.open(out)).astype(np.float64)
    img = np.asarray(Image.open(photo_file)).astype(np.float64)
    a = tiny_runtime.predict(photo_file).foreground[..., None]
    expected = a * img + (1 - a) * np.array([0.0, 0.0, 255.0])
    assert got.shape == img.shape and np.abs(got - expected).max() <= 1.0


def test_background_image_and_blur(tiny_multitask_onnx: Path, photo_file: Path, tmp_path: Path) -> None:
    bg = tmp_path / "bg.jpg"
    Image.new("RGB", (50, 30), (200, 10, 10)).save(bg)
    for extra, name in ((("--image", str(bg)), "a.png"), (("--blur", "6"), "b.jpg")):
        out = tmp_path / name
        assert app("background", photo_file, tiny_multitask_onnx, out, *extra) == 0
        assert Image.open(out).size == Image.open(photo_file).size


def test_pointcloud_writes_a_readable_ply(
    tiny_runtime, tiny_multitask_onnx: Path, photo_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from plyfile import PlyData

    out = tmp_path / "cloud.ply"
    assert (
        app(
            "pointcloud",
            photo_file,
            tiny_multitask_onnx,
            out,
            "--fov",
            "50",
            "--near",
            "1.5",
            "--far",
            "2.5",
            "--mask-threshold",
            "0",
        )
        == 0
    )
    vertex = PlyData.read(str(out))["vertex"]
    h, w = Image.open(photo_file).size[::-1]
    assert vertex.count == h * w  # threshold 0 keeps every pixel
    z = np.asarray(vertex["z"])
    assert z.min() == pytest.approx(-2.5, abs=1e-5) and z.max() == pytest.approx(-1.5, abs=1e-5)
    pred = tiny_runtime.predict(photo_file)
    points, colors = apps.point_cloud(pred.image, pred.depth, pred.foreground, 50.0, (1.5, 2.5), 0.0, invert=True)
    np.testing.assert_allclose(np.stack([vertex["x"], vertex["y"], z], axis=1), points, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(vertex["red"]), colors[:, 0])
    assert (
        main(["pointcloud", str(photo_file), "-m", str(tiny_multitask_onnx), "-o", str(out), "--resolution", "64"]) == 1
    )
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    # a PLY named .png (it said "wrote pc.png" and left a PLY no image viewer opens)
    misnamed = tmp_path / "pc.png"
    assert main(["pointcloud", str(photo_file), "-m", str(tiny_multitask_onnx), "-o", str(misnamed)]) == 1
    assert "a point cloud is written as PLY; name the file .ply" in capsys.readouterr().err
    assert not misnamed.exists()


@pytest.mark.parametrize(
    "command, extra, task",
    [
        ("relight", (), "normal"),
        ("background", ("--blur", "3"), "foreground"),
    ],
)
def test_missing_task_is_a_clear_error(
    depth_only_onnx: Path,
    photo_file: Path,
    tmp_path: Path,
    command: str,
    extra: tuple,
    task: str,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out.png"
    assert app(command, photo_file, depth_only_onnx, out, *extra) == 1
    err = capsys.readouterr().err
    assert f"needs a model that predicts {task}" in err and "predicts depth only" in err
    assert not out.exists()


def test_pointcloud_on_a_depth_only_model_keeps_every_pixel(
    depth_only_onnx: Path, photo_file: Path, tmp_path: Path
) -> None:
    from plyfile import PlyData

    out = tmp_path / "cloud.ply"
    assert app("pointcloud", photo_file, depth_only_onnx, out) == 0
    h, w = Image.open(photo_file).size[::-1]
    assert PlyData.read(str(out))["vertex"].count == h * w


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".tga"])
def test_every_accepted_image_type_stores_the_full_size_rgb_picture(
    tiny_multitask_onnx: Path, photo_file: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"lit{suffix}"
    assert app("relight", photo_file, tiny_multitask_onnx, out, "--ambient", "1") == 0
    with Image.open(out) as written:
        photo = np.asarray(Image.open(photo_file))
        assert written.mode == "RGB" and written.size == Image.open(photo_file).size
        if suffix not in (".jpg", ".jpeg", ".webp"):  # lossless: the photo itself (ambient 1)
            np.testing.assert_array_equal(np.asarray(written), photo)
