"""Pooling ops (max, average, adaptive): argument and shape checks, allocation, then the loops
in ``declcnn._kernels.pool``.

Semantics are PyTorch's: ``kernel``, ``stride``, ``padding``, ``dilation`` and ``output_size``
are an int or a ``(height, width)`` pair; ``stride=None`` means the kernel; ``padding`` is at
most half the kernel; max pooling's indices are flat ``h·W + w`` offsets into the input plane.
Arrays are NCHW float32 (float64 runs the same loops, for gradient checks).
"""

from __future__ import annotations

import numpy as np

from .. import shapes
from .._kernels import pool as _kernels
from ..errors import ShapeError
from ..threads import get_num_threads
from ._checks import describe, float_array, is_int, output_buffer, pair, sample_shape
from .activation import relu_into

_AXES = ("height", "width")
# Below this many input elements a pooling call takes microseconds, less than waking threads.
_SERIAL_BELOW = 1 << 14


def _image(x, op: str) -> np.ndarray:
    x = float_array(x, "x", op, 4)
    if 0 in x.shape[1:]:
        raise ShapeError(
            f"{op}: expected x of shape (N, C, H, W) with C, H and W ≥ 1 (only the batch may be "
            f"empty); got {list(x.shape)}."
        )
    return x


def _input_shape(input_shape, grad_y: np.ndarray, op: str) -> tuple[int, int, int, int]:
    shape = tuple(input_shape) if isinstance(input_shape, tuple | list) else None
    if shape is None or len(shape) != 4 or not all(is_int(v) for v in shape) \
            or shape[0] < 0 or min(shape[1:]) < 1:
        raise ShapeError(
            f"{op}: input_shape must be the forward input's (N, C, H, W), with N ≥ 0 and C, H, "
            f"W ≥ 1; got {input_shape!r}."
        )
    if shape[:2] != grad_y.shape[:2]:
        raise ShapeError(
            f"{op}: grad_y of shape {list(grad_y.shape)} and input_shape {list(shape)} disagree "
            f"on (N, C) = {list(grad_y.shape[:2])} vs {list(shape[:2])}; pass the shape of the "
            f"forward's input."
        )
    return tuple(int(v) for v in shape)


def _max_buffers(out, shape, dtype, op: str) -> tuple[np.ndarray, np.ndarray]:
    """A max pool's ``out``: None, or a pair ``(y, indices)`` of buffers."""
    if out is None:
        return np.empty(shape, dtype), np.empty(shape, np.int64)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ShapeError(f"{op}: out must be a pair (y, indices) of buffers or None; got "
                         f"{describe(out)}.")
    return (output_buffer(out[0], shape, dtype, op, "out[0] (y)"),
            output_buffer(out[1], shape, np.int64, op, "out[1] (indices)"))


def _threads(array: np.ndarray) -> int:
    return 1 if array.size < _SERIAL_BELOW else get_num_threads()


def _window(op, input_shape, kernel, stride, padding, dilation, ceil_mode):
    """Check a max (``dilation`` given) or average (``dilation=None``) window against PyTorch's
    rules; return ``(k, s, p, d, output size)``."""
    k = pair(kernel, "kernel", op, 1)
    s = k if stride is None else pair(stride, "stride", op, 1)
    p = pair(padding, "padding", op, 0)
    d = (1, 1) if dilation is None else pair(dilation, "dilation", op, 1)
    for axis, ki, pi in zip(_AXES, k, p, strict=True):
        if pi > ki // 2:
            undilated = "" if dilation is None else " (dilation does not widen the limit)"
            raise ShapeError(
                f"{op}: padding={p} is more than half of kernel={k} on the {axis} axis: PyTorch "
                f"requires padding ≤ kernel // 2 = {ki // 2} there{undilated}; got {pi}. Use a "
                f"padding ≤ {ki // 2} or a larger kernel."
            )
    sizes = input_shape[2:]
    out = tuple(shapes.pool_output_size(n, ki, si, pi, di, bool(ceil_mode))
                for n, ki, si, pi, di in zip(sizes, k, s, p, d, strict=True))
    for axis, n, ki, si, pi, di, o in zip(_AXES, sizes, k, s, p, d, out, strict=True):
        if o < 1:
            rounding = "ceil" if ceil_mode else "floor"
            config = f"kernel={k}, stride={s}, padding={p}"
            extent, shrink = f"{ki}", "kernel or stride"
            if dilation is not None:
                config += f", dilation={d}"
                extent, shrink = f"{di}·({ki}−1) − 1", "kernel, stride or dilation"
            raise ShapeError(
                f"{op}: given input of size {list(input_shape)}, {config}, ceil_mode="
                f"{bool(ceil_mode)}, the output would be {out[0]}×{out[1]}: on the {axis} axis "
                f"{rounding}(({n} + 2·{pi} − {extent}) / {si}) + 1 = {o}. Each output side must "
                f"be ≥ 1: use a larger input, a smaller {shrink}, or more padding."
            )
    return k, s, p, d, out


