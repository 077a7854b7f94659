"""Check an exported graph against the PyTorch model it came from: `verify_onnx(FILE.onnx)` rebuilds the
model with the manifest's weights, runs both on the same random inputs at several resolutions and
batch sizes and judges every output with the per-task parity metrics of `david_infer.metrics`: an
FP32 graph by `SAME_ARITHMETIC`, an FP16 graph by the default thresholds (docs/export.md)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._optional import require
from ..backends.base import Device
from ..backends.onnxruntime import OnnxRuntimeOptions
from ..backends.onnxruntime.runner import create_session
from ..config import DEFAULT_RESOLUTION, get_config
from ..contract import read_manifest
from ..errors import InputError, ModelError
from ..files import sha256_file
from ..manifest import check_sha256, manifest_path
from ..metrics import SAME_ARITHMETIC, Thresholds
from ..metrics import compare as parity
from ..shapes import check_stride, parse_hw_list
from .onnx_export import layout_module

DEFAULT_RESOLUTIONS: Tuple[Tuple[int, int], ...] = ((256, 256), (512, 512), (384, 640), (1024, 1024))
DEFAULT_BATCHES: Tuple[int, ...] = (1, 3)
OFFICIAL_POINT = ((DEFAULT_RESOLUTION, DEFAULT_RESOLUTION), 1)


@dataclass
class Row:
    """One output at one resolution and batch size: the errors of `relative_errors` (judged only by a
    tolerance), the seconds the graph took, its david_infer.metrics, why it failed (empty when ok)
    and the limit each metric was judged by (iou_05: a minimum; the others maxima)."""

    height: int
    width: int
    batch: int
    output: str
    rel_error: float
    max_abs_error: float
    ok: bool
    rel_error_vs_variation: float = 0.0
    onnx_seconds: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    limits: Dict[str, float] = field(default_factory=dict)


@dataclass
class VerifyReport:
    """Every row, the tolerance it was judged by, and what was compared."""

    model_file: str
    variant: str
    task: str
    layout: str
    precision: str
    weights: str
    tolerance: Optional[float]  # an extra bound on rel_error, None: the metrics alone judge
    rows: List[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def parse_resolutions(text: str) -> List[Tuple[int, int]]:
    """'256x256,384x640' -> [(256, 256), (384, 640)] (height x width; '512' is 512x512); InputError otherwise."""
    return parse_hw_list(text, "resolution")


def parse_batches(text: str) -> List[int]:
    """'1,3' -> [1, 3]; InputError otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() and int(t) > 0 for t in items):
        raise InputError(f"batch sizes {text!r} must be positive integers separated by commas (e.g. 1,3)")
    return [int(t) for t in items]


def relative_errors(got: Any, expected: Any) -> Tuple[float, float, float]:
    """(||got - expected|| / ||expected||, max |got - expected|, ||got - expected|| / ||expected - mean||),
    in float64; the mean per image and channel, so the third measures the error against how much
    the output varies."""
    got64, exp64 = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got64.shape != exp64.shape:
        raise ModelError(f"output shape {got64.shape} differs from PyTorch's {exp64.shape}")
    diff = float(np.linalg.norm(got64 - exp64))
    centered = exp64 - exp64.mean(axis=(-2, -1), keepdims=True)

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else num

    return (
        ratio(diff, float(np.linalg.norm(exp64))),
        float(np.abs(got64 - exp64).max(initial=0.0)),
        ratio(diff, float(np.linalg.norm(centered))),
    )


def random_inputs(layout: str, batch: int, height: int, width: int, vit_size: int, seed: int = 0) -> Dict[str, Any]:
    """The graph's inputs for one point: BGR in [0, 1], image_384 for the dynamic layout."""
    rng = np.random.default_rng(seed)
    feeds = {"image": rng.random((batch, 3, height, width), dtype=np.float32)}
    if layout == "dynamic":
        feeds["image_384"] = rng.random((batch, 3, vit_size, vit_size), dtype=np.float32)
    return feeds


