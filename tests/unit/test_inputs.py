"""Every accepted input form gives well-formed results; every bad input raises a typed, clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

from david_infer import DavidRuntime, InputError  # noqa: E402

RES = 64


@pytest.fixture(scope="module")
def rt(tiny_runtime: DavidRuntime) -> DavidRuntime:
    assert tiny_runtime.resolution == RES
    return tiny_runtime


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The astronaut, cropped to a non-square 400x300 so padding is exercised."""
    return skdata.astronaut()[40:440, 100:400]


def check_prediction(pred, h: int, w: int) -> None:
    assert pred.depth.shape == (h, w) and pred.depth.dtype == np.float32
    assert np.isfinite(pred.depth).all()
    assert pred.normal.shape == (h, w, 3) and pred.normal.dtype == np.float32
    assert np.abs(np.linalg.norm(pred.normal, axis=-1) - 1.0).max() < 1e-3
    assert pred.foreground.shape == (h, w) and pred.foreground.dtype == np.float32
    assert pred.foreground.min() >= 0.0 and pred.foreground.max() <= 1.0
    assert pred.image.shape == (h, w, 3) and pred.image.dtype == np.uint8
    assert all(a.flags.writeable for a in (pred.image, pred.depth, pred.normal, pred.foreground))


def _pil_forms(photo: np.ndarray) -> dict:
    rgb = Image.fromarray(photo)
    gray16 = (photo.mean(axis=2) * 257).astype(np.uint16)
    return {
        "RGB": rgb,
        "RGBA": rgb.convert("RGBA"),
        "L": rgb.convert("L"),
        "LA": rgb.convert("LA"),
        "P": rgb.convert("P"),
        "I;16": Image.fromarray(gray16),
        "CMYK": rgb.convert("CMYK"),
        "1": rgb.convert("1"),
        "F": Image.fromarray((photo.mean(axis=2) / 255.0).astype(np.float32)),
    }


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1", "F"])
def test_pil_modes(rt: DavidRuntime, photo: np.ndarray, mode: str) -> None:
    image = _pil_forms(photo)[mode]
    assert image.mode == mode
    check_prediction(rt.predict(image), *photo.shape[:2])


def _scaled(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return a
    if dtype == "uint16":
        return a.astype(np.uint16) * 257
    return (a / 255.0).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["HW", "HW1", "HW3", "HW4"])
def test_numpy_forms(rt: DavidRuntime, photo: np.ndarray, layout: str, dtype: str) -> None:
    gray = photo.mean(axis=2).round().astype(np.uint8)
    alpha = np.full(photo.shape[:2] + (1,), 255, np.uint8)
    base = {"HW": gray, "HW1": gray[..., None], "HW3": photo, "HW4": np.concatenate([photo, alpha], 2)}[layout]
    check_prediction(rt.predict(_scaled(base, dtype)), *photo.shape[:2])


def test_dtypes_of_the_same_photo_agree(rt: DavidRuntime, photo: np.ndarray) -> None:
    """uint8, uint16 and float inputs holding the same picture give (nearly) the same depth."""
    ref = rt.predict(photo).depth
    for dtype in ("uint16", "float32", "float64"):
        got = rt.predict(_scaled(photo, dtype)).depth
        assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max(), dtype


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7), (5, 1), (3, 2000)])
def test_tiny_and_extreme_shapes(rt: DavidRuntime, shape: tuple) -> None:
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    check_prediction(rt.predict(image), *shape[:2])


def test_gray_array_equals_gray_pil(rt: DavidRuntime, photo: np.ndarray) -> None:
    gray = photo.mean(axis=2).round().astype(np.uint8)
    a, b = rt.predict(gray), rt.predict(Image.fromarray(gray))
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.image[..., 0], gray)


