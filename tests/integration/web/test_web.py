"""`david-infer web`: the server (no browser) and the page in a real headless Chromium (Debian's
`chromium` driven by Playwright), on a small pixels-to-maps graph served from 127.0.0.1.

Browser tests skip when Chromium, Playwright or the built page are missing, and fail instead under
CI=true (CI installs them all: .ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest
from PIL import Image

from david_infer.errors import BackendUnavailable, InputError, ModelError
from david_infer.webapp import STATIC_DIR, describe_model, open_page_server
from tests.support.parity import PIPELINES, SHAPES, case_id, check
from tests.support.parity import photo as parity_photo
from tests.support.web_driver import PageServerProcess, canvas_pixels, find_chromium, give_photo, open_page

CI = os.environ.get("CI") == "true"
PHOTO_SIZE = (56, 40)  # width, height: not square, so a transposed map would show


def missing(reason: str) -> None:
    """Skip, or fail in CI, where everything the browser tests need is installed."""
    if CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# The graph, the photo and the Python runtime's maps


def python_maps(graph: Path, photo: Path) -> Dict[str, np.ndarray]:
    """The maps the Python runtime (DavidRuntime on ONNX Runtime) gives for `photo` on `graph`."""
    pytest.importorskip("onnxruntime")
    from david_infer import DavidRuntime

    runtime = DavidRuntime(graph, resolution=None)  # a pre/post graph runs at the resolution it was built for
    try:
        prediction = runtime.predict(photo)
    finally:
        runtime.close()
    return {task: getattr(prediction, task) for task in ("depth", "normal", "foreground")}


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def graph(web_dir: Path, tiny_multitask_onnx: Path) -> Path:
    """The tiny multi-task model (random weights) as one pixels-to-maps graph at 384 (its ViT size, the
    least it takes), fed BGR: a page that ignored the manifest's channel order would get other maps."""
    from david_infer.export.prepost import wrap_prepost

    path = web_dir / "prepost.onnx"
    wrap_prepost(tiny_multitask_onnx, path, channel_order="bgr", resolution=384)
    return path


@pytest.fixture(scope="module")
def person_graph(web_dir: Path) -> Path:
    """The same tiny model with its foreground head's last bias at 0.8: a mask of about 0.8 that
    keeps every pixel (the random weights' mask keeps none), as one pixels-to-maps graph."""
    torch = pytest.importorskip("torch")
    from david_infer.export import export_onnx
    from david_infer.export.prepost import wrap_prepost
    from david_infer.model import build_model, save_weights

    model = build_model("tiny", "multitask", seed=0)
    with torch.no_grad():
        model.heads["foreground"].conv3.bias.fill_(0.8)
    save_weights(model, web_dir / "person.safetensors")
    export_onnx("tiny", "multitask", web_dir / "person.onnx", weights=web_dir / "person.safetensors")
    path = web_dir / "person-prepost.onnx"
    wrap_prepost(web_dir / "person.onnx", path, channel_order="bgr", resolution=384)
    return path


@pytest.fixture(scope="module")
def photo(web_dir: Path) -> Path:
    """A PNG with structure in every channel (PNG: the browser decodes the same pixels as Pillow)."""
    w, h = PHOTO_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * 7 + y * 13) % 256], -1).astype(np.uint8)
    path = web_dir / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


# --------------------------------------------------------------------------------------------
# The server, without a browser


def test_describe_model_reads_the_manifest(graph: Path) -> None:
    model = describe_model(graph)
    assert model.channel_order == "bgr" and model.tasks == ("depth", "normal", "foreground")
    table = model.to_json()["task_table"]  # what the page reads instead of writing task facts itself
    assert table["depth"]["sign"] == -1 and table["normal"]["channels"] == 3 and table["foreground"]["clip"] == [0, 1]
    assert model.bytes == graph.stat().st_size and len(model.sha256) == 64


def test_a_graph_without_prepost_is_refused_with_the_export_command(web_dir: Path, graph: Path) -> None:
    plain = web_dir / "plain.onnx"
    plain.write_bytes(graph.read_bytes())
    manifest = json.loads(graph.with_suffix(".json").read_text())
    manifest["layout"] = "dynamic"
    plain.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"plain.onnx.*layout 'dynamic'.*--prepost"):
        describe_model(plain)
    plain.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match=r"no manifest beside it \(plain.json\).*--prepost"):
        describe_model(plain)


