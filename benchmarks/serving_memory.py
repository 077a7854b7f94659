"""Server memory in a burst and after it: peak and settled RSS of `david-infer serve` over its idle size.

    python benchmarks/serving_memory.py                      # tiny model: 1 and 8 concurrent 512 and 1024 requests
    python benchmarks/serving_memory.py --sides 256,1024 --clients 1,8 --transports grpc

One server per transport (default settings: batches of up to 8 images; no workers, so the model
runs in the server process and its RSS is all of it; the request limits raised so that every
burst is accepted). Its baseline is its RSS when idle after one small (64x64) request. Each burst
sends `clients` concurrent requests of one `side`x`side` image (with the 384x384 copy); the rows
report the burst's bytes on the wire, the server's peak RSS during the burst (VmHWM, reset before
each burst) over the baseline, as a multiple of the burst's bytes, and its RSS 3 s after the burst
over the baseline. Writes benchmarks/results/serving_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, model_or_tiny
from david_infer.benchmark import machine  # noqa: E402


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def grpc_sender(port: int) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)],
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def send(feeds: Dict[str, np.ndarray]) -> int:
        request = service_pb2.ModelInferRequest(model_name="david")
        for name, value in feeds.items():
            request.inputs.add(name=name, datatype="FP32", shape=list(value.shape))
            request.raw_input_contents.append(value.tobytes())
        stub.ModelInfer(request, timeout=600)
        return request.ByteSize()

    return send


def http_sender(port: int) -> Any:
    def send(feeds: Dict[str, np.ndarray]) -> int:
        body = json.dumps(
            {
                "inputs": [
                    {"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                    for n, v in feeds.items()
                ]
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/david/infer", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
        return len(body)

    return send


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def burst(send: Any, feeds: Dict[str, np.ndarray], clients: int) -> int:
    """`clients` threads sending `feeds` at once; the bytes they sent."""
    sizes: List[int] = []
    errors: List[BaseException] = []
    start = threading.Barrier(clients)

    def client() -> None:
        start.wait()
        try:
            sizes.append(send(feeds))
        except BaseException as exc:  # reported after the burst
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(sizes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an exported .onnx (default: the tiny multi-task model, exported now)")
    p.add_argument("--sides", default="512,1024")
    p.add_argument("--clients", default="1,8", help="concurrent requests per burst (default 1,8)")
    p.add_argument("--transports", default="grpc,http")
    args = p.parse_args()
    from tests.support.server_process import ServerProcess

    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(model_or_tiny(args.model, Path(tmp)))
        rng = np.random.default_rng(0)
        for transport in args.transports.split(","):
            server_args = ["--max-request-bytes", str(1 << 30), "--max-pixels", str(1 << 26)]
            with ServerProcess(model, server_args) as server:
                pid = server.process.pid
                send = (grpc_sender if transport == "grpc" else http_sender)(
                    server.grpc_port if transport == "grpc" else server.http_port
                )
                send(
                    {"image": np.zeros((1, 3, 64, 64), np.float32), "image_384": np.zeros((1, 3, 384, 384), np.float32)}
                )
                time.sleep(3)
                base = rss_kib(pid, "VmRSS")
                for side in [int(s) for s in args.sides.split(",")]:
                    for clients in [int(c) for c in args.clients.split(",")]:
                        feeds = {
                            "image": rng.random((1, 3, side, side), dtype=np.float32),
                            "image_384": rng.random((1, 3, 384, 384), dtype=np.float32),
                        }
                        if not reset_peak(pid):
                            raise SystemExit("cannot reset the server's peak RSS (/proc/PID/clear_refs)")
                        size = burst(send, feeds, clients)
                        peak = rss_kib(pid, "VmHWM") - base
                        time.sleep(3)
                        settled = rss_kib(pid, "VmRSS")
                        row = {
                            "transport": transport,
                            "clients": clients,
                            "side": side,
                            "baseline_mb": base * 1024 / 1e6,
                            "payload_mb": size / 1e6,
                            "peak_over_base_mb": peak * 1024 / 1e6,
                            "peak_x_payload": peak * 1024 / size,
                            "settled_over_base_mb": (settled - base) * 1024 / 1e6,
                        }
                        rows.append(row)
                        print(row, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_memory.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    lines = [
        f"`python benchmarks/serving_memory.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{machine()['cpu']}, {machine()['cores']} cores; idle server "
        + ", ".join(sorted({f"{r['transport']} {r['baseline_mb']:.0f} MB" for r in rows})),
        "",
        "| transport | burst: requests x side | payload MB | peak RSS over idle MB | x payload | RSS 3 s later over idle MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['transport']} | {r['clients']} x {r['side']} | {r['payload_mb']:.1f} | "
        f"{r['peak_over_base_mb']:.0f} | {r['peak_x_payload']:.1f} | {r['settled_over_base_mb']:.0f} |"
        for r in rows
    ]
    (RESULTS / "serving_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
