"""The one progress display: a tqdm bar on stderr when tqdm is installed, plain lines otherwise.

    bar = Progress(len(images), enabled=True)                   # per item (predict)
    bar.update("photo.jpg", ok=True)                            # tqdm +1, or "[1/9] ok photo.jpg"
    bar.close()

    bar = Progress(size, desc="model.onnx", unit="B", initial=have)   # bytes (downloads)
    bar.advance(len(block))                                           # no line per block without tqdm
    bar.close()                                                       # plain: "model.onnx: 5.0 of 5.0 MB"

tqdm is optional (the `progress` extra); a disabled Progress prints nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

BYTES = "B"


def print_line(text: str, file: Optional[TextIO] = None) -> None:
    """Print a line (a warning) to `file` (default stderr) without running it into a tqdm bar on
    the same stream: through tqdm.write once tqdm is loaded, else print."""
    out = file if file is not None else sys.stderr
    loaded = sys.modules.get("tqdm")
    if loaded is not None:
        loaded.tqdm.write(text, file=out)
    else:
        print(text, file=out, flush=True)


class Progress:
    """Progress of `total` units (images by default; `unit="B"` for a byte transfer)."""

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        desc: str = "predict",
        unit: str = "img",
        initial: int = 0,
        file: Optional[TextIO] = None,
    ) -> None:
        self.total, self.done, self.enabled = total, initial, enabled
        self.desc, self.unit = desc, unit
        self.file = file if file is not None else sys.stderr
        self.bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            scale = {"unit_scale": True, "unit_divisor": 1024} if unit == BYTES else {}
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, file=self.file, **scale)
        elif unit == BYTES:
            resuming = f", resuming at {initial / 1e6:.1f} MB" if initial else ""
            self._line(f"downloading {desc}: {total / 1e6:.1f} MB{resuming}")

    def advance(self, n: int = 1) -> None:
        """`n` more units done (no plain line: use for many small steps, e.g. bytes)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def update(self, name: str, ok: bool) -> None:
        """One item finished; without tqdm a line "[done/total] ok|FAILED name"."""
        self.advance(1)
        if self.bar is None and self.enabled:
            self._line(f"[{self.done}/{self.total}] {'ok' if ok else 'FAILED'} {name}")

    def close(self) -> None:
        """Finish the bar (or, for bytes without tqdm, print how much arrived)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.unit == BYTES:
            self._line(f"{self.desc}: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB")
        self.enabled = False  # a second close prints nothing

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self, text: str) -> None:
        print(text, file=self.file, flush=True)
