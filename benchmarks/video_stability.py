"""Temporal stability of a clip's maps (`david_infer.video.stabilize`): raw per-frame predictions
against online and offline stabilisation, on synthetic clips with exact ground truth.

The clip (made here, `Scene`): a person-like figure of ten ellipsoids (torso, head, arms, legs)
before a textured wall; arms swing, the head turns; the camera holds while a ball passes in front
of the figure (an occlusion), pans, zooms and holds; then a cut to another shot (another wall,
pose and place; the legs step). Rendered exactly per pixel: depth (camera z), normals (x right, y up,
z toward the camera), a soft foreground (the figure only), and the frame (shaded, textured, with
sensor noise), which goes through H.264 (libx264, CRF 23) and back, so the motion test sees
coding noise as it would in a real clip.

Per-frame "predictions" err the way a per-frame relative model does: depth larger = nearer with
a random scale (log-normal, sigma 0.05) and shift (sigma 0.1 spread) per frame, smooth spatial
noise (3% of the spread per frame, and 3% that persists over the shot); normals turned by a
smooth rotation field (3 degrees per frame, 2 that persist); mask edges moved by a smooth
displacement field (1 pixel per frame).

Reported for raw, online and offline:
  flicker   mean change between consecutive frames where the ground truth did not change (at the
            same pixel): depth (inside the figure, in units of the ground truth's spread, the
            5-95% range inside the figure, after the clip's one scale and shift), normals
            (degrees), mask (all pixels); over the whole clip (the goals), and apart for the
            frames where the camera stands still and where it moves (pan, zoom).
  accuracy  after one least-squares scale and shift per clip inside the figure: depth AbsRel and
            RMSE / spread, normals mean angle (inside the figure), mask MAE (all pixels).
  cost      stabilisation per frame at 1280x720 (frames made beforehand, a clip of the same
            scene, `--cost-frames` long): wall-clock milliseconds (the stabiliser's two threads)
            over the whole clip and steady (after the first 10 frames: offline's first output
            holds its lookahead's updates and its window's first allocation), CPU milliseconds
            (both threads), the best of `--runs`; online's wall-clock apart for still and moving
            camera. Then that clip
            (H.264) through `DavidRuntime.predict_video(..., stabilize=MODE)` with the tiny
            multi-task model (exported here, random weights, resolution 256) for speed and for
            nothing crashing.

    python benchmarks/video_stability.py [--frames 120] [--size 270x480] [--cost-frames 48] [--json out.json]

Numbers depend on the machine's load; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first
from benchmarks.prologue import model_or_tiny  # noqa: E402
from david_infer.video import StabilizeOptions, stabilize  # noqa: E402

METHODS = ("raw", "online", "offline")
#: a reference scored beside them: the ground truth's own mask blurred by a Gaussian of this sigma
#: (pixels): what a mask that is right but one pixel softer scores (flicker at edges that move)
REFERENCE_BLUR = 1.0


# ----------------------------------------------------------------------------------- the scene


def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass
class Ellipsoid:
    centre: np.ndarray  # world, metres (x right, y down, z forward from the camera)
    axes: np.ndarray  # 3x3 rotation, columns the ellipsoid's axes
    radii: np.ndarray
    colour: np.ndarray
    person: bool = True


def _limb(top: np.ndarray, length: float, width: float, swing: float, side: float) -> Tuple[Ellipsoid, np.ndarray]:
    """A limb hanging from `top`, swung forward by `swing` (radians) and out by `side`; its far end."""
    rot = _rotation("x", swing) @ _rotation("z", side)
    down = rot @ np.array([0.0, 1.0, 0.0])
    centre = top + down * length / 2
    return Ellipsoid(centre, rot, np.array([width, length / 2, width]), np.zeros(3)), top + down * length


def figure(t: float, place: np.ndarray, phase: float, legs_move: bool) -> List[Ellipsoid]:
    """The person-like figure at time `t` (frames): torso, head, arms and legs."""
    shirt, skin, trousers = np.array([60, 90, 170.0]), np.array([215, 170, 140.0]), np.array([70, 60, 50.0])
    torso = Ellipsoid(place + [0, -0.05, 0], np.eye(3), np.array([0.19, 0.3, 0.12]), shirt)
    head = Ellipsoid(place + [0, -0.5, 0], _rotation("y", 0.2 * np.sin(t / 23)), np.array([0.1, 0.13, 0.11]), skin)
    parts = [torso, head]
    for sign in (-1.0, 1.0):
        arm = 0.45 * np.sin(2 * np.pi * t / 40 + phase + (sign > 0) * np.pi)
        upper, elbow = _limb(place + [sign * 0.24, -0.3, 0], 0.3, 0.055, arm, sign * 0.15)
        lower, _ = _limb(elbow, 0.28, 0.045, arm + 0.5 + 0.3 * np.sin(2 * np.pi * t / 40), sign * 0.05)
        upper.colour, lower.colour = shirt, skin
        leg = (0.35 * np.sin(2 * np.pi * t / 30 + (sign > 0) * np.pi)) if legs_move else 0.0
        thigh, knee = _limb(place + [sign * 0.1, 0.22, 0], 0.42, 0.075, leg, 0.0)
        shin, _ = _limb(knee, 0.42, 0.06, max(0.0, -leg) * 0.8, 0.0)
        thigh.colour, shin.colour = trousers, trousers
        parts += [upper, lower, thigh, shin]
    return parts


@dataclass
class Shot:
    frames: int
    wall: float  # wall depth
    wall_seed: int
    place: np.ndarray
    phase: float
    legs_move: bool


class Scene:
    """The benchmark clip: shot 1 (the camera holds while a ball passes, pans, zooms, holds), a
    cut, shot 2 (the camera holds, the legs step)."""

    def __init__(self, frames: int, size: Tuple[int, int]) -> None:
        self.size, self.frames = size, frames
        first = int(frames * 2 / 3)
        self.shots = [
            Shot(first, 5.0, 1, np.array([0.0, 0.1, 3.4]), 0.0, False),
            Shot(frames - first, 4.2, 2, np.array([0.35, 0.05, 2.9]), 1.3, True),
        ]
        h, w = size
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        self._uv = (u - (w - 1) / 2, v - (h - 1) / 2)

    def shot_of(self, index: int) -> Tuple[int, int]:
        """(shot number, frame within the shot)."""
        for number, shot in enumerate(self.shots):
            if index < shot.frames:
                return number, index
            index -= shot.frames
        raise IndexError(index)

    def camera(self, number: int, t: int, length: int) -> Tuple[np.ndarray, float]:
        """(rotation camera -> world, focal length in pixels) of frame `t` of shot `number`."""
        base = 1.15 * self.size[1]
        if number == 1:
            return np.eye(3), base
        a, b, c = self.moves(length)
        pan = 0.08 * np.clip((t - a) / (b - a), 0, 1)
        zoom = 1.0 + 0.25 * np.clip((t - b) / (c - b), 0, 1)
        return _rotation("y", pan), base * zoom

    @staticmethod
    def moves(length: int) -> Tuple[int, int, int]:
        """Shot 1's camera: holds, pans from a to b, zooms from b to c, holds."""
        return int(length * 0.5), int(length * 0.7), int(length * 0.85)

    def camera_moving(self, index: int) -> bool:
        """Whether the camera moved between frame `index - 1` and `index`."""
        number, t = self.shot_of(index)
        if number != 0 or t == 0:
            return False
        a, _, c = self.moves(self.shots[0].frames)
        return a < t <= c

    def render(self, index: int) -> Dict[str, np.ndarray]:
        """Ground truth (depth, normal, foreground) and the frame (image) of frame `index`."""
        number, t = self.shot_of(index)
        shot = self.shots[number]
        rotation, focal = self.camera(number, t, shot.frames)
        h, w = self.size
        d_cam = np.stack([self._uv[0] / focal, self._uv[1] / focal, np.ones((h, w))], axis=-1)
        rays = d_cam @ rotation.T  # world directions, camera at the origin; camera z of a hit = its t
        depth = shot.wall / rays[..., 2]
        normal = np.broadcast_to(np.array([0, 0, -1.0]), (h, w, 3)).copy()
        hit = depth[..., None] * rays
        colour = _wall_texture(hit[..., 0], hit[..., 1], shot.wall_seed)
        person = np.zeros((h, w), bool)
        parts = figure(t, shot.place, shot.phase, shot.legs_move)
        if number == 0 and shot.frames * 0.15 <= t <= shot.frames * 0.45:  # the ball passing in front
            x = -1.0 + 2.0 * (t - shot.frames * 0.15) / (shot.frames * 0.3)
            parts.append(
                Ellipsoid(np.array([x, 0.0, 2.3]), np.eye(3), np.full(3, 0.16), np.array([200, 40, 40.0]), False)
            )
        light = np.array([-0.4, -0.6, -0.7]) / np.linalg.norm([-0.4, -0.6, -0.7])
        for part in parts:
            inv = part.axes.T / part.radii[:, None]
            o = inv @ (-part.centre)
            d = rays @ inv.T
            a = (d * d).sum(-1)
            b = d @ o
            disc = b * b - a * (o @ o - 1)
            tt = (-b - np.sqrt(np.maximum(disc, 0))) / a
            closer = (disc > 0) & (tt > 0) & (tt < depth)
            if not closer.any():
                continue
            depth = np.where(closer, tt, depth)
            p = tt[closer][:, None] * rays[closer]
            local = (p - part.centre) @ part.axes
            n = (local / part.radii**2) @ part.axes.T
            n /= np.linalg.norm(n, axis=-1, keepdims=True)
            normal[closer] = n
            shade = 0.35 + 0.65 * np.clip(n @ -light, 0, 1)
            stripes = 1.0 + 0.12 * np.sin(40 * local[:, 1]) * np.sin(25 * local[:, 0])
            colour[closer] = part.colour * (shade * stripes)[:, None]
            person = np.where(closer, part.person, person)
        camera_normal = normal @ rotation  # world -> camera
        normal_out = camera_normal * np.array([1.0, -1.0, -1.0])  # y up, z toward the camera
        foreground = _box3(person.astype(np.float64))
        rng = np.random.default_rng(1000 + index)
        image = np.clip(colour + rng.normal(0, 2.0, colour.shape), 0, 255).astype(np.uint8)
        return {
            "depth": depth.astype(np.float32),
            "normal": normal_out.astype(np.float32),
            "foreground": foreground.astype(np.float32),
            "image": image,
        }


