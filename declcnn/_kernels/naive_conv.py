"""Plain numpy twins of the conv kernels, straight from the definitions, for tests only.

Each loops over output (or, for the transposed conv, input) pixels and contracts one window
with einsum.  The transposed conv twins scatter from the definition rather than reuse the conv
twins, so tests of the fast kernels' forward/backward-data swap compare against something
independent.  ``padding`` is ``((top, bottom), (left, right))`` for conv and ``(ph, pw)`` for the
transposed conv; all other pairs are ``(h, w)``.
"""

from __future__ import annotations

import numpy as np

from ..shapes import conv_output_size, conv_transpose_output_size, dilated_extent


def _conv_windows(x_shape, weight_shape, stride, padding, dilation, groups):
    """Yield (output index, padded-input window slices, group channel slices) for conv2d."""
    _, C, H, W = x_shape
    O, Cg, kh, kw = weight_shape
    (pt, pb), (pl, pr) = padding
    OH = conv_output_size(H, kh, stride[0], pt, pb, dilation[0])
    OW = conv_output_size(W, kw, stride[1], pl, pr, dilation[1])
    eh, ew = dilated_extent(kh, dilation[0]), dilated_extent(kw, dilation[1])
    Og = O // groups
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for oh in range(OH):
            for ow in range(OW):
                rows = slice(oh * stride[0], oh * stride[0] + eh, dilation[0])
                cols = slice(ow * stride[1], ow * stride[1] + ew, dilation[1])
                yield (oh, ow), (rows, cols), cin, cout


def _pad(x, padding):
    (pt, pb), (pl, pr) = padding
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """y[n, o, oh, ow] = b[o] + Σ w[o, c, i, j] · x_padded[n, g·Cg + c, oh·s + i·d, ow·s + j·d]."""
    xp = _pad(x, padding)
    (pt, pb), (pl, pr) = padding
    O, _, kh, kw = weight.shape
    OH = conv_output_size(x.shape[2], kh, stride[0], pt, pb, dilation[0])
    OW = conv_output_size(x.shape[3], kw, stride[1], pl, pr, dilation[1])
    y = np.zeros((x.shape[0], O, OH, OW), dtype=np.float64)
    for (oh, ow), (rows, cols), cin, cout in _conv_windows(x.shape, weight.shape, stride,
                                                         padding, dilation, groups):
        y[:, cout, oh, ow] = np.einsum("nckl,ockl->no", xp[:, cin, rows, cols], weight[cout])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_grad_input(grad_y, x_shape, weight, stride, padding, dilation, groups):
    """gx = Σ over windows of w[o] · gy[n, o, oh, ow], added onto the window, padding cropped."""
    (pt, pb), (pl, pr) = padding
    N, C, H, W = x_shape
    gxp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=np.float64)
    for (oh, ow), (rows, cols), cin, cout in _conv_windows(x_shape, weight.shape, stride,
                                                         padding, dilation, groups):
        gxp[:, cin, rows, cols] += np.einsum("no,ockl->nckl", grad_y[:, cout, oh, ow],
                                             weight[cout])
    return gxp[:, :, pt:pt + H, pl:pl + W]


def conv2d_grad_weight(grad_y, x, weight_shape, stride, padding, dilation, groups):
    """gw[o, c, i, j] = Σ_{n, oh, ow} gy[n, o, oh, ow] · x_padded[n, g·Cg + c, oh·s + i·d, …]."""
    xp = _pad(x, padding)
    gw = np.zeros(weight_shape, dtype=np.float64)
    for (oh, ow), (rows, cols), cin, cout in _conv_windows(x.shape, weight_shape, stride,
                                                         padding, dilation, groups):
        gw[cout] += np.einsum("no,nckl->ockl", grad_y[:, cout, oh, ow], xp[:, cin, rows, cols])
    return gw


def grad_bias(grad_y):
    """gb[o] = Σ_{n, h, w} gy[n, o, h, w]."""
    return grad_y.astype(np.float64).sum(axis=(0, 2, 3))