def torch_outputs(model: Any, layout: str, feeds: Dict[str, Any]) -> Dict[str, Any]:
    """The PyTorch model's outputs for `feeds`, in the layout's shapes (as exported), as numpy arrays."""
    import torch

    with torch.no_grad():
        out = layout_module(model, layout)(*(torch.from_numpy(v) for v in feeds.values()))
    return {name: value.numpy() for name, value in zip(model.outputs, out)}


def check_points(
    variant: str,
    layout: str,
    resolutions: Optional[Sequence[Tuple[int, int]]] = None,
    batches: Optional[Sequence[int]] = None,
) -> List[Tuple[Tuple[int, int], int]]:
    """The (resolution, batch) points to run (None: the defaults); InputError for sizes the graph cannot take."""
    stride = get_config(variant).stride
    if layout == "official":
        if (resolutions and list(resolutions) != [OFFICIAL_POINT[0]]) or (batches and list(batches) != [1]):
            raise InputError(
                "an official-layout graph is fixed at 1x3x512x512: it can be verified only at "
                "512x512, batch 1 (leave out --resolutions and --batches)"
            )
        return [OFFICIAL_POINT]
    resolutions = resolutions or DEFAULT_RESOLUTIONS
    for hw in resolutions:
        check_stride(hw, stride, "resolution")
    return [((h, w), b) for (h, w) in resolutions for b in (batches or DEFAULT_BATCHES)]


def _weights_for(
    manifest: Dict[str, Any], weights: Optional[Union[str, Path]], where: Path
) -> Tuple[Optional[str], int, str]:
    """(weights file or None, seed, description) that rebuild the exported model."""
    origin = manifest.get("weights", {})
    seed = int(origin.get("seed", 0))
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelError(f"weights file not found: {weights}")
        if origin.get("sha256") and sha256_file(weights) != origin["sha256"]:
            raise ModelError(f"{weights} is not the weights file {where} was exported from (SHA-256 differs)")
        return str(weights), seed, f"file {weights}"
    if origin.get("origin") == "random":
        return None, seed, f"random, seed {seed}"
    path = origin.get("path")
    if not path or not Path(path).is_file():
        raise ModelError(
            f"{where} was exported from the weights file {path!r}, which is not there; pass it with --weights"
        )
    return str(path), seed, f"file {path}"


def open_session(path: Union[str, Path]) -> Any:
    """An ONNX Runtime CPU session; ModelError naming the file when ORT cannot load it."""
    return create_session(Path(path), Device("cpu"), (), OnnxRuntimeOptions())


def compare(
    model: Any,
    sessions: Dict[str, Any],
    layout: str,
    points: Sequence[Tuple[Tuple[int, int], int]],
    precisions: Dict[str, str],
    seed: int = 0,
    tolerances: Optional[Dict[str, Optional[float]]] = None,
) -> Dict[str, List[Row]]:
    """Rows per session name: the PyTorch reference is computed once per point and shared. Each
    session is judged by the parity metrics for its graph's precision ("fp32" or "fp16"), and by
    its entry in `tolerances` (an upper bound on the relative error) when one is given."""
    vit_size = model.cfg.vit_size
    rows: Dict[str, List[Row]] = {name: [] for name in sessions}
    for (h, w), b in points:
        feeds = random_inputs(layout, b, h, w, vit_size, seed)
        ref = torch_outputs(model, layout, feeds)
        for name, session in sessions.items():
            names = [o.name for o in session.get_outputs()]
            start = time.perf_counter()
            results = session.run(None, feeds)
            seconds = time.perf_counter() - start
            fp16 = precisions[name] == "fp16"
            for out_name, got in zip(names, results):
                rel, mx, vs_var = relative_errors(got, ref[out_name])
                judged = parity(
                    {out_name: got},
                    {out_name: ref[out_name]},
                    Thresholds() if fp16 else SAME_ARITHMETIC,
                    precision="fp16" if fp16 else "fp32",
                )
                why = list(judged.reasons)
                limit = (tolerances or {}).get(name)
                if limit is not None and not rel <= limit:
                    why.append(f"{out_name}: relative error {rel:.3g} > tolerance {limit:g}")
                metrics, limits = judged.metrics[out_name], judged.limits.get(out_name, {})
                rows[name].append(Row(h, w, b, out_name, rel, mx, not why, vs_var, seconds, metrics, why, limits))
    return rows


