"""david_infer.video.stabilize on synthetic frames: flicker removed where nothing moved, motion kept,
the camera's pan and zoom followed, cuts and size changes reset, bad input refused by frame, offline's
memory bounded by its lookahead; david_infer.video.camera's fit and warps."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

from david_infer import InputError, Prediction
from david_infer.video import StabilizeOptions, stabilize
from david_infer.video.camera import STILL, Motion, estimate_motion, plan_warp, resample

H, W = 48, 64


def _scene(seed: int = 0) -> Dict[str, np.ndarray]:
    """A textured frame, a person-like blob's depth (larger = nearer), normals and soft mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    inside = ((y - H / 2) / (H / 3)) ** 2 + ((x - W / 2) / (W / 5)) ** 2
    mask = np.clip((1.0 - inside) * 4.0, 0.0, 1.0).astype(np.float32)
    depth = (2.0 - 0.5 * inside + 0.1 * np.sin(x / 5)).astype(np.float32)
    n = np.stack([np.sin(x / 9), np.cos(y / 7), np.full_like(x, 2.0)], -1)
    normal = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    image = (rng.uniform(40, 200, (H, W, 3)) * 0.3 + 100 + 40 * np.sin(x / 3)[..., None]).astype(np.uint8)
    return {"depth": depth, "normal": normal, "foreground": mask, "image": image}


def _noisy(truth: Dict[str, np.ndarray], rng: np.random.Generator) -> Dict[str, Any]:
    """A per-frame model's errors: a random scale and shift, noise on every map."""
    scale, shift = np.exp(rng.normal(0, 0.1)), rng.normal(0, 0.2)
    depth = scale * (truth["depth"] + rng.normal(0, 0.01, (H, W))) + shift
    n = truth["normal"] + rng.normal(0, 0.04, (H, W, 3))
    mask = np.clip(truth["foreground"] + rng.normal(0, 0.05, (H, W)), 0, 1)
    return {
        "depth": depth.astype(np.float32),
        "normal": (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32),
        "foreground": mask.astype(np.float32),
        "image": truth["image"],
        "frame": "kept",
    }


def _clip(frames: int = 16, seed: int = 1) -> List[Dict[str, Any]]:
    rng, truth = np.random.default_rng(seed), _scene()
    return [_noisy(truth, rng) for _ in range(frames)]


def _flicker(frames: List[Dict[str, Any]], key: str) -> float:
    """Mean change between consecutive frames, depth first aligned to the ground truth per clip."""
    maps = [np.asarray(f[key], np.float64) for f in frames]
    if key == "depth":
        truth = _scene()["depth"].ravel()
        s, b = np.polyfit(np.concatenate([m.ravel() for m in maps]), np.tile(truth, len(maps)), 1)
        maps = [s * m + b for m in maps]
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(maps, maps[1:])]))


