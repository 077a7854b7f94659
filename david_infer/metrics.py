"""Per-task parity metrics: does a converted model (FP16 graph, TensorRT engine, another provider)
compute what the reference computes? Each task is measured the way its output is used, since a
relative L2 error hides a broken output that is a large offset plus a small signal; the metrics and
limits are in docs/export.md. `compare(got, ref)` returns a `Parity`. numpy only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .errors import ModelError
from .tasks import TASKS


@dataclass(frozen=True)
class Thresholds:
    """Largest (smallest for IoU) values a faithful conversion stays within."""

    depth_rmse_vs_spread: float = 1e-2
    depth_abs_rel_aligned: float = 1e-3
    normal_mean_deg: float = 1.0
    normal_p99_deg: float = 2.0
    foreground_mae: float = 1e-2
    foreground_mae_vs_spread: float = 2e-2
    foreground_iou: float = 0.99
    max_abs_vs_range: float = 0.1
    other_rmse_vs_spread: float = 1e-2

    def scaled(self, factor: float) -> "Thresholds":
        """Every error limit times `factor` (IoU unchanged)."""
        return Thresholds(**{k: (v if k == "foreground_iou" else v * factor) for k, v in asdict(self).items()})


# An FP32 graph against FP32 PyTorch on the same CPU differs by float rounding only (about 3e-6 of
# the spread on the tiny model): a hundred times stricter than a conversion to FP16 or TensorRT.
SAME_ARITHMETIC = Thresholds().scaled(1e-2)


@dataclass
class Parity:
    """Metrics per output, whether all stay within the thresholds, and why not."""

    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    # output -> metric -> the limit applied ("<=" for errors, ">=" for IoU), FP16 allowance included
    limits: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every output stays within the thresholds."""
        return not self.reasons

    def to_dict(self) -> Dict[str, Any]:
        """The metrics, reasons, limits and `passed` as JSON values."""
        return {**asdict(self), "passed": self.passed}


def _images(x: Any) -> np.ndarray:
    """(N, C, P) float64: images, channels, pixels; (H, W), (B, H, W) and (B, C, H, W) accepted."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise ModelError(f"an output of shape {a.shape} is not an image batch (expected 2 to 4 axes)")
    return a.reshape(a.shape[0], a.shape[1], -1)


def spread(ref: np.ndarray) -> float:
    """RMS over images and channels of the per-image, per-channel standard deviation."""
    return float(np.sqrt(np.mean(np.var(ref, axis=-1))))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _common(got: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    diff = got - ref
    rmse = float(np.sqrt(np.mean(diff**2)))
    max_abs = float(np.abs(diff).max(initial=0.0))
    return {
        "rmse": rmse,
        "spread": spread(ref),
        "rmse_vs_spread": _ratio(rmse, spread(ref)),
        "max_abs": max_abs,
        "max_abs_vs_range": _ratio(max_abs, float(ref.max() - ref.min()) if ref.size else 0.0),
    }


def align_scale_shift(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per image, s * got + t with (s, t) minimising ||s * got + t - ref||^2 (least squares)."""
    out = np.empty_like(got)
    for i in range(got.shape[0]):
        g, r = got[i].ravel(), ref[i].ravel()
        design = np.stack([g, np.ones_like(g)], axis=1)
        (s, t), *_ = np.linalg.lstsq(design, r, rcond=None)
        out[i] = (s * g + t).reshape(got[i].shape)
    return out


def depth_metrics(got: Any, ref: Any) -> Dict[str, float]:
    """RMSE / spread, AbsRel after per-image scale-and-shift alignment, and the common metrics."""
    g, r = _images(got), _images(ref)
    m = _common(g, r)
    aligned = align_scale_shift(g, r)
    valid = np.abs(r) > 1e-6 * max(float(np.abs(r).max(initial=0.0)), 1e-30)
    m["abs_rel_aligned"] = float(np.mean(np.abs(aligned - r)[valid] / np.abs(r)[valid])) if valid.any() else 0.0
    return m


def normal_metrics(got: Any, ref: Any) -> Dict[str, float]:
    """The angle between the unit vectors (mean, 99th percentile, degrees) and the common metrics."""
    g, r = _images(got), _images(ref)
    row = TASKS["normal"]
    if g.shape[1] != row.channels:
        raise ModelError(f"a normal output has {row.channels} channels, this one {g.shape[1]}")
    m = _common(g, r)
    eps = row.unit_eps or 0.0
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), eps)
    rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), eps)
    angle = np.degrees(np.arccos(np.clip(np.sum(gn * rn, axis=1), -1.0, 1.0)))
    m["angle_mean_deg"] = float(angle.mean())
    m["angle_p99_deg"] = float(np.percentile(angle, 99))
    return m