def verify_onnx(
    path: Union[str, Path],
    resolutions: Optional[Sequence[Tuple[int, int]]] = None,
    batches: Optional[Sequence[int]] = None,
    tolerance: Optional[float] = None,
    weights: Optional[Union[str, Path]] = None,
    seed: int = 0,
) -> VerifyReport:
    """Compare `path` (an exported .onnx with its manifest) with the PyTorch model it came from."""
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):  # nan passed every row
        raise InputError(f"tolerance (--tolerance) must be a finite number > 0, got {tolerance}")
    require("torch", "verifying against the PyTorch model")
    from ..model import build_model

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}")
    manifest = read_manifest(manifest_path(path))
    check_sha256(path, manifest.get("sha256"))
    layout, precision = manifest.get("layout", "dynamic"), manifest.get("precision", "fp32")
    points = check_points(manifest["variant"], layout, resolutions, batches)
    weights_file, model_seed, described = _weights_for(manifest, weights, path)
    model = build_model(
        manifest["variant"], manifest["task"], weights=weights_file, seed=None if weights_file else model_seed
    )
    session = open_session(path)
    rows = compare(model, {"onnx": session}, layout, points, {"onnx": precision}, seed, {"onnx": tolerance})["onnx"]
    return VerifyReport(path.name, manifest["variant"], manifest["task"], layout, precision, described, tolerance, rows)


def _key_metrics(row: Row) -> str:
    m = row.metrics
    if "angle_mean_deg" in m:
        return f"angle {m['angle_mean_deg']:.2e} / p99 {m['angle_p99_deg']:.2e} deg"
    if "iou_05" in m:
        return f"mae {m['mae']:.2e}, mae/spread {m['mae_vs_spread']:.2e}, IoU {m['iou_05']:.4f}"
    if "abs_rel_aligned" in m:
        return f"rmse/spread {m['rmse_vs_spread']:.2e}, AbsRel {m['abs_rel_aligned']:.2e}"
    return f"rmse/spread {m.get('rmse_vs_spread', float('nan')):.2e}"


def format_report(report: VerifyReport) -> str:
    """A plain-text table of the report, one row per output and point, the reasons of each failure
    and a verdict line."""
    judged = "per-task metrics" + (
        f" and relative error <= {report.tolerance:g}" if report.tolerance is not None else ""
    )
    lines = [
        f"{report.model_file}: {report.variant}/{report.task}, {report.layout} layout, {report.precision}; "
        f"weights {report.weights}; judged by {judged}",
        f"{'resolution':>11} {'batch':>5} {'output':<11} {'task metrics':<52} {'max_abs':>10} {'rel_error':>10}",
    ]
    for r in report.rows:
        lines.append(
            f"{r.height:>5}x{r.width:<5} {r.batch:>5} {r.output:<11} {_key_metrics(r):<52} "
            f"{r.max_abs_error:>10.3e} {r.rel_error:>10.3e}{'' if r.ok else '  FAIL'}"
        )
        if r.limits:
            lines.append(
                "      limits applied: "
                + ", ".join(f"{k} {'>=' if k == 'iou_05' else '<='} {v:.3g}" for k, v in r.limits.items())
            )
        lines.extend(f"      {reason}" for reason in r.reasons)
    lines.append(
        "metrics: depth RMSE / the reference's spread and AbsRel after scale-and-shift alignment; normal "
        "angle (mean / 99th percentile); foreground MAE of the [0, 1] mask, raw MAE / spread, IoU at 0.5"
    )
    if report.rows:
        failed = [r for r in report.rows if not r.ok]
        lines.append(
            f"PASS: all {len(report.rows)} rows within the thresholds"
            if not failed
            else f"FAIL: {len(failed)} of {len(report.rows)} rows outside the thresholds (reasons above)"
        )
    return "\n".join(lines)
