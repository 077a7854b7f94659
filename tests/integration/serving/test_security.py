"""`david-infer serve` tried as an attacker would: real servers in subprocesses on 127.0.0.1, raw
protocol requests (gRPC protobuf, HTTP JSON) next to `DavidRuntime` clients."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

from david_infer import DavidRuntime
from david_infer.errors import InputError, ModelError, NonFiniteOutput, ServerUnavailable

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlserver") is None or importlib.util.find_spec("tritonclient") is None,
    reason='needs pip install "david-infer[serve]"',
)

TASKS = ("depth", "normal", "foreground")
SIDE = 64  # the images' resolution on the wire


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.random((40 + 7 * i, 56 + 3 * i, 3)) * 255).astype(np.uint8) for i in range(n)]


def _assert_same(a, b) -> None:
    for task in TASKS:
        np.testing.assert_allclose(getattr(b, task), getattr(a, task), rtol=0, atol=1e-6, err_msg=task)


# ------------------------------------------------------------------------------------ raw clients


class RawGrpc:
    """The protocol's protobuf messages sent as they are, malformed ones included."""

    def __init__(self, port: int) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.pb, self.grpc = service_pb2, grpc
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)],
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(
        self, tensors: List[Tuple[str, List[int]]], raw: List[bytes], model: str = "david", contents: Any = None
    ) -> Any:
        """(status code name, details) of a refused request, or the reply; `contents`: {name: values}
        of inputs sent as contents, not raw."""
        request = self.pb.ModelInferRequest(model_name=model)
        for name, shape in tensors:
            added = request.inputs.add(name=name, datatype="FP32", shape=shape)
            if contents and name in contents:
                added.contents.fp32_contents.extend(contents[name])
        request.raw_input_contents.extend(raw)
        try:
            return self.stub.ModelInfer(request, timeout=60)
        except self.grpc.RpcError as exc:
            return exc.code().name, exc.details()

    def call(self, method: str, request: Any) -> Tuple[str, str]:
        try:
            getattr(self.stub, method)(request, timeout=30)
            return "OK", ""
        except self.grpc.RpcError as exc:
            return exc.code().name, exc.details()

    def close(self) -> None:
        self.channel.close()


def _http(
    port: int, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None
) -> Tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _feeds(n_image: int, n_384: int, seed: int = 0) -> Tuple[List[Tuple[str, List[int]]], List[bytes]]:
    rng = np.random.default_rng(seed)
    image = rng.random((n_image, 3, SIDE, SIDE), dtype=np.float32)
    copy = rng.random((n_384, 3, 384, 384), dtype=np.float32)
    return [("image", list(image.shape)), ("image_384", list(copy.shape))], [image.tobytes(), copy.tobytes()]


def _hostile_requests() -> List[Tuple[str, Callable[[RawGrpc], Any]]]:
    """(what, send) pairs: each must be refused with INVALID_ARGUMENT, alone."""
    tensors, raw = _feeds(2, 1)
    nan = np.full((1, 3, SIDE, SIDE), np.nan, dtype=np.float32).tobytes()
    small = np.zeros((1, 3, 384, 384), dtype=np.float32).tobytes()
    pixels = np.full((1, 3, SIDE, SIDE), 200.0, dtype=np.float32).tobytes()
    return [
        ("batch sizes differ", lambda c: c.infer(tensors, raw)),
        (
            "buffer shorter than the shape",
            lambda c: c.infer([("image", [1, 3, 50000, 50000]), ("image_384", [1, 3, 384, 384])], [b"\0" * 64, small]),
        ),
        ("one buffer for two inputs", lambda c: c.infer(_feeds(1, 1)[0], _feeds(1, 1)[1][:1])),
        ("NaN in the image", lambda c: c.infer(_feeds(1, 1)[0], [nan, small])),
        ("0..255 pixels as FP32", lambda c: c.infer(_feeds(1, 1)[0], [pixels, small])),
        (  # the protocol forbids mixing; the reply came back as float64 bytes labelled FP32, shapes flat
            "contents and raw buffers mixed",
            lambda c: c.infer(_feeds(1, 1)[0], [small], contents={"image": [0.5] * (3 * SIDE * SIDE)}),
        ),
        (
            "an unknown input",
            lambda c: c.infer([("image", [1, 3, SIDE, SIDE]), ("extra", [1, 3, 384, 384])], _feeds(1, 1)[1]),
        ),
        (
            "a size not a multiple of the stride",
            lambda c: c.infer(
                [("image", [1, 3, 50, 50]), ("image_384", [1, 3, 384, 384])],
                [np.zeros((1, 3, 50, 50), np.float32).tobytes(), small],
            ),
        ),
    ]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tiny_multitask_onnx: Path):
    from tests.support.server_process import ServerProcess

    with ServerProcess(tiny_multitask_onnx, ["--max-batch-size", "16", "--max-batch-time", "0.05"]) as running:
        yield running


