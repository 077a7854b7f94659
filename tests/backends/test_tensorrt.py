"""TensorRT backend: everything that needs no GPU, tested here; engine build + run marked `gpu`.

No test fakes a tensorrt module: without TensorRT the CLI and the runner must say so plainly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from david_infer.backends.onnxruntime.runner import tensorrt_provider_options
from david_infer.backends.tensorrt.engine_manifest import (
    build_engine_manifest,
    check_compatible,
    check_plan_sha256,
    profile_ranges,
    read_engine_manifest,
)
from david_infer.backends.tensorrt.profiles import compute_profiles, ort_shape_string
from david_infer.contract import ModelContract, read_manifest
from david_infer.errors import BackendUnavailable, InputError, ModelError
from david_infer.files import sha256_file
from david_infer.manifest import manifest_path, write_manifest
from david_infer.shapes import ShapeRange, check_input_shape, parse_hw


def _contract(manifest: Dict[str, Any]) -> ModelContract:
    return ModelContract.from_dict(Path("m.onnx"), manifest)


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def manifests() -> Dict[str, Dict[str, Any]]:
    """Real manifests from the exporter's own builder, dynamic and official layouts."""
    pytest.importorskip("torch")
    from david_infer.export.onnx_export import build_manifest

    return {
        layout: build_manifest(Path("m.onnx"), "0" * 64, "tiny", "multitask", layout, "fp32", 18, None, 0)
        for layout in ("dynamic", "official")
    }


# -- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, hw",
    [
        ("512", (512, 512)),
        ("512x768", (512, 768)),
        (" 384 X 640 ", (384, 640)),
        (256, (256, 256)),
        ((128, 64), (128, 64)),
    ],
)
def test_parse_hw(text: Any, hw: tuple) -> None:
    assert parse_hw(text) == hw


@pytest.mark.parametrize("text", ["", "512x", "x512", "abc", "0x512", "512x512x3", "-16"])
def test_parse_hw_rejects(text: str) -> None:
    with pytest.raises(InputError, match="--min"):
        parse_hw(text, "--min")


def test_profiles_default_dynamic(manifests: Dict[str, Any]) -> None:
    profiles = compute_profiles(_contract(manifests["dynamic"]))
    assert list(profiles) == ["image", "image_384"]
    assert profiles["image"] == ShapeRange((1, 3, 256, 256), (1, 3, 512, 512), (8, 3, 1024, 1024))
    assert profiles["image_384"] == ShapeRange((1, 3, 384, 384), (1, 3, 384, 384), (8, 3, 384, 384))


