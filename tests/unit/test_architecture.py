"""The runtime contract: the typed model contract, the backend interface and its registry, typed
backend options, and the one batching path (`DavidRuntime.imap`)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from david_infer import DavidRuntime, InputError, ModelError  # noqa: E402
from david_infer.backends import get_backend, register_backend  # noqa: E402
from david_infer.backends.base import Backend, BackendOptions, Device, Runner, Workload, parse_device  # noqa: E402
from david_infer.contract import GraphIO, ModelContract  # noqa: E402
from david_infer.manifest import manifest_path  # noqa: E402
from david_infer.stages import PostOptions  # noqa: E402

RES = 64


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * (i % 3), 56, 3), dtype=np.uint8) for i in range(n)]


# ---------------------------------------------------------------------------------- contract


def test_contract_parsed_once_typed_and_frozen(tiny_multitask_onnx: Path) -> None:
    contract = ModelContract.load(tiny_multitask_onnx)
    assert contract.tasks == ("depth", "normal", "foreground")
    assert contract.image_input == "image" and contract.vit_input == "image_384"
    assert contract.output_names == {"depth": "depth", "normal": "normal", "foreground": "foreground"}
    assert contract.fixed_resolution is None and contract.fixed_batch is None
    assert contract.weights.origin == "random" and contract.weights.seed == 0
    assert contract.format_version == 1 and contract.variant == "tiny"
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.stride = 8  # type: ignore[misc]
    assert contract.as_dict() == json.loads(manifest_path(tiny_multitask_onnx).read_text())


def test_contract_unknown_version_is_a_clear_error(tiny_multitask_onnx: Path) -> None:
    data = json.loads(manifest_path(tiny_multitask_onnx).read_text())
    with pytest.raises(
        ModelError,
        match=r"m\.json: manifest format version 7 is newer than this david-infer "
        r"understands \(1\); upgrade david-infer",
    ):
        ModelContract.from_dict(Path("m.onnx"), {**data, "format_version": 7})


def test_runtime_validates_contract_and_resolution_before_opening(
    tiny_multitask_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolution the contract refuses fails before the backend opens anything."""
    opened = []
    backend = get_backend("onnxruntime")
    monkeypatch.setattr(backend, "open", lambda self, *a: opened.append(a))
    with pytest.raises(InputError, match="multiple of 16"):
        DavidRuntime(tiny_multitask_onnx, resolution=100)
    assert opened == []


def test_recognised_released_contract(official_onnx_bare: Path) -> None:
    with DavidRuntime(official_onnx_bare) as rt:
        assert rt.contract.released and rt.contract.fixed_resolution == 512
        assert rt.contract.layout == "official" and rt.pipeline == "official"


