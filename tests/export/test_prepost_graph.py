"""Pre/post graphs (`export --prepost`): the uint8 photo in, finished maps out, on ONNX Runtime.

Parity is measured against the reference stages on the network the graph wraps, on real photos of
several sizes (image_corpus.real_photos), with the bounds of the parity suite
(tests/integration/parity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from tests.support.image_corpus import real_photos

onnx = pytest.importorskip("onnx")

DEPTH_RMSE = 1e-4  # RMSE / RMS of the reference depth (a random model's depth varies by < 1%)
NORMAL_DEGREES = 0.05  # mean angle
FOREGROUND_MAE = 1e-4


@pytest.fixture(scope="module")
def photos() -> Dict[str, np.ndarray]:
    return real_photos()


@pytest.fixture(scope="module")
def prepost_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from david_infer.export.prepost import wrap_prepost

    path = tmp_path_factory.mktemp("prepost") / "tiny-prepost.onnx"
    wrap_prepost(tiny_multitask_onnx, path)
    return path


@pytest.fixture(scope="module")
def official_prepost_onnx(official_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from david_infer.export.prepost import wrap_prepost

    path = tmp_path_factory.mktemp("prepost") / "tiny-official-prepost.onnx"
    wrap_prepost(official_onnx, path)
    return path


@pytest.fixture(scope="module")
def foreground_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny foreground model whose soft mask is inside (0, 1) (seed 2; seed 0's is clipped to 0
    everywhere) and its pre/post graph taking BGR, exported through the CLI."""
    from david_infer.cli import main
    from david_infer.export import export_onnx

    folder = tmp_path_factory.mktemp("foreground")
    network = folder / "fg.onnx"
    export_onnx("tiny", "foreground", network, seed=2)
    graph = folder / "fg-prepost.onnx"
    assert main(["export", "--prepost", "--from", str(network), "-o", str(graph), "--channel-order", "bgr"]) == 0
    return network, graph


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _parity(reference, graph_maps: Dict[str, np.ndarray]) -> Dict[str, float]:
    out = {}
    if "depth" in graph_maps:
        ref = reference.depth
        out["depth"] = float(np.sqrt(np.mean((graph_maps["depth"] - ref) ** 2)) / np.sqrt(np.mean(ref**2)))
    if "normal" in graph_maps:
        cos = np.clip((graph_maps["normal"] * reference.normal).sum(-1), -1.0, 1.0)
        out["normal"] = float(np.degrees(np.arccos(cos)).mean())
    if "foreground" in graph_maps:
        out["foreground"] = float(np.abs(graph_maps["foreground"] - reference.foreground).mean())
    return out


def _maps(prediction) -> Dict[str, np.ndarray]:
    return {t: getattr(prediction, t) for t in ("depth", "normal", "foreground") if getattr(prediction, t) is not None}


def _check(metrics: Dict[str, float], name: str) -> None:
    bounds = {"depth": DEPTH_RMSE, "normal": NORMAL_DEGREES, "foreground": FOREGROUND_MAE}
    for task, value in metrics.items():
        assert value <= bounds[task], f"{name}: {task} {value:.3g} over {bounds[task]}"


