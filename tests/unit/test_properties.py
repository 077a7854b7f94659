"""Property tests (hypothesis) for decoding and the reference pre/post, without a network.

Over image shapes 1..300 x 1..300 (extreme aspect ratios included), dtypes and value ranges:
inputs decode to [0, 1] or raise InputError; model inputs are (3, R, R) in [0, 1]; outputs come
back at the image's size with unit normals and a mask in [0, 1]; the padding is removed exactly
as "resize to the padded square, then crop" does.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from david_infer.errors import InputError  # noqa: E402
from david_infer.inputs import decode  # noqa: E402
from david_infer.resample import square_geometry  # noqa: E402
from david_infer.stages import PostOptions  # noqa: E402
from david_infer.stages.reference import finish_maps, network_inputs  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ("uint8", "uint16", "float32", "float64")
LAYOUTS = ("HW", "HW1", "HW3", "HW4")

# Shapes: anything in 1..300 squared, plus lines and near-lines (aspect ratios up to 300:1).
sides = st.integers(1, 300)
shapes = st.one_of(
    st.tuples(sides, sides),
    st.tuples(st.integers(1, 3), sides),
    st.tuples(sides, st.integers(1, 3)),
)
resolutions = st.sampled_from([16, 32, 48, 64, 96])


def _image(shape: Tuple[int, int], dtype: str, layout: str, seed: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A random image of `shape` with values spread over [lo, hi] of the dtype's range."""
    rng = np.random.default_rng(seed)
    channels = {"HW": (), "HW1": (1,), "HW3": (3,), "HW4": (4,)}[layout]
    unit = rng.uniform(lo, hi, shape + channels)
    if dtype == "uint8":
        return np.rint(unit * 255).astype(np.uint8)
    if dtype == "uint16":
        return np.rint(unit * 65535).astype(np.uint16)
    return unit.astype(dtype)


# ------------------------------------------------------------------------------------ decode


@SETTINGS
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
    bounds=st.sampled_from([(0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.4, 0.6)]),
)
def test_decode_keeps_size_and_range(shape, dtype, layout, seed, bounds) -> None:
    a = _image(shape, dtype, layout, seed, *bounds)
    d = decode(a)
    assert d.size == shape
    px = d.numpy()
    assert px.shape[:2] == shape and px.dtype in (np.uint8, np.float32)
    if px.dtype == np.float32:
        assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
    assert d.display().shape == shape + (3,) and d.display().dtype == np.uint8


@SETTINGS
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=40),
    dtype=st.sampled_from(["float32", "float64"]),
)
@example(values=[1.0005, -0.0005], dtype="float32")  # rounding noise: clipped
@example(values=[1.002], dtype="float32")  # beyond the tolerance: refused
@example(values=[float("nan")], dtype="float64")
def test_float_values_either_accepted_in_range_or_refused(values, dtype) -> None:
    """Finite values within 1e-3 of [0, 1] are accepted (clipped); anything else is an InputError."""
    a = np.array(values, dtype=dtype).reshape(1, -1)
    ok = bool(np.isfinite(a).all()) and a.min() >= -1e-3 and a.max() <= 1.0 + 1e-3
    try:
        px = decode(a).numpy()
    except InputError as exc:
        assert not ok, exc
        assert str(exc).startswith("numpy array: ")
        return
    assert ok and px.min() >= 0.0 and px.max() <= 1.0
    np.testing.assert_allclose(px, np.clip(a, 0, 1), atol=1e-7)


# -------------------------------------------------------------------------------- preprocess


@SETTINGS
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
    resolution=resolutions,
    vit=st.sampled_from([None, 32, 80]),
    official=st.booleans(),
)
def test_preprocess_shapes_and_range(shape, dtype, layout, seed, resolution, vit, official) -> None:
    d = decode(_image(shape, dtype, layout, seed), channel_order="bgr")
    g = square_geometry(*shape, resolution)
    image, image_vit = network_inputs(d, g, "official" if official else "antialias", vit)
    assert image.shape == (3, resolution, resolution) and image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= -1e-6 and image.max() <= 1.0 + 1e-6
    if vit:
        assert image_vit is not None and image_vit.shape == (3, vit, vit) and image_vit.dtype == np.float32
        assert image_vit.min() >= -1e-6 and image_vit.max() <= 1.0 + 1e-6
    assert g.side == max(shape) and g.top + g.height <= g.side and g.left + g.width <= g.side
    assert 0 <= (g.side - g.height) - 2 * g.top <= 1 and 0 <= (g.side - g.width) - 2 * g.left <= 1


@SETTINGS
@given(
    shape=shapes,
    value=st.integers(0, 255),
    resolution=resolutions,
    official=st.booleans(),
    order=st.sampled_from(["rgb", "bgr"]),
)
def test_constant_image_gives_constant_input(shape, value, resolution, official, order) -> None:
    """Edge padding and resampling keep a flat colour flat: padding adds nothing of its own."""
    colour = np.array([value, (value * 7) % 256, 255 - value], np.uint8)
    a = np.broadcast_to(colour, shape + (3,))
    d = decode(a, channel_order=order)
    image, _ = network_inputs(d, square_geometry(*shape, resolution), "official" if official else "antialias", None)
    expected_bgr = (colour[::-1] if order == "rgb" else colour) / 255.0
    np.testing.assert_allclose(image, np.broadcast_to(expected_bgr[:, None, None], image.shape), atol=1e-6)


