"""Awkward and hostile images: each gives a correct result or an InputError naming the input.

Files come from tests/support/image_corpus.py (generated, nothing checked in); arrays are built here.
Nothing may crash, hang, leak a numpy/PIL/ORT exception, or decode a decompression bomb.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from tests.support import REPO

pytest.importorskip("onnxruntime")

from david_infer import DavidRuntime, InputError  # noqa: E402
from david_infer.inputs import MAX_IMAGE_PIXELS, decode  # noqa: E402
from tests.support.image_corpus import honest_png_bomb, write_corpus  # noqa: E402

# case -> (height, width) of a correct result, or a regex the InputError must match after the path
EXPECTED: Dict[str, object] = {
    "ok.jpg": (48, 64),
    "ok.png": (48, 64),
    "truncated.jpg": r"corrupt or truncated image",
    "truncated.png": r"corrupt or truncated image",
    "empty.jpg": r" is empty \(0 bytes\)",
    "text.jpg": r"not an image format Pillow can read",
    "one_by_one.png": (1, 1),
    "one_by_n.png": (1, 37),
    "n_by_one.png": (29, 1),
    "sixteen_bit.png": (48, 64),
    "cmyk.jpg": (48, 64),
    "palette_transparent.png": (48, 64),
    "exif_rotated.jpg": (64, 48),  # orientation 6: shown rotated, as a viewer does
    "bomb.png": r"too large to decode safely.*10000000000 pixels.*max_image_pixels is 100,000,000",
    "bomb_144mp.png": r"12000x12000 = 144,000,000 pixels, more than the limit of 100,000,000.*before decoding",
    "bomb_144mp.jpg": r"12000x12000 = 144,000,000 pixels, more than the limit of 100,000,000.*before decoding",
    "bomb_max.jpg": r"too large to decode safely.*4294836225 pixels",
    "text_bomb.png": r"corrupt or truncated image.*MAX_TEXT_CHUNK",
    "bad_exif.jpg": (48, 64),
    "gif_animated.gif": (48, 64),
    "tiff_float.tif": (48, 64),
}


@pytest.fixture(scope="module")
def rt(tiny_multitask_onnx: Path) -> DavidRuntime:
    runtime = DavidRuntime(tiny_multitask_onnx, resolution=64)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def check_prediction(pred, h: int, w: int) -> None:
    assert pred.size == (h, w)
    assert pred.depth.shape == (h, w) and np.isfinite(pred.depth).all()
    assert pred.normal.shape == (h, w, 3) and np.isfinite(pred.normal).all()
    assert np.abs(np.linalg.norm(pred.normal, axis=-1) - 1.0).max() < 1e-4
    assert pred.foreground.shape == (h, w)
    assert 0.0 <= pred.foreground.min() and pred.foreground.max() <= 1.0
    assert pred.image.shape == (h, w, 3) and pred.image.dtype == np.uint8


def test_corpus_is_complete(corpus: Dict[str, Path]) -> None:
    assert set(corpus) == set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_corpus_file(rt: DavidRuntime, corpus: Dict[str, Path], case: str) -> None:
    expected, path = EXPECTED[case], corpus[case]
    if isinstance(expected, tuple):
        check_prediction(rt.predict(path), *expected)
        check_prediction(rt.predict(str(path)), *expected)
    else:
        with pytest.raises(InputError) as err:
            rt.predict(path)
        assert str(err.value).startswith(str(path)), err.value  # names the file first
        # no chained numpy/PIL traceback under it
        assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
        assert re.search(expected, str(err.value)), err.value


def test_exif_rotated_file_is_upright(rt: DavidRuntime, corpus: Dict[str, Path]) -> None:
    raw = np.asarray(Image.open(corpus["exif_rotated.jpg"]).convert("RGB"))  # as stored: 48x64
    pred = rt.predict(corpus["exif_rotated.jpg"])
    np.testing.assert_array_equal(pred.image, np.rot90(raw, k=-1))


def test_sixteen_bit_png_keeps_its_precision(corpus: Dict[str, Path]) -> None:
    decoded = decode(corpus["sixteen_bit.png"])
    stored = np.asarray(Image.open(corpus["sixteen_bit.png"])).astype(np.float64)
    np.testing.assert_allclose(decoded.numpy(), stored / 65535.0, atol=1e-7)


def test_limit_is_a_setting(tiny_multitask_onnx: Path, corpus: Dict[str, Path]) -> None:
    assert MAX_IMAGE_PIXELS == 100_000_000
    with DavidRuntime(tiny_multitask_onnx, resolution=64, max_image_pixels=48 * 64) as small:
        assert small.max_image_pixels == 48 * 64
        check_prediction(small.predict(corpus["ok.png"]), 48, 64)  # exactly at the limit
        with pytest.raises(InputError, match=r"ok\.png: image is 64x48 = 3,072 pixels.*limit of 3,071"):
            DavidRuntime(tiny_multitask_onnx, resolution=64, max_image_pixels=3071).predict(corpus["ok.png"])
        # The limit applies to arrays and PIL images too, named as such.
        with pytest.raises(InputError, match=r"numpy array: image is 100x50 = 5,000 pixels"):
            small.predict(np.zeros((50, 100, 3), np.uint8))
        with pytest.raises(InputError, match=r"PIL image: image is 100x50"):
            small.predict(Image.new("RGB", (100, 50)))
    for bad in (0, -5, 1.5, "100", True):
        with pytest.raises(InputError, match="max_image_pixels must be a positive integer or None"):
            DavidRuntime(tiny_multitask_onnx, resolution=64, max_image_pixels=bad)


_BOMB_CHILD = textwrap.dedent("""
    import json, sys
    from david_infer import DavidRuntime, InputError
    from david_infer.inputs import decode
    def peak_mb():  # VmHWM: peak resident memory since the last reset
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    model, bomb = sys.argv[1], sys.argv[2]
    rt = DavidRuntime(model, resolution=64)
    rt.predict(bomb.replace("valid_bomb.png", "small.png"))  # warm: first-call allocations
    reset_peak()
    base = peak_mb()
    try:
        rt.predict(bomb)
        refused = ""
    except InputError as exc:
        refused = str(exc)
    growth_refused = peak_mb() - base
    reset_peak()
    base = peak_mb()
    decoded = decode(bomb, max_pixels=None)  # control: the same file, honestly decoded
    print(json.dumps({"refused": refused, "growth_refused": growth_refused,
                      "growth_decoded": peak_mb() - base, "size": list(decoded.size)}))
