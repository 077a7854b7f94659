"""Server memory against request size: peak and settled RSS of `david-infer serve` per payload.

    python benchmarks/serving_memory.py                      # tiny model, gRPC raw and HTTP JSON
    python benchmarks/serving_memory.py --sides 256,512 --images 1,4

For each transport, payload (images x side) in ascending order, one server (no workers: the
model runs in the server process, so its RSS is all of it) gets `--repeat` requests; the rows
report the payload's bytes on the wire, the growth of the server's peak RSS (VmHWM) over its
baseline (its RSS after one request of that size and a trim; sizes ascend, so the peak is this
size's) as a multiple of the payload, and its RSS 3 s later (after malloc_trim) over the
baseline. Writes benchmarks/results/serving_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an exported .onnx (default: the tiny multi-task model, exported now)")
    p.add_argument("--sides", default="256,512")
    p.add_argument("--images", default="1,4")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--transports", default="grpc,http")
    args = p.parse_args()
    from tests.support.server_process import ServerProcess

    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from david_infer.export import export_onnx

            model = str(Path(tmp) / "tiny-multitask.onnx")
            export_onnx("tiny", "multitask", model, seed=0)
        for transport in args.transports.split(","):
            server_args = ["--max-request-bytes", str(1 << 30), "--max-pixels", str(1 << 26), "--max-batch-size", "64"]
            with ServerProcess(model, server_args) as server:
                pid = server.process.pid
                send = (grpc_sender if transport == "grpc" else http_sender)(
                    server.grpc_port if transport == "grpc" else server.http_port
                )
                rng = np.random.default_rng(0)
                for side in [int(s) for s in args.sides.split(",")]:
                    for n in [int(i) for i in args.images.split(",")]:
                        feeds = {
                            "image": rng.random((n, 3, side, side), dtype=np.float32),
                            "image_384": rng.random((n, 3, 384, 384), dtype=np.float32),
                        }
                        send(feeds)  # the model's own memory at this size first
                        time.sleep(3)
                        base = rss_kib(pid, "VmRSS")
                        size = 0
                        for _ in range(args.repeat):
                            size = send(feeds)
                        peak = rss_kib(pid, "VmHWM") - base  # the peak of this size's requests (ascending sizes)
                        time.sleep(3)
                        settled = rss_kib(pid, "VmRSS")
                        row = {
                            "transport": transport,
                            "images": n,
                            "side": side,
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
        "| transport | images x side | payload MB | peak RSS over baseline MB | x payload | RSS 3 s later MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['transport']} | {r['images']} x {r['side']} | {r['payload_mb']:.1f} | "
        f"{r['peak_over_base_mb']:.1f} | {r['peak_x_payload']:.1f} | {r['settled_over_base_mb']:.1f} |"
        for r in rows
    ]
    (RESULTS / "serving_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
