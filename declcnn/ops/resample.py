"""Nearest-neighbour upsampling by integer factors, forward and backward, on NCHW arrays
(loops in ``declcnn._kernels.dense``)."""

from __future__ import annotations

import numpy as np

from .._kernels import dense as _kernels
from ..errors import ShapeError
from ..shapes import upsample_output_size
from ..threads import get_num_threads
from ._checks import float_array, output_buffer, pair


def upsample_nearest2d(x, scale, out=None) -> np.ndarray:
    """``y[n, c, h, w] = x[n, c, h // sh, w // sw]``: each pixel repeated sh × sw times, as
    ``torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")``.

    Shape:
        (N, C, H, W) → (N, C, H·sh, W·sw).

    >>> import numpy as np
    >>> upsample_nearest2d(np.arange(2, dtype=np.float32).reshape(1, 1, 1, 2), (2, 1))
    array([[[[0., 1.],
             [0., 1.]]]], dtype=float32)
    """
    op = "upsample_nearest2d"
    x = float_array(x, "input", op, 4, "N, C, H, W")
    sh, sw = pair(scale, "scale", op, 1)
    N, C, H, W = x.shape
    shape = (N, C, upsample_output_size(H, sh), upsample_output_size(W, sw))
    y = output_buffer(out, shape, x.dtype, op)
    _kernels.upsample_nearest_forward(x.reshape(N * C, H, W), y.reshape(N * C, *shape[2:]),
                                      sh, sw, get_num_threads())
    return y


def upsample_nearest2d_backward(grad_y, scale) -> np.ndarray:
    """``gx[n, c, h, w] = Σ_{i < sh, j < sw} gy[n, c, h·sh + i, w·sw + j]``: each input pixel
    collects the gradient of the block it was copied to.

    Shape:
        grad_y (N, C, H·sh, W·sw) → (N, C, H, W).
    """
    op = "upsample_nearest2d_backward"
    gy = float_array(grad_y, "grad_y", op, 4, "N, C, H·sh, W·sw")
    sh, sw = pair(scale, "scale", op, 1)
    N, C, OH, OW = gy.shape
    if OH % sh or OW % sw:
        raise ShapeError(
            f"{op}: grad_y of shape {list(gy.shape)} cannot come from upsampling by "
            f"scale ({sh}, {sw}): its height and width must be multiples of the scale. Pass the "
            f"gradient of upsample_nearest2d's output and the same scale."
        )
    H, W = OH // sh, OW // sw
    gx = np.empty((N, C, H, W), dtype=gy.dtype)
    _kernels.upsample_nearest_backward(gy.reshape(N * C, OH, OW), gx.reshape(N * C, H, W),
                                       sh, sw, get_num_threads())
    return gx
