"""Visualisation: colour maps, depth and normal pictures, mask overlays and the labelled panel."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from david_infer import visualize
from david_infer.errors import EmptyMaskWarning, InputError

H, W = 40, 64


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB uint8 colours."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116.0 * np.cbrt(y) - 16.0, y * 24389 / 27)


def test_viridis_lut_is_monotone_in_lightness() -> None:
    lut = visualize.colormap("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not lut.flags.writeable
    lightness = _lightness(lut)
    assert np.all(np.diff(lightness) > -0.1)  # non-decreasing up to uint8 rounding
    assert lightness[-1] - lightness[0] > 70
    # matplotlib's viridis runs from #440154 to #fde725
    assert lut[0].tolist() == [68, 1, 84] and lut[-1].tolist() == [253, 231, 37]
    assert len(np.unique(lut, axis=0)) >= 250  # a few neighbours meet after rounding to uint8


def test_turbo_lut_is_distinct_and_runs_blue_to_red() -> None:
    lut = visualize.colormap("turbo").astype(int)
    assert len(np.unique(lut, axis=0)) == 256
    assert lut[0].tolist() == [48, 18, 59] and lut[-1].tolist() == [122, 4, 3]  # Turbo's ends
    assert np.all(lut[:48, 2] > lut[:48, 0])  # blue end
    assert np.all(lut[-48:, 0] > lut[-48:, 2])  # red end
    with pytest.raises(InputError, match="unknown colour map 'jet'"):
        visualize.colormap("jet")


@pytest.mark.parametrize("name", visualize.COLORMAPS)
def test_tables_are_matplotlibs(name: str) -> None:
    """The shipped tables are matplotlib's, each entry rounded to the nearest uint8 level."""
    colormaps = pytest.importorskip("matplotlib").colormaps
    reference = np.asarray(colormaps[name](np.arange(256)), np.float64)[:, :3]
    lut = visualize.colormap(name)
    assert np.array_equal(lut, np.rint(reference * 255.0).astype(np.uint8))
    assert np.abs(lut / 255.0 - reference).max() <= 0.5 / 255.0 + 1e-12


def test_colorize_depth_nearer_is_brighter() -> None:
    depth = np.broadcast_to(np.linspace(1.0, 5.0, W, dtype=np.float32), (H, W))
    rgb = visualize.colorize_depth(depth)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    lut = visualize.colormap("viridis")
    assert np.array_equal(rgb[:, 0], np.broadcast_to(lut[255], (H, 3)))  # nearest: top of the map
    assert np.array_equal(rgb[:, -1], np.broadcast_to(lut[0], (H, 3)))  # farthest: bottom
    lightness = _lightness(rgb[0])
    assert np.all(np.diff(lightness) < 0.1) and lightness[0] - lightness[-1] > 70
    flipped = visualize.colorize_depth(depth, inverse=True)
    assert np.array_equal(flipped[:, 0], np.broadcast_to(lut[0], (H, 3)))


def test_colorize_depth_masked_background_and_range() -> None:
    depth = np.broadcast_to(np.arange(W, dtype=np.float32), (H, W)).copy()
    mask = np.zeros((H, W), np.float32)
    mask[:, 10:20] = 1.0
    depth[:, 30:] = 1000.0  # far background values must not squash the person's range
    rgb = visualize.colorize_depth(depth, mask, background=(128, 128, 128))
    assert np.all(rgb[:, :10] == 128) and np.all(rgb[:, 20:] == 128)
    lut = visualize.colormap("viridis")
    assert np.array_equal(rgb[0, 10], lut[255]) and np.array_equal(rgb[0, 19], lut[0])
    nan_depth = depth.copy()
    nan_depth[0, 12] = np.nan
    assert np.all(visualize.colorize_depth(nan_depth, mask)[0, 12] == 0)


