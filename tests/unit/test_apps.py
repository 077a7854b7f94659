"""The applications' maths on constructed inputs: planes, known masks, depth ramps, PLY round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from david_infer import apps
from david_infer.errors import EmptyMaskWarning, InputError

H, W = 6, 8


def _plane(normal: tuple) -> np.ndarray:
    return np.broadcast_to(np.asarray(normal, np.float32), (H, W, 3)).copy()


def _white() -> np.ndarray:
    return np.full((H, W, 3), 255, np.uint8)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 60.0, 89.0])
def test_plane_lit_at_known_angle(angle_deg: float) -> None:
    """A camera-facing plane lit from `angle` off its normal gets ambient + (1 - ambient) cos(angle)."""
    a = math.radians(angle_deg)
    light = (3.0 * math.sin(a), 0.0, 3.0 * math.cos(a))  # not unit length on purpose
    shade = apps.shading(_plane((0, 0, 1)), light, ambient=0.25)
    expected = 0.25 + 0.75 * math.cos(a)
    np.testing.assert_allclose(shade, expected, rtol=0, atol=1e-6)
    out = apps.relight(_white(), _plane((0, 0, 1)), light, ambient=0.25)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert np.all(out == round(255 * expected))


def test_tilted_plane_and_unnormalised_normals() -> None:
    n = np.array([1.0, 2.0, 2.0])  # |n| = 3; unit normal (1, 2, 2) / 3
    light = (0.0, 1.0, 0.0)  # from above
    shade = apps.shading(_plane(tuple(n)), light, ambient=0.1)
    np.testing.assert_allclose(shade, 0.1 + 0.9 * (2.0 / 3.0), atol=1e-6)


def test_light_behind_surface_gives_ambient() -> None:
    shade = apps.shading(_plane((0, 0, 1)), (0.2, -0.1, -1.0), ambient=0.3)
    np.testing.assert_allclose(shade, 0.3, atol=1e-7)
    img = np.full((H, W, 3), 200, np.uint8)
    assert np.all(apps.relight(img, _plane((0, 0, 1)), (0, 0, -1), ambient=0.3) == 60)


def test_relight_only_the_foreground() -> None:
    img = np.full((H, W, 3), 100, np.uint8)
    fg = np.zeros((H, W), np.float32)
    fg[:, : W // 2] = 1.0
    out = apps.relight(img, _plane((0, 0, 1)), (0, 0, -1), ambient=0.5, foreground=fg)
    assert np.all(out[:, : W // 2] == 50) and np.all(out[:, W // 2 :] == 100)


def test_relight_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="light_dir"):
        apps.relight(_white(), _plane((0, 0, 1)), (0, 0, 0))
    with pytest.raises(InputError, match=r"normal: size 3x8 \(HxW\) differs from the image's 6x8"):
        apps.relight(_white(), np.zeros((3, W, 3)), (0, 0, 1))
    with pytest.raises(InputError, match="ambient"):
        apps.shading(_plane((0, 0, 1)), (0, 0, 1), ambient=1.5)


def _mask_0_half_1() -> np.ndarray:
    fg = np.zeros((H, W), np.float32)
    fg[:, 3:5] = 0.5
    fg[:, 5:] = 1.0
    return fg


def test_background_colour_blend_per_pixel() -> None:
    img = np.zeros((H, W, 3), np.uint8)
    img[...] = (200, 100, 40)
    out = apps.replace_background(img, _mask_0_half_1(), (0, 50, 240))
    assert np.all(out[:, :3] == (0, 50, 240))  # mask 0: the new background
    assert np.all(out[:, 3:5] == (100, 75, 140))  # mask 0.5: the mean
    assert np.all(out[:, 5:] == (200, 100, 40))  # mask 1: the photo


def test_uint8_mask_means_alpha_over_255() -> None:
    img = np.full((H, W, 3), 255, np.uint8)
    mask = np.full((H, W), 51, np.uint8)  # 0.2
    assert np.all(apps.replace_background(img, mask, (0, 0, 0)) == 51)


def test_uint16_and_zero_one_integer_masks_mean_their_scale() -> None:
    img = np.full((H, W, 3), 255, np.uint8)
    half = np.full((H, W), 32768, np.uint16)  # 0.5: clipped to 1 (the photo alone) before
    assert np.all(np.abs(apps.replace_background(img, half, (0, 0, 0)).astype(int) - 128) <= 1)
    assert np.all(apps.cutout(img, half)[..., 3] == 128)
    ones = np.ones((H, W), np.int64)  # a 0/1 mask from a comparison's astype(int)
    assert np.all(apps.replace_background(img, ones, (0, 0, 0)) == 255)
    depth = np.linspace(1, 2, H * W, dtype=np.float32).reshape(H, W)
    with pytest.warns(EmptyMaskWarning, match=r"highest value is 0\.50"):  # 0.5 < 0.6: kept every pixel before
        points, _ = apps.point_cloud(img, depth, foreground=half, mask_threshold=0.6)
    assert len(points) == 0


@pytest.mark.parametrize("mask", [np.full((H, W), 200.0), np.full((H, W), 200, np.int32), np.full((H, W), np.inf)])
def test_a_mask_in_other_units_is_refused_not_clipped_to_the_photo(mask: np.ndarray) -> None:
    img = np.full((H, W, 3), 255, np.uint8)
    for run in (
        lambda: apps.replace_background(img, mask, (0, 0, 0)),
        lambda: apps.cutout(img, mask),
        lambda: apps.relight(img, _plane((0, 0, 1)), (0, 0, 1), foreground=mask),
    ):
        with pytest.raises(InputError, match=r"not a soft mask in \[0, 1\].*divide 0..255 values by 255"):
            run()


def test_a_float_background_in_other_units_is_refused_not_white() -> None:
    img = np.full((H, W, 3), 10, np.uint8)
    with pytest.raises(InputError, match=r"background: float pixels must be in \[0, 1\], got 200..200; divide"):
        apps.replace_background(img, np.zeros((H, W), np.float32), np.full((H, W, 3), 200.0))
    with pytest.warns(EmptyMaskWarning):
        out = apps.replace_background(img, np.zeros((H, W), np.float32), np.full((H, W, 3), 0.5))
    assert np.all(out == 128)


def test_background_image_covers_the_frame() -> None:
    img = np.full((H, W, 3), 9, np.uint8)
    # a 4x16 background (wider than the 6x8 frame): scaled by 1.5 to 6x24, centre 8 columns kept
    bg = np.zeros((4, 16, 3), np.uint8)
    bg[:, :8] = (255, 0, 0)
    bg[:, 8:] = (0, 0, 255)
    out = apps.replace_background(img, np.zeros((H, W)), bg)
    assert out.shape == (H, W, 3)
    assert np.all(out[:, 0] == (255, 0, 0)) and np.all(out[:, -1] == (0, 0, 255))
    assert np.all(out[:, :3, 0] > 200) and np.all(out[:, 5:, 2] > 200)
    same = apps.replace_background(img, np.zeros((H, W)), Image.fromarray(bg))
    assert np.array_equal(out, same)


def test_background_blur() -> None:
    img = np.zeros((H, W, 3), np.uint8)
    img[:, ::2] = 255  # stripes: a blur flattens them
    fg = np.zeros((H, W), np.float32)
    fg[0, 0] = 1.0
    out = apps.replace_background(img, fg, "blur", blur_radius=3)
    assert np.array_equal(out[0, 0], img[0, 0])  # the person is untouched
    assert out[1:, 1:].std() < 0.3 * img[1:, 1:].std()
    with pytest.raises(InputError, match="'blur'"):
        apps.replace_background(img, fg, "gaussian")


def test_cutout_is_rgba_with_the_mask() -> None:
    img = np.full((H, W, 3), 7, np.uint8)
    rgba = apps.cutout(img, _mask_0_half_1())
    assert rgba.shape == (H, W, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, 3, 3] == 128 and rgba[0, 7, 3] == 255
    assert np.all(rgba[..., :3] == 7)


def _ramp() -> np.ndarray:
    """Depth growing left to right: 10 at column 0 ... 17 at column 7 (relative units)."""
    return np.broadcast_to(np.arange(W, dtype=np.float32) + 10.0, (H, W)).copy()


def test_point_cloud_depth_range_and_pinhole() -> None:
    img = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    pts, cols = apps.point_cloud(img, _ramp(), fov_deg=90.0, depth_range=(1.0, 3.0))
    assert pts.shape == (H * W, 3) and pts.dtype == np.float32 and cols.dtype == np.uint8
    assert np.isclose(pts[:, 2].max(), -1.0) and np.isclose(pts[:, 2].min(), -3.0)
    grid = pts.reshape(H, W, 3)
    np.testing.assert_allclose(grid[:, 0, 2], -1.0)  # nearest column at `near`
    np.testing.assert_allclose(grid[:, -1, 2], -3.0)  # farthest at `far`
    np.testing.assert_allclose(grid[0, 3, 2], -(1.0 + 2.0 * 3 / 7), rtol=1e-6)  # linear in between
    f = (W / 2) / math.tan(math.radians(45.0))  # = 4 px for a 90 degree field of view
    # top-left pixel: centre (0.5, 0.5), distance 1 -> x = (0.5 - 4) / 4, y = -(0.5 - 3) / 4
    np.testing.assert_allclose(grid[0, 0], [(0.5 - 4) / f, (3 - 0.5) / f, -1.0], rtol=1e-6)
    # bottom-right pixel: centre (7.5, 5.5), distance 3
    np.testing.assert_allclose(grid[-1, -1], [(7.5 - 4) * 3 / f, -(5.5 - 3) * 3 / f, -3.0], rtol=1e-6)
    assert np.array_equal(cols.reshape(H, W, 3), img)


def test_point_cloud_invert_and_mask() -> None:
    img = np.full((H, W, 3), 80, np.uint8)
    fg = np.zeros((H, W), np.float32)
    fg[:, 2:6] = 0.9
    fg[:, 6] = 0.4  # below the default threshold
    pts, cols = apps.point_cloud(img, _ramp(), foreground=fg, depth_range=(2.0, 4.0), invert=True)
    assert len(pts) == H * 4 and len(cols) == H * 4
    # normalised over the kept columns 2..5: inverse depth makes column 5 (largest value) nearest
    grid = pts.reshape(H, 4, 3)
    np.testing.assert_allclose(grid[:, 3, 2], -2.0)
    np.testing.assert_allclose(grid[:, 0, 2], -4.0)
    with pytest.warns(EmptyMaskWarning, match="keeps no pixel .* the point cloud has no points"):
        pts, cols = apps.point_cloud(img, _ramp(), foreground=np.zeros((H, W)))
    assert pts.shape == (0, 3) and cols.shape == (0, 3)
    with pytest.raises(InputError, match="no pixel has finite depth"):
        apps.point_cloud(img, np.full((H, W), np.nan))


def test_a_cutout_of_a_mask_that_keeps_nothing_says_so() -> None:
    img = np.full((H, W, 3), 80, np.uint8)
    with pytest.warns(
        EmptyMaskWarning, match=r"keeps no pixel \(no person found\), so the cut-out is fully transparent"
    ):
        out = apps.cutout(img, np.zeros((H, W), np.float32))
    assert (out[..., 3] == 0).all()


def test_point_cloud_constant_depth_sits_at_near() -> None:
    pts, _ = apps.point_cloud(_white(), np.full((H, W), 5.0), depth_range=(1.5, 2.0))
    np.testing.assert_allclose(pts[:, 2], -1.5)


def test_write_ply_round_trip_with_plyfile(tmp_path: Path) -> None:
    plyfile = pytest.importorskip("plyfile", reason="plyfile is in the dev extra")
    pts, cols = apps.point_cloud(np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3), _ramp())
    path = apps.write_ply(tmp_path / "cloud.ply", pts, cols)
    ply = plyfile.PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    v = ply["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], axis=1), pts)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], axis=1), cols)
    assert [p.name for p in tmp_path.iterdir()] == ["cloud.ply"]  # no temporary file left


def test_write_ply_header_and_body_by_hand(tmp_path: Path) -> None:
    pts = np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -1.0]], np.float32)
    cols = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    raw = apps.write_ply(tmp_path / "two.ply", pts, cols).read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "element vertex 2" in lines
    assert [l for l in lines if l.startswith("property")] == [
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    rec = np.frombuffer(body, dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    assert len(body) == 2 * 15
    np.testing.assert_array_equal(rec["p"], pts)
    np.testing.assert_array_equal(rec["c"], cols)


def test_write_ply_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"points must be an \(N, 3\) array"):
        apps.write_ply(tmp_path / "a.ply", np.zeros((4, 2)))
    with pytest.raises(InputError, match="colors must be"):
        apps.write_ply(tmp_path / "a.ply", np.zeros((4, 3)), np.zeros((3, 3)))
    assert list(tmp_path.iterdir()) == []


_finite = st.floats(-5, 5, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    normal=arrays(np.float32, (3, 4, 3), elements=_finite),
    light=st.tuples(_finite, _finite, _finite).filter(lambda v: np.linalg.norm(v) > 1e-3),
    ambient=st.floats(0, 1),
)
def test_shading_stays_between_ambient_and_one(normal: np.ndarray, light: tuple, ambient: float) -> None:
    shade = apps.shading(normal, light, ambient)
    assert shade.shape == (3, 4)
    assert np.all(shade >= ambient - 1e-6) and np.all(shade <= 1.0 + 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    depth=arrays(np.float32, (4, 5), elements=st.floats(-100, 100, allow_nan=False, width=32)),
    near=st.floats(0.1, 10),
    extent=st.floats(0, 10),
    fov=st.floats(1, 170),
)
def test_point_cloud_z_inside_the_range(depth: np.ndarray, near: float, extent: float, fov: float) -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    pts, _ = apps.point_cloud(img, depth, fov_deg=fov, depth_range=(near, near + extent))
    assert len(pts) == 20 and np.all(np.isfinite(pts))
    assert np.all(-pts[:, 2] >= near * (1 - 1e-5)) and np.all(-pts[:, 2] <= (near + extent) * (1 + 1e-5))
    # every point lies on its pixel's ray: x / -z is the same for every row of a column
    ratio = (pts[:, 0] / -pts[:, 2]).reshape(4, 5)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], (4, 5)), rtol=1e-4, atol=1e-6)


def test_streamed_point_cloud_equals_point_cloud_written(tmp_path) -> None:
    """The band-by-band PLY (what `predict` writes) holds exactly the points of point_cloud."""
    rng = np.random.default_rng(7)
    h, w = 700, 500  # several bands
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.random((h, w)).astype(np.float32)
    depth[::13, ::7] = np.nan
    fg = rng.random((h, w)).astype(np.float32)
    pts, cols = apps.point_cloud(img, depth, fg, fov_deg=50.0, depth_range=(1.5, 3.0), invert=True)
    apps.write_ply(tmp_path / "whole.ply", pts, cols)
    count = apps.stream_point_cloud(
        tmp_path / "streamed.ply", img, depth, fg, fov_deg=50.0, depth_range=(1.5, 3.0), invert=True
    )
    assert count == len(pts) > 0
    assert (tmp_path / "streamed.ply").read_bytes() == (tmp_path / "whole.ply").read_bytes()


@pytest.mark.parametrize("radius", [float("nan"), float("inf"), -1.0])
def test_background_blur_radius_must_be_finite(radius: float) -> None:
    with pytest.raises(InputError, match=r"blur radius must be a finite number >= 0 \(pixels\)"):
        apps.replace_background(_white(), np.zeros((H, W)), "blur", radius)


def test_light_direction_of_any_finite_scale() -> None:
    """(0, 0, 1e200) overflowed to a zero vector (ambient only); (1e-200,)*3 underflowed and was refused."""
    np.testing.assert_allclose(apps.light_direction((0, 0, 1e200)), (0, 0, 1))
    np.testing.assert_allclose(apps.light_direction((1e-200,) * 3), np.full(3, 3**-0.5))
    shade = apps.shading(_plane((0, 0, 1)), (0, 0, 1e200), ambient=0.2)
    np.testing.assert_allclose(shade, 1.0, atol=1e-6)
    for bad in ((0, 0, 0), (0, 0, float("inf")), (0, float("nan"), 1)):
        with pytest.raises(InputError, match="light_dir must be a finite, non-zero 3-vector"):
            apps.light_direction(bad)


@pytest.mark.parametrize("threshold", [float("nan"), 2.0, -1.0])
def test_point_cloud_mask_threshold_in_0_1(threshold: float) -> None:
    depth = np.ones((H, W), np.float32)
    with pytest.raises(InputError, match=r"mask_threshold must be in \[0, 1\]"):
        apps.point_cloud(_white(), depth, np.ones((H, W), np.float32), mask_threshold=threshold)


def test_streamed_point_cloud_into_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"cannot write {tmp_path / 'nodir' / 's.ply'}"):
        apps.stream_point_cloud(tmp_path / "nodir" / "s.ply", _white(), np.ones((H, W), np.float32))