@pytest.fixture()
def official_onnx_bare(official_onnx: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "released.onnx"
    bare.write_bytes(official_onnx.read_bytes())
    return bare


# ------------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    "text, kind, index", [("cpu", "cpu", 0), ("CUDA", "cuda", 0), ("gpu", "cuda", 0), ("cuda:3", "cuda", 3)]
)
def test_parse_device(text: str, kind: str, index: int) -> None:
    assert parse_device(text) == Device(kind, index)


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cuda:", "", "cpu:0"])
def test_parse_device_rejects(text: str) -> None:
    with pytest.raises(InputError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        parse_device(text)


# --------------------------------------------------------------------- a registered backend


@dataclasses.dataclass(frozen=True)
class _MeanOptions(BackendOptions):
    scale: float = 1.0


class _MeanRunner(Runner):
    """A pure-numpy 'model': depth = scale x the mean of the image channels (so the runtime's
    pre/postprocessing can be checked against a known function of the input)."""

    name = "mean"

    def __init__(self, contract: ModelContract, scale: float) -> None:
        self._io = GraphIO(contract.inputs, contract.outputs)
        self.scale = scale
        self.calls: list = []

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        image = feeds["image"]
        self.calls.append(image.shape[0])
        return {"depth": self.scale * image.mean(axis=1, keepdims=True)}


class _MeanBackend(Backend):
    name = "mean"
    title = "numpy mean"
    suffixes = (".mean",)
    devices = ("cpu",)
    Options = _MeanOptions

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        assert isinstance(contract, ModelContract) and workload == Workload(32, 2)
        return _MeanRunner(contract, self.options.scale)


def test_registered_backend_predicts(tmp_path: Path) -> None:
    register_backend("mean", _MeanBackend)
    model = tmp_path / "depth-mean.mean"
    model.write_bytes(b"no weights needed")
    manifest_path(model).write_text(
        json.dumps(
            {
                "format": "david-infer-manifest",
                "format_version": 1,
                "tasks": ["depth"],
                "inputs": [{"name": "image", "shape": ["batch", 3, "height", "width"]}],
                "outputs": [{"name": "depth", "task": "depth", "shape": ["batch", 1, "height", "width"]}],
            }
        )
    )
    gray = np.full((32, 32), 200, np.uint8)
    with DavidRuntime(model, resolution=32, batch_size=2, scale=2.0, invert_depth=False) as rt:
        assert rt.backend == "mean" and rt.tasks == ("depth",)
        pred = rt.predict(gray)
        # BGR in [0, 1] averaged, times 2: the runtime's preprocessing and postprocessing ran
        np.testing.assert_allclose(pred.depth, 2 * 200 / 255, rtol=1e-5)
        preds = rt.predict_batch([gray, gray // 2, gray // 4])
        assert rt.runner.calls[-2:] == [2, 1]  # batches of two, then the rest
        np.testing.assert_allclose([p.depth.mean() for p in preds], [2 * v / 255 for v in (200, 100, 50)], rtol=1e-5)


def test_unknown_backend_lists_the_registered_ones(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(Exception, match="unknown backend 'onnxrt'; expected one of auto, onnxruntime, torch"):
        DavidRuntime(tiny_multitask_onnx, backend="onnxrt")


# -------------------------------------------------------------------- typed options and arguments


@pytest.fixture()
def fake_engine(tmp_path: Path) -> Path:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    return engine


@pytest.mark.parametrize(
    "backend, valid", [("onnxruntime", "intra_op_threads"), ("torch", "precision"), ("tensorrt", "none")]
)
def test_unknown_backend_option_fails_on_every_backend(
    tiny_multitask_onnx: Path, fake_engine: Path, backend: str, valid: str
) -> None:
    model = fake_engine if backend == "tensorrt" else tiny_multitask_onnx
    with pytest.raises(InputError, match=rf"takes no option 'intra_op_num_thread'.*{valid}"):
        DavidRuntime(
            model,
            backend=backend,
            device="cuda" if backend == "tensorrt" else "cpu",
            backend_options={"intra_op_num_thread": 2},
        )


def test_misspelled_runtime_arguments_name_the_valid_ones(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"'resolutoin' \(did you mean 'resolution'\?\), 'invert_dpeth' "
        r"\(did you mean 'invert_depth'\?\)",
    ):
        DavidRuntime(tiny_multitask_onnx, resolutoin=256, invert_dpeth=False)
    with pytest.raises(InputError, match=r"'intra_op_num_thread' \(did you mean 'intra_op_threads'\?\)"):
        DavidRuntime(tiny_multitask_onnx, intra_op_num_thread=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threads": 0}, "threads must be a positive integer or None, got 0"),
        ({"threads": -3}, "threads must be a positive integer or None, got -3"),
        ({"intra_op_threads": "lots"}, "intra_op_threads must be a positive integer or None, got 'lots'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"invert_depth": "no"}, "invert_depth must be True or False"),
        ({"post": PostOptions(), "normalize_depth": True}, "either as post= or as keyword arguments"),
    ],
)
def test_invalid_arguments_are_typed_errors(tiny_multitask_onnx: Path, kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        DavidRuntime(tiny_multitask_onnx, resolution=RES, **kwargs)


def test_post_options_object_equals_keywords(tiny_multitask_onnx: Path) -> None:
    image = _images(1)[0]
    with (
        DavidRuntime(
            tiny_multitask_onnx, resolution=RES, post=PostOptions(invert_depth=False, normalize_depth=True)
        ) as a,
        DavidRuntime(tiny_multitask_onnx, resolution=RES, invert_depth=False, normalize_depth=True) as b,
    ):
        assert a.post_options == b.post_options and a.post_options.interpolation == "bicubic"
        np.testing.assert_array_equal(a.predict(image).depth, b.predict(image).depth)


# ------------------------------------------------------------------------------------ imap


def test_imap_in_order_with_errors_in_place(tiny_runtime: DavidRuntime) -> None:
    images = _images(7)
    inputs = images[:3] + ["/no/such/photo.jpg"] + images[3:]
    out = list(tiny_runtime.imap(inputs, batch_size=3))
    assert [item is inp for (item, _), inp in zip(out, inputs)] == [True] * 8
    assert isinstance(out[3][1], InputError) and "/no/such/photo.jpg" in str(out[3][1])
    singles = [tiny_runtime.predict(image) for image in images]
    got = [p for _, p in out if not isinstance(p, Exception)]
    for a, b in zip(got, singles):
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.normal, b.normal, rtol=1e-5, atol=1e-5)


def test_imap_memory_is_bounded_by_the_queue(tiny_runtime: DavidRuntime) -> None:
    """However long the input stream, the reader stays at most prefetch + 3 x batch ahead."""
    pulled = [0]
    consumed = [0]
    ahead = []
    image = _images(1)[0]

    def stream() -> Iterator[np.ndarray]:
        for _ in range(60):
            pulled[0] += 1
            ahead.append(pulled[0] - consumed[0])
            yield image

    for _ in tiny_runtime.imap(stream(), batch_size=2, prefetch=3):
        consumed[0] += 1
    assert consumed[0] == 60
    assert max(ahead) <= 3 + 3 * 2 + 1


def test_imap_early_close_stops_the_reader(tiny_runtime: DavidRuntime) -> None:
    pulled = [0]

    def endless() -> Iterator[np.ndarray]:
        image = _images(1)[0]
        while True:
            pulled[0] += 1
            yield image

    before = threading.active_count()
    stream = tiny_runtime.imap(endless(), batch_size=2, prefetch=2)
    next(stream)
    stream.close()
    seen = pulled[0]
    assert threading.active_count() <= before
    assert pulled[0] == seen and seen < 20


def test_imap_mixed_sizes_at_image_resolution(tiny_multitask_onnx: Path) -> None:
    """resolution=None: only same-sized squares share a batch; order and results still hold."""
    images = [np.full((s, s, 3), v, np.uint8) for s, v in ((32, 10), (32, 20), (48, 30), (32, 40))]
    with DavidRuntime(tiny_multitask_onnx, resolution=None) as rt:
        out = [p for _, p in rt.imap(images, batch_size=4)]
        assert [p.depth.shape for p in out] == [(32, 32), (32, 32), (48, 48), (32, 32)]
        np.testing.assert_allclose(out[2].depth, rt.predict(images[2]).depth, rtol=1e-5, atol=1e-5)


def test_imap_iterable_failure_ends_the_stream(tiny_runtime: DavidRuntime) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield _images(1)[0]
        raise OSError("camera unplugged")

    stream = tiny_runtime.imap(broken(), batch_size=1)
    with pytest.raises(OSError, match="camera unplugged"):
        list(stream)


@pytest.mark.parametrize("good", [3, 6])
def test_imap_yields_every_input_read_before_the_source_failed(tiny_runtime: DavidRuntime, good: int) -> None:
    """The old code dropped the batch in hand: 2 of 6 good items yielded for good=6, 0 of 3 for good=3."""
    images = _images(good)
    inputs: List[Any] = [*images[:2], "/no/such/photo.jpg", *images[2:]]

    def source() -> Iterator[Any]:
        yield from inputs
        raise OSError("camera unplugged")

    got: List[Any] = []
    stream = tiny_runtime.imap(source(), batch_size=4)
    with pytest.raises(OSError, match="camera unplugged"):
        for item in stream:
            got.append(item)
    assert [item for item, _ in got] == inputs  # in order, none dropped
    assert isinstance(got[2][1], InputError)  # the bad one with its own error
    assert all(not isinstance(p, Exception) for i, (_, p) in enumerate(got) if i != 2)
    assert next(stream, None) is None  # ended
