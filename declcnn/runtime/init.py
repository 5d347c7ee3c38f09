"""Parameter initialisers: PyTorch's defaults, and the schemes a layer's ``init`` key may name.

Fans are PyTorch's (``torch.nn.init._calculate_fan_in_and_fan_out``): for a weight of shape
``(a, b, k₁, k₂, …)``, ``fan_in = b·k₁·k₂·…`` and ``fan_out = a·k₁·k₂·…``.  That is the fan of
the input for a convolution ``(O, I/g, kh, kw)`` and a linear layer ``(O, I)``, and, as in
PyTorch, ``(O/g)·kh·kw`` for a transposed convolution's ``(I, O/g, kh, kw)``.

``init = "default"`` (or no ``init``) is what ``torch.nn`` does: weight
``kaiming_uniform(a=√5)``, i.e. ``U(−1/√fan_in, 1/√fan_in)``, and bias ``U(−1/√fan_in,
1/√fan_in)``.  Any other scheme sets the weight by that scheme and the bias to zero, as
torchvision's models do after their own initialisation.  Values come from a numpy ``Generator``,
so a seed reproduces them (they follow PyTorch's distributions, not its random stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import DeclcnnError

DEFAULT = "default"


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight, as PyTorch computes them.

    >>> fans((6, 1, 5, 5)), fans((10, 84))
    ((25, 150), (84, 10))
    """
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _uniform(bound: float):
    return lambda rng, shape: rng.uniform(-bound, bound, shape)


def _normal(std: float):
    return lambda rng, shape: rng.normal(0.0, std, shape)


# name → (fan_in, fan_out) → sampler(rng, shape).  Gains are PyTorch's: kaiming with its default
# nonlinearity (leaky_relu, a=0) has gain √2, so U(±√(6/fan)) and N(0, 2/fan); the default is
# kaiming_uniform with a=√5, gain √(2/6), which is U(±1/√fan_in).
_WEIGHT_SCHEMES: dict[str, Callable] = {
    DEFAULT: lambda fi, fo: _uniform(1.0 / math.sqrt(fi)),
    "kaiming_uniform": lambda fi, fo: _uniform(math.sqrt(6.0 / fi)),
    "kaiming_normal": lambda fi, fo: _normal(math.sqrt(2.0 / fi)),
    "xavier_uniform": lambda fi, fo: _uniform(math.sqrt(6.0 / (fi + fo))),
    "xavier_normal": lambda fi, fo: _normal(math.sqrt(2.0 / (fi + fo))),
    "zeros": lambda fi, fo: lambda rng, shape: np.zeros(shape),
}

SCHEMES = tuple(_WEIGHT_SCHEMES)
"""The names an ``init`` key may take (``graph.layers.INIT_CHOICES`` lists the same)."""


def _scheme(init: str | None, where: str) -> Callable:
    name = DEFAULT if init is None else init
    try:
        return _WEIGHT_SCHEMES[name]
    except (KeyError, TypeError):
        raise DeclcnnError(
            f"{where}: unknown init {init!r}; use one of {', '.join(SCHEMES)}."
        ) from None


def weight_and_bias(rng: np.random.Generator, weight_shape: tuple[int, ...],
                    bias_shape: tuple[int, ...] | None, init: str | None, dtype,
                    where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight (and bias, unless ``bias_shape`` is None) drawn by the scheme ``init``.

    The weight is drawn first, then the bias, so a seed fixes both.  ``where`` names the layer
    in the error an unknown scheme raises.
    """
    fan_in, fan_out = fans(weight_shape)
    weight = _scheme(init, where)(fan_in, fan_out)(rng, weight_shape).astype(dtype)
    if bias_shape is None:
        return weight, None
    if init in (None, DEFAULT):
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        bias = rng.uniform(-bound, bound, bias_shape).astype(dtype)
    else:
        bias = np.zeros(bias_shape, dtype)
    return weight, bias
