"""The fully connected layer, forward and backward, on scipy's BLAS (``declcnn._kernels.dense``).

The weight is ``out_features × in_features`` as in PyTorch.  Arrays are float32 (float64 runs
the same loops, for gradient checks).
"""

from __future__ import annotations

import numpy as np

from .._kernels import dense as _kernels
from ..errors import ShapeError
from ..threads import get_num_threads
from . import _blas  # noqa: F401  (scipy's BLAS single-threaded before any kernel calls it)
from ._checks import float_array, matching_gradient, output_buffer, same_dtype


def _checked(op: str, x, weight):
    """x (N, in_features) and weight (out_features, in_features), contiguous and agreeing."""
    x = float_array(x, "input", op)
    w = float_array(weight, "weight", op, 2, "out_features, in_features")
    if w.size == 0:
        raise ShapeError(
            f"{op}: weight of size {list(w.shape)} has no elements; in_features and "
            f"out_features must be ≥ 1."
        )
    if x.ndim != 2:
        raise ShapeError(
            f"{op}: the input must be 2-D (N, in_features={w.shape[1]}); got shape "
            f"{list(x.shape)}. Flatten images first (a 'flatten' layer, or x.reshape(len(x), -1))."
        )
    same_dtype(w, "weight", x.dtype, op)
    if x.shape[1] != w.shape[1]:
        raise ShapeError(
            f"{op}: the layer expects in_features={w.shape[1]} (weight of size {list(w.shape)}) "
            f"but the input of shape {list(x.shape)} has {x.shape[1]} features (PyTorch: mat1 "
            f"and mat2 shapes cannot be multiplied ({x.shape[0]}x{x.shape[1]} and "
            f"{w.shape[1]}x{w.shape[0]})). Set in_features={x.shape[1]}, or feed the layer an "
            f"input with {w.shape[1]} features."
        )
    return x, w


def linear(x, weight, bias=None, out=None) -> np.ndarray:
    """``y = x·Wᵀ + b``, as ``torch.nn.functional.linear``.

    Shape:
        input (N, in_features), weight (out_features, in_features), bias (out_features,)
        → (N, out_features).

    >>> import numpy as np
    >>> linear(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(4, np.float32))
    array([[4., 4., 4., 4.],
           [4., 4., 4., 4.]], dtype=float32)
    """
    op = "linear"
    x, w = _checked(op, x, weight)
    fout = w.shape[0]
    if bias is None:
        b = np.empty(0, dtype=x.dtype)
    else:
        b = float_array(bias, "bias", op, 1, f"out_features, ({fout},)")
        same_dtype(b, "bias", x.dtype, op)
        if b.shape != (fout,):
            raise ShapeError(
                f"{op}: bias must have shape ({fout},), one value per output feature of weight "
                f"{list(w.shape)}; got shape {tuple(b.shape)}."
            )
    y = output_buffer(out, (x.shape[0], fout), x.dtype, op)
    if x.shape[0]:
        _kernels.linear_forward(x, w, b, y, get_num_threads())
    return y


def linear_backward(grad_y, x, weight, needs_input_grad=True, has_bias=True):
    """Gradients of ``linear``: ``(gx | None, gW, gb | None)``.

    ``gx = gy·W`` (skipped unless ``needs_input_grad``), ``gW = gyᵀ·x``,
    ``gb = Σ_n gy[n]`` (skipped unless ``has_bias``).

    Shape:
        grad_y (N, out_features) → gx (N, in_features), gW (out_features, in_features),
        gb (out_features,).
    """
    op = "linear_backward"
    x, w = _checked(op, x, weight)
    gy = matching_gradient(grad_y, (x.shape[0], w.shape[0]), x.dtype,
                           "the forward output (N, out_features)", op)
    threads = get_num_threads()
    gx = None
    if needs_input_grad:
        gx = np.empty_like(x)
        if x.shape[0]:
            _kernels.linear_backward_input(gy, w, gx, threads)
    gw = np.zeros_like(w)
    if x.shape[0]:
        _kernels.linear_backward_weight(gy, x, gw, threads)
    gb = None
    if has_bias:
        gb = np.empty(w.shape[0], dtype=x.dtype)
        _kernels.column_sums(gy, gb, threads)
    return gx, gw, gb
