"""The browser page in headless Chromium, for tests and benchmarks: `david-infer web` in a child
process, the system's Chromium driven by Playwright (`pip install playwright`; no browser download:
`executable_path` is Debian's `chromium`), and the page's steps (load, give a photo, read the maps).

    with PageServerProcess("model.onnx") as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = open_page(browser.new_page(), server.url)
        maps = give_photo(page, "photo.png")
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from david_infer.errors import BackendUnavailable, InputError

from .server_process import HOST, ServerProcess, free_ports

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Headless, no sandbox (root in CI), and no traffic of Chromium's own: the page must work on loopback alone.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 120_000


def find_chromium() -> Optional[str]:
    """The system Chromium's path ($CHROMIUM_PATH, else the first on PATH), or None."""
    chosen = os.environ.get("CHROMIUM_PATH")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def launch_chromium(playwright: Any, args: Sequence[str] = ()) -> Any:
    """A headless Chromium (Playwright Browser) from the system's install."""
    path = find_chromium()
    if path is None:
        raise BackendUnavailable(
            "no Chromium found (looked for $CHROMIUM_PATH, "
            + ", ".join(CHROMIUM_NAMES)
            + "); install it: apt-get install chromium"
        )
    return playwright.chromium.launch(executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *args])


class PageServerProcess(ServerProcess):
    """`david-infer web MODEL` on a free port of 127.0.0.1, ready once it serves /model.json."""

    command_name = "web"

    def __init__(
        self,
        model: Union[str, Path],
        args: Sequence[str] = (),
        ready_timeout: float = 60.0,
        log: Optional[Union[str, Path]] = None,
    ) -> None:
        super().__init__(model, args=args, name="web", ready_timeout=ready_timeout, log=log)
        self.port = free_ports(1)[0]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def command(self) -> List[str]:
        return [sys.executable, "-m", "david_infer", "web", "-m", self.model, "--port", str(self.port), *self.args]

    def ready_url(self) -> str:
        return self.url + "model.json"


def wait_phase(page: Any, phases: Sequence[str], timeout_ms: int = PAGE_TIMEOUT_MS) -> str:
    """Wait until the page's `david.phase` is one of `phases` (or it shows an error); return the phase."""
    page.wait_for_function(  # a function, not an expression: the page's CSP forbids eval
        "(phases) => phases.includes(window.david?.phase) || !!window.david?.error",
        arg=list(phases),
        timeout=timeout_ms,
    )
    return str(page.evaluate("() => window.david.phase"))


def open_page(page: Any, url: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> Any:
    """Load the page at `url` and wait until the model is loaded (or the page says why not)."""
    page.goto(url)
    wait_phase(page, ("ready", "failed"), timeout_ms)
    return page


def give_photo(page: Any, photo: Union[str, Path], timeout_ms: int = PAGE_TIMEOUT_MS, step: int = 1) -> Dict[str, Any]:
    """Give `photo` through the file input and return the page's maps as arrays: `depth` (H, W),
    `normal` (H, W, C), `foreground` (H, W) (None for a task the model lacks), and `ms`, the model
    time. With `step` > 1, every step-th row and column only (a 4K photo's maps are 166 MB).

    InputError with the page's own message when the page refuses the file."""
    before = page.evaluate("() => [window.david.runs, window.david.errors]")
    page.set_input_files("#file", str(photo))
    page.wait_for_function(
        "([runs, errors]) => window.david.runs > runs || window.david.errors > errors", arg=before, timeout=timeout_ms
    )
    state = page.evaluate(
        """(step) => {
        const d = window.david, r = d.result;
        if (d.error || !r) return {error: d.error};
        const pack = (a, task) => {  // float32 bytes of the sampled pixels, base64 (JSON numbers are slow)
          if (!a) return null;
          const c = d.model.task_table[task].channels;
          const out = new Float32Array(Math.ceil(r.height / step) * Math.ceil(r.width / step) * c);
          let k = 0;
          for (let y = 0; y < r.height; y += step)
            for (let x = 0; x < r.width; x += step)
              for (let i = 0; i < c; i++) out[k++] = a[(y * r.width + x) * c + i];
          const bytes = new Uint8Array(out.buffer);
          let text = '';
          for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          return [btoa(text), c];
        };
        return {width: r.width, height: r.height, ms: r.ms,
                depth: pack(r.depth, 'depth'), normal: pack(r.normal, 'normal'), foreground: pack(r.foreground, 'foreground')};
    }""",
        step,
    )
    if state.get("error"):
        raise InputError(f"{photo}: the page refused it: {state['error']}")
    rows, cols = -(-state["height"] // step), -(-state["width"] // step)
    maps: Dict[str, Any] = {}
    for task in ("depth", "normal", "foreground"):
        if state[task] is None:
            maps[task] = None
            continue
        data, channels = state[task]
        values = np.frombuffer(base64.b64decode(data), np.float32)
        maps[task] = values.reshape((rows, cols) + ((channels,) if channels > 1 else ()))
    maps["ms"] = float(state["ms"])
    return maps


def canvas_pixels(page: Any, canvas_id: str) -> np.ndarray:
    """(H, W, 4) uint8 pixels of a canvas on the page."""
    data = page.evaluate(
        """(id) => {
        const c = document.getElementById(id);
        return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};
    }""",
        canvas_id,
    )
    return np.asarray(data["px"], np.uint8).reshape(data["h"], data["w"], 4)