@pytest.mark.parametrize("mode, most", [("online", 1 / 3), ("offline", 1 / 5)])
def test_a_still_scene_stops_flickering_and_normals_stay_unit(mode: str, most: float) -> None:
    raw = _clip()
    out = list(stabilize(iter(raw), mode=mode))
    assert len(out) == len(raw)
    for key in ("depth", "normal", "foreground"):
        assert _flicker(out, key) < most * _flicker(raw, key), key
    norms = np.linalg.norm(np.stack([o["normal"] for o in out]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    assert all(o["frame"] == "kept" and np.array_equal(o["image"], r["image"]) for o, r in zip(out, raw))


def test_a_moving_square_is_not_smeared() -> None:
    truth = _scene()
    frames = []
    for t in range(10):
        f = {k: v.copy() for k, v in truth.items()}
        top = 4 + 3 * t
        f["image"][top : top + 8, 4:12] = (250, 20, 20)
        f["foreground"][top : top + 8, 4:12] = 1.0
        f["depth"][top : top + 8, 4:12] = 3.0
        frames.append(f)
    for mode in ("online", "offline"):
        out = list(stabilize(frames, mode=mode))
        last = out[-1]
        np.testing.assert_allclose(last["foreground"][31:39, 4:12], 1.0, atol=0.02)  # where the square is now
        np.testing.assert_allclose(last["foreground"][4:12, 4:12], truth["foreground"][4:12, 4:12], atol=0.02)


def test_predictions_in_predictions_out_with_their_image_and_depth_convention() -> None:
    raw = _clip(4)
    preds = [Prediction(f["image"], f["depth"], f["normal"], f["foreground"], depth_inverse=False) for f in raw]
    for mode in ("online", "offline"):
        out = list(stabilize(preds, mode=mode))
        assert all(isinstance(p, Prediction) and p.depth_inverse is False for p in out)
        assert all(np.array_equal(p.image, q.image) for p, q in zip(out, preds))


def test_a_model_without_normals_and_the_first_frame_as_it_is() -> None:
    raw = [{k: v for k, v in f.items() if k != "normal"} for f in _clip(3)]
    for mode in ("online", "offline"):
        out = list(stabilize(raw, mode=mode))
        assert "normal" not in out[0] and out[0]["depth"].shape == (H, W)
        if mode == "online":
            np.testing.assert_array_equal(out[0]["depth"], raw[0]["depth"])


@pytest.mark.parametrize("only", ["depth", "normal", "foreground"])
def test_a_single_task_model_stabilises_its_one_map(only: str) -> None:
    raw = [{k: v for k, v in f.items() if k in (only, "image")} for f in _clip(12)]
    for mode in ("online", "offline"):
        out = list(stabilize(iter(raw), mode=mode, lookahead=3))
        assert len(out) == 12 and all(set(o) == {only, "image"} for o in out)
        if only != "depth":  # depth's flicker is judged after alignment (test above)
            assert _flicker(out, only) < _flicker(raw, only) / 2


def test_one_frame_and_no_frame() -> None:
    raw = _clip(1)
    for mode in ("online", "offline"):
        (only,) = list(stabilize(raw, mode=mode))
        np.testing.assert_allclose(only["depth"], raw[0]["depth"], atol=1e-6)
        np.testing.assert_allclose(only["normal"], raw[0]["normal"], atol=1e-4)
        assert list(stabilize([], mode=mode)) == []


def test_a_cut_and_a_new_size_start_again() -> None:
    first = _clip(6)
    other = _scene(5)
    other["image"] = np.full((H, W, 3), (10, 200, 30), np.uint8)  # another shot: other colours
    second = [_noisy(other, np.random.default_rng(9)) for _ in range(3)]
    small = {k: v[::2, ::2] if isinstance(v, np.ndarray) else v for k, v in first[0].items()}
    out = list(stabilize(first + second + [small], mode="online"))
    np.testing.assert_array_equal(out[6]["foreground"], second[0]["foreground"])  # taken as it is
    np.testing.assert_array_equal(out[6]["depth"], second[0]["depth"])
    assert out[-1]["depth"].shape == (H // 2, W // 2)
    np.testing.assert_array_equal(out[-1]["depth"], small["depth"])


def test_offline_shots_of_two_sizes_are_each_what_they_are_alone() -> None:
    big = _clip(6)
    small = [{k: v[::2, ::2] if isinstance(v, np.ndarray) else v for k, v in f.items()} for f in _clip(6, seed=4)]
    both = list(stabilize(iter(big + small), mode="offline", lookahead=2))
    alone = list(stabilize(iter(small), mode="offline", lookahead=2))
    assert [o["depth"].shape for o in both] == [(H, W)] * 6 + [(H // 2, W // 2)] * 6
    for a, b in zip(both[6:], alone):
        for key in ("depth", "normal", "foreground"):
            np.testing.assert_array_equal(a[key], b[key])


def test_an_empty_mask_falls_back_to_the_whole_frame() -> None:
    raw = _clip(6)
    for f in raw:
        f["foreground"] = np.zeros((H, W), np.float32)
    for mode in ("online", "offline"):
        out = list(stabilize(raw, mode=mode))
        assert all(np.isfinite(o["depth"]).all() for o in out)
        assert _flicker(out, "depth") < _flicker(raw, "depth") / 3


def test_online_is_causal_one_frame_at_a_time() -> None:
    raw, pulled = _clip(5), []

    def live() -> Iterator[Dict[str, Any]]:
        for index, frame in enumerate(raw):
            pulled.append(index)
            yield frame

    for index, _ in enumerate(stabilize(live(), mode="online")):
        assert pulled[-1] == index  # each output before the next frame is read


@pytest.mark.parametrize(
    "name, pixel", [("depth", (3, 3)), ("depth", (4, 8)), ("foreground", (5, 6)), ("normal", (0, 0))]
)
def test_a_map_that_is_not_finite_is_named_with_its_frame(name: str, pixel: tuple) -> None:
    raw = _clip(4)
    for bad in (np.nan, np.inf):
        for where in (0, 2):  # the first frame (taken as it is) and a frame blended into the estimate
            broken = dict(raw[where], **{name: raw[where][name].copy()})
            broken[name][pixel] = bad  # off the grid's pixels and on them
            frames = raw[:where] + [broken] + raw[where + 1 :]
            for mode in ("online", "offline"):
                with pytest.raises(InputError, match=rf"frame {where}: {name} holds NaN or infinity"):
                    list(stabilize(frames, mode=mode))


def test_bad_input_names_the_frame() -> None:
    raw = _clip(4)
    lacking = {k: v for k, v in raw[1].items() if k != "normal"}
    with pytest.raises(InputError, match=r"frame 1 has maps depth, foreground.*depth, normal, foreground"):
        list(stabilize([raw[0], lacking]))
    wrong = dict(raw[1], normal=raw[1]["normal"][:, :-1])
    with pytest.raises(InputError, match=r"frame 1: normal must be 48x64x3"):
        list(stabilize([raw[0], wrong]))
    with pytest.raises(InputError, match=r"frame 0 has no image"):
        list(stabilize([{k: v for k, v in raw[0].items() if k != "image"}]))
    with pytest.raises(InputError, match=r"frame 0 is a ndarray"):
        list(stabilize([raw[0]["depth"]]))
    with pytest.raises(InputError, match=r"mode must be one of online, offline, got 'both'"):
        list(stabilize(raw, mode="both"))
    with pytest.raises(InputError, match=r"unknown option\(s\) smoothness"):
        list(stabilize(raw, smoothness=2))
    with pytest.raises(InputError, match=r"frame_weight must be in \(0, 1\]"):
        StabilizeOptions(frame_weight=0.0)
    with pytest.raises(InputError, match=r"lookahead must be a whole number of frames in 0..100, got -1"):
        StabilizeOptions(lookahead=-1)
    # from a config file: "0.2" crashed in a comparison, "no" was read as True
    with pytest.raises(InputError, match=r"frame_weight must be a number, got '0.2'"):
        list(stabilize(raw, frame_weight="0.2"))
    for name in ("align_depth", "follow_camera"):
        with pytest.raises(InputError, match=rf"{name} must be True or False, got 'no'"):
            StabilizeOptions(**{name: "no"})
    assert StabilizeOptions(lookahead=np.int64(3), frame_weight=np.float32(0.5), align_depth=np.bool_(False))


def test_frame_weight_one_only_aligns_depth() -> None:
    raw = _clip(5)
    out = list(stabilize(raw, frame_weight=1.0))
    for o, r in zip(out, raw):
        np.testing.assert_allclose(o["foreground"], r["foreground"], atol=1e-6)
        np.testing.assert_allclose(o["normal"], r["normal"], atol=1e-6)
    assert _flicker(out, "depth") < _flicker(raw, "depth") / 3  # the scale and shift removed


def _world(size: Tuple[int, int], shift: float = 0.0, zoom: float = 1.0, seed: int = 0) -> Dict[str, np.ndarray]:
    """A wall of irregular texture (waves of many directions and lengths) with a dome-shaped 'person'
    seen by a camera shifted by `shift` pixels to the right and zoomed by `zoom` (exact per pixel:
    the scene is analytic)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (x - (w - 1) / 2) / zoom + (w - 1) / 2 + shift
    v = (y - (h - 1) / 2) / zoom + (h - 1) / 2
    waves = np.random.default_rng(seed).uniform([0.02, 0.0, 0.0], [0.25, np.pi, 2 * np.pi], (24, 3))
    grey = 120 + sum(12 * np.sin(f * (np.cos(a) * u + np.sin(a) * v) + phase) for f, a, phase in waves)
    r = np.hypot(u - w / 2 - 20, v - h / 2) / 22.0
    inside = np.clip((1.0 - r) * 22.0 / 1.5 + 0.5, 0.0, 1.0)
    dome = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
    gx, gy = (u - w / 2 - 20) / 22.0, (v - h / 2) / 22.0
    normal = np.stack([gx, -gy, np.maximum(dome, 0.05)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    background = np.broadcast_to([0.0, 0.0, 1.0], normal.shape)
    normal = np.where(inside[..., None] > 0.5, normal, background)
    grey = np.where(inside > 0.5, 60 + 30 * np.sin(0.5 * u) * np.sin(0.45 * v), grey)
    image = np.clip(np.stack([grey, grey * 0.9 + 10, grey * 0.8 + 20], -1), 0, 255).astype(np.uint8)
    return {
        "depth": (1.0 + 0.8 * dome * (inside > 0.5)).astype(np.float32),
        "normal": normal.astype(np.float32),
        "foreground": inside.astype(np.float32),
        "image": image,
    }


def _noisy_world(truth: Dict[str, np.ndarray], rng: np.random.Generator) -> Dict[str, Any]:
    shape = truth["foreground"].shape
    scale, shift = np.exp(rng.normal(0, 0.1)), rng.normal(0, 0.2)
    n = truth["normal"] + rng.normal(0, 0.05, shape + (3,))
    return {
        "depth": (scale * (truth["depth"] + rng.normal(0, 0.02, shape)) + shift).astype(np.float32),
        "normal": (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32),
        "foreground": np.clip(truth["foreground"] + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32),
        "image": truth["image"],
    }


def _angle_error(out: List[Dict[str, Any]], truths: List[Dict[str, np.ndarray]]) -> float:
    """Mean angle (degrees) between the normals and the truth's, inside the person."""
    inside = [t["foreground"] > 0.99 for t in truths]
    cosines = [(o["normal"] * t["normal"]).sum(-1)[m] for o, t, m in zip(out, truths, inside)]
    return float(np.degrees(np.arccos(np.clip(np.concatenate(cosines), -1, 1))).mean())


def test_a_panning_camera_is_followed() -> None:
    size, step, frames = (120, 160), 3, 16
    rng = np.random.default_rng(4)
    truths = [_world(size, shift=step * t) for t in range(frames)]
    raw = [_noisy_world(t, rng) for t in truths]

    def flicker(out: List[Dict[str, Any]], key: str) -> float:
        """Mean change of a point of the scene from frame to frame (the camera's shift taken off),
        once the estimate is settled (the first frames are blended with few others)."""
        pairs = list(zip(out, out[1:]))[4:]
        return float(np.mean([np.abs(b[key][:, :-step] - a[key][:, step:]).mean() for a, b in pairs]))

    # offline looks ahead only while the camera holds: in a pan it is its forward filter (weight 0.1)
    for mode, most in (("online", 1 / 3), ("offline", 1 / 4)):
        followed = list(stabilize(iter(raw), mode=mode))
        fixed = list(stabilize(iter(raw), mode=mode, follow_camera=False))
        for key in ("normal", "foreground"):
            assert flicker(followed, key) < most * flicker(raw, key), (mode, key)
            assert flicker(followed, key) < 0.5 * flicker(fixed, key), (mode, key)
        assert _angle_error(followed[4:], truths[4:]) < 0.6 * _angle_error(raw[4:], truths[4:]), mode


def test_a_zooming_camera_is_followed() -> None:
    size, frames = (96, 128), 12
    rng = np.random.default_rng(5)
    truths = [_world(size, zoom=1.015**t) for t in range(frames)]
    raw = [_noisy_world(t, rng) for t in truths]

    for mode in ("online", "offline"):
        followed = _angle_error(list(stabilize(iter(raw), mode=mode))[4:], truths[4:])
        fixed = _angle_error(list(stabilize(iter(raw), mode=mode, follow_camera=False))[4:], truths[4:])
        assert followed < 0.75 * _angle_error(raw[4:], truths[4:]) and followed < 0.8 * fixed, mode


def test_the_camera_fit_finds_a_shift_and_a_zoom() -> None:
    grey = _world((120, 160))["image"].mean(-1).astype(np.float32)
    centre = ((grey.shape[0] - 1) / 2, (grey.shape[1] - 1) / 2)
    for true in (Motion(1.0, (0.0, 1.7)), Motion(1.03, (-0.6, 0.4)), Motion(0.97, (2.5, -4.0))):
        moved, _ = resample(grey, true, centre)  # the current frame: the previous one seen through `true`
        found, warped, inside = estimate_motion(grey, moved, still=0.05)
        assert abs(found.scale - true.scale) < 0.002 and np.allclose(found.shift, true.shift, atol=0.06), (true, found)
        assert np.abs(warped - moved)[inside].mean() < 1.0  # the previous frame brought onto the current one
    assert estimate_motion(grey, grey.copy(), still=0.05)[0] is STILL


def test_whole_pixel_shifts_add_up_to_the_camera_path() -> None:
    carried, total = (0.0, 0.0), 0
    for frame in range(1, 20):
        warp, carried = plan_warp(Motion(1.0, (0.0, 0.7)), (8, 8), (3.5, 3.5), carried)
        assert warp.shift is not None
        total += warp.shift[1]
        assert abs(total - 0.7 * frame) <= 0.5  # never more than half a pixel off the path
    zoom, rest = plan_warp(Motion(0.9, (0.0, 0.0)), (40, 40), (19.5, 19.5))
    assert zoom.shift is None and rest == (0.0, 0.0) and zoom.rows[0] == 2 and zoom.rows[-1] == 37


def test_offline_holds_its_lookahead_and_no_more() -> None:
    raw, pulled = _clip(12), []

    def live() -> Iterator[Dict[str, Any]]:
        for index, frame in enumerate(raw):
            pulled.append(index)
            yield frame

    ahead = []
    for index, _ in enumerate(stabilize(live(), mode="offline", lookahead=3)):
        ahead.append(pulled[-1] - index)
    assert ahead[: 12 - 3] == [3] * (12 - 3)  # each output 3 frames after its frame, the rest at the end
    assert len(ahead) == 12 and max(ahead) == 3
    online = list(stabilize(iter(raw), mode="offline", lookahead=0))
    assert len(online) == 12 and _flicker(online, "normal") < _flicker(raw, "normal") / 3


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (50, 70)])
def test_tiny_and_odd_sized_frames_with_a_moving_camera(size: Tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    raw = [_noisy_world(_world(size, shift=2 * t), rng) for t in range(6)]
    for mode in ("online", "offline"):
        out = list(stabilize(iter(raw), mode=mode, lookahead=3))
        assert len(out) == 6 and all(o["depth"].shape == size and np.isfinite(o["depth"]).all() for o in out)
        np.testing.assert_allclose(np.linalg.norm(np.stack([o["normal"] for o in out]), axis=-1), 1.0, atol=1e-3)


# ---------------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("motion", [STILL, Motion(1.0, (2.6, -3.2)), Motion(1.07, (1.0, 0.5))])
def test_the_blend_kernels_do_the_blend_on_both_halves(motion: Motion) -> None:
    """Each pixel: the estimate moved by the warp (outside: the frame's own) plus its cell's gain times
    the difference; the mask's step bounded; normals unit; the grid samples; halves split on grid rows."""
    from david_infer.video import kernels
    from david_infer.video.stability import GRID, _halves

    rng, (h, w) = np.random.default_rng(3), (37, 30)  # partial cells in both directions
    warp, _ = plan_warp(motion, (h, w), ((h - 1) / 2, (w - 1) / 2))
    gh, gw = -(-h // GRID), -(-w // GRID)
    gain, limit = rng.uniform(0, 1, (gh, gw)).astype(np.float32), rng.uniform(0, 0.1, (gh, gw)).astype(np.float32)
    spread = np.repeat(np.repeat(gain, GRID, 0), GRID, 1)[:h, :w]
    inside = warp.rows_inside[:, None] & warp.cols_inside[None, :]
    moved = (warp.rows, warp.cols, warp.rows_inside, warp.cols_inside, motion == STILL)

    def before(estimate: np.ndarray, frame: np.ndarray) -> np.ndarray:
        if motion == STILL:
            return estimate
        where = inside if estimate.ndim == 2 else inside[..., None]
        return np.where(where, estimate[np.ix_(warp.rows, warp.cols)], frame)

    est, frame = (rng.normal(size=(2, h, w)).astype(np.float32) for _ in range(2))
    out, shown = np.empty((2, h, w), np.float32), np.empty((h, w), np.float32)
    samples = np.empty((2, gh, gw), np.float32)
    f = np.float32
    depth = (est[0], frame[0], *moved, gain, GRID, f(1.5), f(0.25), out[0], samples[0], shown, f(2.0), f(-1.0))
    mask = (est[1], frame[1], *moved, gain, limit, GRID, out[1], samples[1])
    normals = [rng.normal(size=(h, w, 3)).astype(np.float32) for _ in range(2)]
    normal_out, normal_samples = np.empty((h, w, 3), np.float32), np.empty((gh, gw, 3), np.float32)
    unit = (*normals, *moved, gain, GRID, f(1e-6), normal_out, normal_samples)
    calls = [(kernels.blend_depth, depth), (kernels.blend_foreground, mask), (kernels.blend_normal, unit)]
    assert _halves(calls, h) == [True, True, True]

    b = before(est[0], frame[0])
    np.testing.assert_allclose(out[0], b + spread * (frame[0] * 1.5 + 0.25 - b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shown, out[0] * 2.0 - 1.0, rtol=1e-5, atol=1e-5)
    b, bound = before(est[1], frame[1]), np.repeat(np.repeat(limit, GRID, 0), GRID, 1)[:h, :w]
    np.testing.assert_allclose(out[1], b + np.clip(spread * (frame[1] - b), -bound, bound), rtol=1e-5, atol=1e-6)
    blended = (b := before(normals[0], normals[1])) + spread[..., None] * (normals[1] - b)
    want = blended / np.linalg.norm(blended, axis=-1, keepdims=True)
    np.testing.assert_allclose(normal_out, want, rtol=1e-4, atol=1e-5)
    for got, full in ((samples[0], out[0]), (samples[1], out[1]), (normal_samples, normal_out)):
        np.testing.assert_array_equal(got, full[::GRID, ::GRID])
    frame[0][h - 2, 3] = np.nan  # a NaN in the lower half: that kernel says so
    assert _halves([(kernels.blend_depth, depth)], h) == [False]


def test_without_numba_the_stabiliser_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from david_infer.errors import BackendUnavailable

    monkeypatch.setitem(sys.modules, "numba", None)  # an import of it now fails
    with pytest.raises(BackendUnavailable, match=r'numba is not installed.*pip install "david-infer\[video\]"'):
        list(stabilize(iter(_clip(3)), mode="online"))


def test_a_forked_child_stabilises_with_its_own_helper_thread() -> None:
    """The parent's helper thread does not exist in a forked child: the child starts its own."""
    import multiprocessing

    list(stabilize(iter(_clip(3)), mode="online"))  # the parent's helper thread exists now
    child = multiprocessing.get_context("fork").Process(target=_stabilise_a_clip)
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung stabilising a clip")
    assert child.exitcode == 0


def _stabilise_a_clip() -> None:
    assert len(list(stabilize(iter(_clip(4)), mode="offline", lookahead=2))) == 4