# ------------------------------------------------------------------------------------ 1. requests never mix


def test_victims_get_their_own_answers_while_a_hostile_client_sends_malformed_requests(server, tiny_runtime) -> None:
    images = _images(8, seed=7)
    expected = [tiny_runtime.predict(im) for im in images]
    results: Dict[int, Any] = {}
    refusals: List[Tuple[str, Any]] = []
    hostile = _hostile_requests()
    raw = RawGrpc(server.grpc_port)
    start = threading.Barrier(len(images) + 2)

    def victim(i: int, remote: DavidRuntime) -> None:
        start.wait()
        try:
            results[i] = [remote.predict(images[i]) for _ in range(3)]
        except Exception as exc:  # recorded, asserted below
            results[i] = exc

    def attacker() -> None:
        start.wait()
        for _ in range(4):
            for what, send in hostile:
                refusals.append((what, send(raw)))

    def http_attacker() -> None:
        start.wait()
        tensors, data = _feeds(2, 1)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [2, 3, SIDE, SIDE],
                        "data": [0.5] * (2 * 3 * SIDE * SIDE),
                    },
                    {
                        "name": "image_384",
                        "datatype": "FP32",
                        "shape": [1, 3, 384, 384],
                        "data": [0.5] * (3 * 384 * 384),
                    },
                ]
            }
        )
        for _ in range(3):
            refusals.append(
                (
                    "HTTP batch sizes differ",
                    _http(
                        server.http_port,
                        "POST",
                        "/v2/models/david/infer",
                        body.encode(),
                        {"content-type": "application/json"},
                    ),
                )
            )

    with DavidRuntime(server.grpc_url, resolution=SIDE, timeout=60) as remote:
        threads = [threading.Thread(target=victim, args=(i, remote)) for i in range(len(images))]
        threads += [threading.Thread(target=attacker), threading.Thread(target=http_attacker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    raw.close()
    assert not any(t.is_alive() for t in threads)
    for i, outcome in sorted(results.items()):
        assert not isinstance(outcome, Exception), outcome
        for served in outcome:
            _assert_same(expected[i], served)
    assert len(results) == len(images)
    assert len(refusals) == 4 * len(hostile) + 3
    for what, answer in refusals:
        if what.startswith("HTTP"):
            status, text = answer
            assert status == 400 and "one row per image" in text, (what, answer)
            continue
        assert isinstance(answer, tuple) and answer[0] == "INVALID_ARGUMENT", (what, answer)
        # the message says what was wrong, never Python's internals or a server path
        assert "unpack" not in answer[1] and "/" not in answer[1].replace("N/A", ""), (what, answer)
    details = {what: answer[1] for what, answer in refusals if not what.startswith("HTTP")}
    assert "one row per image" in details["batch sizes differ"]
    assert "needs" in details["buffer shorter than the shape"]
    assert "one buffer per input" in details["one buffer for two inputs"]
    assert "NaN" in details["NaN in the image"]
    assert "takes the inputs" in details["an unknown input"]
    assert "multiples of" in details["a size not a multiple of the stride"]
    assert "divide 0..255 data by 255" in details["0..255 pixels as FP32"]
    assert "send every input one way" in details["contents and raw buffers mixed"]


# ------------------------------------------------------------------------------------ 2. binding, model control


def test_default_binding_is_loopback_and_a_public_host_warns(tiny_multitask_onnx: Path) -> None:
    from david_infer.options import RuntimeOptions
    from david_infer.serving import ServeConfig

    assert ServeConfig(RuntimeOptions(model=str(tiny_multitask_onnx))).host == "127.0.0.1"
    assert ServeConfig(RuntimeOptions(model=str(tiny_multitask_onnx))).loopback
    assert not ServeConfig(RuntimeOptions(model=str(tiny_multitask_onnx)), host="0.0.0.0").loopback
    from tests.support.server_process import ServerProcess

    with ServerProcess(tiny_multitask_onnx, ["--host", "0.0.0.0"]) as public:
        assert "warning: listening on 0.0.0.0" in public.log_tail()
        # the metrics port follows --host too: loopback reaches it here because 0.0.0.0 includes it
        assert "david_batch_size" in public.metrics() or public.metrics() != ""


def test_model_control_is_refused_by_default(server) -> None:
    status, text = _http(server.http_port, "POST", "/v2/repository/models/david/unload", b"{}")
    assert status == 403 and "--model-control" in text
    raw = RawGrpc(server.grpc_port)
    try:
        code, details = raw.call("RepositoryModelUnload", raw.pb.RepositoryModelUnloadRequest(model_name="david"))
        assert code == "PERMISSION_DENIED" and "--model-control" in details
    finally:
        raw.close()
    assert _http(server.http_port, "GET", "/v2/models/david/ready")[0] == 200


def test_model_control_unload_and_load_work_and_readiness_follows(tiny_multitask_onnx: Path, tiny_runtime) -> None:
    from tests.support.server_process import ServerProcess

    image = _images(1, seed=9)[0]
    with ServerProcess(tiny_multitask_onnx, ["--model-control"]) as managed:
        port = managed.http_port
        assert _http(port, "GET", "/v2/health/ready")[0] == 200
        assert _http(port, "POST", "/v2/repository/models/david/unload", b"{}")[0] == 200
        assert _http(port, "GET", "/v2/health/ready")[0] != 200  # nothing can answer
        with pytest.raises(ModelError):
            DavidRuntime(managed.grpc_url, resolution=SIDE)
        status, text = _http(port, "POST", "/v2/repository/models/david/load", b"{}")
        assert status == 200, text
        assert _http(port, "GET", "/v2/health/ready")[0] == 200
        with DavidRuntime(managed.grpc_url, resolution=SIDE) as remote:
            _assert_same(tiny_runtime.predict(image), remote.predict(image))
        # load again while loaded (a reload) keeps serving
        assert _http(port, "POST", "/v2/repository/models/david/load", b"{}")[0] == 200
        with DavidRuntime(managed.http_url, resolution=SIDE) as remote:
            _assert_same(tiny_runtime.predict(image), remote.predict(image))
        assert "Traceback" not in managed.log_tail(100_000)


def test_shared_token(tiny_multitask_onnx: Path, tiny_runtime, tmp_path: Path) -> None:
    from tests.support.server_process import ServerProcess

    token = "s3cret-token-for-the-test"
    (tmp_path / "token").write_text(token + "\n")
    image = _images(1, seed=10)[0]
    with ServerProcess(tiny_multitask_onnx, ["--token-file", str(tmp_path / "token")]) as guarded:
        assert token not in guarded.log_tail(100_000)
        assert _http(guarded.http_port, "GET", "/v2/health/ready")[0] == 200  # probes need no token
        status, text = _http(guarded.http_port, "GET", "/v2/models/david")
        assert status == 401 and "Bearer" in text
        with pytest.raises(ModelError, match="UNAUTHENTICATED|Bearer"):
            DavidRuntime(guarded.grpc_url, resolution=SIDE)
        with pytest.raises(ModelError, match="UNAUTHENTICATED|Bearer"):
            DavidRuntime(guarded.grpc_url, resolution=SIDE, token="wrong-token-of-some-length")
        for url in (guarded.grpc_url, guarded.http_url):
            with DavidRuntime(url, resolution=SIDE, token=token) as remote:
                _assert_same(tiny_runtime.predict(image), remote.predict(image))


# ------------------------------------------------------------------------------------ 3. limits


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_limits_refuse_before_decoding_and_memory_stays_bounded(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import ServerProcess

    limit = 6 << 20
    args = ["--max-request-bytes", str(limit), "--max-pixels", str(2 * SIDE * SIDE), "--max-images", "2"]
    with ServerProcess(tiny_multitask_onnx, args) as limited:
        pid = limited.process.pid
        raw = RawGrpc(limited.grpc_port)
        try:
            tensors, data = _feeds(2, 2)
            for _ in range(2):  # warm: the model's own memory (ONNX Runtime's arena) for this batch size
                assert not isinstance(raw.infer(tensors, data), tuple)
            time.sleep(3)  # a trim
            baseline = _rss_kib(pid)
            # over the byte limit (7.3 MB): refused by gRPC before the message is parsed
            code, details = raw.infer(*_feeds(4, 4))
            assert code == "RESOURCE_EXHAUSTED", details
            # over the image and pixel limits: refused from the shapes
            code, details = raw.infer(*_feeds(3, 3))
            assert code == "RESOURCE_EXHAUSTED" and "--max-images" in details, details
            copy = np.zeros((1, 3, 384, 384), np.float32).tobytes()
            code, details = raw.infer(
                [("image", [1, 3, 2 * SIDE, 2 * SIDE]), ("image_384", [1, 3, 384, 384])],
                [np.zeros((1, 3, 2 * SIDE, 2 * SIDE), np.float32).tobytes(), copy],
            )
            assert code == "RESOURCE_EXHAUSTED" and "--max-pixels" in details, details
            # HTTP: refused from Content-Length, the body never read
            connection = http.client.HTTPConnection("127.0.0.1", limited.http_port, timeout=30)
            connection.putrequest("POST", "/v2/models/david/infer")
            connection.putheader("content-type", "application/octet-stream")
            connection.putheader("content-length", str(100 << 20))  # declared; the body is never sent
            connection.endheaders()
            response = connection.getresponse()
            assert response.status == 413 and "--max-request-bytes" in response.read().decode()
            connection.close()
            # requests within the limits, many times: the server's memory stays within a few copies of one,
            # the model's working memory included (given back between bursts, so not in the baseline)
            assert sum(map(len, data)) > limit / 2
            for _ in range(12):
                assert not isinstance(raw.infer(tensors, data), tuple)
            peak = _rss_kib(pid, "VmHWM")
            assert (peak - baseline) * 1024 < 16 * limit, f"peak {peak} KiB, baseline {baseline} KiB"  # measured: 9-10x
            time.sleep(3)  # given back once no batch ran for 1 s
            assert (_rss_kib(pid) - baseline) * 1024 < 5 * limit, (baseline, _rss_kib(pid))  # measured: 1-3x
        finally:
            raw.close()
        log = limited.log_path.read_text(errors="replace")
        assert max(map(len, log.splitlines())) < 5000  # no request body in the log


# ------------------------------------------------------------------------------------ 4. workers that die, SIGTERM


def _children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def test_a_dead_worker_stops_the_server_and_clients_see_server_unavailable(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import ServerProcess

    images = _images(2, seed=11)
    with ServerProcess(tiny_multitask_onnx, ["--workers", "2"]) as doomed:
        workers = _children(doomed.process.pid)  # the inference workers are the server's only children
        assert len(workers) >= 2
        remote = DavidRuntime(doomed.grpc_url, resolution=SIDE, timeout=10)
        remote.predict(images[0])
        errors: List[BaseException] = []

        def load() -> None:
            for i in range(400):
                try:
                    remote.predict(images[i % 2])
                except Exception as exc:  # the expected end of the loop
                    errors.append(exc)
                    return

        clients = [threading.Thread(target=load) for _ in range(2)]
        for t in clients:
            t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = doomed.process.wait(timeout=20)
        assert time.monotonic() - t0 < 10
        assert status == 3, doomed.log_tail()
        assert "so that a supervisor restarts the server" in doomed.log_tail()
        for t in clients:
            t.join(timeout=30)
        assert len(errors) == 2 and all(isinstance(e, ServerUnavailable) for e in errors), errors
        remote.close()


def test_sigterm_under_load_ends_within_seconds(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import ServerProcess

    images = _images(2, seed=12)
    with ServerProcess(tiny_multitask_onnx, ["--workers", "1"]) as server_:
        remote = DavidRuntime(server_.grpc_url, resolution=SIDE, timeout=10)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    remote.predict(images[0])
                except Exception:  # the server is going away: expected
                    return

        client = threading.Thread(target=load)
        client.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        server_.process.send_signal(signal.SIGTERM)
        status = server_.process.wait(timeout=30)
        assert time.monotonic() - t0 < 10, "SIGTERM took too long"
        stop.set()
        client.join(timeout=30)
        remote.close()
        assert status == 0, server_.log_tail()


# ------------------------------------------------------------------------------------ 6. the client


class _Trickle(threading.Thread):
    """A TCP server on 127.0.0.1 that answers every connection one byte a second (an HTTP status
    line that never ends), for `seconds` at most."""

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.deadline = time.monotonic() + seconds

    def run(self) -> None:
        connections = []
        while time.monotonic() < self.deadline:
            try:
                connections.append(self.sock.accept()[0])
            except socket.timeout:
                pass
            for c in connections:
                try:
                    c.send(b"H")
                except OSError:
                    pass
            time.sleep(0.5)
        for c in connections:
            c.close()
        self.sock.close()


def test_http_client_deadline_covers_a_trickling_server() -> None:
    trickle = _Trickle(seconds=30)
    trickle.start()
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match="within 2 s"):
        DavidRuntime(f"http://127.0.0.1:{trickle.port}/david", resolution=SIDE, timeout=2)
    assert time.monotonic() - t0 < 6


def test_client_errors_are_typed(server, tiny_runtime, tiny_multitask_onnx: Path) -> None:
    image = _images(1, seed=13)[0]
    # HTTP without a model name: the one served model is found
    with DavidRuntime(server.http_url.rsplit("/", 1)[0], backend="triton", resolution=SIDE) as remote:
        _assert_same(tiny_runtime.predict(image), remote.predict(image))
    # a gRPC URL on the HTTP port: a configuration error at once, not a retried outage
    t0 = time.monotonic()
    with pytest.raises(InputError, match="HTTP port"):
        DavidRuntime(
            f"grpc://127.0.0.1:{server.http_port}/david", resolution=SIDE, timeout=5, retries=3, retry_delay=1.0
        )
    assert time.monotonic() - t0 < 5


class _BadMetadata(threading.Thread):
    """An HTTP server on 127.0.0.1 whose model metadata carries a manifest that is not JSON."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = (
                    {
                        "name": "david",
                        "versions": ["david-infer-manifest:{not json"],
                        "platform": "x",
                        "inputs": [],
                        "outputs": [],
                    }
                    if self.path.startswith("/v2/models/")
                    else {"extensions": []}
                )
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(daemon=True)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]

    def run(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)


def test_malformed_manifest_metadata_is_a_model_error() -> None:
    fake = _BadMetadata()
    fake.start()
    try:
        with pytest.raises(ModelError, match="not valid JSON"):
            DavidRuntime(f"http://127.0.0.1:{fake.port}/david", resolution=SIDE, timeout=5)
    finally:
        fake.httpd.shutdown()


def test_nonfinite_output_message_is_typed() -> None:
    from tritonclient.utils import InferenceServerException

    from david_infer.backends.triton import TritonOptions
    from david_infer.backends.triton.runner import Protocol

    protocol = Protocol("grpc://127.0.0.1:1/david", "grpc", "127.0.0.1:1", TritonOptions())
    served = InferenceServerException(
        "NonFiniteOutput: the model's output 'depth' is not finite", "StatusCode.INTERNAL"
    )
    assert isinstance(protocol._translate("inference", served), NonFiniteOutput)
    died = InferenceServerException("Worker process stopped unexpectedly with exit code -9.", "StatusCode.INTERNAL")
    assert isinstance(protocol._translate("inference", died), ServerUnavailable)


# ------------------------------------------------------------------------------------ 7. one line each


def test_busy_port_is_one_line(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    busy = socket.socket()
    busy.bind(("127.0.0.1", http_port))
    busy.listen(1)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "david_infer",
                "serve",
                "-m",
                str(tiny_multitask_onnx),
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics_port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        busy.close()
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(http_port) in lines[0] and "in use" in lines[0] and "--http-port" in lines[0]


def test_ctrl_c_on_a_healthy_server_is_one_line(tiny_multitask_onnx: Path) -> None:
    from tests.support.server_process import ServerProcess

    with ServerProcess(tiny_multitask_onnx) as healthy:
        healthy.process.send_signal(signal.SIGINT)
        status = healthy.process.wait(timeout=30)
        log = healthy.log_tail(100_000)
    assert status == 0, log
    assert "stopping (SIGINT)" in log
    assert "Traceback" not in log and "CancelledError" not in log, log


# ------------------------------------------------------------------------------------ 8. after a burst


def test_memory_goes_back_after_a_burst_of_large_requests(tiny_multitask_onnx: Path) -> None:
    """Memory a burst took is given back once the server is idle: the model's working memory
    (ONNX Runtime kept its largest batch's in an arena) and the requests' buffers alike."""
    from tests.support.server_process import ServerProcess

    side, clients = 512, 4
    with ServerProcess(tiny_multitask_onnx) as server:
        pid = server.process.pid
        raw = RawGrpc(server.grpc_port)
        try:
            assert not isinstance(raw.infer(*_feeds(1, 1)), tuple)  # a small request: the model's own start-up
            time.sleep(3)
            baseline = _rss_kib(pid)
            rng = np.random.default_rng(1)
            image = rng.random((1, 3, side, side), dtype=np.float32)
            copy = rng.random((1, 3, 384, 384), dtype=np.float32)
            tensors = [("image", list(image.shape)), ("image_384", list(copy.shape))]
            answers: List[Any] = []
            start = threading.Barrier(clients)

            def client() -> None:
                start.wait()
                answers.append(raw.infer(tensors, [image.tobytes(), copy.tobytes()]))

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert len(answers) == clients and not any(isinstance(a, tuple) for a in answers), answers
            grown = (_rss_kib(pid, "VmHWM") - baseline) // 1024
            assert grown > 100, f"the burst took only {grown} MB: it proves nothing"
            deadline = time.monotonic() + 10  # trims run after 2 s without a batch
            while time.monotonic() < deadline and _rss_kib(pid) - baseline > 48 << 10:
                time.sleep(0.5)
            kept = (_rss_kib(pid) - baseline) // 1024
            assert kept <= 48, f"{kept} MB above the baseline stayed after the burst (peak +{grown} MB)"
        finally:
            raw.close()


def test_a_request_that_does_not_parse_is_not_echoed(server) -> None:
    data = [0.5] * (3 * SIDE * SIDE * 80)  # 5 MB of JSON, no input name
    body = json.dumps({"inputs": [{"shape": [80, 3, SIDE, SIDE], "datatype": "FP32", "data": data}]}).encode()
    status, text = _http(server.http_port, "POST", "/v2/models/david/infer", body, {"content-type": "application/json"})
    assert status == 422, text[:300]
    assert len(text) < 2000 and "0.5" not in text, f"{len(text)} characters: {text[:300]}"
    assert "inputs.0.name" in text and "Field required" in text, text


def _trickle(port: int, lines: List[bytes], connections: int, seconds: float) -> Dict[int, float]:
    """Open `connections` sockets to `port` and send each one line of `lines` a second; the
    seconds after which the server closed each one (within `seconds`)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
    for s in sockets:
        s.setblocking(False)
    closed: Dict[int, float] = {}
    t0 = time.monotonic()
    for tick in range(int(seconds) + 1):
        for i, s in enumerate(sockets):
            if i in closed:
                continue
            try:
                if tick < len(lines):
                    s.send(lines[tick])
                if s.recv(4096) == b"":
                    closed[i] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - t0
        if len(closed) == connections:
            break
        time.sleep(1.0)
    for s in sockets:
        s.close()
    return closed


def test_slow_clients_are_cut_off_and_others_are_served(tiny_multitask_onnx: Path, tiny_runtime) -> None:
    from tests.support.server_process import ServerProcess

    headers = [b"GET /v2/health/ready HTTP/1.1\r\n"] + [b"X-Slow-%d: 1\r\n" % i for i in range(30)]
    body = [b"POST /v2/models/david/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"] + [b"{"] * 30
    with ServerProcess(tiny_multitask_onnx, ["--header-timeout", "2", "--body-timeout", "3"]) as guarded:
        results: Dict[str, Dict[int, float]] = {}
        attacks = [
            threading.Thread(target=lambda: results.update(headers=_trickle(guarded.http_port, headers, 50, 12))),
            threading.Thread(target=lambda: results.update(body=_trickle(guarded.http_port, body, 10, 12))),
            threading.Thread(
                target=lambda: results.update(grpc=_trickle(guarded.grpc_port, [b"PRI * HTTP/2.0\r\n"], 10, 12))
            ),
        ]
        for t in attacks:
            t.start()
        time.sleep(1.0)
        image = _images(1, seed=14)[0]
        with DavidRuntime(guarded.grpc_url, resolution=SIDE, timeout=30) as remote:  # served meanwhile
            _assert_same(tiny_runtime.predict(image), remote.predict(image))
        assert _http(guarded.http_port, "GET", "/v2/health/ready")[0] == 200
        for t in attacks:
            t.join(timeout=30)
    # closed at the deadlines (2 s; 2 + 3 s for a body), seen within the next poll (1 s) and some load
    assert len(results["headers"]) == 50 and max(results["headers"].values()) < 5, results["headers"]
    assert len(results["body"]) == 10 and min(results["body"].values()) > 4, results["body"]
    assert max(results["body"].values()) < 9, results["body"]
    assert len(results["grpc"]) == 10 and max(results["grpc"].values()) < 6, results["grpc"]
