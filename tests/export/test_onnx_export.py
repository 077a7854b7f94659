"""The export stage: mixed FP16 graphs, the strongly typed checker, verify, manifest, bad arguments.

Tiny variant only; two extra tiny exports (FP16 dynamic, FP16 official) on top of conftest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import REPO as ROOT

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from david_infer.cli import main  # noqa: E402
from david_infer.contract import read_manifest  # noqa: E402
from david_infer.errors import InputError  # noqa: E402
from david_infer.export import export_onnx  # noqa: E402
from david_infer.export.fp16 import (  # noqa: E402
    check_strongly_typed,
    convert_to_mixed_fp16,
    precision_report,
)
from david_infer.export.verify import check_points, parse_resolutions, verify_onnx  # noqa: E402
from david_infer.model import build_model, save_weights  # noqa: E402


def _float_type_of_inputs(model: onnx.ModelProto) -> dict:
    """Node name -> elem type of its first input, from ONNX type inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
    }
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return {n.name: (n.op_type, types.get(n.input[0])) for n in model.graph.node}


# ---- FP16 ---------------------------------------------------------------------------------------


def test_fp16_graph_is_mixed_and_strongly_typed(tiny_fp16_onnx: Path, tiny_multitask_onnx: Path) -> None:
    model = onnx.load(str(tiny_fp16_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert check_strongly_typed(model) == []
    nodes = _float_type_of_inputs(model)
    compute = [t for op, t in nodes.values() if op in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    assert sum(t == TensorProto.FLOAT16 for t in compute) / len(compute) >= 0.95
    kept = [(op, t) for op, t in nodes.values() if op in ("LayerNormalization", "Softmax")]
    assert len(kept) == 8 + 4 and all(t == TensorProto.FLOAT for _, t in kept)
    for vi in list(model.graph.input) + list(model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT, vi.name
    # Weights are half the bytes; the file (with its fixed graph overhead) well under two thirds.
    weight_bytes = [
        sum(i.ByteSize() for i in onnx.load(str(p)).graph.initializer) for p in (tiny_multitask_onnx, tiny_fp16_onnx)
    ]
    assert 0.45 < weight_bytes[1] / weight_bytes[0] < 0.55
    assert tiny_fp16_onnx.stat().st_size < 0.65 * tiny_multitask_onnx.stat().st_size


def test_fp16_matches_fp32_torch_by_the_task_metrics(tiny_fp16_onnx: Path) -> None:
    report = verify_onnx(tiny_fp16_onnx, resolutions=[(32, 32), (48, 80)], batches=[1, 3])
    assert report.tolerance is None and report.passed, [r.reasons for r in report.rows]
    assert all(r.metrics["max_abs_vs_range"] < 0.1 for r in report.rows)
    assert all(r.metrics["angle_mean_deg"] < 1.0 for r in report.rows if r.output == "normal")
    assert {r.output for r in report.rows} == {"depth", "normal", "foreground"}
    assert len(report.rows) == 2 * 2 * 3
    # FP16 rounding is visible (so the graph really is FP16) yet small.
    assert all(1e-6 < r.rel_error <= 1e-2 for r in report.rows)
    # Against the output's variation (random weights give nearly constant outputs) it is larger.
    assert all(r.rel_error < r.rel_error_vs_variation < 0.1 for r in report.rows)


def test_fp16_manifest_lists_what_stays_fp32(tiny_fp16_onnx: Path) -> None:
    manifest = read_manifest(tiny_fp16_onnx.with_suffix(".json"))
    assert manifest["precision"] == "fp16"
    detail = manifest["precision_detail"]
    assert detail["kept_fp32_ops"] == ["LayerNormalization", "Softmax"]
    assert detail["compute_fp16_fraction"] >= 0.95
    assert manifest["inputs"][0]["dtype"] == "float32"


def test_checker_catches_fp32_tensor_feeding_fp16_op(tiny_fp16_onnx: Path) -> None:
    model = onnx.load(str(tiny_fp16_onnx))
    # Break it the way keep_io_types does: route the FP32 input straight into the FP16 graph.
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "image")
    for node in model.graph.node:
        node.input[:] = ["image" if i == cast.output[0] else i for i in node.input]
    problems = check_strongly_typed(model)
    assert problems and any("float32" in p and "float16" in p and "image" in p for p in problems)


def _tiny_graph(first_cast_to: int) -> onnx.ModelProto:
    """x (fp32) -> Cast(to) -> MatMul(w) -> LayerNormalization -> Softmax -> Relu -> y (fp32)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(8, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(8, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["xc"], to=first_cast_to, name="cast"),
        helper.make_node("MatMul", ["xc", "w"], ["mm"], name="mm"),
        helper.make_node("LayerNormalization", ["mm", "scale", "bias"], ["ln"], axis=-1, name="ln"),
        helper.make_node("Softmax", ["ln"], ["sm"], axis=-1, name="sm"),
        helper.make_node("Relu", ["sm"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_converter_repairs_leftover_cast_and_keeps_norms_fp32() -> None:
    fp32 = _tiny_graph(TensorProto.FLOAT)
    mixed = convert_to_mixed_fp16(fp32)
    assert check_strongly_typed(mixed) == []
    nodes = _float_type_of_inputs(mixed)
    assert nodes["mm"] == ("MatMul", TensorProto.FLOAT16)
    assert nodes["ln"] == ("LayerNormalization", TensorProto.FLOAT)
    assert nodes["sm"] == ("Softmax", TensorProto.FLOAT)
    cast = next(n for n in mixed.graph.node if n.name == "cast")
    assert cast.attribute[0].i == TensorProto.FLOAT16  # was Cast(to=FLOAT): now follows the compute type
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (fp32, mixed)
    ]
    assert run[1].dtype == np.float32
    np.testing.assert_allclose(run[1], run[0], rtol=1e-2, atol=1e-3)
    # The original is untouched, and a hand-made FP32-into-FP16 MatMul is reported.
    assert check_strongly_typed(fp32) == []
    broken = _tiny_graph(TensorProto.FLOAT16)
    broken.graph.node[1].input[1] = "w"  # fp16 activation x fp32 weight
    problems = check_strongly_typed(broken)
    assert problems[0] == "MatMul node mm: inputs of type T mix float16 (xc) and float32 (w); insert a Cast"
    assert precision_report(mixed)["fp32_ops"] == {"LayerNormalization": 1, "Softmax": 1}


# ---- the dynamic FP32 graph ---------------------------------------------------------------------


def test_dynamic_graph_has_no_frozen_dummy_shape(tiny_multitask_onnx: Path) -> None:
    """Exported with a (2, 3, 64, 96) dummy; runs at other sizes, non-square both ways, batch 1 and 3."""
    model = onnx.load(str(tiny_multitask_onnx))
    for vi in list(model.graph.input)[:1] + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert [bool(dims[i].dim_param) for i in (0, 2, 3)] == [True, True, True], vi.name
    report = verify_onnx(tiny_multitask_onnx, resolutions=[(32, 32), (48, 80), (80, 48)], batches=[1, 3])
    assert report.tolerance is None and report.passed and len(report.rows) == 18
    # An FP32 graph is held to float rounding: far inside even the strict thresholds.
    assert all(r.metrics["max_abs_vs_range"] < 1e-4 for r in report.rows)


def test_resize_uses_sizes_not_scales_and_opset(tiny_multitask_onnx: Path) -> None:
    model = onnx.load(str(tiny_multitask_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in model.graph.node]
    assert "LayerNormalization" in ops
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes
    for node in resizes:
        scales = node.input[2] if len(node.input) > 2 else ""
        assert not (scales and constants.get(scales, np.empty(0)).size), f"{node.name} has constant scales"
        assert len(node.input) > 3 and node.input[3], f"{node.name} has no sizes input"


def test_manifest_is_complete(tiny_multitask_onnx: Path) -> None:
    m = read_manifest(tiny_multitask_onnx.with_suffix(".json"))
    image = m["inputs"][0]
    assert image["shape"] == ["batch", 3, "height", "width"] and image["dtype"] == "float32"
    assert image["axes"] == "NCHW" and image["channel_order"] == "BGR" and image["value_range"] == [0.0, 1.0]
    assert m["inputs"][1]["shape"] == ["batch", 3, 384, 384]
    assert [o["name"] for o in m["outputs"]] == m["output_order"] == m["tasks"] == ["depth", "normal", "foreground"]
    assert m["outputs"][1]["shape"] == ["batch", 3, "height", "width"]
    pre = m["preprocessing"]
    assert pre["stride"] == 16 and pre["vit_size"] == 384
    assert "inside the graph" in pre["normalization"] and "replicate" in pre["padding"]
    assert set(m["postprocessing"]) == {"depth", "normal", "foreground"}
    assert m["task_table"]["normal"]["channels"] == 3 and m["task_table"]["foreground"]["clip"] == [0.0, 1.0]
    assert (m["variant"], m["precision"], m["layout"]) == ("tiny", "fp32", "dynamic") and m["opset"] >= 17
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "david_infer"} <= set(m["producer"])
    assert m["weights"]["origin"] == "random" and m["weights"]["seed"] == 0
    assert len(m["sha256"]) == 64


# ---- the CLI ------------------------------------------------------------------------------------


def test_cli_verify_prints_errors_and_json(tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(tiny_multitask_onnx), "--resolutions", "32x48", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "32x48" in out and "foreground" in out
    assert main(["verify", str(tiny_multitask_onnx), "--resolutions", "32x32", "--batches", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and [r["output"] for r in data["rows"]] == ["depth", "normal", "foreground"]


def test_cli_verify_fails_past_tolerance(tiny_fp16_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["verify", str(tiny_fp16_onnx), "--resolutions", "32x32", "--batches", "1", "--tolerance", "1e-7"])
    assert rc == 1 and "FAIL" in capsys.readouterr().out


def test_cli_verify_shows_the_limits_it_applied(tiny_fp16_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    """An FP16 graph is judged by raised limits (the reference's own FP16 rounding): every row shows
    the limit it was judged by, in the text and in --json, and each value is within its limit."""
    from david_infer.metrics import Thresholds

    assert main(["verify", str(tiny_fp16_onnx), "--resolutions", "32x32", "--batches", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("limits applied: ") == 3 and "iou_05 >= 0.99" in text
    assert main(["verify", str(tiny_fp16_onnx), "--resolutions", "32x32", "--batches", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    depth = next(r for r in rows if r["output"] == "depth")
    base = Thresholds().depth_rmse_vs_spread
    raised = depth["limits"]["rmse_vs_spread"]
    assert raised == pytest.approx(base + 2 * depth["metrics"]["fp16_rounding_rmse_vs_spread"])
    for row in rows:
        for metric, limit in row["limits"].items():
            value = row["metrics"][metric]
            assert value >= limit if metric == "iou_05" else value <= limit


def test_cli_verify_rejects_bad_resolution(tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(tiny_multitask_onnx), "--resolutions", "100x96"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "100x96" in err[0] and "multiples of 16" in err[0]
    assert parse_resolutions("256, 384x640") == [(256, 256), (384, 640)]
    with pytest.raises(InputError, match="HEIGHTxWIDTH"):
        parse_resolutions("256x")
    with pytest.raises(InputError, match="no resolution"):
        parse_resolutions(" , ")
    with pytest.raises(InputError, match="official-layout"):
        check_points("tiny", "official", [(256, 256)], None)


def test_cli_export_bad_arguments_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def one_error_line(argv: list) -> str:
        assert main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    out = tmp_path / "x.onnx"
    assert "unknown variant 'huge'" in one_error_line(
        ["export", "--variant", "huge", "--task", "depth", "-o", str(out)]
    )
    assert "unknown task" in one_error_line(["export", "--variant", "tiny", "--task", "hair", "-o", str(out)])
    unwritable = Path("/sys/x.onnx") if os.geteuid() == 0 else tmp_path / "ro" / "x.onnx"
    if os.geteuid() != 0:
        unwritable.parent.mkdir()
        unwritable.parent.chmod(0o500)
    assert "not writable" in one_error_line(["export", "--variant", "tiny", "--task", "depth", "-o", str(unwritable)])
    # Weights of the depth model do not fit the multi-task model (two heads missing).
    weights = tmp_path / "depth.safetensors"
    save_weights(build_model("tiny", "depth", seed=0), weights)
    line = one_error_line(
        ["export", "--variant", "tiny", "--task", "multitask", "--weights", str(weights), "-o", str(out)]
    )
    assert "does not fit this model" in line and "missing key" in line and str(weights) in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ro") == ["depth.safetensors"]
    assert not unwritable.exists()


def test_cli_export_refuses_an_existing_model_or_manifest_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.onnx"
    argv = ["export", "--variant", "tiny", "--task", "depth", "-o", str(out)]
    assert main(argv) == 0
    model, manifest = out.read_bytes(), (tmp_path / "m.json").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 1
    assert f"{out} already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == model and (tmp_path / "m.json").read_bytes() == manifest
    out.unlink()  # a manifest left alone is someone's too
    assert main([*argv, "--seed", "1"]) == 1
    assert f"{tmp_path / 'm.json'} already exists" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "m.json").read_bytes() == manifest
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert out.exists() and (tmp_path / "m.json").read_bytes() != manifest  # the new seed's weights


@pytest.mark.parametrize("tolerance", ["nan", "-1", "0", "inf"])
def test_cli_verify_refuses_a_tolerance_that_bounds_nothing(
    tiny_multitask_onnx: Path, tolerance: str, capsys: pytest.CaptureFixture
) -> None:
    """nan compared false with every error: a run with it passed whatever the graph gave."""
    assert main(["verify", str(tiny_multitask_onnx), "--resolutions", "32x32", "--tolerance", tolerance]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"tolerance (--tolerance) must be a finite number > 0, got {float(tolerance)}" in err


@pytest.mark.parametrize("flags", [["--channel-order", "bgr"], ["--prepost-resolution", "17"]])
def test_cli_export_refuses_graph_flags_without_prepost(
    flags: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--variant", "tiny", "--task", "depth", "-o", str(out), *flags]) == 1
    assert f"{flags[0]} shape the pre/post graph: they need --prepost" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_error_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "david_infer", "verify", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"david-infer verify: error: ONNX file not found: {tmp_path / 'none.onnx'}"
    ]


def test_official_fp16_export_verifies_at_512(exported_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = exported_dir / "tiny-depth-official-fp16.onnx"
    assert (
        main(
            [
                "export",
                "--variant",
                "tiny",
                "--task",
                "depth",
                "--layout",
                "official",
                "--precision",
                "fp16",
                "-o",
                str(path),
            ]
        )
        == 0
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [("image", [1, 3, 512, 512], "tensor(float)")]
    assert [(o.name, o.shape, o.type) for o in session.get_outputs()] == [("depth", [1, 512, 512], "tensor(float)")]
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "512x512" in out and "official" in out and "256x256" not in out


def test_weights_file_recorded_and_used_by_verify(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "depth.safetensors"
    save_weights(build_model("tiny", "depth", seed=7), weights)
    path = tmp_path / "depth.onnx"
    manifest = export_onnx("tiny", "depth", path, weights=weights)
    assert manifest["weights"]["origin"] == "file" and manifest["weights"]["path"] == str(weights)
    assert "RANDOM" not in manifest["weights"]["description"]
    # verify finds the weights through the manifest, and they are not the seed-0 random ones.
    report = verify_onnx(path, resolutions=[(32, 32)], batches=[1])
    assert report.passed and report.weights == f"file {weights}"
    other = tmp_path / "other.safetensors"
    save_weights(build_model("tiny", "depth", seed=8), other)
    assert main(["verify", str(path), "--weights", str(other), "--resolutions", "32x32"]) == 1
    assert "not the weights file" in capsys.readouterr().err
    weights.unlink()
    assert main(["verify", str(path), "--resolutions", "32x32"]) == 1
    assert "pass it with --weights" in capsys.readouterr().err
