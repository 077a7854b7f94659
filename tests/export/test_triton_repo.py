"""`david-infer export --triton-repo`: the config Triton would read, checked against the ONNX file itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from david_infer.errors import InputError, ModelError
from david_infer.export.triton_repo import write_triton_repo

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason='needs pip install "david-infer[triton]"'
)


def _parse(folder: Path):
    """Strict protobuf text-format parse with Triton's own ModelConfig schema (unknown fields fail)."""
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _onnx_shapes(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    shapes = {}
    for value in list(graph.input) + list(graph.output):
        if value.name in initialisers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = (dims, value.type.tensor_type.elem_type)
    return shapes


def _check_against_onnx(config, onnx_path: Path) -> None:
    import onnx

    shapes = _onnx_shapes(onnx_path)
    declared = list(config.input) + list(config.output)
    assert sorted(t.name for t in declared) == sorted(shapes)
    for tensor in declared:
        dims, elem_type = shapes[tensor.name]
        expected = dims[1:] if config.max_batch_size > 0 else dims
        assert list(tensor.dims) == expected, tensor.name
        assert elem_type == onnx.TensorProto.FLOAT
        assert tensor.data_type == model_config_pb2.TYPE_FP32
    if config.max_batch_size > 0:
        assert all(shapes[t.name][0][0] == -1 for t in declared), "batching needs a dynamic batch dim"


def test_dynamic_export_gives_a_batched_cpu_repository(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    folder = write_triton_repo(tiny_multitask_onnx, tmp_path / "repo", name="david")
    assert folder == tmp_path / "repo" / "david"
    config = _parse(folder)
    assert config.name == "david" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    copied = folder / "1" / "model.onnx"
    assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256(tiny_multitask_onnx.read_bytes()).digest()
    _check_against_onnx(config, copied)
    published = json.loads(config.parameters["david_manifest"].string_value)
    original = json.loads(tiny_multitask_onnx.with_suffix(".json").read_text())
    assert published == {**original, "model_file": "model.onnx"}
    assert json.loads((folder / "manifest.json").read_text()) == published
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["david"]  # no staging folder left


def test_released_layout_has_fixed_dims_and_no_batching(official_onnx: Path, tmp_path: Path) -> None:
    folder = write_triton_repo(official_onnx, tmp_path, instance="gpu", instances=2)
    config = _parse(folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    _check_against_onnx(config, folder / "1" / "model.onnx")
    with pytest.raises(InputError, match="fixed batch"):
        write_triton_repo(official_onnx, tmp_path, name="batched", max_batch_size=4)
    assert not (tmp_path / "batched").exists()


def test_a_plan_gets_tensorrt_plan_on_gpu(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    from david_infer.backends.tensorrt.engine_manifest import build_engine_manifest
    from david_infer.contract import read_manifest
    from david_infer.manifest import write_manifest
    from david_infer.shapes import ShapeRange

    plan = tmp_path / "tiny.engine"
    plan.write_bytes(b"plan bytes: the repository copies them as they are")
    ranges = {
        "image": ShapeRange((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 128, 128)),
        "image_384": ShapeRange((1, 3, 384, 384), (2, 3, 384, 384), (4, 3, 384, 384)),
    }
    engine_manifest = build_engine_manifest(
        read_manifest(tiny_multitask_onnx.with_suffix(".json")),
        plan.name,
        hashlib.sha256(plan.read_bytes()).hexdigest(),
        "10.9",
        "test",
        "8.9",
        "none",
        ranges,
        "fp16",
        1.0,
    )
    write_manifest(Path(str(plan) + ".json"), engine_manifest)
    folder = write_triton_repo(plan, tmp_path / "repo", name="david")
    config = _parse(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4  # the profile's largest batch
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert [list(t.dims) for t in config.input] == [[3, -1, -1], [3, 384, 384]]
    with pytest.raises(InputError, match="GPU only"):
        write_triton_repo(plan, tmp_path / "repo", name="cpu", instance="cpu")
    with pytest.raises(InputError, match="up to 4"):
        write_triton_repo(plan, tmp_path / "repo", name="big", max_batch_size=16)


def test_refusals_leave_nothing_half_written(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    write_triton_repo(tiny_multitask_onnx, tmp_path, name="david")
    with pytest.raises(InputError, match="exists"):
        write_triton_repo(tiny_multitask_onnx, tmp_path, name="david")
    write_triton_repo(tiny_multitask_onnx, tmp_path, name="david", instances=3, overwrite=True)
    assert _parse(tmp_path / "david").instance_group[0].count == 3
    with pytest.raises(ModelError, match="not found"):
        write_triton_repo(tmp_path / "missing.onnx", tmp_path, name="missing")
    with pytest.raises(InputError, match="name"):
        write_triton_repo(tiny_multitask_onnx, tmp_path, name="../escape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["david"]


def test_cli_writes_a_repository_for_an_existing_file(tiny_multitask_onnx: Path, tmp_path: Path, capsys) -> None:
    from david_infer.cli import main

    assert (
        main(
            [
                "export",
                "--from",
                str(tiny_multitask_onnx),
                "--triton-repo",
                str(tmp_path),
                "--triton-name",
                "d",
                "--triton-max-batch",
                "2",
            ]
        )
        == 0
    )
    assert _parse(tmp_path / "d").max_batch_size == 2
    assert main(["export", "--from", str(tiny_multitask_onnx)]) == 1
    assert "--triton-repo" in capsys.readouterr().err


def test_the_triton_backend_reads_the_manifest_from_the_config(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """What NVIDIA Triton answers for get_model_config (gRPC as_json / HTTP) carries the manifest."""
    from google.protobuf.json_format import MessageToDict

    from david_infer.backends.triton import _config_manifest

    config = _parse(write_triton_repo(tiny_multitask_onnx, tmp_path, name="david"))
    as_json = MessageToDict(config, preserving_proto_field_name=True)
    expected = json.loads((tmp_path / "david" / "manifest.json").read_text())
    assert _config_manifest({"config": as_json}) == expected  # gRPC wraps it
    assert _config_manifest(as_json) == expected  # HTTP does not
