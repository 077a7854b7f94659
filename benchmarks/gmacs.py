"""Params and MACs of every DAViD variant and task, against the released models' model cards.

Counted on PyTorch's meta device (no weights allocated):

    python benchmarks/gmacs.py            # table at 512x512, 1024x1024 and 384x640, with deviations
    python benchmarks/gmacs.py --json     # JSON list: variant, task, height, width, params, macs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from david_infer.model import count_params_and_macs  # noqa: E402

# ONNX size / 4 and MACs at 512x512 from the released models' model cards.
MODEL_CARDS: Dict[Tuple[str, str], Optional[Tuple[float, float]]] = {
    ("base", "depth"): (428.42e6 / 4, 172.4e9),
    ("base", "normal"): (428.42e6 / 4, 172.4e9),
    ("base", "foreground"): (428.42e6 / 4, 172.4e9),
    ("large", "depth"): (1314.13e6 / 4, 331.5e9),
    ("large", "normal"): (1314.13e6 / 4, 331.5e9),
    ("large", "foreground"): (1314.13e6 / 4, 331.5e9),
    ("large", "multitask"): (1316.66e6 / 4, 389.9e9),
    ("base", "multitask"): None,  # not released
}
RESOLUTIONS = [(512, 512), (1024, 1024), (384, 640)]


def measure(resolutions: List[Tuple[int, int]]) -> List[dict]:
    records = []
    for variant, task in sorted(MODEL_CARDS):
        for h, w in resolutions:
            params, macs = count_params_and_macs(variant, task, h, w)
            records.append({"variant": variant, "task": task, "height": h, "width": w, "params": params, "macs": macs})
    return records


def _deviation(value: float, card: Optional[float]) -> str:
    return f"{100 * (value / card - 1):+.1f}%" if card else ""


def table(records: List[dict]) -> str:
    head = (
        "| variant | task | input | params (M) | card (M) | dev | GMACs | card GMACs | dev |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in records:
        card_p, card_m = MODEL_CARDS[(r["variant"], r["task"])] or (None, None)
        if (r["height"], r["width"]) != (512, 512):
            card_m = None  # the cards give MACs at 512x512 only
        rows.append(
            f"| {r['variant']} | {r['task']} | {r['height']}x{r['width']} | {r['params'] / 1e6:.1f} | "
            f"{_fmt(card_p, 1e6)} | {_deviation(r['params'], card_p)} | {r['macs'] / 1e9:.1f} | "
            f"{_fmt(card_m, 1e9)} | {_deviation(r['macs'], card_m)} |"
        )
    return "\n".join(rows)


def _fmt(value: Optional[float], unit: float) -> str:
    return f"{value / unit:.1f}" if value else "-"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    records = measure(RESOLUTIONS)
    print(json.dumps(records, indent=1) if args.json else table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
