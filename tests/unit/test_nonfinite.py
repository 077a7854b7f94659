"""NaN/infinity in a model's outputs: a typed error per input, never a plausible-looking file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from david_infer import DavidRuntime
from david_infer.cli import main
from david_infer.errors import ModelError, NonFiniteOutput
from david_infer.files import sha256_file
from david_infer.manifest import manifest_path


@pytest.fixture(scope="module")
def nan_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with depth = depth + 0 * log(mean over channels of the input - 0.5): NaN
    exactly where the input pixel is dark, finite elsewhere (a real graph, run by ONNX Runtime)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(tiny_multitask_onnx))
    graph = model.graph
    producer = next(node for node in graph.node if "depth" in node.output)
    producer.output[list(producer.output).index("depth")] = "depth_raw"
    graph.initializer.extend(
        [
            helper.make_tensor("nan_axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("nan_half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("nan_zero", TensorProto.FLOAT, [], [0.0]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceMean", ["image", "nan_axes"], ["nan_mean"], keepdims=1),
            helper.make_node("Sub", ["nan_mean", "nan_half"], ["nan_shifted"]),
            helper.make_node("Log", ["nan_shifted"], ["nan_log"]),  # NaN for dark pixels (log of < 0)
            helper.make_node("Mul", ["nan_log", "nan_zero"], ["nan_term"]),  # 0 or NaN
            helper.make_node("Add", ["depth_raw", "nan_term"], ["depth"]),
        ]
    )
    onnx.checker.check_model(model)
    out = tmp_path_factory.mktemp("nan") / "tiny-nan.onnx"
    onnx.save(model, str(out))
    manifest = json.loads(manifest_path(tiny_multitask_onnx).read_text())
    manifest["sha256"] = sha256_file(out)
    manifest_path(out).write_text(json.dumps(manifest))
    return out


def _image(dark_columns: int, side: int = 64) -> np.ndarray:
    image = np.full((side, side, 3), 230, np.uint8)
    image[:, :dark_columns] = 10
    return image


def test_nonfinite_output_is_a_typed_error_with_the_share(nan_onnx: Path) -> None:
    with DavidRuntime(nan_onnx, resolution=64) as rt:
        assert np.isfinite(rt.predict(_image(0)).depth).all()
        with pytest.raises(NonFiniteOutput) as info:
            rt.predict(_image(32))
        assert isinstance(info.value, ModelError)
        assert info.value.task == "depth" and info.value.input == "numpy array"
        assert 0.4 < info.value.share < 0.6
        assert "depth output is not finite" in str(info.value) and "allow_nonfinite=True" in str(info.value)
        with pytest.raises(NonFiniteOutput, match="numpy array"):  # the input's own name
            rt.infer([rt.preprocess(_image(64))[1]])
    with DavidRuntime(nan_onnx, resolution=64, allow_nonfinite=True) as rt:
        assert np.isnan(rt.predict(_image(64)).depth).all()


def test_imap_fails_only_the_bad_input_of_a_batch(nan_onnx: Path) -> None:
    with DavidRuntime(nan_onnx, resolution=64) as rt:
        reference = rt.predict(_image(0, 80)).depth
        outcomes = list(rt.imap([_image(0, 80), _image(80, 80), _image(0, 80)], batch_size=3))
    assert isinstance(outcomes[1][1], NonFiniteOutput) and outcomes[1][1].input == "images[1]"
    for _, ok in (outcomes[0], outcomes[2]):
        np.testing.assert_allclose(ok.depth, reference, rtol=1e-5, atol=1e-5)


def test_cli_lists_the_input_as_failed_and_writes_none_of_its_files(
    nan_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(0)).save(folder / "bright.png")
    Image.fromarray(_image(16)).save(folder / "dark.png")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(folder),
            "-m",
            str(nan_onnx),
            "-o",
            str(out),
            "--resolution",
            "64",
            "--no-progress",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert "1 of 2 input(s) written" in captured.out
    assert f"{folder / 'dark.png'}: the model's depth output is not finite" in captured.err
    assert not [p for p in out.iterdir() if p.name.startswith("dark")]
    assert (out / "bright.depth.npy").exists() and (out / "bright.done.json").exists()


def test_allow_nonfinite_must_be_a_bool(tiny_multitask_onnx: Path) -> None:
    from david_infer.errors import InputError

    with pytest.raises(InputError, match="allow_nonfinite"):
        DavidRuntime(tiny_multitask_onnx, resolution=64, allow_nonfinite="yes")