def _wall_texture(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(80, 200, 3)
    tex = np.zeros(x.shape + (3,))
    for _ in range(6):
        fx, fy, ph = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 6.3)
        tex += np.sin(fx * x + ph)[..., None] * np.sin(fy * y)[..., None] * rng.uniform(-12, 12, 3)
    return base + tex


def _box3(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9.0


# ----------------------------------------------------------------------------- the predictions


def smooth_field(rng: np.random.Generator, size: Tuple[int, int], cells: int = 6) -> np.ndarray:
    """Smooth noise of unit standard deviation: Gaussian bumps on a coarse grid."""
    h, w = size
    gh, gw = cells, max(2, round(cells * w / h))
    basis = []
    for n, k in ((h, gh), (w, gw)):
        centres = (np.arange(k) + 0.5) * n / k
        b = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None]) / (n / k * 0.7)) ** 2)
        basis.append(b / b.sum(1, keepdims=True))
    f = basis[0] @ rng.standard_normal((gh, gw)) @ basis[1].T
    return f / (f.std() + 1e-12)


def _bilinear(m: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    h, w = m.shape
    y = np.clip(np.arange(h)[:, None] + dy, 0, h - 1)
    x = np.clip(np.arange(w)[None] + dx, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    top = m[y0, x0] * (1 - fx) + m[y0, x1] * fx
    bottom = m[y1, x0] * (1 - fx) + m[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class Errors:
    """A per-frame relative model's errors (see the module docstring), seeded per shot and frame."""

    def __init__(self, scene: Scene, spread: float, seed: int = 7) -> None:
        self.scene, self.spread, self.seed = scene, spread, seed
        self._persistent: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self._centre: Optional[float] = None  # the model's zero: the figure's depth in the first frame

    def predict(self, index: int, truth: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        number, _ = self.scene.shot_of(index)
        size = self.scene.size
        if number not in self._persistent:
            rng = np.random.default_rng(self.seed * 100 + number)
            self._persistent[number] = (
                smooth_field(rng, size),
                np.stack([smooth_field(rng, size) for _ in range(3)], -1),
            )
        if self._centre is None:
            self._centre = float(np.median(truth["depth"][truth["foreground"] > 0.5]))
        depth_bias, normal_bias = self._persistent[number]
        rng = np.random.default_rng(self.seed * 100003 + index)
        scale, shift = np.exp(rng.normal(0, 0.05)), rng.normal(0, 0.1 * self.spread)
        noise = 0.03 * self.spread * (depth_bias + smooth_field(rng, size))
        depth = -(scale * (truth["depth"] - self._centre + noise) + shift)
        turn = np.radians(2.0) * normal_bias + np.radians(3.0) * np.stack(
            [smooth_field(rng, size) for _ in range(3)], -1
        )
        n = truth["normal"] + np.cross(turn, truth["normal"])
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        fg = _bilinear(truth["foreground"], smooth_field(rng, size), smooth_field(rng, size))
        return {
            "depth": depth.astype(np.float32),
            "normal": n.astype(np.float32),
            "foreground": fg.astype(np.float32),
            "image": truth["image"],
        }


def through_h264(images: List[np.ndarray], folder: Path) -> Tuple[Path, List[np.ndarray]]:
    """The frames as an H.264 clip (libx264, CRF 23) and decoded back."""
    import av

    path = folder / "scene.mp4"
    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as src:
        decoded = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    return path, decoded


# ------------------------------------------------------------------------------------ metrics


#: the groups of frame pairs flicker is reported for: the whole clip, and apart where the camera
#: stands still and where it moves (pan, zoom)
GROUPS = ("clip", "camera_still", "camera_moving")


class Score:
    """Flicker and accuracy of one method's predictions, frame by frame (memory: the depth inside
    the figure per frame, for the clip's one scale and shift)."""

    def __init__(self, spread: float) -> None:
        self.spread = spread
        self.previous: Optional[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]] = None
        #: per group, prediction changes of depth where the truth did not change
        self.depth_steps: Dict[str, List[np.ndarray]] = {g: [] for g in GROUPS}
        self.depth_pairs: List[Tuple[np.ndarray, np.ndarray]] = []  # (prediction, truth) inside the figure
        self.sums = {k: [0.0, 0] for k in ("normal_error", "mask_error")}
        for g in GROUPS:
            for k in ("normal_flicker", "mask_flicker"):
                self.sums[f"{k}:{g}"] = [0.0, 0]

    def add(self, pred: Dict[str, np.ndarray], truth: Dict[str, np.ndarray], camera_moving: bool = False) -> None:
        """Score one frame; `camera_moving`: the camera moved since the previous frame."""
        inside = truth["foreground"] >= 0.99
        self.depth_pairs.append((pred["depth"][inside].astype(np.float64), truth["depth"][inside].astype(np.float64)))
        self._sum("normal_error", _angles(pred["normal"][inside], truth["normal"][inside]))
        self._sum("mask_error", np.abs(pred["foreground"] - truth["foreground"]))
        if self.previous is not None:
            groups = ("clip", "camera_moving" if camera_moving else "camera_still")
            p0, t0 = self.previous
            both = inside & (t0["foreground"] >= 0.99)
            still = both & (np.abs(truth["depth"] - t0["depth"]) < 1e-5)
            step = (pred["depth"] - p0["depth"])[still].astype(np.float64)
            still_n = both & (_angles(truth["normal"], t0["normal"]) < 0.01)
            normal_steps = _angles(pred["normal"][still_n], p0["normal"][still_n])
            still_m = np.abs(truth["foreground"] - t0["foreground"]) < 1e-6
            mask_steps = np.abs(pred["foreground"] - p0["foreground"])[still_m]
            for g in groups:
                self.depth_steps[g].append(step)
                self._sum(f"normal_flicker:{g}", normal_steps)
                self._sum(f"mask_flicker:{g}", mask_steps)
        self.previous = (pred, truth)

    def _sum(self, key: str, values: np.ndarray) -> None:
        self.sums[key][0] += float(values.sum())
        self.sums[key][1] += int(values.size)

    def result(self) -> Dict[str, float]:
        p = np.concatenate([a for a, _ in self.depth_pairs])
        g = np.concatenate([b for _, b in self.depth_pairs])
        s, b = np.polyfit(p, g, 1)  # the clip's one scale and shift (least squares)
        aligned = s * p + b
        mean = {k: v[0] / v[1] if v[1] else float("nan") for k, v in self.sums.items()}
        out: Dict[str, float] = {}
        for group in GROUPS:
            steps = np.concatenate(self.depth_steps[group]) if self.depth_steps[group] else np.zeros(0)
            tail = "" if group == "clip" else "_" + group
            out["depth_flicker" + tail] = (
                float(np.abs(s) * np.abs(steps).mean() / self.spread) if steps.size else float("nan")
            )
            out["normal_flicker_deg" + tail] = mean[f"normal_flicker:{group}"]
            out["mask_flicker" + tail] = mean[f"mask_flicker:{group}"]
        out.update(
            depth_absrel=float(np.mean(np.abs(aligned - g) / g)),
            depth_rmse_over_spread=float(np.sqrt(np.mean((aligned - g) ** 2)) / self.spread),
            normal_angle_deg=mean["normal_error"],
            mask_mae=mean["mask_error"],
        )
        return out


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


# ------------------------------------------------------------------------------------- runs


def make_clip(frames: int, size: Tuple[int, int], folder: Path) -> Tuple[List[Dict[str, np.ndarray]], Path, float]:
    """(ground truth per frame with the H.264-decoded image, the clip's path, the depth spread)."""
    scene = Scene(frames, size)
    truths = [scene.render(i) for i in range(frames)]
    path, decoded = through_h264([t["image"] for t in truths], folder)
    for truth, image in zip(truths, decoded):
        truth["image"] = image
    inside = np.concatenate([t["depth"][t["foreground"] >= 0.99] for t in truths])
    lo, hi = np.percentile(inside, [5, 95])
    return truths, path, float(hi - lo)


def predictions(truths: List[Dict[str, np.ndarray]], spread: float, size: Tuple[int, int]) -> Iterator[Dict[str, Any]]:
    errors = Errors(Scene(len(truths), size), spread)
    for index, truth in enumerate(truths):
        yield errors.predict(index, truth)


def accuracy(frames: int, size: Tuple[int, int], folder: Path) -> Tuple[Dict[str, Dict[str, float]], Path]:
    truths, path, spread = make_clip(frames, size, folder)
    scene = Scene(frames, size)
    results: Dict[str, Dict[str, float]] = {}
    for method in METHODS:
        score = Score(spread)
        preds = predictions(truths, spread, size)
        stream = preds if method == "raw" else stabilize(preds, mode=method)
        for index, (truth, pred) in enumerate(zip(truths, stream)):
            score.add(pred, truth, scene.camera_moving(index))
        results[method] = score.result()
        print(method, json.dumps({k: round(v, 5) for k, v in results[method].items()}), flush=True)
    score = Score(spread)
    for index, (truth, pred) in enumerate(zip(truths, predictions(truths, spread, size))):
        score.add(
            dict(pred, foreground=_gaussian_blur(truth["foreground"], REFERENCE_BLUR)),
            truth,
            scene.camera_moving(index),
        )
    results["truth_mask_blurred"] = {k: v for k, v in score.result().items() if k.startswith("mask")}
    print("truth_mask_blurred", json.dumps(results["truth_mask_blurred"]), flush=True)
    return results, path


def _gaussian_blur(m: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur (edges repeated)."""
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    p = np.pad(m.astype(np.float64), radius, mode="edge")
    rows = sum(k * p[i : i + m.shape[0]] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + m.shape[1]] for i, k in enumerate(kernel)).astype(np.float32)


#: the frames before the cost's steady part, and offline's lookahead (the default)
STEADY_AFTER, LOOKAHEAD = 10, StabilizeOptions().lookahead


def cost(frames: int, size: Tuple[int, int], folder: Path, runs: int) -> Tuple[Dict[str, Any], Path]:
    """Stabilisation per frame (frames made beforehand; the best of `runs` runs): milliseconds of
    wall-clock (whole clip and steady) and of CPU (this process, both threads), and online's apart for
    the frames where the camera holds and where it moves (online is causal: each frame's time is
    the time to its output). Also the clip (H.264) they were made with."""
    truths, path, spread = make_clip(frames, size, folder)
    preds = list(predictions(truths, spread, size))
    scene = Scene(frames, size)
    moving = [scene.camera_moving(i) for i in range(frames)]
    out: Dict[str, Any] = {}
    for mode in ("online", "offline"):
        best: Optional[Tuple[float, float, List[float]]] = None
        for _ in range(runs):
            times: List[float] = []
            start, cpu = time.perf_counter(), time.process_time()
            last = start
            for _pred in stabilize(iter(preds), mode=mode):
                now = time.perf_counter()
                times.append(now - last)
                last = now
            run = (time.perf_counter() - start, time.process_time() - cpu, times)
            best = run if best is None or run[0] < best[0] else best
        wall, cpu_time, per_frame = best  # type: ignore[misc]
        # steady: the outputs after the first STEADY_AFTER frames' (offline's first holds its
        # lookahead's updates, and the first window's new memory), and before offline's tail (no update)
        steady = per_frame[STEADY_AFTER : frames - (LOOKAHEAD if mode == "offline" else 0)]
        out[mode] = {
            "wall_ms_per_frame": 1000 * wall / frames,
            "cpu_ms_per_frame": 1000 * cpu_time / frames,
            "wall_ms_per_frame_steady": 1000 * float(np.mean(steady)) if steady else float("nan"),
        }
        if mode == "online":
            for name, flag in (("camera_still", False), ("camera_moving", True)):
                chosen = [t for t, m in zip(per_frame, moving) if m == flag]
                out[mode][f"wall_ms_per_frame_{name}"] = 1000 * float(np.mean(chosen)) if chosen else float("nan")
        print(f"{mode} at {size[1]}x{size[0]}: " + ", ".join(f"{k} {v:.1f}" for k, v in out[mode].items()), flush=True)
    return out, path


def end_to_end(path: Path, model: Optional[str], folder: Path) -> Dict[str, Any]:
    """`predict_video` on the H.264 clip with each mode: frames/s, frames out."""
    from david_infer import DavidRuntime

    model = str(model_or_tiny(model, folder))
    out: Dict[str, Any] = {}
    with DavidRuntime(model, resolution=256) as rt:
        for mode in ("none", "online", "offline"):
            start = time.perf_counter()
            count = 0
            for _index, _t, pred in rt.predict_video(path, stabilize=mode):
                count += 1
                assert pred.normal is None or abs(float(np.linalg.norm(pred.normal[0, 0])) - 1) < 1e-3
            took = time.perf_counter() - start
            out[mode] = {"frames": count, "frames_per_s": count / took}
            print(f"predict_video stabilize={mode}: {count} frames, {count / took:.1f} frames/s", flush=True)
    return out


#: (metric, what it is, the goal of its online and offline ratios to raw: "<= x" or "~ x")
ROWS = [
    ("depth_flicker", "depth flicker / spread, whole clip", ("<= 0.33", "<= 0.2")),
    ("normal_flicker_deg", "normal flicker (deg), whole clip", ("<= 0.33", "<= 0.2")),
    ("mask_flicker", "mask flicker, whole clip", ("<= 0.33", "<= 0.2")),
    ("depth_flicker_camera_still", "depth flicker / spread, camera still", ("", "")),
    ("normal_flicker_deg_camera_still", "normal flicker (deg), camera still", ("", "")),
    ("mask_flicker_camera_still", "mask flicker, camera still", ("", "")),
    ("depth_flicker_camera_moving", "depth flicker / spread, camera moving", ("", "")),
    ("normal_flicker_deg_camera_moving", "normal flicker (deg), camera moving", ("", "")),
    ("mask_flicker_camera_moving", "mask flicker, camera moving", ("", "")),
    ("depth_absrel", "depth AbsRel", ("<= 1.05", "<= 1.05")),
    ("depth_rmse_over_spread", "depth RMSE / spread", ("<= 1.05", "<= 1.05")),
    ("normal_angle_deg", "normal mean angle (deg)", ("<= 1.05", "<= 1.05")),
    ("mask_mae", "mask MAE", ("<= 1.05", "<= 1.05")),
]


def table(accuracy: Dict[str, Dict[str, float]]) -> str:
    """The results as a Markdown table: each method's value and its ratio to raw."""
    lines = ["| | raw | online | offline | online / raw | offline / raw | goal (online, offline) |", "|---" * 7 + "|"]
    for key, label, goals in ROWS:
        raw, on, off = (accuracy[m][key] for m in METHODS)
        goal = f"{goals[0]}, {goals[1]}" if goals[0] else "(reported)"
        if np.isnan(raw):  # no pixel whose ground truth stayed the same
            lines.append(f"| {label} | n/a | n/a | n/a | | | the ground truth changes everywhere |")
            continue
        lines.append(f"| {label} | {raw:.4g} | {on:.4g} | {off:.4g} | {on / raw:.3f} | {off / raw:.3f} | {goal} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=120, help="frames of the accuracy clip (default 120)")
    p.add_argument("--size", default="270x480", help="HxW of the accuracy clip (default 270x480)")
    p.add_argument("--cost-frames", type=int, default=48, help="frames of the 1280x720 cost clip (default 48)")
    p.add_argument(
        "--runs", type=int, default=3, help="timed runs of each mode on the cost clip, the best kept (default 3)"
    )
    p.add_argument("--model", help="model for the end-to-end run (default: the tiny multi-task model, exported)")
    p.add_argument("--skip-cost", action="store_true", help="accuracy only")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    results: Dict[str, Any] = {"load_average_start": os.getloadavg(), "frames": args.frames, "size": size}
    results["cpus"] = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results["accuracy"], _ = accuracy(args.frames, size, folder)  # type: ignore[arg-type]
        results["ratios"] = {
            method: {
                k: results["accuracy"][method][k] / results["accuracy"]["raw"][k] for k in results["accuracy"]["raw"]
            }
            for method in ("online", "offline")
        }
        if not args.skip_cost:
            results["cost_1280x720"], clip = cost(args.cost_frames, (720, 1280), folder, args.runs)
            results["end_to_end_1280x720"] = end_to_end(clip, args.model, folder)
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    print(table(results["accuracy"]))
    reference, raw = results["accuracy"]["truth_mask_blurred"], results["accuracy"]["raw"]
    print(
        f"reference, the ground truth's mask blurred by {REFERENCE_BLUR:g} px: "
        + ", ".join(f"{k} {v:.4g} ({v / raw[k]:.3f} of raw)" for k, v in reference.items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
