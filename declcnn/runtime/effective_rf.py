"""The effective receptive field (Luo, Li, Urtasun & Zemel 2016): where the gradient goes.

A unit's theoretical field bounds the pixels it can depend on; the effective field is how much
it does.  We backpropagate through the network's own backward pass (evaluation mode: batch norm
on running statistics, no dropout):

* an image output ``C×H×W``: a gradient of 1 at the centre unit ``(⌊H/2⌋, ⌊W/2⌋)`` of every
  channel and 0 elsewhere, i.e. the gradient of ``Σ_c y[c, H/2, W/2]``;
* a flat output of ``F`` features: the gradient of their mean, ``1/F`` each (a flat unit sees
  the whole input, so no unit is more central than another);

and average ``|∂/∂x|``, summed over the input channels, over ``samples`` standard-normal
inputs.  The heat map's extent at a mass ``p`` is, per axis, the shortest interval centred on
the theoretical field's centre that holds a fraction ``p`` of the heat map's marginal along that
axis (sums over the other axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..errors import DeclcnnError
from ..graph.graph import Graph
from ..graph.receptive_field import LayerField, receptive_field, unit_field
from .network import Network

MASSES = (0.5, 0.9, 0.99)
"""Fractions of the gradient mass whose extents are reported."""

BATCH = 8
"""Samples per forward/backward pass: bounds the memory of large inputs."""


@dataclass
class EffectiveField:
    """The effective field of one layer's centre unit (``unit`` None: a flat layer's mean).

    ``heat`` is the mean absolute input gradient (H×W); ``centre`` the theoretical field's
    centre in input pixels (h, w); ``extents`` maps each mass to the (h, w) sizes holding it;
    ``theory`` is the layer's theoretical field and ``field`` the unit's own field per axis
    ``(lo, hi)``, padding included (it may reach past the image).
    """

    layer: str
    unit: tuple[int, int] | None
    samples: int
    heat: np.ndarray
    centre: tuple[Fraction, Fraction]
    extents: dict[float, tuple[int, int]]
    theory: LayerField
    field: tuple[tuple[int, int], tuple[int, int]]
    notes: list[str] = field(default_factory=list)


def centred_extent(marginal: np.ndarray, centre: Fraction, mass: float) -> int:
    """Length of the shortest interval centred on ``centre`` holding ``mass`` of ``marginal``.

    An integer centre gives odd lengths, a half-integer one even lengths; pixels outside the
    array hold nothing.  0 when the marginal is all zero.

    >>> centred_extent(np.array([0., 1., 2., 1., 0.]), Fraction(2), 0.5)
    1
    >>> centred_extent(np.array([0., 1., 2., 1., 0.]), Fraction(2), 0.9)
    3
    >>> centred_extent(np.array([1., 1., 1., 1.]), Fraction(3, 2), 0.75)
    4
    """
    total = float(marginal.sum())
    if total <= 0:
        return 0
    cumulative = np.concatenate([[0.0], np.cumsum(marginal, dtype=np.float64)])
    n = len(marginal)
    twice = 2 * centre
    length = 1 if twice.denominator == 1 and twice.numerator % 2 == 0 else 2
    while True:
        lo = int(centre - Fraction(length - 1, 2))
        hi = lo + length - 1
        inside = cumulative[min(max(hi + 1, 0), n)] - cumulative[min(max(lo, 0), n)]
        # Relative slack: float sums of a full interval may fall a rounding error short.
        if inside >= mass * total * (1 - 1e-12) or (lo <= 0 and hi >= n - 1):
            return length
        length += 2


def _upstream(graph: Graph, layer: str) -> Graph:
    """The part of ``graph`` that ``layer`` depends on, ending at ``layer``."""
    needed = {layer}
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    nodes = [node for node in graph.nodes if node.name in needed]
    return Graph(f"{graph.name} up to {layer}", graph.input_shape, nodes, graph.training,
                 graph.source, graph.spec)


def effective_receptive_field(network: Network, layer: str | None = None, samples: int = 16,
                              seed: int = 0) -> EffectiveField:
    """The effective field of ``layer`` (default: the output) of ``network`` with its current
    parameters, averaged over ``samples`` random inputs drawn from ``seed``."""
    graph = network.graph
    if samples < 1:
        raise DeclcnnError(f"samples must be an integer ≥ 1; got {samples}.")
    theory = {f.name: f for f in receptive_field(graph)}
    name = layer or graph.output.name
    if name not in theory:
        raise DeclcnnError(
            f"network '{graph.name}' has no layer '{name}'; pass --layer one of its layers, e.g. "
            f"{', '.join(repr(n.name) for n in graph.nodes[-3:])}.")
    target = network
    if name != graph.output.name:
        # A network that stops at the layer, with the same parameters and statistics.
        target = Network(_upstream(graph, name), dtype=network.dtype)
        state = network.state_dict()
        target.load_state_dict({key: state[key] for key in target.state_dict()})
    shape = graph.node(name).output_shape
    unit = (shape[1] // 2, shape[2] // 2) if len(shape) == 3 else None
    if unit is None:
        extended = tuple((f.begin, f.end) for f in (theory[name].h, theory[name].w))
    else:
        extended = unit_field(graph, unit, name, clip=False)
    centre = tuple(Fraction(lo + hi, 2) for lo, hi in extended)

    was_training = target.training
    target.eval()
    rng = np.random.default_rng(seed)
    heat = np.zeros(graph.input_shape[1:], np.float64)
    try:
        for start in range(0, samples, BATCH):
            count = min(BATCH, samples - start)
            x = rng.standard_normal((count, *graph.input_shape)).astype(target.dtype)
            y = target.forward(x)
            grad = np.zeros_like(y)
            if unit is None:
                grad[...] = 1.0 / y[0].size
            else:
                grad[:, :, unit[0], unit[1]] = 1.0
            heat += np.abs(target.backward(grad)).sum(axis=(0, 1))
    finally:
        if was_training:
            target.train()
    heat /= samples
    extents = {mass: (centred_extent(heat.sum(axis=1), centre[0], mass),
                      centred_extent(heat.sum(axis=0), centre[1], mass)) for mass in MASSES}
    notes = []
    if not heat.any():
        notes.append("the gradient is zero everywhere (dead ReLUs or zero weights?); no extent "
                     "can be measured.")
    return EffectiveField(name, unit, samples, heat, centre, extents, theory[name], extended,
                          notes)


def save_heat_map(result: EffectiveField, path) -> None:
    """Draw the heat map with the theoretical field (solid) and the extents (dashed) outlined.

    The theoretical field may reach past the image (padding); it is drawn clipped to it.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    figure, axes = plt.subplots(figsize=(6, 5.5))
    image = axes.imshow(result.heat, cmap="magma", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="mean |∂ output / ∂ input|")
    height, width = result.heat.shape
    (top, bottom), (left, right) = result.field
    label = f"theoretical {bottom - top + 1}×{right - left + 1}"
    if top < 0 or left < 0 or bottom >= height or right >= width:
        label += " (clipped to the image)"
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, height - 1), min(right, width - 1)
    axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                             fill=False, edgecolor="cyan", linewidth=1.5, label=label))
    styles = {0.5: ":", 0.9: "--", 0.99: "-."}
    ch, cw = (float(c) for c in result.centre)
    for mass, (h, w) in result.extents.items():
        if h and w:
            axes.add_patch(Rectangle((cw - w / 2, ch - h / 2), w, h, fill=False,
                                     edgecolor="white", linestyle=styles.get(mass, "--"),
                                     label=f"{mass:.0%} of the gradient: {h}×{w}"))
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    unit = "mean of the outputs" if result.unit is None else f"unit {result.unit}"
    axes.set_title(f"effective receptive field of '{result.layer}', {unit}\n"
                   f"{result.samples} random inputs")
    axes.legend(loc="lower left", fontsize=7, framealpha=0.6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
