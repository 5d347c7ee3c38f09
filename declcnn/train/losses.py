"""Losses: each returns ``(loss, ∂loss/∂output)`` for a batch, the loss a Python float.

* ``cross_entropy``: softmax cross-entropy of logits ``(N, C)`` against class indices ``(N,)``, or
  per pixel of ``(N, C, H, W)`` against ``(N, H, W)``; the mean over targets ≠ ``ignore_index``
  (``declcnn.ops.loss.softmax_cross_entropy``).
* ``mse``: ``mean((output − target)²)`` over every element, as PyTorch's ``MSELoss``; integer
  targets of a classifier are compared as one-hot vectors.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ops.loss import softmax_cross_entropy


def one_hot(labels: np.ndarray, classes: int, dtype=np.float32) -> np.ndarray:
    """``(N,)`` class indices → ``(N, classes)``; pixel labels ``(N, H, W)`` → ``(N, classes, H,
    W)``."""
    encoded = np.eye(classes, dtype=dtype)[labels]
    return np.moveaxis(encoded, -1, 1) if labels.ndim > 1 else encoded


def mean_squared_error(output: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """``L = Σ(o − t)²/n`` over all ``n`` elements; ``∂L/∂o = 2(o − t)/n``."""
    if np.issubdtype(target.dtype, np.integer) and target.ndim == output.ndim - 1:
        target = one_hot(target, output.shape[1], output.dtype)
    if target.shape != output.shape:
        raise ShapeError(f"mse: the target of shape {target.shape} does not fit the network's "
                         f"output of shape {output.shape}; give targets of the output's shape, or "
                         f"class indices for a classifier.")
    diff = output - target.astype(output.dtype)
    return float(np.mean(diff * diff, dtype=np.float64)), diff * np.float32(2 / diff.size)


def smooth_labels(output: np.ndarray, target: np.ndarray, ignore_index: int, smoothing: float,
                  loss: float, grad: np.ndarray) -> tuple[float, np.ndarray]:
    """Cross-entropy ``loss``, ``grad`` against targets mixed with the uniform distribution:
    ``L = (1 − ε)·CE + ε·mean over counted targets of −Σ_c log p_c / C``, so ``∂L/∂z =
    (1 − ε)·∂CE/∂z + ε·(p − 1/C)/n`` (PyTorch's ``CrossEntropyLoss(label_smoothing=ε)``)."""
    from ..ops.activation import log_softmax

    counted = np.expand_dims(target != ignore_index, 1)
    n = int(counted.sum())
    if n == 0:
        return loss, grad
    classes = output.shape[1]
    log_p = log_softmax(output, axis=1)
    uniform = -float(np.sum(log_p * counted, dtype=np.float64)) / (classes * n)
    extra = (np.exp(log_p) - np.float32(1 / classes)) * counted * np.float32(smoothing / n)
    grad = grad * np.float32(1 - smoothing) + extra.astype(grad.dtype)
    return (1 - smoothing) * loss + smoothing * uniform, grad


def compute_loss(kind: str, output: np.ndarray, target: np.ndarray,
                 ignore_index: int = -100, smoothing: float = 0.0) -> tuple[float, np.ndarray]:
    """The ``[training] loss`` named ``kind`` and its gradient with respect to ``output``;
    ``smoothing`` is cross-entropy's ``label_smoothing``."""
    if kind == "mse":
        return mean_squared_error(output, target)
    loss, grad = softmax_cross_entropy(output, target, ignore_index=ignore_index)
    if smoothing:
        return smooth_labels(output, target, ignore_index, smoothing, float(loss), grad)
    return float(loss), grad