def _check_taps(op, sizes, k, s, p, d, out):
    """Reject a dilated window that skips over the whole input (PyTorch returns −inf and an
    index outside the plane there).  Only windows starting in the left padding can: the output
    size keeps every other start inside the input."""
    for axis, n, ki, si, pi, di, o in zip(_AXES, sizes, k, s, p, d, out, strict=True):
        for index in range(o):
            start = index * si - pi
            if start >= 0:
                break
            taps = [start + j * di for j in range(ki)]
            if not any(0 <= t < n for t in taps):
                raise ShapeError(
                    f"{op}: with kernel={k}, dilation={d}, padding={p}, the window of output "
                    f"{axis} {index} takes input {axis}s {taps}, all outside 0..{n - 1}: it "
                    f"would see only padding. Use a smaller dilation or padding, or a larger "
                    f"input."
                )


def _bins(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.array([shapes.adaptive_bin(i, in_size, out_size) for i in range(out_size)],
                      dtype=np.int64).reshape(out_size, 2)
    return np.ascontiguousarray(bounds[:, 0]), np.ascontiguousarray(bounds[:, 1])


def max_pool2d(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, out=None):
    """Max over each window: ``y[n,c,i,j] = max_{a<kh, b<kw} x[n,c, i·sh−ph+a·dh, j·sw−pw+b·dw]``
    (taps in the padding never win), and ``indices`` the flat ``h·W + w`` of the winner.

    Ties go to the first maximum in row-major scan order; a NaN in the window wins (the last
    one).  ``out`` is an optional pair of buffers ``(y, indices)``.

    Shape: ``(N, C, H, W) → (N, C, OH, OW)`` with ``OH = floor((H + 2·ph − dh·(kh−1) − 1) / sh)
    + 1`` (``ceil`` with ``ceil_mode``, dropping a last window that would start in the right
    padding); the same for ``OW``.

    >>> y, indices = max_pool2d(np.zeros((2, 3, 7, 6), np.float32), 2, ceil_mode=True)
    >>> y.shape, indices.dtype
    ((2, 3, 4, 3), dtype('int64'))
    """
    op = "max_pool2d"
    x = _image(x, op)
    k, s, p, d, (oh, ow) = _window(op, x.shape, kernel, stride, padding, dilation, ceil_mode)
    _check_taps(op, x.shape[2:], k, s, p, d, (oh, ow))
    y, indices = _max_buffers(out, (x.shape[0], x.shape[1], oh, ow), x.dtype, op)
    _kernels.max_pool2d_forward(x, y, indices, *k, *s, *p, *d, _threads(x))
    return y, indices


def _route_to_argmax(op, grad_y, indices, input_shape, out=None):
    grad_y = float_array(grad_y, "grad_y", op, 4)
    shape = _input_shape(input_shape, grad_y, op)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64 \
            or indices.shape != grad_y.shape:
        raise ShapeError(
            f"{op}: indices must be the int64 array the forward returned, of grad_y's shape "
            f"{list(grad_y.shape)}; got {describe(indices)}."
        )
    grad_x = output_buffer(out, shape, grad_y.dtype, op)
    outside = _kernels.max_pool2d_backward(grad_y, np.ascontiguousarray(indices), grad_x,
                                           _threads(grad_x))
    if outside:
        plane = shape[2] * shape[3]
        raise ShapeError(
            f"{op}: {outside} of {indices.size} indices lie outside the input plane "
            f"[0, H·W) = [0, {plane}) of input_shape {list(shape)}; pass the indices the forward "
            f"returned for that input."
        )
    return grad_x


def max_pool2d_backward(grad_y, indices, input_shape, out=None):
    """``grad_x[n,c].flat[indices[n,c,i,j]] += grad_y[n,c,i,j]``: each output's gradient goes to
    the input pixel that won its window (``out``: an optional buffer for grad_x).

    Shape: ``grad_y, indices (N, C, OH, OW) → grad_x input_shape (N, C, H, W)``.
    """
    return _route_to_argmax("max_pool2d_backward", grad_y, indices, input_shape, out)


class MaxPool2dPlan:
    """:func:`max_pool2d` checked once for inputs of one per-sample shape ``sample`` (C, H, W).

    A network's shapes are fixed when its graph is built, so the runtime checks a pooling
    layer here, once, and its calls skip the checks (at batch 1 they cost more than the
    pooling).  ``forward(x, y, indices, relu)`` and ``backward(grad_y, indices, grad_x,
    relu_output)`` trust their arguments: C-contiguous arrays of one float dtype, of the shapes
    ``(N, *sample)`` and ``(N, *output_shape)``, and indices that ``forward`` wrote.

    ``relu`` applies a relu to the maxima (``relu(max(x)) = max(relu(x))``: the runtime folds
    a relu that only this pool reads into it); ``backward`` then takes that output as
    ``relu_output`` and passes a window's gradient only where it is > 0 (or NaN), as relu's
    backward.  2×2 windows of stride 2 inside the input have a branch-free forward of their
    own, which can also skip the indices (``indices_optional``; pass None): inference needs
    none, and writing them cost a quarter of the time.

    >>> plan = MaxPool2dPlan((6, 28, 28), 2)
    >>> plan.output_shape
    (6, 14, 14)
    """

    def __init__(self, sample, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
        op = "max_pool2d"
        shape = sample_shape(sample, op)
        k, s, p, d, (oh, ow) = _window(op, shape, kernel, stride, padding, dilation, ceil_mode)
        _check_taps(op, shape[2:], k, s, p, d, (oh, ow))
        self.output_shape = (shape[1], oh, ow)
        self._window = (*k, *s, *p, *d)
        self._pairs = (k == s == (2, 2) and p == (0, 0) and d == (1, 1)
                       and 2 * oh <= shape[2] and 2 * ow <= shape[3])
        self.indices_optional = self._pairs
        self._no_indices = np.empty((0, 0, 0, 0), np.int64)

    def forward(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray | None,
                relu: bool = False) -> None:
        threads = _threads(x)
        if self._pairs:
            _kernels.max_pool2d_forward_2x2(x, y, self._no_indices if indices is None
                                            else indices, relu, threads)
            return
        _kernels.max_pool2d_forward(x, y, indices, *self._window, threads)
        if relu:
            relu_into(y, y)

    def backward(self, grad_y: np.ndarray, indices: np.ndarray, grad_x: np.ndarray,
                 relu_output: np.ndarray | None = None) -> None:
        _kernels.max_pool2d_backward(grad_y, indices, grad_x, _threads(grad_x), relu_output)


def avg_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               out=None):
    """Mean over each window: ``y[n,c,i,j] = Σ_{a<kh, b<kw} x[n,c, i·sh−ph+a, j·sw−pw+b] / D``
    where padding adds zeros and ``D`` is the window's size clipped to the padded input
    (``count_include_pad``; a ceil_mode window's overhang past the padding never counts) or
    the number of input pixels it covers.

    Shape: ``(N, C, H, W) → (N, C, OH, OW)``, ``OH = floor((H + 2·ph − kh) / sh) + 1`` (``ceil``
    with ``ceil_mode``, dropping a last window that would start in the right padding).

    >>> avg_pool2d(np.ones((1, 1, 5, 5), np.float32), 3, stride=2, padding=1).shape
    (1, 1, 3, 3)
    """
    op = "avg_pool2d"
    x = _image(x, op)
    k, s, p, _, (oh, ow) = _window(op, x.shape, kernel, stride, padding, None, ceil_mode)
    y = output_buffer(out, (x.shape[0], x.shape[1], oh, ow), x.dtype, op)
    _kernels.avg_pool2d_forward(x, y, *k, *s, *p, bool(count_include_pad), _threads(x))
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """``grad_x`` collects ``grad_y[n,c,i,j] / D`` on every input pixel of window ``(i, j)``
    (``D`` as in :func:`avg_pool2d`).

    Shape: ``grad_y (N, C, OH, OW) → grad_x input_shape (N, C, H, W)``.
    """
    op = "avg_pool2d_backward"
    grad_y = float_array(grad_y, "grad_y", op, 4)
    shape = _input_shape(input_shape, grad_y, op)
    k, s, p, _, (oh, ow) = _window(op, shape, kernel, stride, padding, None, ceil_mode)
    if grad_y.shape[2:] != (oh, ow):
        raise ShapeError(
            f"{op}: input_shape {list(shape)} with kernel={k}, stride={s}, padding={p}, "
            f"ceil_mode={bool(ceil_mode)} gives an output of {oh}×{ow}, but grad_y is "
            f"{list(grad_y.shape)}; pass the forward's configuration and input shape."
        )
    grad_x = np.empty(shape, grad_y.dtype)
    _kernels.avg_pool2d_backward(grad_y, grad_x, *k, *s, *p, bool(count_include_pad),
                                 _threads(grad_x))
    return grad_x


def adaptive_avg_pool2d(x, output_size, out=None):
    """Mean over PyTorch's adaptive bins: output row ``i`` of ``OH`` covers input rows
    ``[floor(i·H/OH), ceil((i+1)·H/OH))`` (``shapes.adaptive_bin``), columns likewise; bins may
    overlap, and an output larger than the input repeats pixels.  ``output_size=1`` is global
    average pooling.

    Shape: ``(N, C, H, W) → (N, C, OH, OW)`` with ``(OH, OW) = output_size``.

    >>> adaptive_avg_pool2d(np.ones((2, 3, 7, 5), np.float32), (1, 1))[..., 0, 0]
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """
    op = "adaptive_avg_pool2d"
    x = _image(x, op)
    oh, ow = pair(output_size, "output_size", op, 0)
    y = output_buffer(out, (x.shape[0], x.shape[1], oh, ow), x.dtype, op)
    _kernels.adaptive_avg_pool2d_forward(x, y, *_bins(x.shape[2], oh), *_bins(x.shape[3], ow),
                                         _threads(x))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """``grad_x`` collects ``grad_y[n,c,i,j] / |bin i| / |bin j|`` on every pixel of the bin.

    Shape: ``grad_y (N, C, OH, OW) → grad_x input_shape (N, C, H, W)``.
    """
    op = "adaptive_avg_pool2d_backward"
    grad_y = float_array(grad_y, "grad_y", op, 4)
    shape = _input_shape(input_shape, grad_y, op)
    grad_x = np.empty(shape, grad_y.dtype)
    _kernels.adaptive_avg_pool2d_backward(grad_y, grad_x, *_bins(shape[2], grad_y.shape[2]),
                                          *_bins(shape[3], grad_y.shape[3]), _threads(grad_x))
    return grad_x


def adaptive_max_pool2d(x, output_size, out=None):
    """Max over PyTorch's adaptive bins (see :func:`adaptive_avg_pool2d`), with flat ``h·W + w``
    indices as :func:`max_pool2d` (first maximum wins; a NaN wins).  ``output_size=1`` is
    global max pooling; ``out`` is an optional pair ``(y, indices)``.

    Shape: ``(N, C, H, W) → (N, C, OH, OW)`` with ``(OH, OW) = output_size``.
    """
    op = "adaptive_max_pool2d"
    x = _image(x, op)
    oh, ow = pair(output_size, "output_size", op, 0)
    y, indices = _max_buffers(out, (x.shape[0], x.shape[1], oh, ow), x.dtype, op)
    _kernels.adaptive_max_pool2d_forward(x, y, indices, *_bins(x.shape[2], oh),
                                         *_bins(x.shape[3], ow), _threads(x))
    return y, indices


def adaptive_max_pool2d_backward(grad_y, indices, input_shape, out=None):
    """As :func:`max_pool2d_backward`: each gradient goes to its bin's winning pixel.

    Shape: ``grad_y, indices (N, C, OH, OW) → grad_x input_shape (N, C, H, W)``.
    """
    return _route_to_argmax("adaptive_max_pool2d_backward", grad_y, indices, input_shape, out)
