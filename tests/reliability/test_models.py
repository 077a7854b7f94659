"""Broken, mismatched and hostile model, manifest, engine and weights files: each gives a clear
ModelError (or WeightsError) naming the file; nothing executes a pickle."""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

from tests.support import REPO

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from david_infer import DavidRuntime  # noqa: E402
from david_infer.errors import ModelError, WeightsError  # noqa: E402
from david_infer.files import sha256_file  # noqa: E402
from david_infer.manifest import manifest_path  # noqa: E402

IMAGE = np.zeros((20, 30, 3), np.uint8)


def _manifest(tiny: Path) -> Dict[str, Any]:
    return json.loads(manifest_path(tiny).read_text())


def _place(folder: Path, name: str, data: bytes, manifest: Optional[Any] = None) -> Path:
    """Write a model file (and its manifest: a dict as JSON, a str as is) into `folder`."""
    path = folder / name
    path.write_bytes(data)
    if manifest is not None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        manifest_path(path).write_text(text)
    return path


def _refused(path: Path, match: str, error: type = ModelError, name: Optional[Path] = None, **kwargs: Any) -> str:
    """DavidRuntime(path) must raise `error` matching `match`, naming `name` (default `path`)."""
    with pytest.raises(error) as err:
        DavidRuntime(path, **{"resolution": 64, **kwargs}).predict(IMAGE)
    message = str(err.value)
    assert str(name or path) in message, message
    assert re.search(match, message), message
    assert err.value.__cause__ is None
    return message


# ------------------------------------------------------------------------- corrupt .onnx files


