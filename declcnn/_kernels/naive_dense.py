"""Plain numpy twins of the dense kernels, straight from the definitions, in float64, for tests.

Softmax and cross-entropy loop over samples and positions one column at a time; batch norm
forms x̂ explicitly; upsampling uses ``np.repeat``; nothing shares code with the fast kernels.
"""

from __future__ import annotations

import numpy as np


def linear(x, weight, bias=None):
    """y[n, o] = Σ_i x[n, i]·W[o, i] + b[o]."""
    y = np.einsum("ni,oi->no", x.astype(np.float64), weight.astype(np.float64))
    return y if bias is None else y + bias


def linear_backward(grad_y, x, weight):
    """(gx = gy·W, gW = gyᵀ·x, gb = Σ_n gy)."""
    gy = grad_y.astype(np.float64)
    return gy @ weight.astype(np.float64), gy.T @ x.astype(np.float64), gy.sum(axis=0)


def relu(x):
    return np.where(x < 0, 0.0, x.astype(np.float64))


def relu_backward(grad_y, x):
    return np.where(x > 0, grad_y.astype(np.float64), 0.0)


def leaky_relu(x, negative_slope):
    return np.where(x > 0, x.astype(np.float64), negative_slope * x.astype(np.float64))


def leaky_relu_backward(grad_y, x, negative_slope):
    return np.where(x > 0, 1.0, negative_slope) * grad_y


def sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def sigmoid_backward(grad_y, y):
    return grad_y * y.astype(np.float64) * (1 - y)


def tanh(x):
    return np.tanh(x.astype(np.float64))


def tanh_backward(grad_y, y):
    return grad_y * (1 - y.astype(np.float64) ** 2)


def _columns(shape, axis):
    """Index tuples selecting every 1-D column along ``axis``."""
    axis %= len(shape)
    others = [range(n) for i, n in enumerate(shape) if i != axis]
    for index in np.ndindex(*[len(r) for r in others]):
        full = list(index)
        full.insert(axis, slice(None))
        yield tuple(full)


def softmax(x, axis=1):
    y = np.empty(x.shape)
    for col in _columns(x.shape, axis):
        e = np.exp(x[col] - x[col].max())
        y[col] = e / e.sum()
    return y


def log_softmax(x, axis=1):
    y = np.empty(x.shape)
    for col in _columns(x.shape, axis):
        v = x[col].astype(np.float64)
        y[col] = v - v.max() - np.log(np.exp(v - v.max()).sum())
    return y


def softmax_backward(grad_y, y, axis=1):
    """gx = Jᵀ·gy with the softmax Jacobian J = diag(y) − y·yᵀ, per column."""
    gx = np.empty(y.shape)
    for col in _columns(y.shape, axis):
        v = y[col].astype(np.float64)
        gx[col] = (np.diag(v) - np.outer(v, v)).T @ grad_y[col]
    return gx


def log_softmax_backward(grad_y, y, axis=1):
    """gx = Jᵀ·gy with the log-softmax Jacobian J = I − 1·softmᵀ, per column."""
    gx = np.empty(y.shape)
    for col in _columns(y.shape, axis):
        p = np.exp(y[col].astype(np.float64))
        gx[col] = (np.eye(len(p)) - np.outer(np.ones_like(p), p)).T @ grad_y[col]
    return gx


def softmax_cross_entropy(logits, target, ignore_index=-100):
    """(mean over counted targets of −log softmax[target], its gradient in the logits)."""
    log_p = log_softmax(logits, 1)
    grad = np.zeros(logits.shape)
    total, counted = 0.0, 0
    for n, *pixel in np.ndindex(*target.shape):
        t = int(target[(n, *pixel)])
        if t == ignore_index:
            continue
        col = (n, slice(None), *pixel)
        total -= log_p[col][t]
        grad[col] = np.exp(log_p[col])
        grad[(n, t, *pixel)] -= 1
        counted += 1
    if not counted:
        return float("nan"), grad
    return total / counted, grad / counted


def batch_norm2d(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """(y, new running_mean, new running_var), the running statistics as new arrays."""
    x = x.astype(np.float64)
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        count = x.size // x.shape[1]
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    x_hat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return x_hat * weight[None, :, None, None] + bias[None, :, None, None], new_mean, new_var


def batch_norm2d_backward(grad_y, x, weight, running_mean, running_var, training, eps=1e-5):
    """(gx, gγ, gβ) from the chain rule through μ and σ² (training) or through x only."""
    x = x.astype(np.float64)
    gy = grad_y.astype(np.float64)
    axes = (0, 2, 3)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    c = (None, slice(None), None, None)  # broadcasts a (C,) vector over N, H, W
    std = np.sqrt(var + eps)
    x_hat = (x - mean[c]) / std[c]
    g_hat = gy * weight[c]
    if training:
        count = x.size // x.shape[1]
        g_var = (g_hat * (x - mean[c])).sum(axis=axes) * -0.5 / std ** 3
        g_mean = (-(g_hat / std[c]).sum(axis=axes)
                  - 2 * g_var * (x - mean[c]).sum(axis=axes) / count)
        gx = g_hat / std[c] + g_var[c] * 2 * (x - mean[c]) / count + g_mean[c] / count
    else:
        gx = g_hat / std[c]
    return gx, (gy * x_hat).sum(axis=axes), gy.sum(axis=axes)


def dropout(x, mask, p):
    """x·mask/(1 − p) for a given mask (0 for p = 1)."""
    return x * mask / (1 - p) if p < 1 else np.zeros(x.shape)


def upsample_nearest2d(x, scale):
    sh, sw = scale
    return np.repeat(np.repeat(x.astype(np.float64), sh, axis=2), sw, axis=3)


def upsample_nearest2d_backward(grad_y, scale):
    sh, sw = scale
    N, C, OH, OW = grad_y.shape
    return grad_y.astype(np.float64).reshape(N, C, OH // sh, sh, OW // sw, sw).sum(axis=(3, 5))
