"""PyTorch backend: the reference model (david_infer.model) built from a manifest's variant and task,
with our safetensors weights or the manifest's random seed. Needs the `export` extra."""
from __future__ import annotations

from .runner import TorchRunner, open_runner

__all__ = ["TorchRunner", "open_runner"]
