"""Random flips, crops and shifts of a whole batch at once (numpy indexing, no per-pixel Python).

Every function takes the batch ``x`` ``(N, C, H, W)``, optional per-pixel targets ``y``
``(N, H, W)`` that move with the image, and a ``numpy.random.Generator``; it returns new arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def flip(x, y, rng):
    """Mirror each sample left-right with probability ½."""
    chosen = rng.random(len(x)) < 0.5
    x = x.copy()
    x[chosen] = x[chosen, ..., ::-1]
    if y is not None:
        y = y.copy()
        y[chosen] = y[chosen, ..., ::-1]
    return x, y


def translate(x, y, rng, margin: int, mode: str, fill_y: int):
    """Move each sample by a random whole number of pixels in ``[-margin, margin]`` per axis,
    filling the uncovered border by ``mode`` (``"constant"``: zeros, ``"edge"``: the nearest
    pixel); uncovered targets get ``fill_y`` (``"constant"``) or the nearest target (``"edge"``).

    This is a crop of the padded image: pad by ``margin``, take an ``H×W`` window at a random
    offset ``(oy, ox) ∈ [0, 2·margin]²``.
    """
    n, _, height, width = x.shape
    offset_y = rng.integers(0, 2 * margin + 1, n)
    offset_x = rng.integers(0, 2 * margin + 1, n)
    pad = ((0, 0), (0, 0), (margin, margin), (margin, margin))
    samples = np.arange(n)
    windows = sliding_window_view(np.pad(x, pad, mode=mode), (height, width), axis=(2, 3))
    x = windows[samples, :, offset_y, offset_x]
    if y is not None:
        y_pad = (np.pad(y, pad[1:], mode="constant", constant_values=fill_y) if mode == "constant"
                 else np.pad(y, pad[1:], mode="edge"))
        y = sliding_window_view(y_pad, (height, width), axis=(1, 2))[samples, offset_y, offset_x]
    return np.ascontiguousarray(x), y if y is None else np.ascontiguousarray(y)


def crop_margin(height: int, width: int) -> int:
    """Padding of the random crop: an eighth of the smaller side (4 for 32×32, as for CIFAR)."""
    return max(1, min(height, width) // 8)


def shift_margin(height: int, width: int) -> int:
    """Largest shift: a fourteenth of the smaller side (2 pixels for 28×28)."""
    return max(1, min(height, width) // 14)


def augment(x, y, rng, names, ignore_index: int = -100):
    """Apply the augmentations ``names`` (any of ``"flip"``, ``"crop"``, ``"shift"``) in that
    order.  ``"crop"`` pads with zeros (targets: ``ignore_index``) and crops back to size;
    ``"shift"`` replicates the edge instead."""
    height, width = x.shape[2:]
    if "flip" in names:
        x, y = flip(x, y, rng)
    if "crop" in names:
        x, y = translate(x, y, rng, crop_margin(height, width), "constant", ignore_index)
    if "shift" in names:
        x, y = translate(x, y, rng, shift_margin(height, width), "edge", ignore_index)
    return x, y
