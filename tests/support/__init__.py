"""What the tests share that is not a fixture: generated inputs, stand-in graphs, and the harnesses
that start real servers and browsers (used by benchmarks/ too)."""

from pathlib import Path

#: the checkout's root folder
REPO = Path(__file__).resolve().parents[2]
