"""The torch backend's options (precision, channels_last, compile, CUDA graphs, pinned copies) on
the tiny model against its FP32 eager reference, their typed refusals, and the CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from david_infer import DavidRuntime  # noqa: E402
from david_infer.backends.base import Device  # noqa: E402
from david_infer.backends.torch import TorchOptions  # noqa: E402
from david_infer.backends.torch.runner import check_precision  # noqa: E402
from david_infer.cli import main  # noqa: E402
from david_infer.errors import BackendUnavailable, InputError  # noqa: E402
from david_infer.metrics import SAME_ARITHMETIC, Thresholds, compare  # noqa: E402

RES = 64
# bf16 keeps 8 mantissa bits to fp16's 11: its own rounding is 8 times fp16's, and compare allows
# twice the rounding, so the limits are 16 times the fp16 ones
BF16 = Thresholds().scaled(16.0)


def _feeds(batch: int = 2, side: int = RES) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "image": rng.random((batch, 3, side, side), dtype=np.float32),
        "image_384": rng.random((batch, 3, 384, 384), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def reference(tiny_multitask_onnx: Path) -> Dict[str, np.ndarray]:
    with DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES) as rt:
        return rt.runner.run(_feeds())


def _run(model: Path, **options: object) -> Dict[str, np.ndarray]:
    with DavidRuntime(model, backend="torch", resolution=RES, **options) as rt:
        return rt.runner.run(_feeds())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_stays_close_to_fp32(
    tiny_multitask_onnx: Path, reference: Dict[str, np.ndarray], precision: str
) -> None:
    got = _run(tiny_multitask_onnx, precision=precision)
    assert all(v.dtype == np.float32 for v in got.values())
    parity = compare(got, reference, BF16 if precision == "bf16" else None, precision="fp16")
    assert parity.passed, parity.reasons
    assert any(not np.array_equal(got[k], reference[k]) for k in got)  # it did compute in the reduced type


def test_channels_last_is_the_same_arithmetic(tiny_multitask_onnx: Path, reference: Dict[str, np.ndarray]) -> None:
    parity = compare(_run(tiny_multitask_onnx, channels_last=True), reference, SAME_ARITHMETIC)
    assert parity.passed, parity.reasons


def test_compile_runs_once_per_shape_and_records_the_first_call(
    tiny_multitask_onnx: Path, reference: Dict[str, np.ndarray]
) -> None:
    # the "eager" torch.compile backend traces with dynamo without generating code (fast here)
    with DavidRuntime(
        tiny_multitask_onnx,
        backend="torch",
        resolution=RES,
        compile="default",
        compile_backend="eager",
        channels_last=True,
    ) as rt:
        runner = rt.runner
        got = runner.run(_feeds())
        assert compare(got, reference, SAME_ARITHMETIC).passed
        runner.run(_feeds())
        assert list(runner.first_call_seconds) == [((2, 3, RES, RES), (2, 3, 384, 384))]
        runner.run(_feeds(batch=1, side=32))
        assert len(runner.first_call_seconds) == 2 and all(s > 0 for s in runner.first_call_seconds.values())


def test_an_unknown_compile_backend_is_refused_when_opened(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(InputError, match="torch.compile"):
        DavidRuntime(tiny_multitask_onnx, backend="torch", compile="default", compile_backend="no-such-backend")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cuda_graphs": True}, r"cuda_graphs=True needs device='cuda'"),
        ({"pinned": True}, r"pinned=True needs device='cuda'"),
        ({"compile": "reduce-overhead"}, r"compile='reduce-overhead' needs device='cuda'"),
    ],
)
def test_cuda_only_options_are_refused_on_the_cpu(tiny_multitask_onnx: Path, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        DavidRuntime(tiny_multitask_onnx, backend="torch", **options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "fp8"}, r"precision must be one of 'fp32', 'fp16', 'bf16', got 'fp8'"),
        ({"compile": "fastest"}, r"compile must be one of"),
        ({"cuda_graphs": True, "compile": "reduce-overhead"}, r"already replays CUDA graphs"),
        ({"channels_last": "yes"}, r"channels_last must be True or False"),
    ],
)
def test_impossible_combinations_are_typed_errors(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TorchOptions(**options)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # the two CUDA library calls are mocked: the GPU they describe has no bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(BackendUnavailable, match=r"Tesla V100 \(cuda:0\) has no bf16 support"):
        check_precision(torch, Device("cuda"), "bf16")
    check_precision(torch, Device("cuda"), "fp16")  # fp16 is not asked about


def test_compile_true_means_the_default_mode() -> None:
    assert TorchOptions(compile=True).compile == "default" and TorchOptions(compile=None).compile == "off"


def test_cli_passes_the_torch_flags(tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "-m",
            str(tiny_multitask_onnx),
            "--backend",
            "torch",
            "--resolution",
            str(RES),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--precision",
            "bf16",
            "--channels-last",
            "--stages",
            "torch",
            "--json",
            str(out),
        ]
    )
    assert code == 0 and out.exists()
    with pytest.raises(SystemExit):
        main(["bench", "-m", str(tiny_multitask_onnx), "--precision", "fp64"])


def test_cli_refuses_torch_flags_without_the_torch_backend(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    code = main(
        [
            "predict",
            str(tiny_multitask_onnx),
            "-m",
            str(tiny_multitask_onnx),
            "-o",
            str(tmp_path / "o"),
            "--precision",
            "fp16",
            "--resolution",
            str(RES),
            "--no-progress",
        ]
    )
    assert code != 0


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [{"cuda_graphs": True}, {"precision": "fp16", "channels_last": True}, {"precision": "bf16", "cuda_graphs": True}],
)
def test_cuda_options_match_the_cpu_reference(
    tiny_multitask_onnx: Path, reference: Dict[str, np.ndarray], options: dict
) -> None:
    with DavidRuntime(tiny_multitask_onnx, backend="torch", device="cuda", resolution=RES, **options) as rt:
        first = rt.runner.run(_feeds())
        again = rt.runner.run(_feeds())  # a CUDA graph replay gives the captured call's values
    fp16 = options.get("precision") in ("fp16", "bf16")
    thresholds = BF16 if options.get("precision") == "bf16" else (None if fp16 else SAME_ARITHMETIC)
    assert compare(first, reference, thresholds, precision="fp16" if fp16 else "fp32").passed
    assert all(np.array_equal(first[k], again[k]) for k in first)
