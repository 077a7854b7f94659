"""Where ONNX Runtime actually ran each node.

A GPU provider being registered on a session is no proof that the model runs on the GPU: nodes
the provider cannot take fall back to the CPU provider silently. ONNX Runtime's profiler records,
per node execution, the provider that ran it (`args.provider` of each "Node" event); one profiled
warm-up run at session creation shows where the heavy nodes (convolutions, matrix products)
went, and a GPU session whose heavy nodes fell back to the CPU is refused.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from ...errors import BackendUnavailable

#: op types that carry the model's compute; any of them on the CPU defeats a GPU session
HEAVY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "Attention",
             "MultiHeadAttention", "FusedGemm")
CPU_PROVIDER = "CPUExecutionProvider"


def node_placement(events: Iterable[Mapping[str, Any]]) -> Dict[str, Counter]:
    """provider -> Counter of op types it ran, from ONNX Runtime profile events."""
    placement: Dict[str, Counter] = {}
    for event in events:
        if event.get("cat") != "Node":
            continue
        args = event.get("args") or {}
        provider, op = args.get("provider"), args.get("op_name")
        if provider and op:
            placement.setdefault(provider, Counter())[op] += 1
    return placement


def heavy_ops_on_cpu(placement: Mapping[str, Counter]) -> List[Tuple[str, int]]:
    """(op type, executions) of heavy ops the CPU provider ran."""
    cpu = placement.get(CPU_PROVIDER, Counter())
    return sorted((op, n) for op, n in cpu.items() if op in HEAVY_OPS)


def check_placement(placement: Mapping[str, Counter], wanted: Sequence[str], path: Path) -> None:
    """BackendUnavailable when heavy nodes ran on the CPU in a session meant for `wanted` GPU
    providers, or when no node ran on any of them."""
    on_gpu = sum(sum(c.values()) for p, c in placement.items() if p in wanted)
    fallen = heavy_ops_on_cpu(placement)
    if on_gpu and not fallen:
        return
    ran = "; ".join(f"{p}: {sum(c.values())} nodes" for p, c in placement.items()) or "no node events"
    detail = ", ".join(f"{op} x{n}" for op, n in fallen)
    raise BackendUnavailable(
        f"{path}: asked to run on {', '.join(wanted)}, but "
        + (f"heavy nodes ran on the CPU ({detail})" if fallen else "no node ran on the GPU")
        + f" [{ran}]. The GPU provider cannot take these nodes (an op or dtype it lacks, or CUDA/cuDNN "
        "libraries missing); not running on the CPU silently. Check `david-infer info` and the install "
        "table in docs/gpu.md"
    )


def dummy_feeds(inputs: Iterable[Any], side: int) -> Dict[str, np.ndarray]:
    """Zeros for every input: symbolic batch = 1, symbolic height/width = `side`."""
    feeds = {}
    for spec in inputs:
        dims = [d if isinstance(d, int) else (1 if i == 0 else side) for i, d in enumerate(spec.shape)]
        feeds[spec.name] = np.zeros(dims, spec.dtype if spec.dtype in ("float16", "uint8") else np.float32)
    return feeds


def profiled_placement(session: Any, feeds: Mapping[str, np.ndarray]) -> Dict[str, Counter]:
    """Run `session` (created with profiling enabled) once and return its node placement; the
    profile file is removed."""
    session.run(None, dict(feeds))
    profile = Path(session.end_profiling())
    try:
        return node_placement(json.loads(profile.read_text()))
    finally:
        try:
            os.unlink(profile)
        except OSError:
            pass
