"""Every output-size formula, once, per spatial axis.  A leaf module: anyone may import it.

All sizes are Python ints.  Padding is given as the two sides of one axis (``begin``, ``end``)
because ``padding="same"`` with an even effective kernel pads unevenly, as PyTorch does.
"""

from __future__ import annotations

import math


def dilated_extent(kernel: int, dilation: int) -> int:
    """Input pixels one kernel window spans: ``d·(k−1)+1``.

    >>> dilated_extent(3, 2)
    5
    """
    return dilation * (kernel - 1) + 1


def same_padding(kernel: int, dilation: int) -> tuple[int, int]:
    """PyTorch's ``padding="same"`` (stride 1): total ``d·(k−1)``, the extra pixel at the end.

    >>> same_padding(4, 1)
    (1, 2)
    >>> same_padding(3, 2)
    (2, 2)
    """
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                     dilation: int = 1) -> int:
    """``floor((H + p0 + p1 − d·(k−1) − 1) / s) + 1``; ≤ 0 means the input is too small.

    >>> conv_output_size(28, 5, 1, 2, 2)
    28
    >>> conv_output_size(572, 3, 1, 0, 0)
    570
    """
    return (size + pad_begin + pad_end - dilated_extent(kernel, dilation)) // stride + 1


def conv_transpose_output_size(size: int, kernel: int, stride: int, padding: int,
                               dilation: int = 1, output_padding: int = 0) -> int:
    """``(H − 1)·s − 2p + d·(k−1) + output_padding + 1``.

    >>> conv_transpose_output_size(28, 2, 2, 0)
    56
    >>> conv_transpose_output_size(32, 4, 2, 1)
    64
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """PyTorch's pooling size: with ``ceil_mode`` the last window may hang over the end, but it
    must start inside the input or its left padding.

    >>> pool_output_size(5, 2, 2, 0, ceil_mode=True)
    3
    >>> pool_output_size(5, 2, 2, 0)
    2
    """
    span = size + 2 * padding - dilated_extent(kernel, dilation)
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def adaptive_bin(index: int, in_size: int, out_size: int) -> tuple[int, int]:
    """PyTorch's adaptive pooling window ``[floor(i·H/O), ceil((i+1)·H/O))``.

    >>> [adaptive_bin(i, 5, 3) for i in range(3)]
    [(0, 2), (1, 4), (3, 5)]
    """
    start = (index * in_size) // out_size
    end = -(-((index + 1) * in_size) // out_size)
    return start, end


def upsample_output_size(size: int, scale: int) -> int:
    return size * scale


def centre_crop_offset(size: int, target: int) -> int:
    """First kept index of a centre crop from ``size`` to ``target`` (U-Net's crop):
    ``(size − target) // 2``, the odd pixel coming off the end.

    >>> centre_crop_offset(64, 56), centre_crop_offset(5, 2)
    (4, 1)
    """
    return (size - target) // 2


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
