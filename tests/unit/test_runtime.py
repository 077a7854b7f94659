"""DavidRuntime: consistency across input forms, batching, threads and backends; the released
files' contract; the official runtime's preprocessing; model-file errors."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

from david_infer import BackendUnavailable, DavidRuntime, InputError, ModelError  # noqa: E402
from david_infer.inputs import decode  # noqa: E402
from david_infer.resample import square_geometry  # noqa: E402
from david_infer.stages import PostOptions  # noqa: E402
from david_infer.stages.reference import finish_maps, network_inputs  # noqa: E402

RES = 64
TASKS = ("depth", "normal", "foreground")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.astronaut()[20:460, 60:380]  # 440x320, portrait: padding on x


@pytest.fixture(scope="module")
def rt(tiny_runtime: DavidRuntime) -> DavidRuntime:
    assert tiny_runtime.resolution == RES
    return tiny_runtime


@pytest.fixture(scope="module")
def released_dir(official_onnx: Path, exported_dir: Path) -> Path:
    """Manifest-less copies named like the released files (multi-task and single-task depth)."""
    from david_infer.export import export_onnx

    folder = exported_dir / "released"
    folder.mkdir(exist_ok=True)
    shutil.copy(official_onnx, folder / "multi-task-model-vitl16_384.onnx")
    depth = exported_dir / "tiny-depth-official.onnx"
    if not depth.exists():
        export_onnx("tiny", "depth", depth, layout="official", seed=0)
    shutil.copy(depth, folder / "depth-model-vitb16_384.onnx")
    return folder


def official_padding(h: int, w: int) -> tuple:
    """The official runtime's padding, written out: (side, top, bottom, left, right)."""
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return side, top, side - h - top, left, side - w - left


def assert_same(a, b, atol: float = 1e-5) -> None:
    for task in TASKS:
        x, y = getattr(a, task), getattr(b, task)
        assert (x is None) == (y is None), task
        if x is not None:
            np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=task)


# ----------------------------------------------------------------------------- consistency


