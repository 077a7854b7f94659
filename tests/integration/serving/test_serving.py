"""`david-infer serve` in a real subprocess on loopback ports, called through the triton backend."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from david_infer import DavidRuntime
from david_infer.errors import InputError, ModelError, ServerUnavailable

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlserver") is None or importlib.util.find_spec("tritonclient") is None,
    reason='needs pip install "david-infer[serve]"',
)

TASKS = ("depth", "normal", "foreground")


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.random((40 + 7 * i, 56 + 3 * i, 3)) * 255).astype(np.uint8) for i in range(n)]


def _assert_same(a, b) -> None:
    for task in TASKS:
        np.testing.assert_allclose(getattr(b, task), getattr(a, task), rtol=0, atol=1e-6, err_msg=task)


@pytest.fixture(scope="module")
def server(tiny_multitask_onnx: Path):
    from tests.support.server_process import ServerProcess

    with ServerProcess(tiny_multitask_onnx, ["--max-batch-size", "16", "--max-batch-time", "0.05"]) as running:
        yield running


def test_grpc_results_equal_the_local_runtime(server, tiny_runtime) -> None:
    images = _images(3)
    with DavidRuntime(server.grpc_url, resolution=64, timeout=30) as remote:
        assert remote.backend == "triton" and remote.tasks == tiny_runtime.tasks
        for image in images:
            _assert_same(tiny_runtime.predict(image), remote.predict(image))
        for local, served in zip(tiny_runtime.predict_batch(images, batch_size=3), remote.predict_batch(images)):
            _assert_same(local, served)


def test_http_and_a_url_without_model_name(server, tiny_runtime) -> None:
    image = _images(1, seed=1)[0]
    with DavidRuntime(server.http_url, resolution=64) as remote:
        _assert_same(tiny_runtime.predict(image), remote.predict(image))
    # gRPC without a model name: the server serves one model, so it is found
    with DavidRuntime(server.grpc_url.rsplit("/", 1)[0], backend="triton", resolution=64) as remote:
        _assert_same(tiny_runtime.predict(image), remote.predict(image))


def test_the_cli_predicts_through_the_server(server, tiny_runtime, tmp_path: Path) -> None:
    from PIL import Image

    from david_infer.cli import main

    image = _images(1, seed=4)[0]
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "photo.png"),
                "-m",
                server.grpc_url,
                "-o",
                str(tmp_path / "out"),
                "--resolution",
                "64",
                "--save",
                "depth,normal",
            ]
        )
        == 0
    )
    expected = tiny_runtime.predict(image)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "photo.depth.npy"), expected.depth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "photo.normal.npy"), expected.normal, rtol=0, atol=1e-6)


def _batch_counts(metrics: str) -> tuple:
    def value(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", metrics, re.M))

    return value("david_batch_size_sum"), value("david_batch_size_count")


def test_sixteen_concurrent_clients_are_answered_in_batches(server, tiny_runtime) -> None:
    images = _images(16, seed=2)
    expected = [tiny_runtime.predict(im) for im in images]
    before = _batch_counts(server.metrics())
    results: dict = {}
    with DavidRuntime(server.grpc_url, resolution=64, timeout=60) as remote:
        start = threading.Barrier(16)

        def client(i: int) -> None:
            start.wait()
            try:
                results[i] = remote.predict(images[i])
            except Exception as exc:  # recorded, asserted below
                results[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == list(range(16))
    for i in range(16):
        assert not isinstance(results[i], Exception), results[i]
        _assert_same(expected[i], results[i])
    images_run, batches_run = (a - b for a, b in zip(_batch_counts(server.metrics()), before))
    assert images_run == 16
    assert batches_run < 16, f"16 concurrent requests ran as {batches_run:g} batches: none merged"


def test_served_model_with_another_contract_is_a_model_error(server, official_onnx: Path) -> None:
    other = official_onnx.with_suffix(".json")  # the released layout: one fixed-size input
    with pytest.raises(ModelError, match="does not match its manifest"):
        DavidRuntime(server.grpc_url, resolution=512, manifest=str(other))


def test_unknown_model_and_unreachable_server_are_typed(server) -> None:
    from tests.support.server_process import free_ports

    with pytest.raises(ModelError, match="nosuchmodel"):
        DavidRuntime(server.grpc_url.rsplit("/", 1)[0] + "/nosuchmodel", resolution=64)
    port = free_ports(1)[0]
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match="unreachable"):
        DavidRuntime(f"grpc://127.0.0.1:{port}/david", resolution=64, timeout=3, retries=2, retry_delay=0.4)
    assert 0.4 + 0.8 <= time.monotonic() - t0 < 15  # two retries, 0.4 s then 0.8 s apart


def test_concurrent_requests_of_two_sizes_are_each_answered_right(server, tiny_multitask_onnx: Path) -> None:
    """Requests of different image sizes arriving together run in separate batches, none mixed up."""
    jobs = [(64 if i % 2 else 96, image) for i, image in enumerate(_images(12, seed=5))]
    expected = {}
    for resolution in (64, 96):
        with DavidRuntime(tiny_multitask_onnx, resolution=resolution) as local:
            expected.update({i: local.predict(im) for i, (r, im) in enumerate(jobs) if r == resolution})
    results: dict = {}
    with DavidRuntime(server.grpc_url, resolution=64) as at64, DavidRuntime(server.grpc_url, resolution=96) as at96:
        start = threading.Barrier(len(jobs))

        def client(i: int) -> None:
            start.wait()
            resolution, image = jobs[i]
            try:
                results[i] = (at64 if resolution == 64 else at96).predict(image)
            except Exception as exc:  # recorded, asserted below
                results[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for i in range(len(jobs)):
        assert not isinstance(results[i], Exception), results[i]
        _assert_same(expected[i], results[i])


def test_urls_and_files_go_to_the_right_backends(tiny_multitask_onnx: Path) -> None:
    with pytest.raises(InputError, match="server URL"):
        DavidRuntime("grpc://127.0.0.1:1/david", backend="onnxruntime")
    with pytest.raises(InputError, match="takes a server URL"):
        DavidRuntime(tiny_multitask_onnx, backend="triton")
    with pytest.raises(InputError, match="not a server URL"):
        DavidRuntime("ftp://127.0.0.1:1/david", backend="triton")
    with pytest.raises(InputError, match="timeout"):
        DavidRuntime("grpc://127.0.0.1:1/david", timeout=0)


def test_server_killed_mid_run_gives_typed_errors_within_the_timeout(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import ServerProcess

    images = _images(4, seed=3)
    timeout = 5.0
    with ServerProcess(tiny_multitask_onnx, ["--max-batch-size", "4", "--workers", "1"]) as doomed:
        remote = DavidRuntime(doomed.grpc_url, resolution=64, timeout=timeout)
        outcomes: list = []

        def stream() -> None:
            for _ in range(200):
                t0 = time.monotonic()
                try:
                    remote.predict(images[len(outcomes) % 4])
                    outcomes.append(("ok", time.monotonic() - t0))
                except Exception as exc:
                    outcomes.append((exc, time.monotonic() - t0))
                    return

        worker = threading.Thread(target=stream)
        worker.start()
        deadline = time.monotonic() + 60
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcomes and outcomes[0][0] == "ok", outcomes[:1]
        doomed.kill()
        worker.join(timeout=timeout + 20)
        assert not worker.is_alive(), "a request hung after the server was killed"
        error, seconds = outcomes[-1]
        assert isinstance(error, ServerUnavailable), error
        assert seconds < timeout + 2
        with pytest.raises(ServerUnavailable):
            remote.predict(images[0])
        remote.close()


def test_serve_and_ray_extras_install_together() -> None:
    """`[serve]` and `[ray]` in one environment: both importable, and pip finds no conflict."""
    missing = [m for m in ("mlserver", "tritonclient", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f'{missing} not installed: pip install "david-infer[serve,ray]"')
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    probe = "import pandas, numpy; print(json.dumps([numpy.__version__, pandas.__version__]))"
    out = subprocess.run(
        [sys.executable, "-c", "import json, mlserver; " + probe], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    numpy_version = json.loads(out.stdout.strip().splitlines()[-1])[0]
    assert int(numpy_version.split(".")[0]) >= 2  # the numpy<2 pin (PyTriton) is what this guards against
