"""Interchange: networks out to ONNX.

``export_onnx`` writes an ONNX model (``onnx_export.py``).  The optional package onnx
(``pip install "declcnn[onnx]"``) is imported only when an export runs.
"""

from .onnx_export import DEFAULT_OPSET, EXPORTERS, build_model, export_onnx

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "build_model", "export_onnx"]