def _refused(model: Path, port: str) -> list:
    """`david-infer web -m MODEL --port PORT`'s stderr lines; it must exit with 1."""
    cmd = [sys.executable, "-m", "david_infer", "web", "-m", str(model), "--port", port]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    return result.stderr.strip().splitlines()


def test_the_command_refuses_a_missing_model_in_one_line(web_dir: Path) -> None:
    assert _refused(web_dir / "absent.onnx", "0") == [
        f"david-infer web: error: model file not found: {web_dir / 'absent.onnx'}"
    ]


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_the_command_refuses_a_port_out_of_range_in_one_line(graph: Path, port: str) -> None:
    assert _refused(graph, port) == [
        f"david-infer web: error: --port must be 0 to 65535 (0: any free port), got {port}"
    ]


def test_an_unbuilt_page_says_how_to_build_it(graph: Path, web_dir: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"not built .*npm ci && npm run build"):
        open_page_server(graph, static_root=web_dir / "no-page")


def built_page() -> None:
    if not (STATIC_DIR / "index.html").is_file():
        missing(f"the page is not built ({STATIC_DIR}); run: (cd web && npm ci && npm run build)")


@pytest.fixture(scope="module")
def server(graph: Path) -> Iterator[PageServerProcess]:
    built_page()
    with PageServerProcess(graph) as running:
        yield running


def fetch(url: str) -> Any:
    return urllib.request.urlopen(url, timeout=10)


def test_the_server_listens_on_loopback_with_isolation_headers(server: PageServerProcess, graph: Path) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    with fetch(server.url) as page:
        assert b'<script type="module" src="app.js">' in page.read()
        assert page.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert page.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
    with fetch(server.url + "model.json") as described:
        info = json.load(described)
    assert info == {**describe_model(graph).to_json()}
    with fetch(server.url + "model.onnx?sha256=" + info["sha256"]) as model:
        assert model.read() == graph.read_bytes()
    with fetch(server.url + "ort/ort-wasm-simd-threaded.wasm") as wasm:
        assert wasm.headers["Content-Type"] == "application/wasm"
    for outside in ("../setup.py", "/etc/passwd", "nothing.js"):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            fetch(server.url + outside)


# --------------------------------------------------------------------------------------------
# The page in Chromium


def write_camera_video(path: Path) -> Path:
    """A small Y4M clip (YUV 4:2:0, two frames) for Chromium's fake camera: a small photo runs fast."""
    w, h = PHOTO_SIZE
    y = np.tile(np.linspace(16, 235, w, dtype=np.uint8), (h, 1))
    chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
    frame = b"FRAME\n" + y.tobytes() + chroma + chroma
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode() + frame * 2)
    return path


