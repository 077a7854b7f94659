"""What the tests share that is not a fixture: generated inputs, stand-in graphs, and the harnesses
that start real servers and browsers (used by benchmarks/ too)."""

import time
from pathlib import Path
from typing import Callable

#: the checkout's root folder
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll `predicate` every 20 ms until it holds (True) or `timeout` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False