def test_manifest_and_graph_follow_the_contract(prepost_onnx: Path) -> None:
    manifest = json.loads(prepost_onnx.with_suffix(".json").read_text())
    assert manifest["layout"] == "prepost"
    section = manifest["prepost"]
    assert section["input"] == "image" and section["dtype"] == "uint8" and section["axes"] == "NHWC"
    assert (section["channel_order"], section["pipeline"], section["resolution"]) == ("rgb", "antialias", 512)
    assert section["resize"] == "pillow-bilinear-antialias" and section["depth_sign"] == -1
    assert manifest["task_table"]["normal"]["channels"] == 3 and manifest["task_table"]["depth"]["sign"] == -1
    graph = onnx.load(str(prepost_onnx)).graph
    image = graph.input[0]
    assert [i.name for i in graph.input] == ["image"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    assert [o.name for o in graph.output] == ["depth", "normal", "foreground"]
    assert [o["shape"] for o in manifest["outputs"]] == [
        ["batch", "height", "width"],
        ["batch", "height", "width", 3],
        ["batch", "height", "width"],
    ]


def test_every_node_is_one_tensorrt10_parses(prepost_onnx: Path, official_prepost_onnx: Path) -> None:
    from david_infer.export.prepost import tensorrt_ops_table, tensorrt_problems

    assert "onnx-tensorrt" in tensorrt_ops_table()["source"]
    for path in (prepost_onnx, official_prepost_onnx):
        model = onnx.load(str(path))
        assert tensorrt_problems(model) == [], path
        assert not any(
            n.op_type == "Resize" and any(a.name == "antialias" and a.i for a in n.attribute) for n in model.graph.node
        )


def test_the_check_finds_what_tensorrt_refuses() -> None:
    from onnx import TensorProto, helper

    from david_infer.export.prepost import tensorrt_problems

    nodes = [
        helper.make_node("Add", ["u8", "u8"], ["sum"]),  # arithmetic on uint8
        helper.make_node("Cast", ["u8"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1),
        helper.make_node("ReduceSum", ["y", "axes"], ["z"]),  # axes computed, not a constant
        helper.make_node("Shape", ["x"], ["axes"]),
        helper.make_node("Unique", ["z"], ["w"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("u8", TensorProto.UINT8, [1, 3, 4, 4])],
        [
            helper.make_tensor_value_info("w", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("sum", TensorProto.UINT8, None),
        ],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])],
    )
    problems = "\n".join(tensorrt_problems(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])))
    assert "Add node" in problems and "uint8" in problems
    assert "antialias=1" in problems
    assert "ReduceSum" in problems and "must be a constant" in problems
    assert "Unique" in problems


def test_default_pipeline_matches_the_runtime(tiny_multitask_onnx: Path, prepost_onnx: Path, photos) -> None:
    from david_infer import DavidRuntime

    session = _session(prepost_onnx)
    with DavidRuntime(tiny_multitask_onnx, stages="reference") as reference:
        for name, image in photos.items():
            values = session.run(None, {"image": image[None]})
            maps = {task: v[0] for task, v in zip(("depth", "normal", "foreground"), values)}
            assert maps["depth"].shape == image.shape[:2] and maps["normal"].shape == image.shape
            norms = np.linalg.norm(maps["normal"], axis=-1)
            assert np.allclose(norms, 1.0, atol=1e-5)
            _check(_parity(reference.predict(image), maps), name)


def test_official_pipeline_matches_the_runtime(official_onnx: Path, official_prepost_onnx: Path, photos) -> None:
    from david_infer import DavidRuntime

    manifest = json.loads(official_prepost_onnx.with_suffix(".json").read_text())
    assert manifest["prepost"]["pipeline"] == "official" and manifest["prepost"]["resize"] == "opencv-pyrdown-linear"
    assert manifest["inputs"][0]["shape"][0] == 1  # the released files' batch of one
    session = _session(official_prepost_onnx)
    with DavidRuntime(official_onnx, stages="reference") as reference:
        assert reference.pipeline == "official"
        for name in ("portrait", "odd", "uhd"):  # uhd: two pyramid levels
            image = photos[name]
            values = session.run(None, {"image": image[None]})
            maps = {task: v[0] for task, v in zip(("depth", "normal", "foreground"), values)}
            _check(_parity(reference.predict(image), maps), name)