""")


def test_valid_bomb_is_refused_without_decoding(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """A complete, valid 12000x12000 PNG (144 MB of pixels in 0.14 MB): the default limit refuses
    it from the header. Peak RSS of a fresh process shows nothing was decoded; the control (same
    file, no limit) shows the measurement would have caught a decode."""
    bomb = tmp_path / "valid_bomb.png"
    bomb.write_bytes(honest_png_bomb(12_000))
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "small.png")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    assert bomb.stat().st_size < 1_000_000
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(tiny_multitask_onnx), str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"].startswith(str(bomb))
    assert "12000x12000 = 144,000,000 pixels" in result["refused"]
    assert result["growth_refused"] < 20.0, result
    assert result["size"] == [12_000, 12_000] and result["growth_decoded"] > 120.0, result


# ------------------------------------------------------------------------------ numpy arrays


def _photo_float(dtype: str = "float32") -> np.ndarray:
    y, x = np.mgrid[0:40, 0:56]
    return np.stack([x / 55.0, y / 39.0, (x + y) / 94.0], axis=-1).astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", ">f4", ">f8", "<f4"])
def test_float_arrays_in_range(rt: DavidRuntime, dtype: str) -> None:
    check_prediction(rt.predict(_photo_float(dtype)), 40, 56)


def test_big_endian_arrays_equal_native(rt: DavidRuntime) -> None:
    """Regression: big-endian uint16/float arrays were refused as an 'unsupported dtype >u2'."""
    native = (_photo_float() * 65535).astype(np.uint16)
    ref = rt.predict(native)
    np.testing.assert_array_equal(rt.predict(native.astype(">u2")).depth, ref.depth)
    f = _photo_float()
    np.testing.assert_array_equal(rt.predict(f.astype(">f4")).depth, rt.predict(f).depth)


def test_rounding_noise_is_clipped(rt: DavidRuntime) -> None:
    a = _photo_float()
    noisy = a.copy()
    noisy[0, 0, 0], noisy[1, 1, 1] = -5e-4, 1.0 + 5e-4
    clean = a.copy()
    clean[0, 0, 0], clean[1, 1, 1] = 0.0, 1.0
    np.testing.assert_array_equal(rt.predict(noisy).depth, rt.predict(clean).depth)


@pytest.mark.parametrize(
    "value,match",
    [
        (np.nan, r"1 of 6720 values are NaN or infinite"),
        (np.inf, r"1 of 6720 values are NaN or infinite"),
        (-np.inf, r"1 of 6720 values are NaN or infinite"),
        (-0.5, r"float values must lie in \[0, 1\], got -0\.5\.\."),
        (1.5, r"float values must lie in \[0, 1\], got 0\.\.1\.5"),
        (255.0, r"float values must lie in \[0, 1\], got 0\.\.255 \(divide 0\.\.255 data by 255\)"),
        (
            1e300,
            r"float values must lie in \[0, 1\], got 0\.\.1e\+300",
        ),  # regression: was reported as 'infinite' after a float32 overflow
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.filterwarnings("error")  # e.g. numpy's overflow RuntimeWarning from a cast
def test_bad_float_values_are_refused(rt: DavidRuntime, value: float, match: str, dtype: str) -> None:
    a = _photo_float("float64")
    a[0, 0, 0] = 0.0
    a[5, 7, 1] = value
    if dtype == "float32" and abs(value) == 1e300:
        return  # not representable in float32
    with pytest.raises(InputError, match=r"^numpy array: " + match):
        rt.predict(a.astype(dtype))


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.int8,
        np.int32,
        np.int64,
        np.uint32,
        np.uint64,
        np.complex64,
        np.complex128,
        object,
        np.longdouble,
        "datetime64[s]",
        "U3",
    ],
)
def test_wrong_dtypes(rt: DavidRuntime, dtype: object) -> None:
    with pytest.raises(InputError, match=r"^numpy array: unsupported dtype .*expected uint8, uint16, or float"):
        rt.predict(np.zeros((16, 16, 3), dtype))


@pytest.mark.parametrize("shape", [(), (10,), (1, 8, 8, 3), (2, 8, 8, 3), (1, 1, 8, 8, 3), (8, 8, 2), (8, 8, 5)])
def test_wrong_ranks(rt: DavidRuntime, shape: tuple) -> None:
    with pytest.raises(InputError, match=r"^numpy array: expected shape \(H, W\)"):
        rt.predict(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5, 3), (7, 0, 3), (0, 0, 4), (100000, 0)])
def test_zero_size(rt: DavidRuntime, shape: tuple) -> None:
    with pytest.raises(InputError, match=r"^numpy array: image has zero size"):
        rt.predict(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (1, 500, 3), (500, 1), (2, 3, 4)])
def test_tiny_arrays_give_results(rt: DavidRuntime, shape: tuple) -> None:
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    check_prediction(rt.predict(a), *shape[:2])


def test_strided_and_readonly_views(rt: DavidRuntime) -> None:
    a = np.random.default_rng(2).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    view = a[::-2, ::3, ::-1]
    check_prediction(rt.predict(view), *view.shape[:2])
    np.testing.assert_array_equal(rt.predict(view).depth, rt.predict(np.ascontiguousarray(view)).depth)
    ro = np.broadcast_to(np.uint8(90), (20, 30, 3))
    check_prediction(rt.predict(ro), 20, 30)


def test_unreadable_paths_are_input_errors(rt: DavidRuntime, tmp_path: Path) -> None:
    """Regression: a path too long for the OS raised a bare OSError from Path.exists()."""
    long_name = str(tmp_path / ("x" * 5000 + ".jpg"))
    with pytest.raises(InputError, match=r"cannot read the image file \(File name too long\)") as err:
        rt.predict(long_name)
    assert len(str(err.value)) < 400  # the 5000-character name is shortened in the message
    with pytest.raises(InputError, match="image file not found"):
        rt.predict("nul\0byte.jpg")
    with pytest.raises(InputError, match="image file not found"):
        rt.predict(tmp_path / "file.jpg" / "under_a_file.jpg")


def test_errors_in_a_batch_name_the_input(rt: DavidRuntime, corpus: Dict[str, Path]) -> None:
    """A file is named by its path, an array by its index in the batch."""
    with pytest.raises(InputError, match=r"bomb_144mp\.jpg: image is 12000x12000"):
        rt.predict_batch([corpus["ok.png"], corpus["ok.jpg"], corpus["bomb_144mp.jpg"]])
    with pytest.raises(InputError, match=r"^images\[1\]: unsupported dtype complex128"):
        rt.predict_batch([corpus["ok.png"], np.zeros((8, 8), complex)])


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
def test_pipes_and_devices_are_refused_without_blocking(rt: DavidRuntime, tmp_path: Path) -> None:
    """Opening a FIFO nobody writes to would block forever; /dev/zero never ends."""
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"pipe\.jpg is not a regular file"):
        rt.predict(fifo)
    if Path("/dev/zero").exists():
        with pytest.raises(InputError, match=r"^/dev/zero is not a regular file"):
            rt.predict("/dev/zero")