def test_profiles_from_resolutions_and_batch(manifests: Dict[str, Any]) -> None:
    profiles = compute_profiles(
        _contract(manifests["dynamic"]), "384x256", "512x768", "1024x1536", max_batch=4, opt_batch=2
    )
    assert profiles["image"] == ShapeRange((1, 3, 384, 256), (2, 3, 512, 768), (4, 3, 1024, 1536))
    assert profiles["image_384"].max == (4, 3, 384, 384)
    assert profiles["image"].contains((3, 3, 400, 1024))
    assert not profiles["image"].contains((5, 3, 512, 512))
    assert not profiles["image"].contains((1, 3, 512))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_hw": "250"}, r"--min 250x250: .*multiples of 16.*try 256x256"),
        ({"max_hw": "1024x1000"}, r"--max 1024x1000: .*multiples of 16"),
        ({"min_hw": "768", "opt_hw": "512"}, r"--min <= --opt <= --max; got 768 <= 512"),
        ({"opt_hw": "512x2048"}, r"widths must satisfy"),
        ({"max_batch": 0}, r"--max-batch 0"),
        ({"max_batch": 2, "opt_batch": 3}, r"optimal batch 3"),
    ],
)
def test_profile_errors(manifests: Dict[str, Any], kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        compute_profiles(_contract(manifests["dynamic"]), **kwargs)


def test_profiles_of_static_official_graph(manifests: Dict[str, Any]) -> None:
    profiles = compute_profiles(_contract(manifests["official"]), max_batch=8)
    assert profiles == {"image": ShapeRange((1, 3, 512, 512), (1, 3, 512, 512), (1, 3, 512, 512))}
    assert compute_profiles(_contract(manifests["official"]), "512", "512", "512")["image"].max == (1, 3, 512, 512)
    with pytest.raises(InputError, match=r"fixed input size 512x512.*--max 1024"):
        compute_profiles(_contract(manifests["official"]), max_hw="1024")


def test_profile_stride_from_the_contract(manifests: Dict[str, Any]) -> None:
    with pytest.raises(ModelError, match="stride"):
        _contract(dict(manifests["dynamic"], preprocessing={"stride": "16px"}))
    coarse = _contract(dict(manifests["dynamic"], preprocessing={"stride": 32}))
    with pytest.raises(InputError, match="multiples of 32"):
        compute_profiles(coarse, "272")


def test_ort_shape_strings(manifests: Dict[str, Any]) -> None:
    profiles = compute_profiles(_contract(manifests["dynamic"]), "256", "512x384", "1024", max_batch=8)
    assert ort_shape_string(profiles, "min") == "image:1x3x256x256,image_384:1x3x384x384"
    assert ort_shape_string(profiles, "opt") == "image:1x3x512x384,image_384:1x3x384x384"
    assert ort_shape_string(profiles, "max") == "image:8x3x1024x1024,image_384:8x3x384x384"


def test_check_input_shape_message() -> None:
    rng = ShapeRange((1, 3, 256, 256), (1, 3, 512, 512), (8, 3, 1024, 1024))
    check_input_shape("image", (8, 3, 1024, 256), rng)
    with pytest.raises(
        InputError, match=r"'image' has shape 1x3x2048x512, outside .*1x3x256x256 to 8x3x1024x1024.*build-engine"
    ):
        check_input_shape("image", (1, 3, 2048, 512), rng)
    with pytest.raises(InputError, match="1x3x512"):
        check_input_shape("image", (1, 3, 512), rng)


# -- ONNX Runtime TensorRT EP options ------------------------------------------------------------


def test_tensorrt_provider_options(manifests: Dict[str, Any], tmp_path: Path) -> None:
    opts = tensorrt_provider_options(_contract(manifests["dynamic"]), tmp_path / "cache", resolution=512, max_batch=4)
    assert opts["trt_profile_min_shapes"] == "image:1x3x512x512,image_384:1x3x384x384"
    assert opts["trt_profile_opt_shapes"] == "image:4x3x512x512,image_384:4x3x384x384"  # opt = the batch sent
    assert opts["trt_profile_max_shapes"] == "image:4x3x512x512,image_384:4x3x384x384"
    assert opts["trt_fp16_enable"] is True and opts["trt_layer_norm_fp32_fallback"] is True
    assert opts["trt_engine_cache_enable"] is True and opts["trt_timing_cache_enable"] is True
    assert Path(opts["trt_engine_cache_path"]).is_dir() and Path(opts["trt_timing_cache_path"]).is_dir()
    assert Path(opts["trt_engine_cache_path"]).parent == tmp_path / "cache"
    assert isinstance(opts["trt_max_workspace_size"], int) and opts["trt_max_workspace_size"] > 0
    # ONNX Runtime's option names: every key is one it parses.
    assert all(k.startswith("trt_") for k in opts)


def test_tensorrt_provider_options_image_resolution_spans_a_range(manifests: Dict[str, Any], tmp_path: Path) -> None:
    """resolution=None (each image at its own size) is not pinned to one size."""
    opts = tensorrt_provider_options(_contract(manifests["dynamic"]), tmp_path, resolution=None, max_batch=2)
    assert opts["trt_profile_min_shapes"] == "image:1x3x256x256,image_384:1x3x384x384"
    assert opts["trt_profile_opt_shapes"] == "image:2x3x512x512,image_384:2x3x384x384"
    assert opts["trt_profile_max_shapes"] == "image:2x3x1024x1024,image_384:2x3x384x384"
    official = tensorrt_provider_options(_contract(manifests["official"]), tmp_path, resolution=None, max_batch=1)
    assert official["trt_profile_max_shapes"] == "image:1x3x512x512"


def test_tensorrt_provider_options_fp16_graph(manifests: Dict[str, Any], tmp_path: Path) -> None:
    fp16 = dict(manifests["dynamic"], precision="fp16")
    opts = tensorrt_provider_options(_contract(fp16), tmp_path, resolution=1024, max_batch=1)
    assert opts["trt_fp16_enable"] is False  # the graph's own types rule (strongly typed)
    assert opts["trt_profile_max_shapes"] == "image:1x3x1024x1024,image_384:1x3x384x384"


def test_tensorrt_provider_options_errors(manifests: Dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="multiples of 16"):
        tensorrt_provider_options(_contract(manifests["dynamic"]), tmp_path, resolution=500, max_batch=1)
    with pytest.raises(InputError, match="--max-batch"):
        tensorrt_provider_options(_contract(manifests["dynamic"]), tmp_path, resolution=512, max_batch=0)
    with pytest.raises(InputError, match="fixed input size 512x512"):
        tensorrt_provider_options(_contract(manifests["official"]), tmp_path, resolution=1024, max_batch=1)


# -- engine precision plan ----------------------------------------------------------------------


def test_precision_plan_per_tensorrt_version() -> None:
    from david_infer.export.tensorrt import plan_precision

    # TensorRT 10: FP16 graph strongly typed (no flags allowed); FP32 graph weakly typed + FP16 flag.
    assert plan_precision("fp16", True, True)[:3] == (True, False, "fp16")
    assert plan_precision("fp32", True, True)[:3] == (False, True, "fp16")
    # TensorRT 11: no FP16 flag; FP16 graph as 10; FP32 graph builds FP32 with a warning.
    assert plan_precision("fp16", True, False)[:3] == (True, False, "fp16")
    fp32 = plan_precision("fp32", True, False, "11.0.0")
    assert (fp32.fp16_flag, fp32.precision) == (False, "fp32")
    assert "11.0.0" in fp32.warning and "FP32 engine" in fp32.warning
    for plan in (plan_precision(p, s, f) for p in ("fp16", "fp32") for s in (True, False) for f in (True, False)):
        assert not (plan.strongly_typed and plan.fp16_flag), (
            "precision flags are not allowed on a strongly typed network"
        )


# -- engine manifest ------------------------------------------------------------------------------------


def _manifest(
    manifest: Dict[str, Any], plan: Path, version: str = "10.9.0.34", cc: str = "8.0", compat: str = "none"
) -> Dict[str, Any]:
    profiles = compute_profiles(_contract(manifest))
    engine_manifest = build_engine_manifest(
        manifest, plan.name, sha256_file(plan), version, "NVIDIA A100-SXM4-80GB", cc, compat, profiles, "fp16", 12.5
    )
    write_manifest(manifest_path(plan), engine_manifest)
    return engine_manifest


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    """A file standing for a plan's bytes: the engine manifest logic only hashes it."""
    path = tmp_path / "m.engine"
    path.write_bytes(b"plan bytes " * 100)
    return path


def test_engine_manifest_written_and_read(manifests: Dict[str, Any], plan: Path) -> None:
    _manifest(manifests["dynamic"], plan)
    assert manifest_path(plan).name == "m.engine.json"
    side = read_engine_manifest(plan)
    assert side["kind"] == "tensorrt" and side["model_file"] == "m.engine"
    assert side["sha256"] == sha256_file(plan)
    assert side["source"]["sha256"] == "0" * 64 and side["source"]["kind"] == "onnx"
    info = side["tensorrt"]
    assert (info["version"], info["compute_capability"], info["hardware_compat"]) == ("10.9.0.34", "8.0", "none")
    assert info["gpu"] == "NVIDIA A100-SXM4-80GB" and info["precision"] == side["precision"] == "fp16"
    assert info["build_seconds"] == 12.5 and info["built_at"].endswith("Z")
    # The ONNX manifest's contract travels with the engine.
    for key in ("inputs", "outputs", "tasks", "preprocessing", "postprocessing", "weights", "variant"):
        assert side[key] == manifests["dynamic"][key]
    assert profile_ranges(side) == compute_profiles(_contract(manifests["dynamic"]))
    check_compatible(side, "10.9.0.34", "8.0", plan)
    check_plan_sha256(plan, side)


def test_engine_manifest_refuses_other_tensorrt_version(manifests: Dict[str, Any], plan: Path) -> None:
    side = _manifest(manifests["dynamic"], plan, version="10.9.0.34")
    with pytest.raises(ModelError) as err:
        check_compatible(side, "11.0.0.1", "8.0", plan)
    msg = str(err.value)
    assert "m.engine" in msg and "TensorRT 10.9.0.34" in msg and "TensorRT 11.0.0.1" in msg
    assert "david-infer build-engine" in msg


def test_engine_manifest_refuses_other_gpu(manifests: Dict[str, Any], plan: Path) -> None:
    side = _manifest(manifests["dynamic"], plan, cc="8.0")
    with pytest.raises(ModelError, match=r"compute capability 8\.0.*this GPU has compute capability 9\.0.*ampere\+"):
        check_compatible(side, "10.9.0.34", "9.0", plan)
    check_compatible(side, "10.9.0.34", "8.0", plan)


def test_hardware_compatible_engine_runs_on_newer_gpus(manifests: Dict[str, Any], plan: Path) -> None:
    side = _manifest(manifests["dynamic"], plan, cc="8.0", compat="ampere+")
    for cc in ("8.0", "8.6", "8.9", "9.0", "10.0"):
        check_compatible(side, "10.9.0.34", cc, plan)
    with pytest.raises(ModelError, match=r"7\.5, older than Ampere"):
        check_compatible(side, "10.9.0.34", "7.5", plan)
    with pytest.raises(ModelError, match="TensorRT 10.8.0"):
        check_compatible(side, "10.8.0", "9.0", plan)  # hardware compat does not cross versions


def test_engine_manifest_detects_replaced_plan(manifests: Dict[str, Any], plan: Path) -> None:
    side = _manifest(manifests["dynamic"], plan)
    plan.write_bytes(b"another plan")
    with pytest.raises(ModelError, match=r"m.engine: SHA-256 .* does not match its engine manifest.*build-engine"):
        check_plan_sha256(plan, side)


def test_engine_manifest_missing_or_wrong_kind(manifests: Dict[str, Any], plan: Path) -> None:
    with pytest.raises(ModelError, match=r"m.engine.json is missing"):
        read_engine_manifest(plan)
    write_manifest(manifest_path(plan), manifests["dynamic"])  # an ONNX manifest, not a engine manifest
    with pytest.raises(ModelError, match="kind is 'onnx'"):
        read_engine_manifest(plan)
    broken = _manifest(manifests["dynamic"], plan)
    del broken["tensorrt"]["profiles"]["image_384"]
    write_manifest(manifest_path(plan), broken)
    with pytest.raises(ModelError, match="no profile range for input 'image_384'"):
        read_engine_manifest(plan)


# -- without TensorRT: clear errors, no traceback, no files -------------------------------------


def test_importing_backend_imports_no_tensorrt() -> None:
    code = (
        "import sys, david_infer.backends.tensorrt, david_infer.backends.tensorrt.runner, "
        "david_infer.backends.onnxruntime.runner, david_infer.commands.build_engine\n"
        "print(sorted(m for m in ('tensorrt', 'cuda', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here; this checks the message without it")
def test_build_engine_cli_without_tensorrt(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from david_infer.cli import main

    out = tmp_path / "tiny.engine"
    rc = main(
        [
            "build-engine",
            str(tiny_multitask_onnx),
            "-o",
            str(out),
            "--max",
            "512",
            "--max-batch",
            "2",
            "--timing-cache",
            str(tmp_path / "timing.cache"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("david-infer build-engine: error: tensorrt is not installed")
    assert 'pip install "david-infer[gpu]"' in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, match",
    [
        (["--min", "250"], "multiples of 16"),
        (["--max", "512", "--opt", "768"], "--min <= --opt <= --max"),
        (["--max-batch", "0"], "--max-batch 0"),
        (["--workspace", "0"], "--workspace 0"),
    ],
)
def test_build_engine_cli_argument_errors(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list, match: str
) -> None:
    from david_infer.cli import main

    out = tmp_path / "tiny.engine"
    assert main(["build-engine", str(tiny_multitask_onnx), "-o", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not out.exists() and not manifest_path(out).exists()


def test_build_engine_cli_needs_manifest(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from david_infer.cli import main

    lone = tmp_path / "lone.onnx"
    lone.write_bytes(tiny_multitask_onnx.read_bytes())
    assert main(["build-engine", str(lone), "-o", str(tmp_path / "lone.engine")]) == 1
    assert "lone.json is missing" in capsys.readouterr().err
    assert main(["build-engine", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "x.engine")]) == 1
    assert "ONNX file not found" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here; this checks the message without it")
def test_open_runner_without_tensorrt(manifests: Dict[str, Any], plan: Path) -> None:
    from david_infer.backends.tensorrt import open_runner

    _manifest(manifests["dynamic"], plan)
    with pytest.raises(BackendUnavailable, match=r'tensorrt is not installed.*pip install "david-infer\[gpu\]"'):
        open_runner(plan, None, "cuda")
    with pytest.raises(InputError, match='device must be "cuda"'):
        open_runner(plan, None, "cpu")
    with pytest.raises(InputError, match="tensorrt backend takes no option 'threads'; valid options: none"):
        open_runner(plan, None, "cuda", threads=2)
    with pytest.raises(ModelError, match="engine file not found"):
        open_runner(plan.with_name("absent.engine"), None, "cuda")
    # DavidRuntime passes resolution and batch size: accepted, checked against the profile first.
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):
        open_runner(plan, None, "cuda", resolution=512, max_batch=8)
    with pytest.raises(
        InputError, match=r"m.engine was built for batches 1..8 and sizes 256x256..1024x1024; resolution 2048"
    ):
        open_runner(plan, None, "cuda", resolution=2048, max_batch=1)
    with pytest.raises(InputError, match=r"batch size 16 is larger.*--max-batch"):
        open_runner(plan, read_engine_manifest(plan), "cuda", resolution=512, max_batch=16)


def test_cuda_python_without_gpu_says_so() -> None:
    """With cuda-python installed but no GPU/driver, the device query is one clear error."""
    pytest.importorskip("cuda.bindings.runtime")
    from david_infer.backends.tensorrt import _cuda

    cudart = _cuda.runtime()
    err, count = cudart.cudaGetDeviceCount()
    if err == cudart.cudaError_t.cudaSuccess and count > 0:
        pytest.skip("a GPU is visible")
    from david_infer.errors import NoGpuError

    # this machine has no driver at all: said as such (not "driver too old", not a bare CUDA code)
    with pytest.raises(NoGpuError, match=r"no NVIDIA driver is installed.*nvidia-smi"):
        _cuda.device_info(0)


# -- on a GPU: real engine build and run -------------------------------------------------------


@pytest.mark.gpu
def test_engine_build_and_run_matches_onnxruntime(tiny_multitask_onnx: Path, tmp_path: Path, requires_gpu: Any) -> None:
    requires_gpu.need("tensorrt")
    requires_gpu.need("cuda.bindings.runtime")
    ort = requires_gpu.need("onnxruntime")
    from david_infer.backends.tensorrt import open_runner
    from david_infer.export.tensorrt import build_engine
    from david_infer.metrics import compare

    engine = tmp_path / "tiny.engine"
    cache = tmp_path / "timing.cache"
    side = build_engine(
        tiny_multitask_onnx, engine, "64", "128", "256x192", max_batch=2, workspace_gb=1, timing_cache=cache
    )
    assert engine.is_file() and cache.is_file() and read_manifest(manifest_path(engine))["sha256"] == side["sha256"]
    session = ort.InferenceSession(str(tiny_multitask_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with open_runner(engine, None, "cuda") as runner:
        assert list(runner.output_names) == ["depth", "normal", "foreground"]
        for shape in [(1, 3, 128, 128), (2, 3, 256, 192), (1, 3, 64, 160)]:
            feeds = {
                "image": rng.random(shape, dtype=np.float32),
                "image_384": rng.random((shape[0], 3, 384, 384), dtype=np.float32),
            }
            ref = dict(zip(runner.output_names, session.run(None, feeds)))
            got = runner.run(feeds)
            for name in runner.output_names:
                assert got[name].shape == ref[name].shape and got[name].dtype == np.float32
            # per-task metrics a broken engine cannot pass (an FP32 graph; TensorRT 10 may pick FP16)
            parity = compare(got, ref, where=f"{shape}: ", precision="fp16")
            assert parity.passed, parity.reasons
        with pytest.raises(InputError, match="outside the range"):
            runner.run(
                {"image": np.zeros((1, 3, 512, 512), np.float32), "image_384": np.zeros((1, 3, 384, 384), np.float32)}
            )


# -- GPU-library failures and precision labels (the TensorRT calls faked, the logic around them real)


class _FakeFlags:
    FP16, TF32 = "FP16", "TF32"


class _FakeConfig:
    def __init__(self) -> None:
        self.set, self.cleared = [], []

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        pass

    def set_flag(self, flag: str) -> None:
        self.set.append(flag)

    def clear_flag(self, flag: str) -> None:
        self.cleared.append(flag)

    def add_optimization_profile(self, profile: Any) -> int:
        return 0


class _FakeBuilder:
    def create_builder_config(self) -> _FakeConfig:
        return _FakeConfig()

    def create_optimization_profile(self) -> Any:
        class Profile:
            def set_shape(self, *args: Any) -> None:
                pass

        return Profile()


def _fake_trt(builder_factory: Any) -> Any:
    import types

    return types.SimpleNamespace(
        __version__="10.9.0.34",
        BuilderFlag=_FakeFlags,
        Builder=builder_factory,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
        HardwareCompatibilityLevel=types.SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS"),
    )


def test_builder_null_factory_is_a_clear_error(
    tiny_multitask_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT's bindings raise a bare TypeError when the C++ factory returns null (CUDA could not
    start): the builder says what could not be made, on which GPU, and what to check."""
    from david_infer.backends.tensorrt import _cuda
    from david_infer.export import tensorrt as builder

    def null_builder(logger: Any) -> Any:
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(_cuda, "tensorrt", lambda *a: _fake_trt(null_builder))
    monkeypatch.setattr(_cuda, "logger", lambda: object())
    monkeypatch.setattr(_cuda, "device_info", lambda index: ("NVIDIA A100-SXM4-80GB", "8.0"))
    monkeypatch.setattr(_cuda, "set_device", lambda index: None)
    out = tmp_path / "m.engine"
    with pytest.raises(
        BackendUnavailable,
        match=r"could not create a builder on NVIDIA A100-SXM4-80GB "
        r"\(pybind11.*nullptr\): CUDA could not start.*nvidia-smi",
    ):
        builder.build_engine(tiny_multitask_onnx, out, max_hw="512", max_batch=2)
    assert not out.exists() and not manifest_path(out).exists()


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_cleared_unless_asked(manifests: Dict[str, Any], tf32: bool) -> None:
    from david_infer.export.tensorrt import NetworkPlan, _config

    profiles = compute_profiles(_contract(manifests["dynamic"]))
    config = _config(_fake_trt(None), _FakeBuilder(), NetworkPlan(True, False, "fp32"), profiles, 1.0, "none", tf32)
    assert (config.set, config.cleared) == ((["TF32"], []) if tf32 else ([], ["TF32"]))


def test_engine_from_another_gpu_model_of_the_same_capability_warns(manifests: Dict[str, Any], plan: Path) -> None:
    from david_infer.errors import DavidWarning

    side = _manifest(manifests["dynamic"], plan)  # built on an A100 (8.0)
    with pytest.warns(
        DavidWarning, match=r"runs on NVIDIA A30, another GPU model.*tuned for NVIDIA A100.*build-engine"
    ):
        check_compatible(side, "10.9.0.34", "8.0", plan, gpu_name="NVIDIA A30")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible(side, "10.9.0.34", "8.0", plan, gpu_name="NVIDIA A100-SXM4-80GB")
