"""Softmax cross-entropy, fused: one pass gives the loss and the gradient of the logits.

PyTorch's ``cross_entropy(logits, target, ignore_index=…, reduction="mean")``: the mean over the
counted targets (those not equal to ``ignore_index``) of ``−log softmax(logits)[target]``, per
sample for N × C logits and per pixel for N × C × H × W logits.  The loops are in
``declcnn._kernels.activation``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._kernels import activation as _kernels
from ..errors import ShapeError
from ..threads import threads_for
from ._checks import describe, float_array, output_buffer
from .activation import SERIAL_BELOW, softmax_view


def _target(target, expected_shape: tuple[int, ...], logits_shape, op: str) -> np.ndarray:
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "iu":
        raise ShapeError(
            f"{op}: target must be an integer numpy array of class indices; got "
            f"{describe(target)}. Convert it with target.astype(np.int64)."
        )
    if target.shape != expected_shape:
        per = "sample" if len(expected_shape) == 1 else "sample and pixel"
        raise ShapeError(
            f"{op}: expected target of shape {list(expected_shape)} (the logits' shape "
            f"{list(logits_shape)} without the class axis 1: one class index per {per}); got "
            f"target of shape {list(target.shape)}."
        )
    return np.ascontiguousarray(target, dtype=np.int64)


def _counted(target: np.ndarray, classes: int, ignore_index: int, op: str) -> int:
    """How many targets count; a ShapeError naming the first one out of [0, classes)."""
    counted = _kernels.counted_targets(target.reshape(-1), classes, ignore_index)
    if counted >= 0:
        return counted
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    where = np.unravel_index(int(np.argmax(bad)), target.shape)
    pixel = f" pixel {tuple(int(i) for i in where[1:])}" if len(where) > 1 else ""
    raise ShapeError(
        f"{op}: target {int(target[where])} at sample {int(where[0])}{pixel} is out of "
        f"range for {classes} classes; class indices must lie in [0, {classes - 1}], or "
        f"equal ignore_index={ignore_index} to be skipped ({int(bad.sum())} target(s) out "
        f"of range in all)."
    )


def softmax_cross_entropy(logits, target, ignore_index=-100, out=None):
    """``(loss, grad_logits)`` with ``loss = −(1/M) Σ_{counted} log softmax(logits)[target]``
    over the M counted targets, and ``grad_logits = (softmax(logits) − onehot(target)) / M`` at
    counted positions, 0 at ignored ones.  With no counted target the loss is NaN (0/0, as in
    PyTorch) and the gradient 0.  ``out``: an optional buffer for grad_logits.

    Shape:
        logits (N, C) with target (N,), or logits (N, C, H, W) with target (N, H, W) (any
        trailing axes) → loss: float, grad_logits like logits.

    >>> import numpy as np
    >>> loss, grad = softmax_cross_entropy(np.zeros((1, 4), np.float32), np.array([2]))
    >>> round(loss, 6), grad.tolist()
    (1.386294, [[0.25, 0.25, -0.75, 0.25]])
    """
    op = "softmax_cross_entropy"
    x = float_array(logits, "logits", op)
    N, C, S = softmax_view(x.shape, 1, "logits", op)
    if C == 0:
        raise ShapeError(f"{op}: logits of shape {list(x.shape)} has no classes (axis 1 is 0).")
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise ShapeError(
            f"{op}: ignore_index must be an integer; got {ignore_index!r}. PyTorch's default is "
            f"-100."
        )
    t = _target(target, x.shape[:1] + x.shape[2:], x.shape, op)
    counted = _counted(t, C, int(ignore_index), op)
    grad = output_buffer(out, x.shape, x.dtype, op)
    blocks = -(-S // _kernels.SOFTMAX_BLOCK)
    task_loss = np.zeros(N * blocks, dtype=np.float64)
    _kernels.softmax_cross_entropy(x.reshape(N, C, S), t.reshape(N, S), grad.reshape(N, C, S),
                                   task_loss, int(ignore_index),
                                   1.0 / counted if counted else 0.0,
                                   threads_for(x.size, SERIAL_BELOW))
    # fsum adds the per-task losses exactly, so the loss does not depend on the thread count.
    loss = math.fsum(task_loss) / counted if counted else math.nan
    return loss, grad
