"""Dynamic and official ONNX export of the tiny model (the export issue extends these)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from david_infer.contract import read_manifest  # noqa: E402
from david_infer.errors import ExportError  # noqa: E402
from david_infer.export import export_onnx  # noqa: E402
from david_infer.files import sha256_file  # noqa: E402
from david_infer.model import build_model  # noqa: E402


def test_dynamic_export_matches_torch(tiny_multitask_onnx: Path) -> None:
    session = ort.InferenceSession(str(tiny_multitask_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "image_384"]
    assert [o.name for o in session.get_outputs()] == ["depth", "normal", "foreground"]
    model = build_model("tiny", "multitask", seed=0)
    for shape in [(1, 3, 32, 32), (3, 3, 48, 80)]:
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        image_384 = np.random.default_rng(1).random((shape[0], 3, 384, 384), dtype=np.float32)
        got = session.run(None, {"image": image, "image_384": image_384})
        with torch.no_grad():
            ref = model(torch.from_numpy(image), torch.from_numpy(image_384))
        for name, value in zip(["depth", "normal", "foreground"], got):
            expected = ref[name].numpy()
            assert value.shape == expected.shape
            assert np.linalg.norm(value - expected) / np.linalg.norm(expected) < 1e-5


def test_manifest_beside_export(tiny_multitask_onnx: Path) -> None:
    manifest = read_manifest(tiny_multitask_onnx.with_suffix(".json"))
    assert manifest["sha256"] == sha256_file(tiny_multitask_onnx)
    assert manifest["tasks"] == ["depth", "normal", "foreground"]
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert manifest["weights"]["origin"] == "random"
    assert "RANDOM" in manifest["weights"]["description"]
    assert manifest["preprocessing"]["channel_order"] == "BGR"


def test_official_layout_has_released_shapes(exported_dir: Path) -> None:
    path = exported_dir / "tiny-official.onnx"
    export_onnx("tiny", "multitask", path, layout="official")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, 3, 512, 512])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("depth", [1, 512, 512]),
        ("normal", [1, 3, 512, 512]),
        ("foreground", [1, 1, 512, 512]),
    ]
    assert json.loads(path.with_suffix(".json").read_text())["layout"] == "official"


def test_bad_arguments_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown variant"):
        export_onnx("huge", "depth", tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx("tiny", "depth", tmp_path / "missing" / "x.onnx")
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx("tiny", "depth", tmp_path / "x.onnx", opset=13)
    with pytest.raises(ExportError, match="opset 26 is not supported: the exporter writes opsets 17 to 25"):
        export_onnx("tiny", "depth", tmp_path / "x.onnx", opset=26)
    assert list(tmp_path.iterdir()) == []
