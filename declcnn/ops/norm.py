"""Batch normalisation over NCHW and (inverted) dropout, forward and backward.

Batch norm follows ``torch.nn.functional.batch_norm``: in training the batch's statistics
normalise and the running ones move towards them (the running variance with the unbiased batch
variance); in evaluation the running statistics normalise.  The loops are in
``declcnn._kernels.norm`` (per-channel sums) and ``declcnn._kernels.dense`` (dropout's scaling).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .._kernels import dense as _dense
from .._kernels import norm as _kernels
from ..errors import ShapeError
from ..threads import get_num_threads
from ._checks import describe, float_array, matching_gradient, output_buffer, same_dtype


@dataclass(frozen=True)
class BatchNormSaved:
    """What ``batch_norm2d_backward`` needs: the input, γ, and the per-channel centre and
    1/√(σ² + eps) the forward normalised with (batch statistics in training, running ones in
    evaluation), in float64."""

    x: np.ndarray
    weight: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    training: bool


def _number(value, name: str, op: str, low: float, high: float, rule: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) \
            or not low <= value <= high:
        raise ShapeError(f"{op}: {name} must be {rule}; got {value!r}.")
    return float(value)


def _channel_vector(value, name: str, channels: int, dtype: np.dtype, op: str,
                    writeable: bool = False) -> np.ndarray:
    """One value per channel: a (C,) array of the input's dtype (updated in place when
    ``writeable``, so it must be that very array, contiguous)."""
    v = float_array(value, name, op, 1, f"one value per channel, ({channels},)")
    same_dtype(v, name, dtype, op)
    if v.shape != (channels,):
        raise ShapeError(
            f"{op}: {name} must have shape ({channels},), one value per channel of the input; "
            f"got shape {tuple(v.shape)}."
        )
    if writeable and (v is not value or not v.flags.writeable):
        read_only = "" if value.flags.writeable else ", read-only"
        raise ShapeError(
            f"{op}: {name} is updated in place in training, so it must be a writeable "
            f"C-contiguous array; got {describe(value)}{read_only}. Pass a contiguous copy "
            f"and keep that one."
        )
    return v


def batch_norm2d(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                 out=None):
    """``y = (x − μ_c) / √(σ²_c + eps) · γ_c + β_c`` per channel c; returns ``(y, saved)``.

    Training: μ, σ² are the batch's mean and biased variance over (N, H, W), and the running
    statistics are updated in place, ``r ← (1 − momentum)·r + momentum·s`` with s the mean and
    the *unbiased* variance (σ²·M/(M − 1), M = N·H·W).  Evaluation: μ, σ² are the running ones.

    Shape:
        x (N, C, H, W), weight, bias, running_mean, running_var (C,) → y (N, C, H, W).
    """
    op = "batch_norm2d"
    x = float_array(x, "input", op, 4, "N, C, H, W")
    N, C, H, W = x.shape
    w = _channel_vector(weight, "weight", C, x.dtype, op)
    b = _channel_vector(bias, "bias", C, x.dtype, op)
    training = bool(training)
    rm = _channel_vector(running_mean, "running_mean", C, x.dtype, op, writeable=training)
    rv = _channel_vector(running_var, "running_var", C, x.dtype, op, writeable=training)
    momentum = _number(momentum, "momentum", op, 0, 1, "a number in [0, 1] (PyTorch's default "
                       "is 0.1)")
    eps = _number(eps, "eps", op, np.finfo(np.float64).tiny, np.inf,
                  "a positive number (PyTorch's default is 1e-5)")
    count = N * H * W
    if training and count == 1:
        raise ShapeError(
            f"{op}: expected more than 1 value per channel when training, got input of shape "
            f"{list(x.shape)}; a batch statistic needs at least 2 values. Use a batch of 2 or "
            f"more, or evaluation mode."
        )
    y = output_buffer(out, x.shape, x.dtype, op)
    threads = get_num_threads()
    view = (N, C, H * W)
    if training:
        mean = np.zeros(C)
        var = np.ones(C)
        if count:  # an empty batch leaves the running statistics alone, as in PyTorch
            _kernels.channel_stats(x.reshape(view), mean, var, threads)
            rm[:] = (1 - momentum) * rm + momentum * mean
            rv[:] = (1 - momentum) * rv + momentum * var * (count / (count - 1))
    else:
        mean = rm.astype(np.float64)
        var = rv.astype(np.float64)
    invstd = 1 / np.sqrt(var + eps)
    _kernels.channel_affine(x.reshape(view), y.reshape(view), mean, w * invstd,
                            b.astype(np.float64), threads)
    return y, BatchNormSaved(x, w, mean, invstd, training)


def batch_norm2d_backward(grad_y, saved: BatchNormSaved):
    """Gradients of ``batch_norm2d``: ``(gx, gγ, gβ)``.

    With x̂ = (x − μ)/σ, M = N·H·W: ``gβ = Σ gy``, ``gγ = Σ gy·x̂``; in training (μ and σ depend
    on x) ``gx = γ/σ · (gy − gβ/M − x̂·gγ/M)``, in evaluation ``gx = γ/σ · gy``.

    Shape:
        grad_y (N, C, H, W) → gx (N, C, H, W), gγ (C,), gβ (C,).
    """
    op = "batch_norm2d_backward"
    if not isinstance(saved, BatchNormSaved):
        raise ShapeError(f"{op}: saved must be what batch_norm2d returned; got {describe(saved)}.")
    x = saved.x
    N, C, H, W = x.shape
    gy = matching_gradient(grad_y, x.shape, x.dtype, "the forward input (N, C, H, W)", op)
    view = (N, C, H * W)
    threads = get_num_threads()
    sum_grad = np.zeros(C)
    sum_grad_centred = np.zeros(C)
    gx = np.empty_like(x)
    if gy.size:
        _kernels.channel_grad_sums(gy.reshape(view), x.reshape(view), saved.mean, sum_grad,
                                   sum_grad_centred, threads)
        count = N * H * W
        a = saved.weight * saved.invstd
        zeros = np.zeros(C)
        b = -a * saved.invstd ** 2 * sum_grad_centred / count if saved.training else zeros
        d = -a * sum_grad / count if saved.training else zeros
        _kernels.channel_grad_input(gy.reshape(view), x.reshape(view), gx.reshape(view),
                                    saved.mean, a, b, d, threads)
    grad_weight = (sum_grad_centred * saved.invstd).astype(x.dtype)
    return gx, grad_weight, sum_grad.astype(x.dtype)


def _probability(p, op: str) -> float:
    return _number(p, "p", op, 0, 1, "a probability in [0, 1] (the chance to zero a value)")


def _keep_scale(p: float) -> float:
    """What a kept value is multiplied by: 1/(1 − p); with p = 1 nothing is kept."""
    return 1 / (1 - p) if p < 1 else 0.0


def dropout(x, p, rng, out=None):
    """Inverted dropout: ``y = x · mask / (1 − p)``, each value kept (mask true) with probability
    1 − p; returns ``(y, mask)``.  p = 0 is the identity, p = 1 gives zeros.  The mask comes from
    ``rng`` (a ``numpy.random.Generator``), so a seed reproduces it.

    Shape:
        any → y of the same shape, mask a bool array of the same shape.
    """
    op = "dropout"
    x = float_array(x, "x", op)
    p = _probability(p, op)
    if not isinstance(rng, np.random.Generator):
        raise ShapeError(
            f"{op}: rng must be a numpy.random.Generator; got {describe(rng)}. Use "
            f"np.random.default_rng(seed)."
        )
    # Drawn in float32 whatever x's dtype, so float32 and float64 runs share the mask.
    mask = rng.random(x.shape, dtype=np.float32) >= p
    y = output_buffer(out, x.shape, x.dtype, op)
    _dense.masked_scale(x.reshape(-1), mask.reshape(-1).view(np.uint8), y.reshape(-1),
                        _keep_scale(p), get_num_threads())
    return y, mask


def dropout_backward(grad_y, mask, p):
    """``gx = gy · mask / (1 − p)``.

    Shape:
        grad_y and mask (as dropout returned it) of one shape → gx of that shape.
    """
    op = "dropout_backward"
    gy = float_array(grad_y, "grad_y", op)
    p = _probability(p, op)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != gy.shape:
        raise ShapeError(
            f"{op}: mask must be the bool array dropout returned, of grad_y's shape "
            f"{list(gy.shape)}; got {describe(mask)}."
        )
    gx = np.empty_like(gy)
    _dense.masked_scale(gy.reshape(-1), np.ascontiguousarray(mask).reshape(-1).view(np.uint8),
                        gx.reshape(-1), _keep_scale(p), get_num_threads())
    return gx
