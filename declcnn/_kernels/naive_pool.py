"""Plain numpy twins of the pooling kernels, written for clarity; tests compare against them.

Each loops over output pixels in Python with whole ``(N, C)`` slices.  Average pooling pads
explicitly and lets numpy's slicing clip a ceil_mode overhang, so it shares no window arithmetic
with the Cython loops.  Arguments are ``(h, w)`` pairs; no validation.
"""

from __future__ import annotations

import numpy as np

from .. import shapes


def _scan_max(x: np.ndarray, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Max over taps ``rows × cols`` in row-major order: a strictly larger value or a NaN takes
    over; the index starts at the first tap (so an all −inf window points there)."""
    width = x.shape[3]
    best = np.full(x.shape[:2], -np.inf, x.dtype)
    where = np.full(x.shape[:2], rows[0] * width + cols[0], np.int64)
    for h in rows:
        for w in cols:
            value = x[:, :, h, w]
            take = (value > best) | np.isnan(value)
            best = np.where(take, value, best)
            where = np.where(take, h * width + w, where)
    return best, where


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    n, c, height, width = x.shape
    out = [shapes.pool_output_size(size, *args, ceil_mode) for size, *args in
           zip((height, width), kernel, stride, padding, dilation, strict=True)]
    y = np.empty((n, c, *out), x.dtype)
    indices = np.empty((n, c, *out), np.int64)
    for i in range(out[0]):
        rows = [r for r in range(i * stride[0] - padding[0], height, dilation[0])[:kernel[0]]
                if r >= 0]
        for j in range(out[1]):
            cols = [q for q in range(j * stride[1] - padding[1], width, dilation[1])[:kernel[1]]
                    if q >= 0]
            y[:, :, i, j], indices[:, :, i, j] = _scan_max(x, rows, cols)
    return y, indices


def max_pool2d_backward(grad_y, indices, input_shape):
    n, c, height, width = input_shape
    grad_x = np.zeros((n * c, height * width), grad_y.dtype)
    planes = np.arange(n * c)[:, None]
    np.add.at(grad_x, (planes, indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
    return grad_x.reshape(input_shape)


def _avg_windows(input_shape, kernel, stride, padding, ceil_mode, count_include_pad):
    """``(output size, [(i, j, window slices in padded coordinates, divisor), …])``."""
    height, width = input_shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = np.ones((height + 2 * ph, width + 2 * pw))
    real = np.pad(np.ones((height, width)), ((ph, ph), (pw, pw)))
    counted = padded if count_include_pad else real
    oh = shapes.pool_output_size(height, kh, sh, ph, 1, ceil_mode)
    ow = shapes.pool_output_size(width, kw, sw, pw, 1, ceil_mode)
    windows = []
    for i in range(oh):
        for j in range(ow):
            window = (slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))
            windows.append((i, j, window, counted[window].sum()))
    return (oh, ow), windows


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    ph, pw = padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out, windows = _avg_windows(x.shape, kernel, stride, padding, ceil_mode, count_include_pad)
    y = np.empty((*x.shape[:2], *out), x.dtype)
    for i, j, (rows, cols), divisor in windows:
        y[:, :, i, j] = padded[:, :, rows, cols].sum(axis=(2, 3)) / divisor
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel, stride, padding, ceil_mode,
                        count_include_pad):
    n, c, height, width = input_shape
    ph, pw = padding
    grad = np.zeros((n, c, height + 2 * ph, width + 2 * pw), grad_y.dtype)
    _, windows = _avg_windows(input_shape, kernel, stride, padding, ceil_mode,
                              count_include_pad)
    for i, j, (rows, cols), divisor in windows:
        grad[:, :, rows, cols] += (grad_y[:, :, i, j] / divisor)[:, :, None, None]
    return grad[:, :, ph:ph + height, pw:pw + width]


def _adaptive_bins(input_shape, output_size):
    for i in range(output_size[0]):
        for j in range(output_size[1]):
            yield (i, j, shapes.adaptive_bin(i, input_shape[2], output_size[0]),
                   shapes.adaptive_bin(j, input_shape[3], output_size[1]))


def adaptive_avg_pool2d(x, output_size):
    y = np.empty((*x.shape[:2], *output_size), x.dtype)
    for i, j, (h0, h1), (w0, w1) in _adaptive_bins(x.shape, output_size):
        y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    grad_x = np.zeros(input_shape, grad_y.dtype)
    for i, j, (h0, h1), (w0, w1) in _adaptive_bins(input_shape, grad_y.shape[2:]):
        share = grad_y[:, :, i, j] / ((h1 - h0) * (w1 - w0))
        grad_x[:, :, h0:h1, w0:w1] += share[:, :, None, None]
    return grad_x


def adaptive_max_pool2d(x, output_size):
    y = np.empty((*x.shape[:2], *output_size), x.dtype)
    indices = np.empty((*x.shape[:2], *output_size), np.int64)
    for i, j, (h0, h1), (w0, w1) in _adaptive_bins(x.shape, output_size):
        y[:, :, i, j], indices[:, :, i, j] = _scan_max(x, range(h0, h1), range(w0, w1))
    return y, indices


adaptive_max_pool2d_backward = max_pool2d_backward
