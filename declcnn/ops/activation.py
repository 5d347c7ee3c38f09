"""Activations (relu, leaky relu, sigmoid, tanh) and softmax / log-softmax, forward and backward.

Elementwise ops take arrays of any shape; softmax works along one axis of an array with at least
two axes (axis 1, the channels, by default).  Arrays are float32 (float64 runs the same loops,
for gradient checks); inputs are made C-contiguous, a copy only when they are not.  The loops
are in ``declcnn._kernels.activation``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._kernels import activation as _kernels
from ..errors import ShapeError
from ..threads import get_num_threads, threads_for
from ._checks import float_array, matching_gradient, output_buffer

__all__ = [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax",
    "log_softmax_backward",
]


# Below this many elements a call runs on one thread (the elementwise kernels decide alike).
SERIAL_BELOW = 1 << 15


def _slope(negative_slope, op: str) -> float:
    if not isinstance(negative_slope, numbers.Real) or isinstance(negative_slope, bool) \
            or not np.isfinite(negative_slope):
        raise ShapeError(
            f"{op}: negative_slope must be a finite number; got {negative_slope!r}. PyTorch's "
            f"default is 0.01."
        )
    return float(negative_slope)


def _forward(code, x, out, op: str, slope: float = 0.0) -> np.ndarray:
    x = float_array(x, "x", op)
    y = output_buffer(out, x.shape, x.dtype, op)
    _kernels.activation_forward(code, x.reshape(-1), y.reshape(-1), slope, get_num_threads())
    return y


def _backward(code, grad_y, v, name: str, op: str, slope: float = 0.0, out=None) -> np.ndarray:
    v = float_array(v, name, op)
    gy = matching_gradient(grad_y, v.shape, v.dtype, name, op)
    gx = output_buffer(out, v.shape, v.dtype, op)
    _kernels.activation_backward(code, gy.reshape(-1), v.reshape(-1), gx.reshape(-1), slope,
                                 get_num_threads())
    return gx


def relu(x, out=None) -> np.ndarray:
    """``max(x, 0)``; NaN stays NaN, as in PyTorch.

    Shape:
        any → the same.

    >>> import numpy as np
    >>> relu(np.array([-1.0, 0.5, np.nan], np.float32))
    array([0. , 0.5, nan], dtype=float32)
    """
    return _forward(_kernels.Activation.RELU, x, out, "relu")


def relu_backward(grad_y, x, out=None) -> np.ndarray:
    """``gy`` where ``x > 0`` (or x is NaN), else 0: PyTorch's convention at the kink x = 0.

    ``x`` may also be relu's output ``y``: ``y > 0`` exactly where ``x > 0``, and NaN stays NaN,
    so the gradient is the same (the runtime keeps ``y`` when relu overwrites its input).
    ``out`` may be ``grad_y`` itself (elementwise, in place)."""
    return _backward(_kernels.Activation.RELU, grad_y, x, "x", "relu_backward", out=out)


def relu_into(x: np.ndarray, out: np.ndarray) -> None:
    """``relu(x, out=out)`` without the checks, for callers that checked their shapes once
    (the runtime, when the network is built): x and out C-contiguous, of one float dtype and
    shape; out may be x."""
    _kernels.activation_forward(_kernels.Activation.RELU, x.reshape(-1), out.reshape(-1), 0.0,
                                get_num_threads())


def relu_backward_into(grad_y: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """``relu_backward(grad_y, y, out=out)`` without the checks, as :func:`relu_into`."""
    _kernels.activation_backward(_kernels.Activation.RELU, grad_y.reshape(-1), y.reshape(-1),
                                 out.reshape(-1), 0.0, get_num_threads())


def leaky_relu(x, negative_slope=0.01, out=None) -> np.ndarray:
    """``x`` where ``x > 0``, else ``negative_slope · x``.

    Shape:
        any → the same.
    """
    op = "leaky_relu"
    return _forward(_kernels.Activation.LEAKY_RELU, x, out, op, _slope(negative_slope, op))


def leaky_relu_backward(grad_y, x, negative_slope=0.01, out=None) -> np.ndarray:
    """``gy`` where ``x > 0``, else ``negative_slope · gy``."""
    op = "leaky_relu_backward"
    return _backward(_kernels.Activation.LEAKY_RELU, grad_y, x, "x", op,
                     _slope(negative_slope, op), out)


def sigmoid(x, out=None) -> np.ndarray:
    """``1 / (1 + e^{−x})``.

    Shape:
        any → the same.
    """
    return _forward(_kernels.Activation.SIGMOID, x, out, "sigmoid")


def sigmoid_backward(grad_y, y, out=None) -> np.ndarray:
    """``gy · y · (1 − y)`` from the forward output ``y``."""
    return _backward(_kernels.Activation.SIGMOID, grad_y, y, "y", "sigmoid_backward", out=out)


def tanh(x, out=None) -> np.ndarray:
    """``tanh x``.

    Shape:
        any → the same.
    """
    return _forward(_kernels.Activation.TANH, x, out, "tanh")


def tanh_backward(grad_y, y, out=None) -> np.ndarray:
    """``gy · (1 − y²)`` from the forward output ``y``."""
    return _backward(_kernels.Activation.TANH, grad_y, y, "y", "tanh_backward", out=out)


def softmax_view(shape: tuple[int, ...], axis, name: str, op: str) -> tuple[int, int, int]:
    """``(N, C, S)``: the array as N × C × S with C the softmax axis, S the axes after it."""
    ndim = len(shape)
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool) \
            or not -ndim <= axis < ndim or ndim < 2:
        raise ShapeError(
            f"{op}: axis {axis!r} does not fit {name} of shape {list(shape)}; softmax needs an "
            f"array with at least 2 axes (N, C, ...) and an axis in [{-ndim}, {ndim - 1}]. Add "
            f"a batch axis with {name}[None] for a single sample."
        )
    axis = int(axis) % ndim
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _softmax(x, axis, out, take_log: bool, op: str) -> np.ndarray:
    x = float_array(x, "x", op)
    view = softmax_view(x.shape, axis, "x", op)
    y = output_buffer(out, x.shape, x.dtype, op)
    _kernels.softmax_forward(x.reshape(view), y.reshape(view), take_log,
                             threads_for(x.size, SERIAL_BELOW))
    return y


def _softmax_backward(grad_y, y, axis, take_log: bool, op: str) -> np.ndarray:
    y = float_array(y, "y", op)
    view = softmax_view(y.shape, axis, "y", op)
    gy = matching_gradient(grad_y, y.shape, y.dtype, "y", op)
    gx = np.empty_like(y)
    _kernels.softmax_backward(gy.reshape(view), y.reshape(view), gx.reshape(view), take_log,
                              threads_for(y.size, SERIAL_BELOW))
    return gx


def softmax(x, axis=1, out=None) -> np.ndarray:
    """``y_c = e^{x_c − m} / Σ_k e^{x_k − m}`` along ``axis``, m the maximum along it (so no
    exponential overflows).

    Shape:
        (N, C) or (N, C, H, W) (any array with ≥ 2 axes) → the same.

    >>> import numpy as np
    >>> softmax(np.array([[0.0, np.log(3.0)]], np.float32)).round(6)
    array([[0.25, 0.75]], dtype=float32)
    """
    return _softmax(x, axis, out, False, "softmax")


def log_softmax(x, axis=1, out=None) -> np.ndarray:
    """``y_c = x_c − m − log Σ_k e^{x_k − m}`` along ``axis``, m the maximum along it.

    Shape:
        (N, C) or (N, C, H, W) (any array with ≥ 2 axes) → the same.
    """
    return _softmax(x, axis, out, True, "log_softmax")


def softmax_backward(grad_y, y, axis=1) -> np.ndarray:
    """``gx = y · (gy − Σ_c gy·y)`` along ``axis``, from the forward output ``y``."""
    return _softmax_backward(grad_y, y, axis, False, "softmax_backward")


def log_softmax_backward(grad_y, y, axis=1) -> np.ndarray:
    """``gx = gy − e^y · Σ_c gy`` along ``axis``, from the forward output ``y``."""
    return _softmax_backward(grad_y, y, axis, True, "log_softmax_backward")