@pytest.mark.parametrize("with_manifest", [False, True])
@pytest.mark.parametrize("kind", ["random", "half", "first_byte_flipped", "zero"])
def test_corrupt_onnx(tiny_multitask_onnx: Path, tmp_path: Path, kind: str, with_manifest: bool) -> None:
    data = tiny_multitask_onnx.read_bytes()
    broken = {
        "random": np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
        "half": data[: len(data) // 2],
        "first_byte_flipped": bytes([data[0] ^ 0xFF]) + data[1:],
        "zero": b"",
    }[kind]
    path = _place(tmp_path, f"{kind}.onnx", broken, _manifest(tiny_multitask_onnx) if with_manifest else None)
    if kind == "zero":
        _refused(path, r"model file is empty \(0 bytes\)")
    elif with_manifest:  # the manifest's SHA-256 catches it before ONNX Runtime reads a byte
        _refused(path, r"SHA-256 does not match its manifest")
        _refused(path, r"ONNX Runtime cannot load this model", verify=False)
    else:
        _refused(path, r"ONNX Runtime cannot load this model")


def test_manifest_of_another_file(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """Both files valid, but the manifest records another model's SHA-256."""
    other = _manifest(tiny_multitask_onnx)
    other["sha256"] = sha256_file(REPO / "setup.py")
    path = _place(tmp_path, "m.onnx", tiny_multitask_onnx.read_bytes(), other)
    msg = _refused(path, r"SHA-256 does not match its manifest .*m\.json")
    assert "Re-export" in msg


# ------------------------------------------------------------------------------ bad manifests


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", r"not a readable JSON manifest \(JSONDecodeError"),
        ("", r"not a readable JSON manifest"),
        ("[" * 100_000 + "]" * 100_000, r"not a readable JSON manifest \(RecursionError"),  # was a bare RecursionError
        ("\xff\xfe{", r"not a readable JSON manifest"),
        ("[1, 2]", r"not a david-infer manifest"),
        ('{"format": "something-else"}', r"not a david-infer manifest"),
    ],
)
def test_manifest_not_json_or_not_ours(tiny_multitask_onnx: Path, tmp_path: Path, text: str, match: str) -> None:
    path = _place(tmp_path, "m.onnx", tiny_multitask_onnx.read_bytes())
    manifest_path(path).write_bytes(text.encode("latin-1"))
    _refused(path, match, name=manifest_path(path))


def _edit(manifest: Dict[str, Any], edit: str) -> Dict[str, Any]:
    m = json.loads(json.dumps(manifest))
    pre = m["preprocessing"]
    if edit == "version_text":
        m["format_version"] = "abc"  # was a bare ValueError from int()
    elif edit == "version_null":
        m["format_version"] = None  # was a bare TypeError
    elif edit == "version_future":
        m["format_version"] = 99
    elif edit == "no_outputs":
        del m["outputs"]
    elif edit == "inputs_number":
        m["inputs"] = 5
    elif edit == "outputs_strings":
        m["outputs"] = ["depth", "normal"]  # was a bare AttributeError
    elif edit == "names_not_strings":
        m["inputs"][0]["name"] = 7
    elif edit == "stride_zero":
        pre["stride"] = 0
    elif edit == "stride_text":
        pre["stride"] = "16px"  # was a bare ValueError from int()
    elif edit == "vit_negative":
        pre["vit_size"] = -384  # was a ValueError deep inside Pillow on the first image
    elif edit == "unknown_tasks":
        for o in m["outputs"]:
            o["task"] = "albedo"
    return m


@pytest.mark.parametrize(
    "edit, match",
    [
        ("version_text", r"m\.json: manifest format_version must be an integer, got 'abc'"),
        ("version_null", r"m\.json: manifest format_version must be an integer, got None"),
        ("version_future", r"m\.json: manifest format version 99 is newer .*upgrade david-infer"),
        ("no_outputs", r"m\.json: manifest lacks the required key 'outputs'"),
        ("inputs_number", r"m\.json: manifest 'inputs' must be a non-empty list of tensor descriptions"),
        ("outputs_strings", r"m\.json: manifest outputs\[0\] needs a string \"name\", got 'depth'"),
        ("names_not_strings", r"m\.json: manifest inputs\[0\] needs a string \"name\""),
        ("stride_zero", r"m\.json: manifest preprocessing 'stride' must be a positive integer, got 0"),
        ("stride_text", r"m\.json: manifest preprocessing 'stride' must be a positive integer, got '16px'"),
        ("vit_negative", r"m\.json: manifest preprocessing 'vit_size' must be a positive integer, got -384"),
        ("unknown_tasks", r"m\.json: manifest lists no known task"),
    ],
)
def test_manifest_wrong_format(tiny_multitask_onnx: Path, tmp_path: Path, edit: str, match: str) -> None:
    path = _place(tmp_path, "m.onnx", tiny_multitask_onnx.read_bytes(), _edit(_manifest(tiny_multitask_onnx), edit))
    with pytest.raises(ModelError, match=match):
        DavidRuntime(path, resolution=64)


# --------------------------------------------------------------- graphs with the wrong contract


def _graph(inputs: Dict[str, Sequence[Any]], outputs: Dict[str, Sequence[Any]]) -> bytes:
    """A small valid ONNX graph: each output is a Slice of the first input's channels (taking
    `channels` of them), dropping the channel axis for rank-3 outputs."""
    first, first_shape = next(iter(inputs.items()))
    nodes: List[Any] = []
    inits = []
    for i, (name, shape) in enumerate(outputs.items()):
        channels = shape[1] if len(shape) == 4 else 1
        inits += [
            helper.make_tensor(f"s{i}", TensorProto.INT64, [1], [0]),
            helper.make_tensor(f"e{i}", TensorProto.INT64, [1], [channels]),
            helper.make_tensor(f"a{i}", TensorProto.INT64, [1], [1]),
        ]
        sliced = name if len(shape) == 4 else f"{name}_4d"
        nodes.append(helper.make_node("Slice", [first, f"s{i}", f"e{i}", f"a{i}"], [sliced]))
        if len(shape) == 3:
            inits.append(helper.make_tensor(f"q{i}", TensorProto.INT64, [1], [1]))
            nodes.append(helper.make_node("Squeeze", [sliced, f"q{i}"], [name]))
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


R = 512
IN = {"input": (1, 3, R, R)}
RELEASED_MULTI = {"depth": (1, R, R), "normal": (1, 3, R, R), "foreground": (1, 1, R, R)}


def test_contract_graph_control(tmp_path: Path) -> None:
    """The helper's graphs are loadable: the released multitask contract is accepted and runs
    (so the refusals below are about the contract, not the helper)."""
    path = _place(tmp_path, "released.onnx", _graph(dict(IN, **{}), RELEASED_MULTI))
    with DavidRuntime(path, resolution=R) as rt:
        pred = rt.predict(IMAGE)
    assert rt.tasks == ("depth", "normal", "foreground") and pred.depth.shape == (20, 30)


@pytest.mark.parametrize(
    "inputs, outputs, match",
    [
        ({"a": (1, 3, R, R), "b": (1, 3, R, R)}, RELEASED_MULTI, r"no manifest and 2 inputs.*expected a DAViD model"),
        (IN, {"depth": (1, R, R), "normal": (1, 3, R, R)}, r"no manifest and 2 outputs.*expected a DAViD model"),
        (IN, dict(RELEASED_MULTI, extra=(1, 1, R, R)), r"no manifest and 4 outputs.*expected a DAViD model"),
        ({"input": (1, 4, R, R)}, RELEASED_MULTI, r"input 'input' has shape \(1, 4, 512, 512\).*expected a DAViD"),
        (
            {"input": (1, 1, R, R)},
            {"depth": (1, R, R)},
            r"input 'input' has shape \(1, 1, 512, 512\).*expected a DAViD",
        ),
        ({"input": (1, 3, R, 384)}, RELEASED_MULTI, r"input 'input' has shape \(1, 3, 512, 384\).*expected a DAViD"),
        (
            IN,
            {"normal": (1, 2, R, R)},
            r"output 'normal' has shape \(1, 2, 512, 512\); a released DAViD normal output is \(1, 3, 512, 512\)",
        ),
        (
            IN,
            {"depth": (1, 3, R, R), "normal": (1, 3, R, R), "foreground": (1, 1, R, R)},
            r"output 'depth' has shape \(1, 3, 512, 512\); a released DAViD depth output is \(1, 1, 512, 512\)",
        ),
    ],
)
def test_released_style_graph_wrong_contract(tmp_path: Path, inputs: dict, outputs: dict, match: str) -> None:
    """Manifest-less files are recognised from their shapes; anything else is refused at load."""
    path = _place(tmp_path, "graph.onnx", _graph(inputs, outputs))
    _refused(path, match, resolution=R)


def _dynamic_graph(
    normal_channels: int = 3,
    image_channels: int = 3,
    vit: bool = True,
    names: Sequence[str] = ("depth", "normal", "foreground"),
) -> bytes:
    dims = ["batch", image_channels, "height", "width"]
    inputs = {"image": dims, **({"image_384": ["batch", 3, 384, 384]} if vit else {})}
    shapes = [
        ["batch", 1, "height", "width"],
        ["batch", normal_channels, "height", "width"],
        ["batch", 1, "height", "width"],
    ]
    return _graph(inputs, dict(zip(names, shapes)))


@pytest.mark.parametrize(
    "graph, match",
    [
        (
            dict(normal_channels=2),
            r"normal output 'normal' has shape \('batch', 2, 'height', 'width'\), expected \(batch, 3",
        ),
        (dict(image_channels=4), r"input 'image' has shape \('batch', 4, 'height', 'width'\), expected \(batch, 3"),
        (dict(vit=False), r"inputs \['image'\] \(the manifest describes \['image', 'image_384'\]\)"),
        (
            dict(names=("depth", "normals", "fg")),
            r"outputs \['depth', 'normals', 'fg'\] lack \['normal', 'foreground'\]",
        ),
    ],
)
def test_graph_not_matching_its_manifest(tiny_multitask_onnx: Path, tmp_path: Path, graph: dict, match: str) -> None:
    """Our manifest beside a graph of another contract: refused when loaded (it used to fail only on
    the first image, with an ORT feed error or a bare KeyError)."""
    data = _dynamic_graph(**graph)
    manifest = _manifest(tiny_multitask_onnx)
    manifest["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    path = _place(tmp_path, "m.onnx", data, manifest)
    with pytest.raises(ModelError, match=r"m\.onnx: the graph does not match its manifest: .*" + match):
        DavidRuntime(path, resolution=64)


def test_a_manifest_giving_an_output_another_tasks_name_is_refused(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    # depth and foreground (one channel each) swapped in the manifest: it loaded, and predict returned
    # the mask as the depth and the depth as the mask
    manifest = _manifest(tiny_multitask_onnx)
    for output in manifest["outputs"]:
        output["task"] = {"depth": "foreground", "foreground": "depth"}.get(output["task"], output["task"])
    path = _place(tmp_path, "m.onnx", tiny_multitask_onnx.read_bytes(), manifest)
    with pytest.raises(ModelError, match=r"output 'depth' is given the task 'foreground'"):
        DavidRuntime(path, resolution=64)


def test_matching_dynamic_graph_control(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """The same helper graph with the right contract passes the load-time check and runs."""
    data = _dynamic_graph()
    manifest = _manifest(tiny_multitask_onnx)
    manifest["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    with DavidRuntime(_place(tmp_path, "m.onnx", data, manifest), resolution=64) as rt:
        assert rt.predict(IMAGE).normal.shape == (20, 30, 3)


# ------------------------------------------------------------------------------ engine files


@pytest.fixture()
def engine(tiny_multitask_onnx: Path, tmp_path: Path) -> Path:
    """A file standing for a plan, with a genuine engine manifest written by the engine manifest module."""
    from david_infer.backends.tensorrt.engine_manifest import build_engine_manifest
    from david_infer.backends.tensorrt.profiles import compute_profiles
    from david_infer.contract import ModelContract
    from david_infer.manifest import write_manifest

    plan = tmp_path / "m.engine"
    plan.write_bytes(b"serialized plan " * 64)
    manifest = _manifest(tiny_multitask_onnx)
    engine_manifest = build_engine_manifest(
        manifest,
        plan.name,
        sha256_file(plan),
        "10.9.0.34",
        "NVIDIA A100-SXM4-80GB",
        "8.0",
        "none",
        compute_profiles(ModelContract.from_dict(plan, manifest)),
        "fp32",
        1.0,
    )
    write_manifest(manifest_path(plan), engine_manifest)
    return plan


def test_engine_from_another_tensorrt_version(engine: Path) -> None:
    from david_infer.backends.tensorrt.engine_manifest import check_compatible, read_engine_manifest

    engine_manifest = read_engine_manifest(engine)
    check_compatible(engine_manifest, "10.9.0.34", "8.0", engine)  # the version and GPU it was built for
    for here in ("10.8.0.43", "11.0.0.1", "10.9"):
        with pytest.raises(ModelError) as err:
            check_compatible(engine_manifest, here, "8.0", engine)
        msg = str(err.value)
        assert msg.startswith(str(engine)) and "TensorRT 10.9.0.34" in msg and f"TensorRT {here}" in msg
        assert "david-infer build-engine" in msg


def test_engine_replaced_or_engine_manifest_broken(engine: Path) -> None:
    """Checked by DavidRuntime before any TensorRT or GPU is needed."""
    engine.write_bytes(b"another plan")
    _refused(engine, r"SHA-256 does not match its manifest", device="cuda")
    manifest_path(engine).write_text("{truncated")
    _refused(engine, r"not a readable JSON manifest", name=manifest_path(engine), device="cuda")


# ----------------------------------------------------------------------- pickles never executed


class _Payload:
    """Unpickling this creates the file `marker` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(folder: Path, marker: Path) -> List[Path]:
    """The payload as a plain pickle and as a torch.save zip, under names a user might try."""
    torch = pytest.importorskip("torch")
    plain = folder / "weights.safetensors"
    plain.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    zipped = folder / "model.pt"
    torch.save({"x": torch.zeros(1), "evil": _Payload(marker)}, zipped)
    return [plain, zipped]


def test_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """Control: the payload really creates its marker when something unpickles it."""
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


def test_pickled_weights_are_refused_and_never_run(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from david_infer.model import build_model, load_weights

    marker = tmp_path / "PWNED"
    for path in _pickles(tmp_path, marker):
        with pytest.raises(WeightsError, match=re.escape(str(path)) + r": not a readable safetensors file"):
            build_model("tiny", "multitask", weights=str(path))
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            load_weights(build_model("tiny", "depth", seed=0), path)
        # Through the runtime's torch backend, from a manifest naming the pickle as its weights.
        manifest = _manifest(tiny_multitask_onnx)
        manifest["weights"] = {"origin": "file", "path": str(path), "sha256": sha256_file(path)}
        model = _place(tmp_path, "m.onnx", tiny_multitask_onnx.read_bytes(), manifest)
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            DavidRuntime(model, backend="torch", resolution=64)
        assert not marker.exists(), f"{path} was unpickled"


def test_export_refuses_pickled_weights(tmp_path: Path) -> None:
    from david_infer.export import export_onnx

    marker = tmp_path / "PWNED"
    path = _pickles(tmp_path, marker)[1]
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        export_onnx("tiny", "depth", tmp_path / "out.onnx", weights=str(path))
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def _unsafe_loads(source: str) -> List[str]:
    """Calls in `source` that could unpickle: torch.load without weights_only=True, pickle/dill/
    joblib/cloudpickle loads, numpy load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [
                f"import {n}"
                for n in names
                if n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve")
            ]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func.endswith("torch.load") or func == "load" and "weights_only" in kw:
            if kw.get("weights_only") != "True":
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif func.split(".")[-1] in ("load", "loads") and func.split(".")[0] in ("pickle", "dill", "joblib"):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif func.endswith("load") and kw.get("allow_pickle") == "True":
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_scanner_sees_unsafe_loads() -> None:
    """Control: the scanner flags what it must."""
    bad = (
        "import torch, pickle\nimport numpy as np\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
        "pickle.loads(b'')\nnp.load('a.npy', allow_pickle=True)\n"
    )
    assert len(_unsafe_loads(bad)) == 5
    assert _unsafe_loads("import torch\ntorch.load('x', weights_only=True)\n") == []


def test_no_code_unpickles() -> None:
    """Every torch.load in the package, exporter and benchmarks passes weights_only=True; nothing
    imports pickle-family modules."""
    files = [p for d in ("david_infer", "export", "benchmarks") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 20
    problems = {str(p.relative_to(REPO)): bad for p in files if (bad := _unsafe_loads(p.read_text()))}
    assert problems == {}