def test_pyramid_kernels_compose_pyrdown() -> None:
    from david_infer.stages.builder import pyramid_kernels

    table = pyramid_kernels()
    assert np.allclose(table.sum(axis=1), 1.0, atol=1e-6)
    signal = np.random.default_rng(0).random(400)
    k = np.array([1, 4, 6, 4, 1]) / 16.0
    twice = np.convolve(np.convolve(signal, k, "same")[::2], k, "same")[::2]  # two pyrDown steps
    c = (table.shape[1] - 1) // 2
    row = table[2, c - 6 : c + 7]
    direct = np.array([row @ signal[4 * p - 6 : 4 * p + 7] for p in range(10, 90)])
    assert np.allclose(direct, twice[10:90], atol=1e-6)


def test_runtime_runs_the_graph_with_its_options(tiny_multitask_onnx: Path, prepost_onnx: Path, photos) -> None:
    from david_infer import DavidRuntime
    from david_infer.errors import InputError

    image = photos["odd"]
    with DavidRuntime(prepost_onnx) as graph, DavidRuntime(tiny_multitask_onnx, stages="reference") as reference:
        assert (graph.pipeline, graph.resolution, graph.post_options.interpolation) == ("antialias", 512, "bicubic")
        assert graph.stages.kind == "graph"
        _check(_parity(reference.predict(image), _maps(graph.predict(image))), "odd")
        batch = graph.predict_batch([photos["portrait"], image, photos["small"], image], batch_size=4)
        for got, source in zip(batch, [photos["portrait"], image, photos["small"], image]):
            single = graph.predict(source)
            assert got.depth.shape == source.shape[:2]
            assert np.allclose(got.depth, single.depth, atol=1e-6)
    with (
        DavidRuntime(prepost_onnx, invert_depth=False, normalize_depth=True, foreground_threshold=0.5) as graph,
        DavidRuntime(
            tiny_multitask_onnx, invert_depth=False, normalize_depth=True, foreground_threshold=0.5, stages="reference"
        ) as reference,
    ):
        got, want = graph.predict(image), reference.predict(image)
        assert got.depth.min() == 0.0 and got.depth.max() == pytest.approx(1.0)
        assert float(np.sqrt(np.mean((got.depth - want.depth) ** 2))) <= DEPTH_RMSE
        assert set(np.unique(got.foreground)) <= {0.0, 1.0}
    for bad in ({"resolution": 256}, {"pipeline": "official"}, {"interpolation": "bilinear"}):
        with pytest.raises(InputError, match="pre/post graph|inside its graph|inside the graph"):
            DavidRuntime(prepost_onnx, **bad)


def test_bgr_graph_and_foreground(foreground_pair: tuple, photos) -> None:
    from david_infer import DavidRuntime

    network, graph = foreground_pair
    manifest = json.loads(graph.with_suffix(".json").read_text())
    assert manifest["prepost"]["channel_order"] == "bgr" and manifest["tasks"] == ["foreground"]
    session = _session(graph)
    assert [o.name for o in session.get_outputs()] == ["foreground"]
    with DavidRuntime(network, stages="reference") as reference, DavidRuntime(graph) as runtime:
        for name in ("landscape", "small"):
            image = photos[name]
            want = reference.predict(image)
            assert 0.0 < want.foreground.min() < want.foreground.max() < 1.0  # not clipped: a real comparison
            got = session.run(None, {"image": np.ascontiguousarray(image[None, ..., ::-1])})[0][0]
            _check(_parity(want, {"foreground": got}), name)
            wrong_order = session.run(None, {"image": image[None]})[0][0]
            assert np.abs(wrong_order - want.foreground).mean() > np.abs(got - want.foreground).mean()
            # the runtime takes RGB (its default) and feeds the graph the BGR it wants
            _check(_parity(want, {"foreground": runtime.predict(image).foreground}), f"runtime {name}")