def foreground_metrics(got: Any, ref: Any) -> Dict[str, float]:
    """MAE of the clipped mask, raw MAE / spread, IoU at 0.5, and the common metrics."""
    g, r = _images(got), _images(ref)
    m = _common(g, r)
    gc, rc = np.clip(g, 0.0, 1.0), np.clip(r, 0.0, 1.0)
    m["mae"] = float(np.mean(np.abs(gc - rc)))
    m["mae_vs_spread"] = _ratio(float(np.mean(np.abs(g - r))), spread(r))
    gm, rm = gc > 0.5, rc > 0.5
    union = int(np.logical_or(gm, rm).sum())
    m["iou_05"] = float(np.logical_and(gm, rm).sum()) / union if union else 1.0  # both empty: the same mask
    return m


_METRICS = {"depth": depth_metrics, "normal": normal_metrics, "foreground": foreground_metrics}


def _checks(task: str, t: Thresholds) -> List[Tuple[str, str, float]]:
    """(metric, "max" | "min", limit) per task."""
    checks = {
        "depth": [
            ("rmse_vs_spread", "max", t.depth_rmse_vs_spread),
            ("abs_rel_aligned", "max", t.depth_abs_rel_aligned),
        ],
        "normal": [("angle_mean_deg", "max", t.normal_mean_deg), ("angle_p99_deg", "max", t.normal_p99_deg)],
        "foreground": [
            ("mae", "max", t.foreground_mae),
            ("mae_vs_spread", "max", t.foreground_mae_vs_spread),
            ("iou_05", "min", t.foreground_iou),
        ],
    }.get(task, [("rmse_vs_spread", "max", t.other_rmse_vs_spread)])
    return checks + [("max_abs_vs_range", "max", t.max_abs_vs_range)]


def output_metrics(name: str, got: Any, ref: Any) -> Dict[str, float]:
    """The metrics of one output; `name` ("depth", "normal", "foreground", other) picks the task."""
    if np.shape(got) != np.shape(ref):
        raise ModelError(f"output {name!r} has shape {np.shape(got)}, the reference {np.shape(ref)}")
    metric = _METRICS.get(name)
    if metric is None:
        return _common(_images(got), _images(ref))
    return metric(got, ref)


def compare(
    got: Mapping[str, Any],
    ref: Mapping[str, Any],
    thresholds: Optional[Thresholds] = None,
    where: str = "",
    precision: str = "fp32",
) -> Parity:
    """Judge every output of `ref` in `got`; reasons name the output, the metric, its value and the
    limit (prefixed by `where`, e.g. "512x512 batch 8: "). precision="fp16" raises each error limit
    by twice the same metric of the reference merely rounded to FP16 (docs/export.md)."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    t = thresholds or Thresholds()
    parity = Parity()
    for name in ref:
        if name not in got:
            parity.reasons.append(f"{where}{name}: missing from the outputs ({', '.join(got)})")
            continue
        bad = int(np.size(got[name]) - np.isfinite(np.asarray(got[name], dtype=np.float64)).sum())
        if bad:  # no metric means anything then
            parity.metrics[name] = {"non_finite": float(bad)}
            parity.reasons.append(f"{where}{name}: {bad} values are NaN or infinite")
            continue
        m = output_metrics(name, got[name], ref[name])
        parity.metrics[name] = m
        floor: Dict[str, float] = {}
        checks = _checks(name, t)
        if precision == "fp16":
            r = np.asarray(ref[name])
            floor = output_metrics(name, r.astype(np.float16).astype(np.float64), r)
            m.update({f"fp16_rounding_{k}": v for k, v in floor.items() if k in {c[0] for c in checks}})
        applied = parity.limits.setdefault(name, {})
        for metric, kind, limit in checks:
            value = m[metric]
            allowed = applied[metric] = limit if kind == "min" else limit + 2 * floor.get(metric, 0.0)
            if kind == "min" and not value >= limit:  # NaN fails
                parity.reasons.append(f"{where}{name}: {metric} = {value:.3g}, must be >= {limit:g}")
            elif kind == "max" and not value <= allowed:
                extra = f" + 2 x {floor[metric]:.3g} (the reference's own FP16 rounding)" if metric in floor else ""
                parity.reasons.append(f"{where}{name}: {metric} = {value:.3g}, must be <= {limit:g}{extra}")
    return parity
