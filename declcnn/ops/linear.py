"""The fully connected layer, forward and backward, on scipy's BLAS (``declcnn._kernels.dense``).

The weight is ``out_features × in_features`` as in PyTorch.  Arrays are float32 (float64 runs
the same loops, for gradient checks).
"""

from __future__ import annotations

import numpy as np

from .._kernels import dense as _kernels
from ..errors import ShapeError
from ..threads import threads_for
from . import _blas  # noqa: F401  (scipy's BLAS single-threaded before any kernel calls it)
from ._checks import float_array, matching_gradient, no_values, output_buffer, same_dtype

# GEMMs of fewer multiply-adds run on one thread (LeNet's fc2 and fc3 at batch 64 among them).
_PARALLEL_MIN_MACS = 1 << 20
_PARALLEL_MIN_SUMS = 1 << 15  # values summed by the bias gradient


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
    b = None
    if bias is not None:
        b = float_array(bias, "bias", op, 1, f"out_features, ({fout},)")
        same_dtype(b, "bias", x.dtype, op)
        if b.shape != (fout,):
            raise ShapeError(
                f"{op}: bias must have shape ({fout},), one value per output feature of weight "
                f"{list(w.shape)}; got shape {tuple(b.shape)}."
            )
    y = output_buffer(out, (x.shape[0], fout), x.dtype, op)
    LinearPlan(w.shape[1], fout).forward(x, w, b, y)
    return y


def linear_backward(grad_y, x, weight, needs_input_grad=True, has_bias=True, out=None,
                    accumulate=False):
    """Gradients of ``linear``: ``(gx | None, gW, gb | None)``.

    ``gx = gy·W`` (skipped unless ``needs_input_grad``), ``gW = gyᵀ·x``,
    ``gb = Σ_n gy[n]`` (skipped unless ``has_bias``).  ``out`` is an optional triple of
    buffers ``(gx, gW, gb)`` (any of them None); with ``accumulate`` the weight and bias
    gradients are added into ``out``'s gW and gb instead of overwriting them (the runtime
    accumulates into its gradients this way, as PyTorch into ``.grad``).

    Shape:
        grad_y (N, out_features) → gx (N, in_features), gW (out_features, in_features),
        gb (out_features,).
    """
    op = "linear_backward"
    x, w = _checked(op, x, weight)
    gy = matching_gradient(grad_y, (x.shape[0], w.shape[0]), x.dtype,
                           "the forward output (N, out_features)", op)
    gx_out, gw_out, gb_out = _gradient_buffers(out, accumulate, has_bias, op)
    gx = output_buffer(gx_out, x.shape, x.dtype, op, "out[0] (gx)") if needs_input_grad else None
    if gw_out is None:
        gw = np.zeros_like(w)
    else:
        gw = output_buffer(gw_out, w.shape, w.dtype, op, "out[1] (gW)")
    gb = output_buffer(gb_out, (w.shape[0],), x.dtype, op, "out[2] (gb)") if has_bias else None
    LinearPlan(w.shape[1], w.shape[0]).backward(gy, x, w, gx, gw, gb, accumulate)
    return gx, gw, gb


class LinearPlan:
    """:func:`linear` and :func:`linear_backward` checked once for a layer of ``in_features``
    → ``out_features``, as :class:`~declcnn.ops.pool.MaxPool2dPlan` for pooling: the runtime's
    shapes are fixed when its graph is built, so its calls skip the checks (at batch 1 they
    cost as much as the GEMM).  Calls trust their arguments: C-contiguous arrays of one float
    dtype and the planned shapes; ``bias`` None for a layer without one.

    >>> import numpy as np
    >>> plan, y = LinearPlan(3, 4), np.empty((2, 4), np.float32)
    >>> plan.forward(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), None, y)
    >>> y[0]
    array([3., 3., 3., 3.], dtype=float32)
    """

    def __init__(self, in_features: int, out_features: int):
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ShapeError(f"linear: {name} must be an integer ≥ 1; got {value!r}.")
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x, weight, bias, y, relu: bool = False) -> None:
        """``y = x·Wᵀ + b``, then ``max(y, 0)`` with ``relu`` (a relu the runtime folded into
        this layer)."""
        if x.shape[0]:
            _kernels.linear_forward(x, weight, no_values(x.dtype) if bias is None else bias, y,
                                    threads_for(x.size * self.out_features, _PARALLEL_MIN_MACS),
                                    relu)

    def backward(self, grad_y, x, weight, grad_x, grad_weight, grad_bias,
                 accumulate: bool = True) -> None:
        """``grad_x = gy·W`` (skipped when None); ``grad_weight += gyᵀ·x`` and ``grad_bias +=
        Σ_n gy[n]`` (skipped when None): they accumulate, as PyTorch's ``.grad``, or with
        ``accumulate`` false are overwritten."""
        if not x.shape[0]:  # an empty batch: no GEMM runs
            if not accumulate:
                grad_weight.fill(0)
                if grad_bias is not None:
                    grad_bias.fill(0)
            return
        threads = threads_for(x.size * self.out_features, _PARALLEL_MIN_MACS)
        if grad_x is not None:
            _kernels.linear_backward_input(grad_y, weight, grad_x, threads)
        _kernels.linear_backward_weight(grad_y, x, grad_weight, threads, accumulate)
        if grad_bias is not None:
            _kernels.column_sums(grad_y, grad_bias, threads_for(grad_y.size, _PARALLEL_MIN_SUMS),
                                 accumulate)


def _gradient_buffers(out, accumulate: bool, has_bias: bool, op: str):
    if out is None:
        out = (None, None, None)
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise ShapeError(f"{op}: out must be a triple (gx, gW, gb) of buffers (each may be None) "
                         f"or None; got {out!r}.")
    if accumulate and (out[1] is None or (has_bias and out[2] is None)):
        raise ShapeError(f"{op}: accumulate=True adds into out's gW and gb, so both must be "
                         f"given (gb only with has_bias); got out={out!r}.")
    return out
