"""The export stage: PyTorch -> ONNX (dynamic or official layout) with a manifest, verification."""
from .onnx_export import LAYOUTS, export_onnx

__all__ = ["LAYOUTS", "export_onnx"]