def test_files_it_cannot_wrap(tmp_path: Path, prepost_onnx: Path) -> None:
    from onnx import TensorProto, helper

    from david_infer.errors import DavidError, ExportError, ModelError
    from david_infer.export.prepost import wrap_prepost

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 this is not protobuf \xff\xff")
    other = tmp_path / "other.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(other))
    cases = [
        (garbage, ModelError, "not a readable ONNX file"),
        (other, ModelError, "expected a DAViD model"),
        (prepost_onnx, ModelError, "already a pre/post graph"),
        (tmp_path / "absent.onnx", ModelError, "not found"),
    ]
    for source, error, message in cases:
        with pytest.raises(error, match=message):
            wrap_prepost(source, tmp_path / "out.onnx")
    with pytest.raises(ExportError, match="must end in .onnx"):
        wrap_prepost(prepost_onnx, tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx", "other.onnx"]  # nothing half-written
    assert issubclass(ModelError, DavidError)


def test_triton_repository_takes_uint8(prepost_onnx: Path, tmp_path: Path) -> None:
    from david_infer.export.triton_repo import write_triton_repo

    folder = write_triton_repo(prepost_onnx, tmp_path / "repo", name="david")
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ]' in config
    assert 'name: "normal" data_type: TYPE_FP32 dims: [ -1, -1, 3 ]' in config
    assert json.loads((folder / "manifest.json").read_text())["layout"] == "prepost"


def test_served_graph_takes_the_photo_bytes(prepost_onnx: Path, photos) -> None:
    import importlib.util

    if importlib.util.find_spec("mlserver") is None:  # not imported here: its protos clash with tritonclient's
        pytest.skip("mlserver is not installed (pip install 'david-infer[serve]')")
    pytest.importorskip("tritonclient.grpc")
    from david_infer import DavidRuntime
    from tests.support.server_process import ServerProcess

    image = photos["small"]
    with DavidRuntime(prepost_onnx) as local:
        want = local.predict(image)
    with ServerProcess(prepost_onnx, ["--max-batch-size", "2"]) as server, DavidRuntime(server.grpc_url) as remote:
        assert remote.contract.layout == "prepost"
        got = remote.predict(image)
    assert np.allclose(got.depth, want.depth, atol=1e-6) and np.allclose(got.normal, want.normal, atol=1e-6)


def test_cli_predict_runs_the_graph(prepost_onnx: Path, tiny_multitask_onnx: Path, tmp_path: Path, photos) -> None:
    from PIL import Image

    from david_infer import DavidRuntime
    from david_infer.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photos["odd"]).save(folder / "rocket.png")
    out = tmp_path / "out"
    assert (
        main(["predict", "-m", str(prepost_onnx), str(folder), "-o", str(out), "--save", "depth", "--no-progress"]) == 0
    )
    depth = np.load(out / "rocket.depth.npy")
    with DavidRuntime(tiny_multitask_onnx, stages="reference") as reference:
        want = reference.predict(photos["odd"]).depth
    assert depth.shape == want.shape
    assert float(np.sqrt(np.mean((depth - want) ** 2)) / np.sqrt(np.mean(want**2))) <= DEPTH_RMSE


@pytest.mark.parametrize("size", [(1, 600), (600, 1), (17, 5), (2000, 31)])
def test_extreme_shapes(size: tuple, tiny_multitask_onnx: Path, prepost_onnx: Path) -> None:
    """One-pixel-thin and very elongated images: windows clamp at both ends of the padded square."""
    from david_infer import DavidRuntime

    image = (np.random.default_rng(1).random(size + (3,)) * 255).astype(np.uint8)
    with DavidRuntime(tiny_multitask_onnx, stages="reference") as reference, DavidRuntime(prepost_onnx) as graph:
        want, got = reference.predict(image), graph.predict(image)
    assert got.depth.shape == size and got.normal.shape == size + (3,)
    _check(_parity(want, _maps(got)), str(size))