def test_exif_orientation_is_applied(rt: DavidRuntime, photo: np.ndarray, tmp_path: Path) -> None:
    """A file tagged "rotate 90 CW" predicts as the upright (rotated) picture, as viewers show it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(photo).save(path, exif=exif)
    pred = rt.predict(path)
    upright = np.ascontiguousarray(np.rot90(photo, k=-1))  # orientation 6 = rotate 90 clockwise to view
    assert pred.depth.shape == upright.shape[:2] != photo.shape[:2]
    np.testing.assert_array_equal(pred.image, upright)
    np.testing.assert_allclose(pred.depth, rt.predict(upright).depth, atol=1e-6)
    # The same tag on an in-memory PIL image is honoured too.
    np.testing.assert_allclose(rt.predict(Image.open(path)).depth, pred.depth, atol=1e-6)


# ------------------------------------------------------------------------------ bad inputs


def test_missing_file(rt: DavidRuntime, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"image file not found: .*nope\.jpg"):
        rt.predict(tmp_path / "nope.jpg")


def test_empty_file(rt: DavidRuntime, tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jpg is empty \(0 bytes\)"):
        rt.predict(path)


def test_corrupt_file(rt: DavidRuntime, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=r"corrupt\.jpg: not an image format"):
        rt.predict(str(path))


def test_truncated_file(rt: DavidRuntime, photo: np.ndarray, tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(photo).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.png: corrupt or truncated"):
        rt.predict(cut)


def test_directory_is_not_an_image(rt: DavidRuntime, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        rt.predict(tmp_path)


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0), (0, 0, 1)])
def test_zero_size_array(rt: DavidRuntime, shape: tuple) -> None:
    with pytest.raises(InputError, match=r"numpy array: image has zero size"):
        rt.predict(np.zeros(shape, np.uint8))


def test_zero_size_pil(rt: DavidRuntime) -> None:
    with pytest.raises(InputError, match=r"zero size \(0x5\)"):
        rt.predict(Image.new("RGB", (0, 5)))


def test_nan_filled(rt: DavidRuntime) -> None:
    a = np.full((32, 32, 3), np.nan, np.float32)
    with pytest.raises(InputError, match=r"3072 of 3072 values are NaN or infinite"):
        rt.predict(a)


def test_infinite_value(rt: DavidRuntime) -> None:
    a = np.zeros((32, 32), np.float64)
    a[3, 4] = np.inf
    with pytest.raises(InputError, match=r"1 of 1024 values are NaN or infinite"):
        rt.predict(a)


def test_float_out_of_range(rt: DavidRuntime, photo: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"float values must lie in \[0, 1\].*divide 0\.\.255 data by 255"):
        rt.predict(photo.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.int8, np.complex64])
def test_wrong_dtype(rt: DavidRuntime, dtype: type) -> None:
    with pytest.raises(InputError, match=r"unsupported dtype .*expected uint8, uint16"):
        rt.predict(np.zeros((16, 16, 3), dtype))


def test_channels_first(rt: DavidRuntime) -> None:
    with pytest.raises(InputError, match=r"looks channels-first.*transpose\(1, 2, 0\)"):
        rt.predict(np.zeros((3, 40, 50), np.uint8))


@pytest.mark.parametrize("shape", [(10, 10, 2), (2, 10, 10, 3), (10,)])
def test_wrong_shape(rt: DavidRuntime, shape: tuple) -> None:
    with pytest.raises(InputError, match=r"expected shape \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"):
        rt.predict(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("value", [None, 42, [[1, 2], [3, 4]]])
def test_wrong_type(rt: DavidRuntime, value: object) -> None:
    with pytest.raises(
        InputError, match=r"expected a file path, image file bytes, a PIL\.Image\.Image or a numpy array"
    ):
        rt.predict(value)


def test_file_bytes_decode_as_the_file(rt: DavidRuntime, photo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    from_path, from_bytes = rt.predict(path), rt.predict(path.read_bytes())
    for task in rt.tasks:
        np.testing.assert_array_equal(getattr(from_bytes, task), getattr(from_path, task))
    with pytest.raises(InputError, match=r"image bytes: not an image format Pillow can read"):
        rt.predict(b"\x89PNG")
    with pytest.raises(InputError, match=r"image bytes is empty"):
        rt.predict(b"")


def test_bad_image_in_a_batch_is_named(rt: DavidRuntime, photo: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"images\[1\]: .*NaN"):
        rt.predict_batch([photo, np.full((8, 8), np.nan)])


def test_bad_channel_order(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(InputError, match=r"channel_order must be 'rgb' or 'bgr', got 'rbg'"):
        DavidRuntime(tiny_multitask_onnx, channel_order="rbg")


def test_an_empty_path_and_a_matrix_are_told_apart() -> None:
    from david_infer.inputs import decode

    with pytest.raises(InputError, match="the file path is empty"):
        decode("")  # it said ". is a directory"
    gray = decode(np.asmatrix(np.zeros((20, 30), np.uint8)), name="m")  # np.matrix: a raw numpy error
    assert gray.size == (20, 30) and gray.display().shape == (20, 30, 3)