def _transpose_windows(x_shape, weight_shape, stride, dilation, groups):
    """Yield (input pixel, full-output window slices, group channel slices) for conv_transpose2d."""
    _, C, H, W = x_shape
    _, Og, kh, kw = weight_shape
    Cg = C // groups
    eh, ew = dilated_extent(kh, dilation[0]), dilated_extent(kw, dilation[1])
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for ih in range(H):
            for iw in range(W):
                rows = slice(ih * stride[0], ih * stride[0] + eh, dilation[0])
                cols = slice(iw * stride[1], iw * stride[1] + ew, dilation[1])
                yield (ih, iw), (rows, cols), cin, cout


def _full_output_shape(x_shape, weight_shape, stride, padding, output_padding, dilation,
                       groups):
    """The transposed conv's output before ``padding`` is cropped from both sides."""
    _, _, H, W = x_shape
    _, Og, kh, kw = weight_shape
    OH = conv_transpose_output_size(H, kh, stride[0], padding[0], dilation[0], output_padding[0])
    OW = conv_transpose_output_size(W, kw, stride[1], padding[1], dilation[1], output_padding[1])
    return (x_shape[0], Og * groups, OH + 2 * padding[0], OW + 2 * padding[1]), (OH, OW)


def conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation, groups):
    """Every input pixel scatters x[n, c, ih, iw] · w[c, o, i, j] to the full output at
    (ih·s + i·d, iw·s + j·d); the result is cropped by ``padding`` on each side."""
    full, (OH, OW) = _full_output_shape(x.shape, weight.shape, stride, padding, output_padding,
                                        dilation, groups)
    yp = np.zeros(full, dtype=np.float64)
    for (ih, iw), (rows, cols), cin, cout in _transpose_windows(x.shape, weight.shape, stride,
                                                              dilation, groups):
        yp[:, cout, rows, cols] += np.einsum("nc,cokl->nokl", x[:, cin, ih, iw], weight[cin])
    y = yp[:, :, padding[0]:padding[0] + OH, padding[1]:padding[1] + OW]
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


def _padded_grad(grad_y, full, padding):
    gyp = np.zeros(full, dtype=np.float64)
    gyp[:, :, padding[0]:padding[0] + grad_y.shape[2],
        padding[1]:padding[1] + grad_y.shape[3]] = grad_y
    return gyp


def conv_transpose2d_grad_input(grad_y, x_shape, weight, stride, padding, output_padding,
                                dilation, groups):
    """gx[n, c, ih, iw] = Σ_{o, i, j} w[c, o, i, j] · gy_full[n, o, ih·s + i·d, iw·s + j·d]."""
    full, _ = _full_output_shape(x_shape, weight.shape, stride, padding, output_padding,
                                 dilation, groups)
    gyp = _padded_grad(grad_y, full, padding)
    gx = np.zeros(x_shape, dtype=np.float64)
    for (ih, iw), (rows, cols), cin, cout in _transpose_windows(x_shape, weight.shape, stride,
                                                              dilation, groups):
        gx[:, cin, ih, iw] = np.einsum("nokl,cokl->nc", gyp[:, cout, rows, cols], weight[cin])
    return gx


def conv_transpose2d_grad_weight(grad_y, x, weight_shape, stride, padding, output_padding,
                                 dilation, groups):
    """gw[c, o, i, j] = Σ_{n, ih, iw} x[n, c, ih, iw] · gy_full[n, o, ih·s + i·d, iw·s + j·d]."""
    full, _ = _full_output_shape(x.shape, weight_shape, stride, padding, output_padding,
                                 dilation, groups)
    gyp = _padded_grad(grad_y, full, padding)
    gw = np.zeros(weight_shape, dtype=np.float64)
    for (ih, iw), (rows, cols), cin, cout in _transpose_windows(x.shape, weight_shape, stride,
                                                              dilation, groups):
        gw[cin] += np.einsum("nc,nokl->cokl", x[:, cin, ih, iw], gyp[:, cout, rows, cols])
    return gw
