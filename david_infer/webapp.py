"""The browser page's local server (`david-infer web`, docs/browser.md): the built page, ONNX Runtime
Web's files and one pixels-to-maps graph (`export --prepost`) with what the page must know of it
(/model.json), on 127.0.0.1 only, every response with cross-origin isolation headers (WebAssembly
threads need SharedArrayBuffer) and a Content-Security-Policy to this server alone."""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Dict, Mapping, Optional, Tuple, Union

from .contract import ModelContract
from .errors import BackendUnavailable, InputError, ModelError
from .files import sha256_file
from .manifest import manifest_path
from .tasks import task_table

STATIC_DIR = Path(__file__).resolve().parent / "web_static"
HOST = "127.0.0.1"

BUILD_HINT = "build it from a source checkout with: (cd web && npm ci && npm run build), then reinstall"

# The page loads only from this origin; ONNX Runtime Web compiles WebAssembly and starts module workers.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
}
CONTENT_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".json": "application/json",
    ".png": "image/png",
    ".onnx": "application/octet-stream",
}


@dataclass(frozen=True)
class PageModel:
    """What the page is told about the graph it runs (served as /model.json)."""

    path: Path
    bytes: int
    sha256: str
    channel_order: str  # "rgb" or "bgr": the order of the last axis of `image`
    tasks: Tuple[str, ...]
    precision: str
    stamp: Tuple[int, int, int] = (0, 0, 0)  # the file's size, mtime and inode when described

    def to_json(self) -> Dict[str, Any]:
        """What /model.json says."""
        return {
            "name": self.path.name,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "channel_order": self.channel_order,
            "tasks": list(self.tasks),
            "task_table": task_table(self.tasks),  # channels, signs: the page writes none itself
            "precision": self.precision,
        }


def describe_model(path: Union[str, Path]) -> PageModel:
    """The page's view of a pixels-to-maps graph, from the manifest beside it; ModelError, saying how
    to make the right one, when the file or its manifest is missing or describes another graph."""
    path = Path(path)
    how = "Export it with david-infer export ... --prepost"
    if path.suffix != ".onnx":
        raise ModelError(f"{path}: the browser page runs ONNX graphs (.onnx); {how[0].lower() + how[1:]}")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if not manifest_path(path).is_file():
        raise ModelError(
            f"{path}: no manifest beside it ({manifest_path(path).name}); the page needs the channel order it records. {how}"
        )
    contract = ModelContract.load(path)
    image = contract.inputs[0]
    if contract.graph is None or image.dtype != "uint8" or len(image.shape) != 4 or image.shape[-1] != 3:
        raise ModelError(
            f"{path}: its manifest says layout {contract.layout!r} with input {image.name!r} {image.dtype} "
            f"{list(image.shape)}; the page needs the pixels-to-maps graph (layout 'prepost': uint8 (N, H, W, 3) "
            f"photo in, maps at its size out). {how}"
        )
    stat = path.stat()
    # The recorded hash is checked by the browser's cache key only; hashing a 1.3 GB file at every
    # start would delay the page by seconds, so an unrecorded one is computed once here.
    digest = contract.sha256 or sha256_file(path)
    graph = contract.graph
    return PageModel(path, stat.st_size, digest, graph.channel_order, contract.tasks, contract.precision, _stamp(stat))


def _stamp(stat: os.stat_result) -> Tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def check_port(port: int) -> None:
    """InputError unless `port` is a TCP port number (0: any free one)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"--port must be 0 to 65535 (0: any free port), got {port!r}")


def static_files(root: Path = STATIC_DIR) -> Dict[str, Path]:
    """URL path -> file for the built page; BackendUnavailable when it was never built."""
    if not (root / "index.html").is_file():
        raise BackendUnavailable(f"the browser page is not built ({root / 'index.html'} is missing); {BUILD_HINT}")
    return {"/" + p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the page's files, /model.json and /model.onnx; anything else is 404/405."""

    server: "PageServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, body: bool) -> None:
        route = self.path.split("?", 1)[0].split("#", 1)[0]
        route = "/index.html" if route == "/" else route
        model = self.server.model
        if route in ("/model.json", "/model.onnx"):
            return self._send_model(model, route, body)
        path = self.server.files.get(route)
        if path is None:
            return self._send(HTTPStatus.NOT_FOUND, ".txt", f"not found: {route}\n".encode(), body)
        self._send(HTTPStatus.OK, path.suffix, path, body)

    def _send_model(self, model: PageModel, route: str, body: bool) -> None:
        """/model.json, or the bytes /model.json describes: a file replaced since the start (a
        re-export) is refused, never served under the old description and ETag."""
        try:
            opened = open(model.path, "rb")
        except OSError:
            return self._send_changed(model, "was removed", body)
        with opened:
            if _stamp(os.fstat(opened.fileno())) != model.stamp:  # what is sent, not the name: no race
                return self._send_changed(model, "changed", body)
            if route == "/model.json":
                return self._send(HTTPStatus.OK, ".json", json.dumps(model.to_json()).encode(), body)
            self._send(HTTPStatus.OK, ".onnx", opened, body, {"ETag": f'"{model.sha256}"'})

    def _send_changed(self, model: PageModel, what: str, body: bool) -> None:
        text = f"{model.path} {what} since david-infer web started; restart it to serve the model now there\n"
        self._send(HTTPStatus.CONFLICT, ".txt", text.encode(), body)

    def _send(
        self,
        status: HTTPStatus,
        suffix: str,
        content: Union[bytes, Path, BinaryIO],
        body: bool,
        extra: Mapping[str, str] = {},
    ) -> None:
        self.send_response(status)
        content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type("x" + suffix)[0] or "text/plain"
        self.send_header("Content-Type", content_type)
        if isinstance(content, bytes):
            length = len(content)
        else:
            length = content.stat().st_size if isinstance(content, Path) else os.fstat(content.fileno()).st_size
        self.send_header("Content-Length", str(length))
        cache = {"Cache-Control": "no-cache"} if status == HTTPStatus.OK else {}
        for name, value in {**ISOLATION_HEADERS, **extra, **cache}.items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        if isinstance(content, bytes):
            self.wfile.write(content)
        elif isinstance(content, Path):
            with open(content, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
        else:
            shutil.copyfileobj(content, self.wfile, 1 << 20)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class PageServer(ThreadingHTTPServer):
    """The page's HTTP server on 127.0.0.1 (port 0 = any free port; `url` says which)."""

    daemon_threads = True

    def __init__(self, model: PageModel, port: int = 0, verbose: bool = False, static_root: Path = STATIC_DIR) -> None:
        check_port(port)
        self.model, self.verbose = model, verbose
        self.files = static_files(static_root)
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen on {HOST}:{port} ({exc}); choose another --port") from None

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://{HOST}:{self.server_address[1]}/"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (for scripts); `shutdown()` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="david-web", daemon=True)
        thread.start()
        return thread


def open_page_server(
    model: Union[str, Path], port: int = 0, verbose: bool = False, static_root: Optional[Path] = None
) -> PageServer:
    """A PageServer for `model` (checked first), not yet serving."""
    check_port(port)  # before describing the model (which may hash it)
    return PageServer(describe_model(model), port=port, verbose=verbose, static_root=static_root or STATIC_DIR)