# ------------------------------------------------------------------------------- postprocess


def _outputs(resolution: int, seed: int, scale: float) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "depth": (rng.standard_normal((1, resolution, resolution)) * scale).astype(np.float32),
        "normal": (rng.standard_normal((3, resolution, resolution)) * scale).astype(np.float32),
        "foreground": (rng.uniform(-0.5, 1.5, (1, resolution, resolution)) * scale).astype(np.float32),
    }


def _check_maps(maps: Dict[str, np.ndarray], shape: Tuple[int, int], threshold=None) -> None:
    assert maps["depth"].shape == shape and np.isfinite(maps["depth"]).all()
    assert maps["normal"].shape == shape + (3,)
    assert np.abs(np.linalg.norm(maps["normal"], axis=-1) - 1.0).max() < 1e-4
    fg = maps["foreground"]
    assert fg.shape == shape and fg.min() >= 0.0 and fg.max() <= 1.0
    if threshold is not None:
        assert set(np.unique(fg)) <= {0.0, 1.0}
    for value in maps.values():
        assert value.dtype == np.float32


@SETTINGS
@given(
    shape=shapes,
    resolution=resolutions,
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    interpolation=st.sampled_from(["bicubic", "bilinear", "official"]),
    threshold=st.sampled_from([None, 0.0, 0.5, 1.0]),
    invert=st.booleans(),
    normalize=st.booleans(),
)
@example(
    shape=(48, 64),
    resolution=64,
    seed=0,
    scale=1.0,
    interpolation="bicubic",
    threshold=None,
    invert=True,
    normalize=False,
)  # the model ran at the square's own size: the crop path
def test_postprocess_properties(shape, resolution, seed, scale, interpolation, threshold, invert, normalize) -> None:
    outputs = _outputs(resolution, seed, scale)
    opts = PostOptions(invert, normalize, threshold, interpolation)
    maps = finish_maps(outputs, square_geometry(*shape, resolution), opts)
    _check_maps(maps, shape, threshold)
    if normalize:
        assert maps["depth"].min() >= 0.0 and maps["depth"].max() <= 1.0 + 1e-6


def _square_then_crop(plane: np.ndarray, shape: Tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """The official definition, written independently: resize the model output to the padded
    square (centred, pad = diff // 2 before), then cut the image out of it."""
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    full = np.asarray(Image.fromarray(plane).resize((side, side), resample))
    return full[top : top + h, left : left + w]


@SETTINGS
@given(
    shape=shapes,
    resolution=resolutions,
    seed=st.integers(0, 2**16),
    interpolation=st.sampled_from(["bicubic", "bilinear"]),
)
def test_padding_removed_exactly(shape, resolution, seed, interpolation) -> None:
    """Each map equals the output resized to the padded square, then cropped (to float error)."""
    outputs = _outputs(resolution, seed, 1.0)
    maps = finish_maps(outputs, square_geometry(*shape, resolution), PostOptions(False, False, None, interpolation))
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    np.testing.assert_allclose(maps["depth"], _square_then_crop(outputs["depth"][0], shape, resample), atol=2e-5)
    fg = np.clip(_square_then_crop(outputs["foreground"][0], shape, resample), 0, 1)
    np.testing.assert_allclose(maps["foreground"], fg, atol=2e-5)


@SETTINGS
@given(
    h=st.integers(1, 96), w=st.integers(1, 96), inside=st.floats(-5, 5, width=32), outside=st.floats(-5, 5, width=32)
)
def test_region_constant_output_maps_back_exactly(h, w, inside, outside) -> None:
    """The model ran at the square's own size: a map that is `inside` on the image's part of the
    square and `outside` on the padding comes back as exactly `inside`, at the image's size."""
    g = square_geometry(h, w, max(h, w))
    plane = np.full((1, g.side, g.side), outside, np.float32)
    plane[:, g.top : g.top + h, g.left : g.left + w] = inside
    maps = finish_maps({"depth": plane, "foreground": plane}, g, PostOptions(False, False, None, "bicubic"))
    np.testing.assert_array_equal(maps["depth"], np.full((h, w), inside, np.float32))
    np.testing.assert_array_equal(maps["foreground"], np.full((h, w), np.clip(inside, 0, 1), np.float32))


@pytest.mark.parametrize("shape", [(48, 64), (64, 64), (64, 1), (1, 64)])
def test_normals_unit_when_model_runs_at_the_square_size(shape) -> None:
    """Regression: when the square's side is the resolution, normals were once left unnormalised
    (an in-place normalisation ran on a reshaped copy of a non-contiguous array)."""
    outputs = _outputs(64, 1, 3.0)
    maps = finish_maps(outputs, square_geometry(*shape, 64), PostOptions())
    _check_maps(maps, shape)