@pytest.fixture(scope="module")
def browser(web_dir: Path) -> Iterator[Any]:
    if find_chromium() is None:
        missing("no Chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing('Playwright is not installed (pip install "david-infer[test]")')
    from tests.support.web_driver import launch_chromium

    with sync_playwright() as playwright:
        # A fake camera (a small clip) that the page may open without asking.
        camera = write_camera_video(web_dir / "camera.y4m")
        chromium = launch_chromium(
            playwright,
            [
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (empty cache) that records every request the page makes."""
    fresh = browser.new_context(accept_downloads=True)
    fresh.requests = []
    fresh.on("request", lambda request: fresh.requests.append(request.url))
    yield fresh
    fresh.close()


@pytest.fixture
def page(context: Any, server: PageServerProcess) -> Any:
    return open_page(context.new_page(), server.url + "?backend=wasm&threads=2")


@pytest.fixture(scope="module")
def person_server(person_graph: Path) -> Iterator[PageServerProcess]:
    built_page()
    with PageServerProcess(person_graph) as running:
        yield running


@pytest.fixture
def person_page(context: Any, person_server: PageServerProcess) -> Any:
    """The page on `person_graph`, whose mask keeps every pixel."""
    return open_page(context.new_page(), person_server.url + "?backend=wasm&threads=2")


def state(page: Any) -> Dict[str, Any]:
    return page.evaluate(
        "() => ({phase: david.phase, error: david.error, backend: david.backend, "
        "threads: david.threads, cached: david.cached, runs: david.runs})"
    )


def test_the_page_loads_the_model_with_wasm_and_two_threads(page: Any, context: Any, server: PageServerProcess) -> None:
    assert state(page) == {"phase": "ready", "error": None, "backend": "wasm", "threads": 2, "cached": False, "runs": 0}
    assert page.locator("#backend").inner_text() == "WebAssembly (SIMD, 2 threads)"
    assert page.locator("#status").inner_text().startswith("Ready: prepost.onnx (fp32")
    assert page.locator("#progress").is_hidden()
    # Nothing from outside: the page, ONNX Runtime's files and the model came from the local server.
    assert context.requests and all(url.startswith(server.url) for url in context.requests), context.requests
    assert any("/ort/ort-wasm-simd-threaded.wasm" in url for url in context.requests)


def test_a_photo_gives_the_python_runtimes_maps(page: Any, graph: Path, photo: Path) -> None:
    maps = give_photo(page, photo)
    expected = python_maps(graph, photo)
    w, h = PHOTO_SIZE
    assert maps["depth"].shape == (h, w) and maps["normal"].shape == (h, w, 3) and maps["foreground"].shape == (h, w)
    # Within 1e-3 of each map's range: depth's over the photo (relative depth has no fixed range), the
    # unit normals' [-1, 1], the mask's [0, 1].
    depth_span = float(np.ptp(expected["depth"]))
    assert depth_span > 0, "the photo must give depth a range to compare within"
    for task, span in (("depth", depth_span), ("normal", 2.0), ("foreground", 1.0)):
        np.testing.assert_allclose(maps[task], expected[task], rtol=0, atol=1e-3 * span, err_msg=task)
    assert state(page)["phase"] == "done" and page.locator("#maps").is_visible()
    for canvas in ("photo", "depth", "normal", "foreground", "relit"):
        assert canvas_pixels(page, canvas).shape == (h, w, 4), canvas
    # The cut-out's alpha is the mask; the photo tile is the photo itself.
    np.testing.assert_allclose(canvas_pixels(page, "foreground")[..., 3], expected["foreground"] * 255, atol=1)
    np.testing.assert_array_equal(canvas_pixels(page, "photo")[..., :3], np.asarray(Image.open(photo)))


def test_relighting_follows_the_slider_and_the_drag(person_page: Any, photo: Path) -> None:
    page = person_page
    give_photo(page, photo)
    before = canvas_pixels(page, "relit")
    page.locator("#ambient").fill("0.9")
    brighter = canvas_pixels(page, "relit")
    assert page.evaluate("() => david.ambient") == 0.9
    assert int(brighter[..., :3].astype(int).sum()) > int(before[..., :3].astype(int).sum())
    box = page.locator("#relit").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 4, box["y"] + box["height"] / 2 + 1)
    page.mouse.up()
    light = page.evaluate("() => david.light")
    assert light[0] < -0.8 and abs(np.linalg.norm(light) - 1) < 1e-6  # light from the left edge
    assert not np.array_equal(canvas_pixels(page, "relit"), brighter)


def _python_relit(photo: Path, maps: Dict[str, Any], light: Any, ambient: float) -> Any:
    """`david_infer.apps.relight` of the page's maps, and the EmptyMaskWarnings it gave."""
    import warnings

    from david_infer.apps import relight
    from david_infer.errors import EmptyMaskWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyMaskWarning)
        lit = relight(np.asarray(Image.open(photo)), maps["normal"], light, ambient, foreground=maps["foreground"])
    return lit, [str(w.message) for w in caught if issubclass(w.category, EmptyMaskWarning)]


def test_a_mask_that_keeps_no_pixel_is_said_and_relit_as_relight_does(page: Any, photo: Path) -> None:
    """The random weights' mask keeps no pixel: the page used to re-light the whole photo while
    `relight` returns it unchanged, without a word. Now one rule and one warning: the package's."""
    maps = give_photo(page, photo)
    lit, said = _python_relit(photo, maps, page.evaluate("() => david.light"), page.evaluate("() => david.ambient"))
    assert said == ["the foreground mask keeps no pixel (no person found), so the re-lit photo is the photo unchanged"]
    np.testing.assert_array_equal(canvas_pixels(page, "relit")[..., :3], lit)
    np.testing.assert_array_equal(lit, np.asarray(Image.open(photo)))
    warning = page.locator("#mask-warning")
    assert warning.is_visible() and page.evaluate("() => david.maskWarning") in warning.inner_text()
    assert warning.inner_text() == (
        "Warning: the foreground mask keeps no pixel (no person found), so the cut-out is fully transparent "
        "and the re-lit photo is the photo unchanged."
    )
    assert (canvas_pixels(page, "foreground")[..., 3] == 0).all()  # the cut-out: fully transparent, as said
    depth = canvas_pixels(page, "depth")[..., :3]
    assert depth.min() == 0 and depth.max() == 255  # the depth is drawn unmasked, not faded out


def test_a_mask_that_keeps_a_person_is_relit_as_relight_does_without_a_warning(person_page: Any, photo: Path) -> None:
    maps = give_photo(person_page, photo)
    assert float(maps["foreground"].min()) > 0.5
    light, ambient = person_page.evaluate("() => david.light"), person_page.evaluate("() => david.ambient")
    lit, said = _python_relit(photo, maps, light, ambient)
    assert said == [] and person_page.locator("#mask-warning").is_hidden()
    assert person_page.evaluate("() => david.maskWarning") is None
    page_lit = canvas_pixels(person_page, "relit")[..., :3].astype(int)
    assert np.abs(page_lit - lit.astype(int)).max() <= 1  # float32 here, doubles there: a level at most
    assert not np.array_equal(lit, np.asarray(Image.open(photo)))


def test_each_map_downloads_as_a_png(page: Any, photo: Path, web_dir: Path) -> None:
    give_photo(page, photo)
    for kind in ("depth", "normal", "foreground", "relit"):
        with page.expect_download() as download:
            page.locator(f'[data-download="{kind}"]').click()
        saved = web_dir / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.name == f"photo-{kind}.png"
        with Image.open(saved) as png:
            assert png.format == "PNG" and png.size == PHOTO_SIZE
            assert png.mode == "RGBA"
            if kind == "foreground":
                assert np.asarray(png)[..., 3].min() < 255  # the cut-out keeps its transparency


def test_a_dropped_photo_and_a_camera_photo_give_maps(page: Any, context: Any, photo: Path) -> None:
    transfer = page.evaluate_handle(
        """(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
        return transfer;
    }""",
        list(photo.read_bytes()),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("() => window.david.runs === 1 || window.david.errors > 0")
    assert page.evaluate("() => [david.photoName, david.error, david.result.width]") == [
        "dropped.png",
        None,
        PHOTO_SIZE[0],
    ]
    context.grant_permissions(["camera"])
    page.locator("#camera-button").click()
    page.locator("#snap").wait_for(state="visible")
    page.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
    page.locator("#snap").click()
    page.wait_for_function("() => window.david.runs === 2 || window.david.errors > 0", timeout=120_000)
    name, error, width, height = page.evaluate(
        "() => [david.photoName, david.error, david.result.width, david.result.height]"
    )
    assert (name, error, width, height) == ("camera.png", None, *PHOTO_SIZE)
    assert canvas_pixels(page, "depth").shape == (height, width, 4)
    assert page.locator("#camera").is_hidden()  # the camera is closed after the photo


def test_a_text_file_gives_the_pages_own_error(page: Any, photo: Path, web_dir: Path) -> None:
    text = web_dir / "notes.txt"
    text.write_text("not a photo\n")
    with pytest.raises(InputError, match=r"notes.txt is not an image this browser can decode"):
        give_photo(page, text)
    assert page.locator("#error").is_visible()
    assert "Give it a PNG, JPEG or WebP photo" in page.locator("#error").inner_text()
    assert state(page)["phase"] == "ready" and page.locator("#maps").is_hidden()
    give_photo(page, photo)  # the page goes on working, and clears the error
    assert page.locator("#error").is_hidden() and state(page)["phase"] == "done"


def test_the_model_is_cached_for_the_next_visit_and_the_page_works_offline(
    page: Any, context: Any, photo: Path, server: PageServerProcess
) -> None:
    assert state(page)["cached"] is False
    context.requests.clear()
    page.reload()
    open_page(page, page.url)
    assert state(page)["cached"] is True and "from the browser cache" in page.locator("#status").inner_text()
    assert not any("/model.onnx" in url for url in context.requests)
    context.set_offline(True)
    maps = give_photo(page, photo)
    assert maps["depth"].shape == PHOTO_SIZE[::-1]
    page.reload()  # offline: the page from its service worker, the model from the cache
    open_page(page, page.url)
    assert state(page)["phase"] == "ready" and state(page)["cached"] is True


def test_a_model_replaced_after_the_start_is_refused_and_the_page_says_so(
    context: Any, graph: Path, person_graph: Path, tmp_path: Path
) -> None:
    """/model.json is read once; serving a re-exported file's bytes under it would be another model
    under the old tasks, size and ETag."""
    served = tmp_path / "model.onnx"
    for source, target in ((graph, served), (graph.with_suffix(".json"), served.with_suffix(".json"))):
        target.write_bytes(source.read_bytes())
    with PageServerProcess(served) as server:
        with fetch(server.url + "model.onnx") as before:
            assert before.read() == graph.read_bytes()
        replacement = tmp_path / "new.onnx"
        replacement.write_bytes(person_graph.read_bytes())
        os.replace(replacement, served)  # what a re-export does
        for route in ("model.onnx", "model.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                fetch(server.url + route)
            assert refused.value.code == 409
            assert f"{served} changed since david-infer web started; restart it" in refused.value.read().decode()
        page = open_page(context.new_page(), server.url + "?backend=wasm&threads=2")
        assert page.locator("#error").inner_text().startswith("The server did not describe the model (HTTP 409): ")
        assert "changed since david-infer web started; restart it" in page.locator("#error").inner_text()


def test_an_fp16_graph_runs_in_the_page(context: Any, tiny_fp16_onnx: Path, web_dir: Path, photo: Path) -> None:
    from david_infer.export.prepost import wrap_prepost

    built_page()
    graph16 = web_dir / "prepost-fp16.onnx"
    wrap_prepost(tiny_fp16_onnx, graph16, resolution=384)
    with PageServerProcess(graph16) as server16:
        page = open_page(context.new_page(), server16.url + "?backend=wasm&threads=2")
        assert page.locator("#status").inner_text().startswith("Ready: prepost-fp16.onnx (fp16")
        maps = give_photo(page, photo)
    expected = python_maps(graph16, photo)
    for task, span in (("depth", float(np.ptp(expected["depth"]))), ("normal", 2.0), ("foreground", 1.0)):
        np.testing.assert_allclose(maps[task], expected[task], rtol=0, atol=1e-3 * span, err_msg=task)


def test_a_browser_without_wasm_simd_is_told_so(context: Any, server: PageServerProcess) -> None:
    # Chromium always has SIMD: the page's probe (WebAssembly.validate of a SIMD module) is made to fail.
    context.add_init_script("WebAssembly.validate = () => false;")
    page = open_page(context.new_page(), server.url)
    assert state(page)["phase"] == "failed"
    assert "lacks WebAssembly SIMD" in page.locator("#error").inner_text()
    assert not any("/model.onnx" in url for url in context.requests)  # refused before the download


def test_a_browser_with_too_little_memory_is_told_so(context: Any, server: PageServerProcess) -> None:
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'deviceMemory', {get: () => 0.125});")
    page = open_page(context.new_page(), server.url)
    assert state(page)["phase"] == "failed"
    assert page.locator("#error").inner_text().startswith("Too little memory: the model needs about")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_page_gives_the_reference_maps_at_every_shape(
    context: Any, web_dir: Path, parity_models: Dict[str, Path], reference_maps: Any, pipeline: str
) -> None:
    """The page (ONNX Runtime Web, WASM) on the pre/post graph against the reference stages, at
    every shape of the parity suite (tests/support/parity.py); 4K maps sampled every few pixels."""
    built_page()
    with PageServerProcess(parity_models[pipeline + "+graph"]) as server:
        page = open_page(context.new_page(), server.url + "?backend=wasm&threads=2")
        for shape in SHAPES:
            path = web_dir / f"{case_id(pipeline, shape)}.png"
            Image.fromarray(parity_photo(shape)).save(path)
            step = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / 1e6))))  # at most a million pixels back
            got = give_photo(page, path, timeout_ms=300_000, step=step)
            want = {task: np.asarray(value[::step, ::step]) for task, value in reference_maps(pipeline, shape).items()}
            check(got, want, f"the page, {case_id(pipeline, shape)} (every {step} pixels)")
            path.unlink()
