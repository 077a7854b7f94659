"""The export stage: PyTorch -> ONNX (dynamic or official layout, FP32 or mixed FP16) with a manifest,
and verification against PyTorch.

TensorRT engines are built by `david_infer.export.tensorrt` (`david-infer build-engine`)."""

from .fp16 import check_strongly_typed, convert_to_mixed_fp16, precision_report
from .onnx_export import LAYOUTS, PRECISIONS, export_onnx
from .verify import format_report, verify_onnx

__all__ = [
    "LAYOUTS",
    "PRECISIONS",
    "check_strongly_typed",
    "convert_to_mixed_fp16",
    "export_onnx",
    "format_report",
    "precision_report",
    "verify_onnx",
]
