"""david_infer.video.stabilize on synthetic frames: flicker removed where nothing moved, motion kept,
cuts and size changes reset, bad input refused by frame, offline's spool bounded and removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from david_infer import InputError, Prediction
from david_infer.video import StabilizeOptions, stabilize

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
def test_a_still_scene_stops_flickering_and_normals_stay_unit(mode: str, most: float, tmp_path: Path) -> None:
    raw = _clip()
    out = list(stabilize(iter(raw), mode=mode, spool_dir=str(tmp_path)))
    assert len(out) == len(raw)
    for key in ("depth", "normal", "foreground"):
        assert _flicker(out, key) < most * _flicker(raw, key), key
    norms = np.linalg.norm(np.stack([o["normal"] for o in out]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    assert all(o["frame"] == "kept" and np.array_equal(o["image"], r["image"]) for o, r in zip(out, raw))
    assert list(tmp_path.iterdir()) == []  # offline's spool is gone


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


def test_bad_input_names_the_frame(tmp_path: Path) -> None:
    raw = _clip(4)
    nan = dict(raw[2], depth=raw[2]["depth"].copy())
    nan["depth"][3, 3] = np.nan
    for mode in ("online", "offline"):
        with pytest.raises(InputError, match=r"frame 2: depth holds NaN"):
            list(stabilize(raw[:2] + [nan] + raw[3:], mode=mode, spool_dir=str(tmp_path)))
        assert list(tmp_path.iterdir()) == []  # offline's spool removed on the error too
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


def test_frame_weight_one_only_aligns_depth() -> None:
    raw = _clip(5)
    out = list(stabilize(raw, frame_weight=1.0))
    for o, r in zip(out, raw):
        np.testing.assert_allclose(o["foreground"], r["foreground"], atol=1e-6)
        np.testing.assert_allclose(o["normal"], r["normal"], atol=1e-6)
    assert _flicker(out, "depth") < _flicker(raw, "depth") / 3  # the scale and shift removed