def test_same_photo_in_every_form_gives_the_same_result(
    rt: DavidRuntime, tiny_multitask_onnx: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    ref = rt.predict(photo)
    assert ref.depth.shape == photo.shape[:2]
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    assert_same(ref, rt.predict(Image.fromarray(photo)), atol=0)
    assert_same(ref, rt.predict(path), atol=0)
    assert_same(ref, rt.predict(str(path)), atol=0)
    with DavidRuntime(tiny_multitask_onnx, resolution=RES, channel_order="bgr") as bgr:
        pred = bgr.predict(np.ascontiguousarray(photo[..., ::-1]))
        assert_same(ref, pred, atol=0)
        np.testing.assert_array_equal(pred.image, photo)
    # Not vacuous: the wrong channel order changes the result.
    assert np.abs(rt.predict(np.ascontiguousarray(photo[..., ::-1])).depth - ref.depth).max() > 1e-4


def test_predict_batch_equals_predict(rt: DavidRuntime, photo: np.ndarray) -> None:
    images = [photo, photo[:200], Image.fromarray(photo).convert("L"), photo[::-1, :, :].copy(), photo[50:60, :90]]
    batched = rt.predict_batch(images, batch_size=3)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        assert_same(rt.predict(image), got, atol=1e-5)


def test_predict_batch_edge_cases(rt: DavidRuntime, photo: np.ndarray) -> None:
    assert rt.predict_batch([]) == []
    from_generator = rt.predict_batch(image for image in [photo, photo[:100]])
    assert [p.depth.shape for p in from_generator] == [photo.shape[:2], (100, photo.shape[1])]
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        rt.predict_batch([photo], batch_size=0)
    # numpy's integers are integers ("must be a positive integer, got np.int64(2)")
    assert len(rt.predict_batch([photo, photo], batch_size=np.int64(2))) == 2


def test_predict_batch_at_image_resolution(tiny_multitask_onnx: Path, photo: np.ndarray) -> None:
    """resolution=None: each image runs at its own size rounded to 16; mixed sizes still work."""
    with DavidRuntime(tiny_multitask_onnx, resolution=None) as dyn:
        images = [photo[:64, :48], photo[:64, :48].copy(), photo[:100, :70]]
        batched = dyn.predict_batch(images, batch_size=3)
        for image, got in zip(images, batched):
            assert got.depth.shape == image.shape[:2]
            assert_same(dyn.predict(image), got)


def test_four_threads_equal_one(rt: DavidRuntime, photo: np.ndarray) -> None:
    images = [photo, photo[:300], photo[100:, 40:], photo.mean(axis=2).astype(np.uint8)] * 2
    expected = [rt.predict(image) for image in images]
    results: dict = {}
    errors: list = []

    def work(worker: int) -> None:
        try:
            for i in range(worker, len(images), 4):
                results[i] = rt.predict(images[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == len(images)
    for i, ref in enumerate(expected):
        assert_same(ref, results[i], atol=0)


def test_onnxruntime_and_torch_agree(tiny_multitask_onnx: Path, photo: np.ndarray) -> None:
    pytest.importorskip("torch")
    ort_pred = DavidRuntime(tiny_multitask_onnx, resolution=RES).predict(photo)
    with DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES) as torch_rt:
        assert torch_rt.runner.name == "torch"
        assert_same(ort_pred, torch_rt.predict(photo), atol=1e-4)


# ---------------------------------------------------------------------------- output options


def test_depth_and_foreground_options(tiny_multitask_onnx: Path, rt: DavidRuntime, photo: np.ndarray) -> None:
    ref = rt.predict(photo)
    with DavidRuntime(
        tiny_multitask_onnx,
        resolution=RES,
        invert_depth=False,
        normalize_depth=True,
        foreground_threshold=0.5,
        interpolation="bilinear",
    ) as other:
        pred = other.predict(photo)
    assert pred.depth.min() == 0.0 and pred.depth.max() == pytest.approx(1.0)
    assert ref.depth_inverse is True and pred.depth_inverse is False  # visualisation reads this
    # Not inverted: the raw output, so normalised depth correlates negatively with the default one.
    assert np.corrcoef(pred.depth.ravel(), ref.depth.ravel())[0, 1] < -0.99
    assert set(np.unique(pred.foreground)) <= {0.0, 1.0}
    assert np.abs(np.linalg.norm(pred.normal, axis=-1) - 1).max() < 1e-3


def test_postprocess_equals_resize_square_then_crop() -> None:
    """Resampling the crop box equals the official "resize to the padded square, crop" to 1e-5."""
    rng = np.random.default_rng(0)
    outputs = {
        "depth": rng.standard_normal((1, 64, 64)).astype(np.float32),
        "normal": rng.standard_normal((3, 64, 64)).astype(np.float32),
        "foreground": rng.uniform(-0.2, 1.2, (1, 64, 64)).astype(np.float32),
    }
    g = square_geometry(150, 97, 64)
    got = finish_maps(outputs, g, PostOptions(invert_depth=False))

    side, top, _, left, _ = official_padding(150, 97)

    def square_then_crop(plane: np.ndarray) -> np.ndarray:
        full = np.asarray(Image.fromarray(plane).resize((side, side), Image.Resampling.BICUBIC))
        return full[top : top + 150, left : left + 97]

    np.testing.assert_allclose(got["depth"], square_then_crop(outputs["depth"][0]), atol=1e-5)
    np.testing.assert_allclose(got["foreground"], np.clip(square_then_crop(outputs["foreground"][0]), 0, 1), atol=1e-5)
    n = np.stack([square_then_crop(c) for c in outputs["normal"]], axis=-1)
    np.testing.assert_allclose(got["normal"], n / np.linalg.norm(n, axis=-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("shape", [(301, 500), (500, 300), (77, 34)])
def test_antialias_preprocess_equals_padded_square(shape: tuple) -> None:
    """Resizing without building the padded square equals Pillow on the padded square (1 level)."""
    h, w = shape
    a = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    g = square_geometry(h, w, 128)
    _, top, bottom, left, right = official_padding(h, w)
    square = np.pad(a, ((top, bottom), (left, right), (0, 0)), mode="edge")
    ref = np.asarray(Image.fromarray(square).resize((128, 128), Image.Resampling.BILINEAR, reducing_gap=3.0))
    image, _ = network_inputs(decode(a), g, "antialias", None)
    got = np.rint(image[::-1].transpose(1, 2, 0) * 255).astype(int)  # BGR (3, R, R) -> RGB levels
    assert np.abs(got - ref.astype(int)).max() <= 1


# ------------------------------------------------------------ the released files' contract


def _naive_pyr_down(a: np.ndarray) -> np.ndarray:
    """cv2.pyrDown written plainly on a materialised float array (reflect-101 border)."""
    k = np.array([1, 4, 6, 4, 1], np.float64) / 16
    for axis in (0, 1):
        n = a.shape[axis]
        padded = np.pad(a, [(2, 2) if i == axis else (0, 0) for i in range(a.ndim)], mode="reflect")
        acc = sum(k[j] * np.take(padded, np.arange(j, j + n), axis=axis) for j in range(5))
        a = np.take(acc, np.arange(0, n, 2), axis=axis)
    return a


def _naive_linear(a: np.ndarray, size: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR written plainly."""
    for axis in (0, 1):
        n = a.shape[axis]
        fx = (np.arange(size) + 0.5) * n / size - 0.5
        sx = np.floor(fx).astype(int)
        f = fx - sx
        f[sx < 0], sx[sx < 0] = 0, 0
        top = sx >= n - 1
        f[top], sx[top] = 0, n - 1
        shape = [1] * a.ndim
        shape[axis] = size
        a0, a1 = np.take(a, sx, axis=axis), np.take(a, np.minimum(sx + 1, n - 1), axis=axis)
        a = a0 + (a1 - a0) * f.reshape(shape)
    return a


def _naive_cubic(a: np.ndarray, out_h: int, out_w: int, coef: float = -0.75) -> np.ndarray:
    """cv2.resize INTER_CUBIC of a 2-D float array, written plainly (replicated border)."""
    for axis, out_n in ((0, out_h), (1, out_w)):
        n = a.shape[axis]
        fx = (np.arange(out_n) + 0.5) * n / out_n - 0.5
        sx = np.floor(fx).astype(int)
        x = fx - sx
        w = [
            ((coef * (x + 1) - 5 * coef) * (x + 1) + 8 * coef) * (x + 1) - 4 * coef,
            ((coef + 2) * x - (coef + 3)) * x * x + 1,
            ((coef + 2) * (1 - x) - (coef + 3)) * (1 - x) * (1 - x) + 1,
        ]
        w.append(1 - w[0] - w[1] - w[2])
        shape = [1, 1]
        shape[axis] = out_n
        a = sum(np.take(a, np.clip(sx - 1 + k, 0, n - 1), axis=axis) * w[k].reshape(shape) for k in range(4))
    return a


def _official_reference(session, bgr01: np.ndarray) -> dict:
    """The official runtime's steps, plainly: float pad, pyrDown while > 1536, bilinear to 512,
    run, INTER_CUBIC back to the square, crop, negate depth, renormalise normals, clip mask."""
    h, w = bgr01.shape[:2]
    side, top, bottom, left, right = official_padding(h, w)
    x = np.pad(bgr01, ((top, bottom), (left, right), (0, 0)), mode="edge")
    while x.shape[0] > 1536 and x.shape[1] > 1536:
        x = _naive_pyr_down(x)
    x = _naive_linear(x, 512).transpose(2, 0, 1)[None].astype(np.float32)
    depth, normal, foreground = session.run(None, {session.get_inputs()[0].name: x})

    def back(plane: np.ndarray) -> np.ndarray:
        return _naive_cubic(plane.astype(np.float64), side, side)[top : top + h, left : left + w]

    n = np.stack([back(c) for c in normal[0]], axis=-1)
    return {
        "depth": -back(depth[0]),
        "normal": n / (np.linalg.norm(n, axis=-1, keepdims=True) + 1e-8),
        "foreground": np.clip(back(foreground[0, 0]), 0, 1),
    }


@pytest.mark.parametrize("size", [(1700, 1000), (300, 420)])
def test_released_contract_agrees_with_the_official_runtime(
    official_onnx: Path, photo: np.ndarray, size: tuple
) -> None:
    """End to end against a plain re-implementation of the official runtime's steps."""
    import onnxruntime

    image = np.asarray(Image.fromarray(photo).resize(size[::-1], Image.Resampling.BICUBIC))
    session = onnxruntime.InferenceSession(str(official_onnx), providers=["CPUExecutionProvider"])
    ref = _official_reference(session, image[..., ::-1].astype(np.float64) / 255)
    with DavidRuntime(official_onnx) as rt_official:
        assert rt_official.post_options.interpolation == "official"
        pred = rt_official.predict(image)
    for task in TASKS:
        got, want = getattr(pred, task), ref[task]
        assert got.shape == want.shape
        scale = max(np.abs(want).max(), 1e-6)
        # float32 arithmetic against the plain float64 steps (and the graph's pyramid kernels)
        assert np.abs(got - want).max() / scale < 1e-4, task


@pytest.mark.parametrize("shape", [(1700, 1601), (900, 2000), (3100, 1700), (400, 300)])
def test_official_preprocess_matches_the_official_steps(shape: tuple) -> None:
    """Float pad + pyrDown while both sides > 1536 + bilinear to 512, done naively on the full
    padded square, equals ours (float arithmetic, as the official runtime)."""
    h, w = shape
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (h // 50 + 2, w // 50 + 2, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))  # smooth-ish photo
    _, top, bottom, left, right = official_padding(h, w)
    ref = np.pad(a.astype(np.float64) / 255, ((top, bottom), (left, right), (0, 0)), mode="edge")
    while ref.shape[0] > 1536 and ref.shape[1] > 1536:
        ref = _naive_pyr_down(ref)
    ref = _naive_linear(ref, 512)[..., ::-1].transpose(2, 0, 1)  # BGR CHW
    got, _ = network_inputs(decode(a), square_geometry(h, w, 512), "official", None)
    assert got.shape == (3, 512, 512) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-6


def test_official_export_runs_and_matches_dynamic(
    official_onnx: Path, tiny_multitask_onnx: Path, photo: np.ndarray
) -> None:
    """Our official-layout export runs through DavidRuntime with the official steps, and equals the
    dynamic export of the same weights fed the same way."""
    big = np.asarray(Image.fromarray(photo).resize((1000, 1700)))  # > 3 x 512: one pyramid step
    with DavidRuntime(official_onnx) as off:
        assert off.pipeline == "official" and off.resolution == 512 and off.contract.fixed_batch == 1
        pred = off.predict(big)
        assert pred.depth.shape == big.shape[:2] and pred.normal.shape == big.shape[:2] + (3,)
        batch = off.predict_batch([big, photo], batch_size=4)  # fixed batch 1: run one at a time
        assert_same(pred, batch[0])
    with DavidRuntime(tiny_multitask_onnx, pipeline="official") as dyn:
        assert_same(pred, dyn.predict(big), atol=1e-4)


def test_released_files_are_recognised_without_manifest(
    released_dir: Path, official_onnx: Path, photo: np.ndarray
) -> None:
    multi = released_dir / "multi-task-model-vitl16_384.onnx"
    assert not multi.with_suffix(".json").exists()
    with DavidRuntime(multi) as rel, DavidRuntime(official_onnx) as ours:
        assert rel.contract.released and rel.tasks == TASKS and rel.pipeline == "official"
        assert_same(rel.predict(photo), ours.predict(photo), atol=0)
    with DavidRuntime(released_dir / "depth-model-vitb16_384.onnx") as depth:
        assert depth.tasks == ("depth",)
        pred = depth.predict(photo)
        assert pred.normal is None and pred.foreground is None and pred.depth.shape == photo.shape[:2]
        raw = DavidRuntime(released_dir / "depth-model-vitb16_384.onnx", invert_depth=False).predict(photo)
        np.testing.assert_array_equal(pred.depth, -raw.depth)  # is_inverse default, as the official runtime


def test_fixed_size_file_refuses_other_resolutions(official_onnx: Path) -> None:
    with pytest.raises(InputError, match=r"fixed 512x512 input; resolution must be 512 or 'auto', got 256"):
        DavidRuntime(official_onnx, resolution=256)


# ------------------------------------------------------------------------ model-file errors


def test_model_path_forms_and_errors(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(tiny_multitask_onnx, folder / "m.onnx")
    shutil.copy(tiny_multitask_onnx.with_suffix(".json"), folder / "m.json")
    assert DavidRuntime(folder).path == folder / "m.onnx"
    shutil.copy(tiny_multitask_onnx, folder / "n.onnx")
    with pytest.raises(ModelError, match=r"exactly one model file .* found 2 \(m\.onnx, n\.onnx\)"):
        DavidRuntime(folder)
    with pytest.raises(ModelError, match=r"found 0 \(none\)"):
        DavidRuntime(_empty_dir(tmp_path))
    with pytest.raises(ModelError, match=r"model file not found: .*missing\.onnx"):
        DavidRuntime(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx: model file is empty"):
        DavidRuntime(empty)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 100)
    with pytest.raises(ModelError, match=r"corrupt\.onnx: ONNX Runtime cannot load this model"):
        DavidRuntime(corrupt)


def _empty_dir(tmp_path: Path) -> Path:
    d = tmp_path / "empty_dir"
    d.mkdir()
    return d


def test_manifest_sha256_mismatch(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_multitask_onnx, model)
    manifest = json.loads(tiny_multitask_onnx.with_suffix(".json").read_text())
    manifest["sha256"] = "0" * 64
    model.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"m\.onnx: SHA-256 does not match its manifest"):
        DavidRuntime(model)
    assert DavidRuntime(model, verify=False).tasks == TASKS


def test_unrecognised_graph_without_manifest(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "dynamic.onnx"
    shutil.copy(tiny_multitask_onnx, model)  # two dynamic inputs and no manifest
    with pytest.raises(ModelError, match=r"no manifest and 2 inputs .*expected a DAViD model"):
        DavidRuntime(model)


def test_cuda_without_gpu_fails_loudly(tiny_multitask_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the no-GPU path cannot be checked here")
    from david_infer.backends.gpu import nvidia_driver_present

    # said before any session is made: without a driver the fix is the CPU; with one, the GPU build
    if nvidia_driver_present():
        repair = (
            r"needs onnxruntime-gpu, but only onnxruntime is installed\. Repair: pip uninstall -y onnxruntime "
            r"&& pip install \"david-infer\[gpu\]\""
        )
    else:
        repair = r"no NVIDIA driver .*drop --device cuda"
    with pytest.raises(BackendUnavailable, match=repair):
        DavidRuntime(tiny_multitask_onnx, device="cuda")
    with pytest.raises(BackendUnavailable, match=repair):
        DavidRuntime(tiny_multitask_onnx, device="cuda:0", providers=("tensorrt", "cuda"))


def test_unknown_or_missing_backends(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'tflite'"):
        DavidRuntime(tiny_multitask_onnx, backend="tflite")
    # The TensorRT backend exists but needs a GPU (and an engine): refused with a TensorRT message.
    with pytest.raises((BackendUnavailable, InputError, ModelError), match=r"(?i)tensorrt"):
        DavidRuntime(tiny_multitask_onnx, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match=r"unknown device 'tpu'"):
        DavidRuntime(tiny_multitask_onnx, device="tpu")


def test_torch_backend_cuda_without_gpu_fails_loudly(tiny_multitask_onnx: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    with pytest.raises(BackendUnavailable, match=r"torch sees no CUDA GPU"):
        DavidRuntime(tiny_multitask_onnx, backend="torch", device="cuda")


def test_torch_backend_refuses_released_files(released_dir: Path) -> None:
    pytest.importorskip("torch")
    with pytest.raises(ModelError, match=r"released files have no PyTorch weights"):
        DavidRuntime(released_dir / "multi-task-model-vitl16_384.onnx", backend="torch")


def test_node_placement_from_a_real_profile(tiny_multitask_onnx: Path) -> None:
    """The placement check reads ONNX Runtime's own profile: on a CPU session every heavy node ran
    on the CPU, which a session meant for the CUDA provider must refuse."""
    import onnxruntime

    from david_infer.backends.onnxruntime.runner import (
        check_placement,
        dummy_feeds,
        heavy_ops_on_cpu,
        profiled_placement,
        session_io,
    )

    so = onnxruntime.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tiny_multitask_onnx.parent / "placement")
    session = onnxruntime.InferenceSession(
        str(tiny_multitask_onnx), sess_options=so, providers=["CPUExecutionProvider"]
    )
    placement = profiled_placement(session, dummy_feeds(session_io(session).inputs, 64))
    assert set(placement) == {"CPUExecutionProvider"}
    heavy = dict(heavy_ops_on_cpu(placement))
    assert heavy.get("Conv", 0) > 10 and heavy.get("MatMul", 0) + heavy.get("FusedMatMul", 0) > 0
    with pytest.raises(
        BackendUnavailable,
        match=r"asked to run on CUDAExecutionProvider, but heavy nodes ran on "
        r"the CPU \(.*Conv x\d+",
    ):
        check_placement(placement, ["CUDAExecutionProvider"], tiny_multitask_onnx)
    gpu_like = {"CUDAExecutionProvider": placement["CPUExecutionProvider"]}  # the same run, on the GPU
    check_placement(gpu_like, ["CUDAExecutionProvider"], tiny_multitask_onnx)
    assert not list(tiny_multitask_onnx.parent.glob("placement*.json"))  # the profile file is removed