def test_wraps_a_released_style_file(tmp_path: Path) -> None:
    """A manifest-less fixed-512 single-task file at opset 17 (depth without a channel axis), as
    Microsoft releases them: recognised from its shapes, wrapped, portable, and matching the
    runtime's official pipeline."""
    from david_infer import DavidRuntime
    from david_infer.export import export_onnx
    from david_infer.export.prepost import tensorrt_problems, wrap_prepost

    released = tmp_path / "depth-model-tiny.onnx"
    export_onnx("tiny", "depth", released, layout="official", opset=17, seed=0)
    released.with_suffix(".json").unlink()
    graph = tmp_path / "depth-prepost.onnx"
    manifest = wrap_prepost(released, graph)
    assert manifest["prepost"]["pipeline"] == "official" and manifest["tasks"] == ["depth"]
    assert manifest["weights"]["origin"] == "released"
    assert tensorrt_problems(onnx.load(str(graph))) == []
    image = (np.random.default_rng(0).random((300, 500, 3)) * 255).astype(np.uint8)
    with DavidRuntime(released, stages="reference") as reference, DavidRuntime(graph) as wrapped:
        _check(_parity(reference.predict(image), {"depth": wrapped.predict(image).depth}), "released")


def test_a_graph_runs_at_its_own_resolution_by_default(tiny_multitask_onnx: Path, tmp_path: Path, photos) -> None:
    """resolution="auto" (the default of DavidRuntime and the CLI) takes the graph's; another is refused."""
    from PIL import Image

    from david_infer import DavidRuntime
    from david_infer.cli import main
    from david_infer.errors import InputError
    from david_infer.export.prepost import wrap_prepost

    graph = tmp_path / "tiny-prepost-384.onnx"
    wrap_prepost(tiny_multitask_onnx, graph, resolution=384)
    image = photos["portrait"]
    with DavidRuntime(graph) as rt, DavidRuntime(tiny_multitask_onnx, resolution=384, stages="reference") as reference:
        assert rt.resolution == 384
        _check(_parity(reference.predict(image), _maps(rt.predict(image))), "portrait at 384")
    assert DavidRuntime(graph, resolution=None).resolution == 384
    with pytest.raises(InputError, match="built for resolution 384; resolution must be 384, 'auto' or None, got 512"):
        DavidRuntime(graph, resolution=512)
    Image.fromarray(image).save(tmp_path / "p.png")
    argv = ["predict", str(tmp_path / "p.png"), "-m", str(graph), "-o", str(tmp_path / "out"), "--save", "depth"]
    assert main([*argv, "--no-progress"]) == 0
    assert np.load(tmp_path / "out" / "p.depth.npy").shape == image.shape[:2]


def test_nodes_are_named_by_stage_and_the_profile_sums_them(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """Every node the builder makes is `pp/<stage>/...`, and benchmarks/prepost_graph.py --profile
    sums ONNX Runtime's kernel times by those stages: the photo's Cast and each output's writer
    in rows of their own."""

    from benchmarks import prepost_graph as bench
    from david_infer.contract import ModelContract
    from david_infer.export.prepost import build_prepost_model

    contract = ModelContract.load(tiny_multitask_onnx)
    network = bench.stand_in_network(contract)
    graph, _ = build_prepost_model(network, contract)
    stages = {"cast", "pre", "input", "post/bands", "post/depth", "post/normal", "post/foreground"}
    staged = [n for n in graph.graph.node if n.name.startswith("pp/") and n.name.rsplit("/", 1)[0][3:] in stages]
    assert len(staged) == len(graph.graph.node) - len(network.graph.node)  # all but the network's
    path = tmp_path / "stand-in.onnx"
    path.write_bytes(graph.SerializeToString())
    rows = bench.profile(graph, path, bench.photo(90, 160), runs=2, threads=1)
    found = {(r["stage"], r["part"]): r["nodes"] for r in rows}
    assert found[("cast", "image size")] == 1
    for task in ("depth", "normal", "foreground"):
        assert found[(f"post/{task}", "writes the outputs")] == 1
    assert {r["stage"] for r in rows} >= stages - {"post/bands"}
    assert all(r["ms"] >= 0 and r["nodes"] > 0 for r in rows)
