"""Per-task parity metrics (david_infer/metrics.py): a broken graph cannot pass, the FP16 export does.

The broken graphs are real ONNX graphs made from the tiny export: one decoder block's weights set
to zero in the initializers, or Mul/Add/RandomNormalLike nodes appended to every output. ONNX
Runtime (CPU) runs them like any exported file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from david_infer.errors import ModelError
from david_infer.metrics import SAME_ARITHMETIC, Thresholds, align_scale_shift, compare, output_metrics

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

# -- the metrics on arrays -----------------------------------------------------------------------


def _rotate_about_z(normals: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return np.einsum("ij,bjhw->bihw", rot, normals)


def test_normal_angle_is_in_degrees() -> None:
    rng = np.random.default_rng(0)
    ref = np.zeros((2, 3, 8, 8))
    ref[:, 0], ref[:, 2] = 1.0, rng.normal(0, 0.1, (2, 8, 8))  # in-plane-ish, unit-normalised by the metric
    ref[:, 2] = 0.0
    m = output_metrics("normal", _rotate_about_z(ref, 2.0) * 0.3, ref)  # length does not matter
    assert m["angle_mean_deg"] == pytest.approx(2.0, abs=1e-6) and m["angle_p99_deg"] == pytest.approx(2.0, abs=1e-6)


def test_scale_and_shift_alignment() -> None:
    rng = np.random.default_rng(1)
    ref = 1.0 + rng.random((2, 1, 16, 16))
    got = 3.0 * ref - 0.5
    assert np.allclose(align_scale_shift(got.reshape(2, 1, -1), ref.reshape(2, 1, -1)), ref.reshape(2, 1, -1))
    m = output_metrics("depth", got, ref)
    assert m["abs_rel_aligned"] < 1e-12 and m["rmse_vs_spread"] > 1.0  # aligned: same shape; raw: wrong values


def test_foreground_iou_and_mae() -> None:
    ref = np.zeros((1, 1, 10, 10))
    ref[..., :5] = 1.0  # 50 pixels
    got = ref.copy()
    got[..., 4] = 0.2  # 10 of them lost
    m = output_metrics("foreground", got, ref)
    assert m["iou_05"] == pytest.approx(40 / 50) and m["mae"] == pytest.approx(0.08)
    both_empty = output_metrics("foreground", np.full((1, 1, 4, 4), -0.1), np.full((1, 1, 4, 4), -0.2))
    assert both_empty["iou_05"] == 1.0 and both_empty["mae"] == 0.0  # clipped to [0, 1] as the SDK does


def test_failures_name_output_metric_and_limit() -> None:
    ref = {"depth": np.linspace(0, 1, 64).reshape(1, 1, 8, 8)}
    parity = compare({"depth": ref["depth"] * 1.1}, ref, where="64x64 batch 1: ")
    assert not parity.passed
    assert "64x64 batch 1: depth: rmse_vs_spread = " in parity.reasons[0] and "must be <= 0.01" in parity.reasons[0]
    nan = ref["depth"].copy()
    nan[0, 0, 0, 0] = np.nan
    assert compare({"depth": nan}, ref).reasons == ["depth: 1 values are NaN or infinite"]
    assert compare({}, ref).reasons == ["depth: missing from the outputs ()"]
    with pytest.raises(ModelError, match="shape"):
        compare({"depth": ref["depth"][..., :4]}, ref)


def test_fp16_allowance_is_the_references_own_rounding() -> None:
    # A large offset with a small spread (what random weights give): FP16 rounding alone is ~1% of it.
    rng = np.random.default_rng(2)
    ref = {"depth": -0.216 + 0.0035 * rng.standard_normal((1, 1, 32, 32))}
    rounded = {"depth": ref["depth"].astype(np.float16).astype(np.float64)}
    assert not compare(rounded, ref, SAME_ARITHMETIC).passed
    assert compare(rounded, ref, precision="fp16").passed
    shrunk = {"depth": ref["depth"].mean() + 0.25 * (ref["depth"] - ref["depth"].mean())}
    assert not compare(shrunk, ref, precision="fp16").passed


def test_thresholds_scale() -> None:
    strict = Thresholds().scaled(1e-2)
    assert strict.depth_rmse_vs_spread == pytest.approx(1e-4) and strict.foreground_iou == Thresholds().foreground_iou


# -- broken graphs against the FP16 export ---------------------------------------------------------


def zero_block(path: Path, prefix: str, out: Path) -> Path:
    """A copy of `path` with every initializer under `prefix` set to zero."""
    model = onnx.load(str(path))
    zeroed = 0
    for init in model.graph.initializer:
        if init.name.startswith(prefix):
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
            zeroed += 1
    assert zeroed, f"no initializer under {prefix}"
    onnx.save(model, str(out))
    return out


def damage_outputs(path: Path, out: Path, keep: float, around_mean: bool, noise: float) -> Path:
    """A copy of `path` whose every output y becomes keep * y + noise, or (around_mean) the per-image,
    per-channel mean plus keep times the variation around it, plus noise: appended ONNX nodes."""
    model = onnx.load(str(path))
    graph = model.graph
    for output in graph.output:
        raw = f"{output.name}__raw"
        for node in graph.node:
            node.output[:] = [raw if o == output.name else o for o in node.output]
        const = {f"{raw}_keep": np.array(keep, np.float32), f"{raw}_axes": np.array([2, 3], np.int64)}
        nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n)) for n, v in const.items()]
        if around_mean:
            nodes += [
                helper.make_node("ReduceMean", [raw, f"{raw}_axes"], [f"{raw}_mean"], keepdims=1),
                helper.make_node("Sub", [raw, f"{raw}_mean"], [f"{raw}_var"]),
                helper.make_node("Mul", [f"{raw}_var", f"{raw}_keep"], [f"{raw}_kept"]),
                helper.make_node("Add", [f"{raw}_kept", f"{raw}_mean"], [f"{raw}_signal"]),
            ]
        else:
            nodes.append(helper.make_node("Mul", [raw, f"{raw}_keep"], [f"{raw}_signal"]))
        nodes += [
            helper.make_node("RandomNormalLike", [f"{raw}_signal"], [f"{raw}_noise"], scale=noise, seed=1.0),
            helper.make_node("Add", [f"{raw}_signal", f"{raw}_noise"], [output.name]),
        ]
        graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _run(path: Path, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


FEEDS = [(1, 64, 64), (2, 48, 80)]


@pytest.fixture(scope="module")
def references(tiny_multitask_onnx: Path) -> Dict[tuple, tuple]:
    """(feeds, ONNX Runtime FP32 outputs) per (batch, height, width)."""
    rng = np.random.default_rng(0)
    out = {}
    for b, h, w in FEEDS:
        feeds = {
            "image": rng.random((b, 3, h, w), dtype=np.float32),
            "image_384": rng.random((b, 3, 384, 384), dtype=np.float32),
        }
        out[(b, h, w)] = (feeds, _run(tiny_multitask_onnx, feeds))
    return out


def _judge(path: Path, references: Dict[tuple, tuple]) -> list:
    reasons = []
    for (b, h, w), (feeds, ref) in references.items():
        reasons += compare(_run(path, feeds), ref, precision="fp16", where=f"{h}x{w} batch {b}: ").reasons
    return reasons


def _relative_l2(path: Path, references: Dict[tuple, tuple], output: str) -> float:
    worst = 0.0
    for feeds, ref in references.values():
        got = _run(path, feeds)[output]
        worst = max(worst, float(np.linalg.norm(got - ref[output]) / np.linalg.norm(ref[output])))
    return worst


def test_fp16_export_passes(tiny_fp16_onnx: Path, references: Dict[tuple, tuple]) -> None:
    assert _judge(tiny_fp16_onnx, references) == []


def test_zeroed_block_fails_where_relative_l2_passed(
    tiny_multitask_onnx: Path, tmp_path: Path, references: Dict[tuple, tuple]
) -> None:
    broken = zero_block(tiny_multitask_onnx, "model.trunk.decoder.2.", tmp_path / "zeroed.onnx")
    # The old check (relative L2 <= 1e-2) let its depth and foreground through.
    assert _relative_l2(broken, references, "depth") < 1e-2 and _relative_l2(broken, references, "foreground") < 1e-2
    reasons = _judge(broken, references)
    assert any("depth: rmse_vs_spread" in r for r in reasons)
    assert any("foreground: mae_vs_spread" in r for r in reasons)


@pytest.mark.parametrize("around_mean", [False, True], ids=["scaled", "quarter-of-the-signal"])
def test_quarter_output_plus_noise_fails(
    tiny_multitask_onnx: Path, tmp_path: Path, references: Dict[tuple, tuple], around_mean: bool
) -> None:
    broken = damage_outputs(tiny_multitask_onnx, tmp_path / "damaged.onnx", 0.25, around_mean, 1e-4)
    reasons = _judge(broken, references)
    for b, h, w in FEEDS:
        assert any(r.startswith(f"{h}x{w} batch {b}: depth: rmse_vs_spread") for r in reasons)
        assert any(r.startswith(f"{h}x{w} batch {b}: foreground: mae_vs_spread") for r in reasons)
