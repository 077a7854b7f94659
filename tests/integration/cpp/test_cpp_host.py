"""The C++ host (cpp/): CMake builds the library and `david_predict`, which must give the Python
ONNX Runtime's maps (to 1e-5) on pixels-to-maps graphs, refuse bad models and images with one clear
line, and leave no files for an image it could not do.

Needs cmake, a C++17 compiler, libstb-dev, nlohmann-json3-dev and ONNX Runtime headers
(cpp/fetch_onnxruntime.sh); without them the tests skip with the reason, and fail under CI=true
(.ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import REPO
from tests.support import prepost_stand_in as prepost_graph
from tests.support.image_corpus import _photo, real_photos, write_corpus
from tests.support.parity import PIPELINES, SHAPES, case_id, check
from tests.support.parity import photo as parity_photo

CPP = REPO / "cpp"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
PHOTO_SIZES = [(48, 64), (1, 37), (97, 61), (300, 200)]  # (H, W)


def unavailable(reason: str) -> None:
    """Skip (the C++ toolchain is optional on a developer's machine), or fail in CI, which installs it."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def david_predict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cpp/ configured and built by CMake in a temporary folder: the example's executable."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install cmake g++)")
    build = tmp_path_factory.mktemp("cpp-build")
    configure = subprocess.run(
        ["cmake", "-S", str(CPP), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if configure.returncode:
        unavailable(f"cmake cannot configure cpp/ (run cpp/fetch_onnxruntime.sh?): {configure.stderr.strip()[-800:]}")
    built = subprocess.run(
        ["cmake", "--build", str(build), "-j", "2"], check=False, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return build / "david_predict"


def run_host(exe: Path, model: Path, images: Sequence[Path], outdir: Path) -> subprocess.CompletedProcess:
    outdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(exe), str(model), *map(str, images), "-o", str(outdir), "--threads", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )  # 4K on a busy 2-core machine


def python_maps(model: Path, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's maps from ONNX Runtime in Python, fed in the channel order its manifest names."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    order = json.loads(model.with_suffix(".json").read_text())["prepost"]["channel_order"]
    pixels = np.ascontiguousarray((rgb if order == "rgb" else rgb[..., ::-1])[None])
    names = [o.name for o in session.get_outputs()]
    return {name: value[0] for name, value in zip(names, session.run(None, {session.get_inputs()[0].name: pixels}))}


def photos(folder: Path) -> list[Path]:
    """Lossless photos of several sizes (structured gradients, and a crop of a real portrait)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    pictures = {f"photo_{h}x{w}": _photo(h, w) for h, w in PHOTO_SIZES}
    pictures["astronaut"] = Image.fromarray(data.astronaut()[40:440, 100:380])
    paths = []
    for name, picture in pictures.items():
        picture.save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


@pytest.mark.parametrize("channel_order", ["bgr", "rgb"])
def test_maps_match_python_onnxruntime(david_predict: Path, tmp_path: Path, channel_order: str) -> None:
    model = prepost_graph.write(tmp_path, channel_order)
    images = photos(tmp_path / "in")
    result = run_host(david_predict, model, images, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for image in images:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        expected = python_maps(model, rgb)
        swapped = python_maps(model, rgb[..., ::-1])  # what a host ignoring the channel order would give
        for task in prepost_graph.TASKS:
            got = np.load(tmp_path / "out" / f"{image.stem}.{task}.npy", allow_pickle=False)
            assert got.dtype == np.float32 and got.shape == expected[task].shape == rgb.shape[:2] + (
                (3,) if task == "normal" else ()
            ), (image.name, task, got.shape)
            np.testing.assert_allclose(got, expected[task], rtol=0, atol=1e-5, err_msg=f"{image.name} {task}")
            if rgb.std(axis=-1).max() > 0:  # a gray picture looks the same in either order
                assert np.abs(got - swapped[task]).max() > 1e-3, f"{image.name} {task}: channel order ignored"


@pytest.fixture(scope="module")
def exported_prepost(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny multi-task export wrapped by `export --prepost` in either channel order (at 384, the
    smallest resolution its ViT copy allows)."""
    from david_infer.export.prepost import wrap_prepost

    folder = tmp_path_factory.mktemp("prepost")
    graphs = {}
    for order in ("rgb", "bgr"):
        graphs[order] = folder / f"tiny-multitask-prepost-{order}.onnx"
        wrap_prepost(tiny_multitask_onnx, graphs[order], channel_order=order, resolution=384)
    return graphs


@pytest.mark.parametrize(
    "channel_order, names",
    [
        ("rgb", ("portrait", "landscape", "odd", "small", "square", "uhd")),
        ("bgr", ("portrait", "small")),
    ],
)
def test_exported_graphs_match_python_onnxruntime(
    david_predict: Path, exported_prepost: dict[str, Path], tmp_path: Path, channel_order: str, names: Sequence[str]
) -> None:
    """The real pre/post graphs (resampling, the network, the finishing) on real photos, 101 x 77 to 4K."""
    model = exported_prepost[channel_order]
    pictures = real_photos()
    images = []
    for name in names:
        Image.fromarray(pictures[name]).save(tmp_path / f"{name}.png")
        images.append(tmp_path / f"{name}.png")
    result = run_host(david_predict, model, images, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for name in names:
        expected = python_maps(model, pictures[name])
        for task in prepost_graph.TASKS:
            got = np.load(tmp_path / "out" / f"{name}.{task}.npy", allow_pickle=False)
            assert got.shape == expected[task].shape, (name, task)
            np.testing.assert_allclose(got, expected[task], rtol=0, atol=1e-5, err_msg=f"{name} {task}")
        assert expected["depth"].std() > 0 and np.allclose(np.linalg.norm(expected["normal"], axis=-1), 1, atol=1e-4)


def test_exported_graph_matches_david_runtime(
    david_predict: Path, exported_prepost: dict[str, Path], tmp_path: Path
) -> None:
    """The SDK's own runtime on the same pre/post graph and files: its maps with default options."""
    from david_infer import DavidRuntime

    pictures = real_photos()
    images = []
    for name in ("landscape", "small"):
        Image.fromarray(pictures[name]).save(tmp_path / f"{name}.png")
        images.append(tmp_path / f"{name}.png")
    result = run_host(david_predict, exported_prepost["bgr"], images, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    runtime = DavidRuntime(exported_prepost["bgr"], resolution=384)  # the default 512 is refused for it
    try:
        for image in images:
            prediction = runtime.predict(image)
            for task in prepost_graph.TASKS:
                got = np.load(tmp_path / "out" / f"{image.stem}.{task}.npy", allow_pickle=False)
                np.testing.assert_allclose(
                    got, getattr(prediction, task), rtol=0, atol=1e-5, err_msg=f"{image.name} {task}"
                )
    finally:
        runtime.close()


def test_png_previews_follow_the_maps(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "rgb")
    (image,) = [p for p in photos(tmp_path / "in") if p.stem == "astronaut"]
    assert run_host(david_predict, model, [image], tmp_path / "out").returncode == 0
    out = tmp_path / "out"
    depth, normal, fg = (np.load(out / f"astronaut.{t}.npy") for t in prepost_graph.TASKS)
    depth_png = np.asarray(Image.open(out / "astronaut.depth.png"))
    span = depth.max() - depth.min()
    assert depth_png.shape == depth.shape and depth_png.min() == 0 and depth_png.max() == 255
    assert np.abs(depth_png - np.rint((depth - depth.min()) / span * 255)).max() <= 1
    normal_png = np.asarray(Image.open(out / "astronaut.normal.png"))
    assert normal_png.shape == normal.shape
    assert np.abs(normal_png - np.rint((normal + 1) * 127.5)).max() <= 1
    fg_png = np.asarray(Image.open(out / "astronaut.foreground.png"))
    assert np.abs(fg_png - np.rint(fg * 255)).max() <= 1


def test_a_model_without_some_tasks_writes_only_its_maps(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "bgr", tasks=("normal",), stem="normal-only")
    (image,) = photos(tmp_path / "in")[:1]
    result = run_host(david_predict, model, [image], tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{image.stem}.normal.npy",
        f"{image.stem}.normal.png",
    ]


def host_error(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a failed run (no core dump, no C++ exception trace)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) >= 1, (result.returncode, result.stderr)
    assert all(line.startswith("david_predict: error: ") for line in lines), result.stderr
    return result.stderr


def test_bad_models_are_refused_with_the_file_and_the_fix(david_predict: Path, tmp_path: Path) -> None:
    (image,) = photos(tmp_path / "in")[:1]
    out = tmp_path / "out"
    assert "no such model file" in host_error(run_host(david_predict, tmp_path / "missing.onnx", [image], out))

    model = prepost_graph.write(tmp_path, "bgr")
    manifest = model.with_suffix(".json")
    manifest.unlink()
    err = host_error(run_host(david_predict, model, [image], out))
    assert f"no manifest beside it (expected {manifest})" in err and "--prepost" in err

    manifest.write_text("{ not json")
    assert "not a JSON manifest" in host_error(run_host(david_predict, model, [image], out))

    float_graph = prepost_graph.manifest("bgr")  # the manifest of a float NCHW network graph
    float_graph["layout"] = "dynamic"
    manifest.write_text(json.dumps(float_graph))
    err = host_error(run_host(david_predict, model, [image], out))
    assert 'not a pixels-to-maps graph ("layout" is "dynamic", not "prepost")' in err and "--prepost" in err

    manifest.write_text(json.dumps(prepost_graph.manifest("sideways")))
    assert 'channel_order is "sideways", expected "bgr" or "rgb"' in host_error(
        run_host(david_predict, model, [image], out)
    )

    other = prepost_graph.manifest("bgr")
    other["prepost"]["input"] = "pixels"
    manifest.write_text(json.dumps(other))
    assert "the manifest belongs to another file" in host_error(run_host(david_predict, model, [image], out))

    model.write_bytes(b"not an onnx file")
    manifest.write_text(json.dumps(prepost_graph.manifest("bgr")))
    assert "ONNX Runtime cannot open it" in host_error(run_host(david_predict, model, [image], out))
    assert not list(out.iterdir())


def test_bad_images_leave_nothing_and_the_good_ones_are_written(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "bgr")
    corpus = write_corpus(tmp_path / "corpus")
    rgba = tmp_path / "corpus" / "rgba.png"
    Image.new("RGBA", (20, 10), (1, 2, 3, 4)).save(rgba)
    good = photos(tmp_path / "in")[0]
    (tmp_path / "elsewhere").mkdir()
    same_name = Path(shutil.copy(good, tmp_path / "elsewhere" / good.name))
    bad = {
        same_name: f"its files would replace those of {good} (both are named {good.stem})",
        rgba: "has an alpha channel (4 channels), expected RGB or gray",
        corpus["text.jpg"]: "cannot read it as an image",
        corpus["empty.jpg"]: "cannot read it as an image",
        corpus["truncated.png"]: "cannot decode it (",
        corpus["bomb.png"]: "cannot read it as an image",  # over stb_image's own limit of 2^30 bytes
        corpus["bomb_144mp.png"]: "12000 x 12000 pixels is over the 100000000 pixel limit",
        corpus["bomb_144mp.jpg"]: "12000 x 12000 pixels is over the 100000000 pixel limit",
    }
    result = run_host(david_predict, model, [good, *bad], tmp_path / "out")
    err = host_error(result)
    for path, message in bad.items():
        assert f"{path}: {message}" in err, (path.name, err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{good.stem}.{task}.{ext}" for task in prepost_graph.TASKS for ext in ("npy", "png")
    )


def test_non_finite_maps_are_refused_not_written(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "bgr", centre=128.0)
    gray = tmp_path / "gray128.png"
    Image.new("RGB", (8, 6), (128, 128, 128)).save(gray)
    err = host_error(run_host(david_predict, model, [gray], tmp_path / "out"))
    assert f"output 'normal' has {8 * 6 * 3} NaN or infinite values" in err
    assert not list((tmp_path / "out").iterdir())


def test_gray_images_are_taken_as_three_equal_channels(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "rgb")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)).save(gray)
    assert run_host(david_predict, model, [gray], tmp_path / "out").returncode == 0
    rgb = np.repeat(np.asarray(Image.open(gray))[..., None], 3, axis=-1)
    expected = python_maps(model, rgb)["depth"]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "gray.depth.npy"), expected, rtol=0, atol=1e-5)


def test_bad_arguments_exit_2(david_predict: Path, tmp_path: Path) -> None:
    model = prepost_graph.write(tmp_path, "bgr")
    for argv, message in [
        ([], "expected a model file and at least one image"),
        ([str(model), "x.png", "--threads", "many"], "--threads takes a whole number"),
        ([str(model), "x.png", "--frobnicate"], "unknown option --frobnicate"),
        ([str(model), "x.png", "-o", str(tmp_path / "nowhere")], "does not exist"),
    ]:
        result = subprocess.run([str(david_predict), *argv], check=False, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)


def test_an_onnxruntime_release_folder_is_found_by_its_root(tmp_path: Path) -> None:
    """-DONNXRUNTIME_ROOT=<release> (include/ flat, lib/libonnxruntime.so -> .so.1 -> .so.1.N, as
    the official onnxruntime-linux-x64 archives are laid out) picks that release's headers and library."""
    import onnxruntime

    headers = CPP / "third_party" / "onnxruntime" / "usr" / "include" / "onnxruntime"
    if not (headers / "onnxruntime_cxx_api.h").exists() or shutil.which("cmake") is None:
        unavailable("cmake or the ONNX Runtime headers (cpp/fetch_onnxruntime.sh) are missing")
    (wheel_library,) = (Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*")
    release = tmp_path / "onnxruntime-linux-x64"
    shutil.copytree(headers, release / "include")
    (release / "lib").mkdir()
    (release / "lib" / wheel_library.name).symlink_to(wheel_library)
    (release / "lib" / "libonnxruntime.so.1").symlink_to(wheel_library.name)
    (release / "lib" / "libonnxruntime.so").symlink_to("libonnxruntime.so.1")
    configure = subprocess.run(
        ["cmake", "-S", str(CPP), "-B", str(tmp_path / "build"), f"-DONNXRUNTIME_ROOT={release}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert configure.returncode == 0, configure.stderr
    assert f"ONNX Runtime: headers {release / 'include'}, library {wheel_library}" in configure.stdout
    link = tmp_path / "build" / "onnxruntime_lib" / "libonnxruntime.so.1"
    assert link.resolve() == wheel_library.resolve()


def _cpp_copy(tmp_path: Path) -> tuple:
    """cpp/ copied to tmp_path/checkout/cpp (no .venv beside it, no third_party), the ONNX Runtime
    headers' folder, and a Python without onnxruntime (a bare virtual environment)."""
    headers = CPP / "third_party" / "onnxruntime" / "usr" / "include" / "onnxruntime"
    if not (headers / "onnxruntime_cxx_api.h").exists() or shutil.which("cmake") is None:
        unavailable("cmake or the ONNX Runtime headers (cpp/fetch_onnxruntime.sh) are missing")
    source = tmp_path / "checkout" / "cpp"
    shutil.copytree(CPP, source, ignore=shutil.ignore_patterns("third_party"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    return source, headers, tmp_path / "bare" / "bin" / "python"


def _configure(source: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}  # outside any virtual environment
    return subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), *options],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_outside_a_venv_cmake_names_the_python_it_asked_and_how_to_point_it(tmp_path: Path) -> None:
    """CMake picked the system python3 and said "... or pip install onnxruntime", although
    onnxruntime was installed in a virtual environment: it now says which Python it asked and how
    to point it at another."""
    source, headers, bare = _cpp_copy(tmp_path)
    configure = _configure(
        source, tmp_path / "build", f"-DPython3_EXECUTABLE={bare}", f"-DONNXRUNTIME_INCLUDE_DIR={headers}"
    )
    said = " ".join(configure.stderr.split())  # CMake wraps its messages
    assert configure.returncode != 0
    assert f"looked for the onnxruntime wheel in the Python(s) {bare}, which have none" in said, said
    assert "Point CMake at the Python where onnxruntime is installed" in said
    assert "-DPython3_EXECUTABLE=/path/to/venv/bin/python, or activate that environment first" in said


def test_the_checkouts_venv_is_found_without_being_activated(tmp_path: Path) -> None:
    """A virtual environment in the checkout (.venv beside cpp/, not activated) is asked too."""
    import onnxruntime

    source, headers, bare = _cpp_copy(tmp_path)
    venv_python = source.parent / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    # a Python that has onnxruntime (a script, not a link: a link to a venv's python outside its
    # venv finds no pyvenv.cfg and starts as the base Python, without the venv's packages)
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    venv_python.chmod(0o755)
    configure = _configure(
        source, tmp_path / "build", f"-DPython3_EXECUTABLE={bare}", f"-DONNXRUNTIME_INCLUDE_DIR={headers}"
    )
    assert configure.returncode == 0, configure.stderr
    assert f"ONNX Runtime: the library of the onnxruntime wheel of {venv_python}" in configure.stdout
    (wheel_library,) = (Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*")
    assert f"library {wheel_library}" in configure.stdout


def test_a_plain_export_is_refused_with_the_prepost_command(
    david_predict: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    (image,) = photos(tmp_path / "in")[:1]
    err = host_error(run_host(david_predict, tiny_multitask_onnx, [image], tmp_path / "out"))
    assert f"{tiny_multitask_onnx.with_suffix('.json')}: its graph is not a pixels-to-maps graph" in err
    assert "david-infer export --prepost --from MODEL.onnx" in err


def test_a_wrapped_released_layout_file_matches_david_runtime(
    david_predict: Path, official_onnx: Path, tmp_path: Path
) -> None:
    """A file in the released models' layout (fixed 1x3x512x512) wrapped: batch fixed to 1, the official
    pipeline's pyramid and OpenCV-style resampling inside, BGR."""
    from david_infer import DavidRuntime
    from david_infer.export.prepost import wrap_prepost

    model = tmp_path / "official-prepost.onnx"
    assert wrap_prepost(official_onnx, model, channel_order="bgr")["prepost"]["pipeline"] == "official"
    image = tmp_path / "odd.png"
    Image.fromarray(real_photos()["odd"]).save(image)
    result = run_host(david_predict, model, [image], tmp_path / "out")
    assert result.returncode == 0, result.stderr
    runtime = DavidRuntime(model)
    try:
        prediction = runtime.predict(image)
    finally:
        runtime.close()
    for task in prepost_graph.TASKS:
        np.testing.assert_allclose(
            np.load(tmp_path / "out" / f"odd.{task}.npy"), getattr(prediction, task), rtol=0, atol=1e-5, err_msg=task
        )


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_host_gives_the_reference_maps_at_every_shape(
    david_predict: Path, parity_models: dict, reference_maps: Callable, pipeline: str, tmp_path: Path
) -> None:
    """The C++ host on the pre/post graph against the reference stages at every shape of the parity
    suite (tests/support/parity.py), both pipelines."""
    model = parity_models[pipeline + "+graph"]
    for shape in SHAPES:
        name = case_id(pipeline, shape)
        Image.fromarray(parity_photo(shape)).save(tmp_path / f"{name}.png")
        done = run_host(david_predict, model, [tmp_path / f"{name}.png"], tmp_path / "out")
        assert done.returncode == 0, done.stderr[-2000:]
        got = {task: np.load(tmp_path / "out" / f"{name}.{task}.npy") for task in ("depth", "normal", "foreground")}
        check(got, reference_maps(pipeline, shape), f"C++ host, {name}")
        for path in (tmp_path / "out").iterdir():
            path.unlink()
