"""Interchange: networks out to ONNX, tensors in and out as safetensors or ``.npz``.

``export_onnx`` writes an ONNX model (``onnx_export.py``); ``export_safetensors`` and
``import_weights`` move a state dict between declcnn and PyTorch (``weights.py``).  The optional
packages (onnx, onnxruntime, safetensors: ``pip install "declcnn[onnx]"``) are imported only
when one of them runs.  Nothing here unpickles.
"""

from .onnx_export import DEFAULT_OPSET, EXPORTERS, build_model, export_onnx
from .weights import export_safetensors, import_weights, read_tensors

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "build_model", "export_onnx", "export_safetensors",
           "import_weights", "read_tensors"]