def test_normals_of_known_vectors() -> None:
    n = np.array([[[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, -1]]], np.float32)
    rgb = visualize.normals_to_rgb(n)
    assert rgb.dtype == np.uint8
    # x right -> red, y up -> green, z toward the camera -> blue; 127.5 rounds to 128
    assert rgb[0].tolist() == [
        [128, 128, 255],
        [255, 128, 128],
        [0, 128, 128],
        [128, 255, 128],
        [128, 0, 128],
        [128, 128, 0],
    ]
    chw = visualize.normals_to_rgb(np.moveaxis(n, -1, 0))
    assert np.array_equal(chw, rgb)


def test_normals_masked() -> None:
    n = np.zeros((H, W, 3), np.float32)
    n[..., 2] = 1.0
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    rgb = visualize.normals_to_rgb(n, mask, background=(10, 20, 30))
    assert np.all(rgb[:, : W // 2] == (128, 128, 255)) and np.all(rgb[:, W // 2 :] == (10, 20, 30))


def test_overlay_mask_per_pixel() -> None:
    img = np.full((H, W, 3), 100, np.uint8)
    mask = np.zeros((H, W), np.float32)
    mask[:, 20:40] = 1.0
    mask[:, 40:] = 0.5
    out = visualize.overlay_mask(img, mask, color=(200, 0, 50), alpha=0.5)
    assert np.all(out[:, :20] == 100)
    assert np.all(out[:, 20:40] == (150, 50, 75))
    assert np.all(out[:, 40:] == (125, 75, 88))  # opacity 0.25: 100 + 0.25 * (c - 100), 87.5 -> 88
    with pytest.raises(InputError, match="mask: size"):
        visualize.overlay_mask(img, mask[:10])


def _prediction(**tasks: object) -> SimpleNamespace:
    """A stand-in with real arrays, through the documented duck-typed interface of `panel`."""
    rng = np.random.default_rng(0)
    fields = {
        "image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "depth": None,
        "normal": None,
        "foreground": None,
    }
    fields.update(tasks)
    return SimpleNamespace(**fields)


def _real_outputs() -> dict:
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    fg = np.zeros((H, W), np.float32)
    fg[5:35, 10:50] = 1.0
    return {"depth": rng.random((H, W), dtype=np.float32), "normal": normal, "foreground": fg}


def test_panel_all_tasks() -> None:
    pred = _prediction(**_real_outputs())
    out = visualize.panel(pred)
    strip = visualize.label_height(W)
    assert out.shape == (strip + H, 4 * W, 3) and out.dtype == np.uint8
    assert np.array_equal(out[strip:, :W], pred.image)
    # no `depth_inverse` attribute: the runtime's default, larger = nearer
    assert np.array_equal(out[strip:, W : 2 * W], visualize.colorize_depth(pred.depth, pred.foreground, inverse=True))
    assert np.array_equal(out[strip:, 2 * W : 3 * W], visualize.normals_to_rgb(pred.normal, pred.foreground))
    assert np.array_equal(out[strip:, 3 * W :], visualize.mask_tile(pred.image, pred.foreground))
    header = out[:strip]
    for i in range(4):  # each tile has a label drawn (light text on the dark strip)
        assert header[:, i * W : (i + 1) * W].max() > 150
    assert [name for name, _ in visualize.panel_tiles(pred)] == ["image", "depth", "normal", "foreground"]


@pytest.mark.parametrize("present", [("depth",), ("normal",), ("foreground",), ("depth", "foreground")])
def test_panel_only_tasks_present(present: tuple) -> None:
    outputs = _real_outputs()
    pred = _prediction(**{k: outputs[k] for k in present})
    out = visualize.panel(pred, labels=False)
    assert out.shape == (H, (1 + len(present)) * W, 3)
    assert [name for name, _ in visualize.panel_tiles(pred)] == ["image", *present]


def test_panel_depth_direction() -> None:
    ramp = np.broadcast_to(np.arange(W, dtype=np.float32), (H, W))
    lut = visualize.colormap("viridis")
    default = visualize.panel(_prediction(depth=ramp), labels=False)[:, W:]
    assert np.array_equal(default[0, -1], lut[255])  # larger = nearer = brighter
    raw = visualize.panel(_prediction(depth=ramp, depth_inverse=False), labels=False)[:, W:]
    assert np.array_equal(raw[0, 0], lut[255])
    forced = visualize.panel(_prediction(depth=ramp), labels=False, inverse_depth=False)[:, W:]
    assert np.array_equal(forced, raw)


def test_panel_rejects_mismatched_or_missing() -> None:
    with pytest.raises(InputError, match=r"prediction\.depth: size 20x64"):
        visualize.panel(_prediction(depth=np.zeros((20, W), np.float32)))
    with pytest.raises(InputError, match="no `image`"):
        visualize.panel(SimpleNamespace(depth=np.zeros((H, W))))


def test_panel_empty_mask_does_not_black_out_depth_and_normals() -> None:
    outputs = _real_outputs()
    empty = np.zeros((H, W), np.float32)  # a mask keeping no pixel, as a random-weight model gives
    pred = _prediction(depth=outputs["depth"], normal=outputs["normal"], foreground=empty)
    with pytest.warns(EmptyMaskWarning, match="so the picture's foreground tile is a dark photo and its depth and"):
        out = visualize.panel(pred, labels=False)
    assert np.array_equal(out[:, W : 2 * W], visualize.colorize_depth(pred.depth, None, inverse=True))
    assert np.array_equal(out[:, 2 * W : 3 * W], visualize.normals_to_rgb(pred.normal, None))
    assert out[:, W : 3 * W].std() > 10  # not a flat background
    # the foreground tile of a mask that keeps nothing is the photo dimmed, not the plain photo (which
    # reads as a mask that keeps everything; a full mask gives the photo tinted)
    tile = out[:, 3 * W :].astype(int)
    np.testing.assert_allclose(tile, np.rint(pred.image * visualize.DIMMED), atol=1)
    full = visualize.mask_tile(pred.image, np.ones((H, W), np.float32))
    assert np.array_equal(full, visualize.overlay_mask(pred.image, np.ones((H, W))))  # kept: tinted
    assert not np.array_equal(full, pred.image) and not np.array_equal(tile, pred.image)


def test_a_mask_that_keeps_any_pixel_is_not_empty() -> None:
    from david_infer._arrays import EMPTY_MASK_LEVEL, mask_is_empty

    faint = np.zeros((H, W), np.float32)
    faint[3, 4] = EMPTY_MASK_LEVEL  # half a grey level: one pixel changes by rounding
    assert not mask_is_empty(faint) and mask_is_empty(faint * 0.99) and not mask_is_empty(faint[None])
    assert mask_is_empty(np.zeros((H, W), np.uint8)) and not mask_is_empty(np.eye(H, W, dtype=np.uint8))
    assert visualize.tile_shade(faint) is faint and visualize.tile_shade(faint * 0.99) is None


def test_panel_of_a_big_image_is_capped_and_box_averaged() -> None:
    h, w = 1700, 1300  # 4 tiles: 5200 pixels wide uncapped
    rng = np.random.default_rng(2)
    normal = rng.normal(size=(h, w, 3)).astype(np.float32)
    pred = SimpleNamespace(
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        depth=rng.random((h, w), dtype=np.float32),
        normal=normal,
        foreground=rng.random((h, w), dtype=np.float32),
    )
    out = visualize.panel(pred, labels=False)
    assert max(out.shape[:2]) <= visualize.MAX_PANEL_SIDE
    factor = 3  # the smallest that fits: 4 * ceil(1300 / 3) = 1736 <= 2048 < 4 * 650
    tile_h, tile_w = -(-h // factor), -(-w // factor)
    assert out.shape == (tile_h, 4 * tile_w, 3)
    reduced = visualize.box_reduce(pred.image, factor)
    np.testing.assert_array_equal(out[:, :tile_w], reduced)
    block = pred.image[3:6, 3:6].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert np.abs(reduced[1, 1] - block).max() <= 0.5
    assert max(visualize.panel(pred).shape[:2]) <= visualize.MAX_PANEL_SIDE  # with labels too
    assert visualize.panel(pred, labels=False, max_side=None).shape[1] == 4 * w
