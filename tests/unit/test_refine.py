"""The second pass per person (`david_infer.refine`): exact geometry with any weights (the tiny
model's random ones), regions found in masks the tests control (a colour-keyed model: red figures
on green grass are its people), the checks, the records and the alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from david_infer import DavidRuntime, RefineOptions
from david_infer.errors import InputError
from david_infer.options import RuntimeOptions
from david_infer.refine import (
    Planned,
    RegionTracker,
    align_depth,
    feather_weights,
    fit_scale_shift,
    merge_regions,
    people_in_mask,
    plan_regions,
    square_crop,
)
from tests.support import keyed_model

pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def keyed_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keyed_model.write(tmp_path_factory.mktemp("keyed"), tiny_multitask_onnx)


@pytest.fixture(scope="module")
def keyed(keyed_onnx: Path):
    runtime = DavidRuntime(keyed_onnx, resolution=128)
    yield runtime
    runtime.close()


def _inside(crop, size, feather=RefineOptions.feather) -> np.ndarray:
    """The crop's pixels of weight 1 (no other crop overlaps them in these tests)."""
    return feather_weights(crop, size, feather) == 1.0


def _of(crop, value: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = crop
    return value[y0:y1, x0:x1]


# ----------------------------------------------------------------------------- exact geometry


@pytest.mark.parametrize(
    "boxes",
    [
        [(150, 30, 330, 300)],  # inside the photo
        [(0, 0, 90, 140), (430, 400, 512, 512)],  # at two corners: crops clamped to the borders
    ],
)
def test_pasted_maps_equal_the_model_on_the_crop_and_pass_1_stands_outside(
    tiny_runtime, photo: np.ndarray, boxes: list
) -> None:
    refined = tiny_runtime.predict(photo, boxes=boxes)
    plain = tiny_runtime.predict(photo)
    outside = np.ones(photo.shape[:2], bool)
    assert [r.status for r in refined.regions] == ["refined"] * len(boxes)
    for region in refined.regions:
        crop = region.crop
        assert crop[0] <= region.box[0] and crop[1] <= region.box[1] and crop[2] >= region.box[2]
        assert crop[3] >= region.box[3] and crop[2] - crop[0] == crop[3] - crop[1]  # square, in the photo
        direct = tiny_runtime.predict(_of(crop, photo))
        inside = _inside(crop, photo.shape[:2])
        assert inside.mean() > 0.5
        np.testing.assert_allclose(_of(crop, refined.normal)[inside], direct.normal[inside], atol=1e-5)
        np.testing.assert_allclose(_of(crop, refined.foreground)[inside], direct.foreground[inside], atol=1e-5)
        unaligned = (_of(crop, refined.depth)[inside] - region.depth_shift) / region.depth_scale
        np.testing.assert_allclose(unaligned, direct.depth[inside], atol=1e-5 * np.abs(direct.depth).max())
        outside[crop[1] : crop[3], crop[0] : crop[2]] = False
    for name in ("depth", "normal", "foreground"):
        np.testing.assert_array_equal(getattr(refined, name)[outside], getattr(plain, name)[outside])
    np.testing.assert_allclose(np.linalg.norm(refined.normal, axis=2), 1.0, atol=1e-5)  # seams renormalised


def test_a_photo_narrower_than_the_square_gives_a_crop_as_wide_as_the_photo(tiny_runtime, photo) -> None:
    strip = photo[:, 200:300]  # 512 x 100: a box taller than the photo is wide
    refined = tiny_runtime.predict(strip, boxes=[(10, 100, 90, 300)])
    region = refined.regions[0]
    assert region.crop[0] == 0 and region.crop[2] == 100  # as wide as the photo; the stages pad it
    direct = tiny_runtime.predict(_of(region.crop, strip))
    inside = _inside(region.crop, strip.shape[:2])
    np.testing.assert_allclose(_of(region.crop, refined.normal)[inside], direct.normal[inside], atol=1e-5)


def test_the_feather_is_continuous_and_absent_at_the_photo_borders() -> None:
    size = (300, 400)
    inner, corner = (100, 60, 220, 180), (0, 0, 150, 150)
    for crop in (inner, corner):
        full = np.zeros(size, np.float32)
        full[crop[1] : crop[3], crop[0] : crop[2]] = feather_weights(crop, size, 0.1)
        width = round(0.1 * (crop[2] - crop[0]))
        # no step anywhere, the crop's edge included: at most the ramp's steepest slope per pixel
        steps = max(np.abs(np.diff(full, axis=0)).max(), np.abs(np.diff(full, axis=1)).max())
        assert steps <= 1.5 / width + 1e-6
        assert full.max() == 1.0 and full[crop[1] : crop[3], crop[0] : crop[2]].min() > 0.0
    weights = feather_weights(corner, size, 0.1)
    assert weights[0, 0] == 1.0 and weights[0, :100].min() == 1.0 and weights[:100, 0].min() == 1.0  # borders
    assert weights[-1, -1] < 0.01 and weights[75, -1] < 0.01  # the seams inside the photo fade out


def test_a_seam_does_not_step_in_the_pasted_maps(tiny_runtime, photo) -> None:
    refined = tiny_runtime.predict(photo, boxes=[(150, 120, 330, 300)])
    plain = tiny_runtime.predict(photo)
    x0, y0, x1, y1 = refined.regions[0].crop
    for name in ("depth", "normal"):
        a, b = getattr(refined, name), getattr(plain, name)
        # across the crop's left edge the refined map meets pass 1 without a jump
        across = np.abs(a[y0:y1, x0] - a[y0:y1, x0 - 1]).max()
        assert across <= np.abs(b[y0:y1, x0] - b[y0:y1, x0 - 1]).max() + 0.02 * np.abs(a).max()


# ------------------------------------------------------------------------------------ regions


def test_boxes_are_padded_merged_when_they_overlap_or_touch_and_kept_apart_otherwise() -> None:
    size, opts = (400, 600), RefineOptions(margin=0.0)
    # overlapping and touching merge, a chain merges whole, one apart stays
    regions = plan_regions([(10, 10, 50, 50), (40, 40, 80, 80), (80, 10, 100, 30), (300, 300, 320, 330)], size, opts)
    assert [r.box for r in regions] == [(10, 10, 100, 80), (300, 300, 320, 330)]
    # a margin makes boxes 4 pixels apart touch: padded by 10% of 20 = 2 pixels each
    padded = plan_regions([(100, 100, 120, 120), (124, 100, 144, 120)], size, RefineOptions(margin=0.1))
    assert len(padded) == 1 and padded[0].box == (100, 100, 144, 120) and padded[0].padded == (98, 98, 146, 122)
    apart = plan_regions([(100, 100, 120, 120), (125, 100, 145, 120)], size, RefineOptions(margin=0.1))
    assert len(apart) == 2
    # at the photo's borders the padding and the crop stay inside
    corner = plan_regions([(0, 0, 30, 60)], size, RefineOptions(margin=0.2))[0]
    assert corner.padded == (0, 0, 42, 72) and square_crop(corner.padded, size) == (0, 0, 72, 72)
    assert square_crop((550, 370, 600, 400), size) == (550, 350, 600, 400)
    assert merge_regions([Planned((0, 0, 5, 5), (0, 0, 5, 5))]) == [Planned((0, 0, 5, 5), (0, 0, 5, 5))]


def test_people_are_the_mask_parts_above_the_size_on_pass_1s_grid() -> None:
    mask = np.zeros((400, 800), np.float32)
    mask[100:300, 100:160] = 0.9  # a person
    mask[50:58, 500:508] = 0.9  # a speck: 8 x 8 pixels
    mask[200:260, 600:640] = 0.4  # below the threshold
    # pass 1 at scale 0.5: the person covers 100 x 30 model pixels, the speck 4 x 4 = 16 < 64
    assert people_in_mask(mask, 0.5, RefineOptions()) == [(100, 100, 160, 300)]
    # at full scale the speck covers 64 model pixels: a part; with the threshold lowered, the third too
    found = people_in_mask(mask, 1.0, RefineOptions(threshold=0.3))
    assert sorted(found) == [(100, 100, 160, 300), (500, 50, 508, 58), (600, 200, 640, 260)]
    assert people_in_mask(np.zeros((50, 50), np.float32), 1.0, RefineOptions()) == []


def test_the_keyed_models_people_are_found_zoomed_and_recorded(keyed: DavidRuntime) -> None:
    image, people = keyed_model.scene((720, 1280), ((200, 150, 300, 450), (800, 250, 880, 450), (20, 20, 40, 60)))
    plain = keyed.predict(image)
    refined = keyed.predict(image, refine="people")
    regions = refined.regions
    assert [r.source for r in regions] == ["mask", "mask"] and [r.status for r in regions] == ["refined"] * 2
    for region, person in zip(regions, people[:2]):  # largest first; the 20 x 40 figure is too small
        step = 1280 / 128
        assert all(abs(a - b) <= step for a, b in zip(region.box, person))  # within one cell of pass 1's grid
        before, after = region.model_pixels
        assert after is not None and after > 4 * before  # zoomed
        assert region.agreement is not None and region.agreement > 0.8
        assert region.alignment == "least-squares" and 0.5 < region.depth_scale < 2.0
    # the figure's edge is sharper: pass 2's mask changes over fewer pixels across the first figure
    row = 300
    blur = lambda fg: np.count_nonzero((fg[row, 150:260] > 0.05) & (fg[row, 150:260] < 0.95))  # noqa: E731
    assert blur(refined.foreground) < blur(plain.foreground)


def test_a_photo_with_no_person_is_left_as_pass_1(keyed: DavidRuntime) -> None:
    grass, _ = keyed_model.scene((300, 500), ())
    refined = keyed.predict(grass, refine="people")
    assert refined.regions == []
    plain = keyed.predict(grass)
    np.testing.assert_array_equal(refined.depth, plain.depth)
    np.testing.assert_array_equal(refined.normal, plain.normal)


def test_more_people_than_the_maximum_refines_the_largest(keyed: DavidRuntime) -> None:
    figures = ((40, 100, 120, 340), (300, 120, 360, 300), (520, 150, 570, 290), (760, 160, 800, 280))
    image, _ = keyed_model.scene((400, 900), figures)
    refined = keyed.predict(image, refine=RefineOptions(max_regions=2))
    statuses = [(r.status, r.box[0] // 10) for r in refined.regions]
    assert [s for s, _ in statuses] == ["refined", "refined", "skipped", "skipped"]
    assert [x for _, x in statuses[:2]] == [4, 30]  # the two largest figures
    assert all("max_regions (2)" in r.reason and r.model_pixels[1] is None for r in refined.regions[2:])


def test_a_region_pass_1_already_saw_at_the_models_resolution_is_not_run_again(keyed_onnx: Path) -> None:
    image, _ = keyed_model.scene((200, 300), ((100, 40, 200, 180),))
    with DavidRuntime(keyed_onnx, resolution=None) as native:  # every pixel a model pixel already
        refined = native.predict(image, refine="people")
    region = refined.regions[0]
    assert region.status == "skipped" and "min_gain" in region.reason and region.model_pixels[1] is None


def test_a_region_whose_mask_disagrees_falls_back_to_pass_1(keyed: DavidRuntime) -> None:
    image, _ = keyed_model.scene((360, 640), ((100, 60, 180, 300),))
    plain = keyed.predict(image)
    refined = keyed.predict(image, refine=RefineOptions(min_agreement=0.999))
    region = refined.regions[0]
    assert region.status == "fallback" and "min_agreement (0.999)" in region.reason
    assert region.agreement is not None and region.agreement < 0.999 and region.depth_scale is None
    np.testing.assert_array_equal(refined.depth, plain.depth)
    np.testing.assert_array_equal(refined.foreground, plain.foreground)


def test_the_records_are_json_and_the_options_travel(keyed: DavidRuntime) -> None:
    import json

    image, _ = keyed_model.scene((360, 640), ((100, 60, 180, 300),))
    record = keyed.predict(image, refine="people").regions[0].as_record()
    assert json.loads(json.dumps(record)) == record and record["status"] == "refined"
    options = RuntimeOptions("m.onnx", refine="people")
    assert options.refine == RefineOptions() and RuntimeOptions.from_record(options.as_record()) == options
    assert RuntimeOptions("m.onnx", refine={"max_regions": 3}).refine == RefineOptions(max_regions=3)
    assert RuntimeOptions("m.onnx", refine="none").refine is None


def test_bad_refine_options_and_boxes_are_typed_errors(
    keyed: DavidRuntime, tiny_multitask_onnx: Path, tmp_path
) -> None:
    image, _ = keyed_model.scene((100, 100), ())
    with pytest.raises(InputError, match="refine must be one of"):
        keyed.predict(image, refine="faces")
    with pytest.raises(InputError, match="unknown option"):
        RuntimeOptions("m.onnx", refine={"regions": 3})
    with pytest.raises(InputError, match="max_regions must be a positive integer"):
        RefineOptions(max_regions=0)
    with pytest.raises(InputError, match=r"boxes\[0\].*empty"):
        keyed.predict(image, boxes=[(50, 50, 40, 60)])
    with pytest.raises(InputError, match=r"boxes\[1\].*outside the 100x100 image"):
        keyed.predict(image, boxes=[(0, 0, 10, 10), (200, 200, 300, 300)])
    with pytest.raises(InputError, match=r"boxes\[0\] must be four finite numbers"):
        keyed.predict(image, boxes=[(0, 0, float("nan"), 10)])
    with pytest.raises(InputError, match="turns it off"):
        keyed.predict(image, refine="none", boxes=[(0, 0, 10, 10)])
    depth_only = keyed_model.write(tmp_path, tiny_multitask_onnx, stem="depth", tasks=("depth",))
    with pytest.raises(InputError, match="predicts depth only"):
        DavidRuntime(depth_only, resolution=64, refine="people")
    with DavidRuntime(depth_only, resolution=64) as runtime:  # boxes need no mask
        assert runtime.predict(image, boxes=[(10, 10, 40, 60)]).regions[0].status == "refined"


def test_a_thresholded_mask_and_a_normalised_depth_stay_so_after_the_paste(keyed_onnx: Path) -> None:
    image, _ = keyed_model.scene((360, 640), ((100, 60, 180, 300), (400, 80, 470, 320)))
    with DavidRuntime(keyed_onnx, resolution=128, foreground_threshold=0.5, normalize_depth=True) as runtime:
        # the first box cuts the figure: its seam crosses the figure's edges, where the passes differ
        refined = runtime.predict(image, boxes=[(90, 40, 190, 160), (400, 80, 470, 320)])
    assert [r.status for r in refined.regions] == ["refined", "refined"]
    assert set(np.unique(refined.foreground)) == {0.0, 1.0}
    assert refined.depth.min() >= 0.0 and refined.depth.max() <= 1.0


def test_without_scipy_the_mask_path_says_how_to_install_it_and_boxes_still_work(
    keyed_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from david_infer.errors import BackendUnavailable

    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # an import of it now fails
    with pytest.raises(BackendUnavailable, match=r'pip install "david-infer\[refine\]"'):
        DavidRuntime(keyed_onnx, resolution=128, refine="people")
    image, people = keyed_model.scene((200, 300), ((100, 40, 160, 180),))
    with DavidRuntime(keyed_onnx, resolution=64) as runtime:
        assert runtime.predict(image, boxes=people).regions[0].status == "refined"


def test_imap_and_predict_batch_refine_each_image_like_predict(keyed_onnx: Path) -> None:
    scenes = [keyed_model.scene((240, 420), ((60 + 40 * i, 40, 120 + 40 * i, 200),), seed=i)[0] for i in range(3)]
    with DavidRuntime(keyed_onnx, resolution=128, refine="people", batch_size=2) as runtime:
        batch = runtime.predict_batch(scenes)
        single = [runtime.predict(s) for s in scenes]
        unrefined = runtime.predict_batch(scenes, refine="none")
    for a, b, c in zip(batch, single, unrefined):
        assert a.regions == b.regions and len(a.regions) == 1 and c.regions is None
        np.testing.assert_array_equal(a.depth, b.depth)


# ---------------------------------------------------------------------------------- alignment


def test_the_fit_recovers_a_known_scale_and_shift_despite_outliers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    y = 2.5 * x - 0.7 + rng.normal(scale=1e-3, size=x.size)
    y[:400] += rng.normal(scale=5.0, size=400)  # a tenth of the pixels wrong (an occluder)
    s, b = fit_scale_shift(x, y)
    assert abs(s - 2.5) < 5e-3 and abs(b + 0.7) < 5e-3
    plain = np.polyfit(x, y, 1)  # plain least squares is pulled by the outliers
    assert abs(plain[0] - 2.5) > abs(s - 2.5)


def test_align_depth_fits_on_the_person_on_pass_1s_grid() -> None:
    rng = np.random.default_rng(1)
    pass2 = rng.normal(size=(80, 60)).astype(np.float32)
    person = np.zeros((80, 60), bool)
    person[10:70, 15:45] = True
    pass1 = 0.5 * pass2 + 2.0
    pass1[~person] = 7.0  # the background disagrees: only the person's cells are fitted
    s, b, how = align_depth(pass2, pass1, person, step=5)
    assert how == "least-squares" and abs(s - 0.5) < 1e-4 and abs(b - 2.0) < 1e-4
    s, b, how = align_depth(pass2, -pass2, None, step=1)  # no positive scale: the spread is matched
    assert how == "spread" and s > 0


# -------------------------------------------------------------------------------------- video


def test_tracked_regions_do_not_jitter_and_keep_a_moving_person_inside() -> None:
    rng = np.random.default_rng(2)
    size, opts = (480, 640), RefineOptions()
    tracker = RegionTracker()
    raw_crops, tracked_crops, last = [], [], None
    for frame in range(30):
        x = 200 + 3 * frame  # walking right, the mask's box shaking by a few pixels
        box = tuple(int(v) for v in np.array([x, 100, x + 60, 300]) + rng.integers(-4, 5, size=4))
        found = plan_regions([box], size, opts)
        steady = tracker.update(found, size)
        assert len(steady) == 1
        padded = last = steady[0].padded
        assert padded[0] <= found[0].padded[0] and padded[2] >= found[0].padded[2]  # the person stays inside
        raw_crops.append(square_crop(found[0].padded, size))
        tracked_crops.append(square_crop(padded, size))
    raw_moves = np.abs(np.diff(np.array(raw_crops), axis=0)).mean()
    tracked_moves = np.abs(np.diff(np.array(tracked_crops), axis=0)).mean()
    assert tracked_moves < 0.6 * raw_moves
    # a region missed for a frame is held, and dropped after HOLD_FRAMES
    for _ in range(3):
        held = tracker.update([], size)
        assert len(held) == 1 and held[0].padded == last
    assert tracker.update([], size) == []
