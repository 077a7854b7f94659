"""The one progress display: a tqdm bar on stderr when tqdm is installed, else plain lines ("[1/9] ok
photo.jpg" per item; for bytes one line at the start and one at the end); disabled, nothing."""

from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

BYTES = "B"


def print_line(text: str, file: Optional[TextIO] = None) -> None:
    """Print a line (a warning) to `file` (default stderr), through tqdm.write once tqdm is loaded so
    that it does not run into a bar."""
    out = file if file is not None else sys.stderr
    loaded = sys.modules.get("tqdm")
    if loaded is not None:
        loaded.tqdm.write(text, file=out)
    else:
        print(text, file=out, flush=True)


class Progress:
    """Progress of `total` units (images by default; `unit="B"` for a byte transfer)."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "predict", unit: str = "img", initial: int = 0):
        self.total, self.done, self.enabled, self.desc, self.unit = total, initial, enabled, desc, unit
        self.bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm

            scale = {"unit_scale": True, "unit_divisor": 1024} if unit == BYTES else {}
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, **scale)
        except ImportError:
            if unit == BYTES:
                resuming = f", resuming at {initial / 1e6:.1f} MB" if initial else ""
                print(f"downloading {desc}: {total / 1e6:.1f} MB{resuming}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        """`n` more units done (no plain line: use for many small steps, e.g. bytes)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def update(self, name: str, ok: bool) -> None:
        """One item finished; without tqdm a line "[done/total] ok|FAILED name"."""
        self.advance(1)
        if self.bar is None and self.enabled:
            print(f"[{self.done}/{self.total}] {'ok' if ok else 'FAILED'} {name}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Finish the bar (or, for bytes without tqdm, print how much arrived); a second close prints nothing."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.unit == BYTES:
            print(f"{self.desc}: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB", file=sys.stderr, flush=True)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
