"""Theoretical receptive fields of every layer of a graph, exact on branching graphs.

Per spatial axis (height and width separately), the *field* of a unit is the smallest interval
of input pixels that holds every pixel the unit depends on, in input coordinates that continue
past the image into the padding (Araujo, Norris & Sim, "Computing Receptive Fields of
Convolutional Neural Networks", Distill 2019).  A dilated kernel's holes count as inside: a
3-tap kernel with dilation 2 sees what a 5-tap one sees.

How it is computed: for every node and axis a table gives each unit's field ``[lo, hi]`` over
the range of units the later layers read (the padding units included).  A layer's unit ``o``
reads source units ("taps") and its field is the hull of theirs:

* conv2d and pooling: ``u = s·o − p_begin + d·t`` for ``t = 0..k−1``;
* conv_transpose2d: ``u = (o + p − d·t) / s`` for the ``t`` where the division is exact (the
  field depends on ``o mod s``, and a unit may see nothing when ``k < s``);
* upsample: ``u = ⌊o / s⌋``; crop and crop-concat: ``u = o + ⌊(n_in − n_out) / 2⌋``;
* rcl: its feed-forward convolution then ``steps`` recurrent ones (the longest unrolled path
  contains the shorter ones: each "same" convolution reads its own centre);
* global pooling, spp, flatten, linear: the one output unit reads every unit of its input;
* add and concat: the union over the inputs; element-wise layers: ``u = o``.

Because the field of the union is the hull of the inputs' hulls, merges are exact; because the
tables list every unit, so is the dependence on alignment (transposed convolution, upsampling):
a layer reports its largest and smallest field.  The effective stride (*jump*) is carried
exactly as a ``Fraction``: ``J·s`` through a stride, ``J / s`` through a transposed
convolution or an upsampling, ``J·n`` through a layer that reads all ``n`` units (as a kernel
``n``, stride ``n`` would).  Where inputs of a merge disagree in jump or in where their fields'
centres fall, the layer carries a warning (the alignment problem of Araujo et al.).

The fields are per axis: in 2-D a unit's field is the product of its two axes' fields, except
after a merge whose input sees nothing along one axis for that unit (a transposed convolution
with kernel < stride, or a window entirely in padding), where the other axis still counts it.

>>> from declcnn.graph.graph import Graph, Node
>>> conv = {"kernel": (3, 3), "stride": (1, 1), "padding": ((0, 0), (0, 0)),
...         "dilation": (2, 2)}
>>> g = Graph("g", (1, 9, 9), [Node("c", "conv2d", conv, ["input"], [(1, 9, 9)], (1, 5, 5))])
>>> f = receptive_field(g)[0]
>>> f.rf, f.jump, f.start
((5, 5), (Fraction(1, 1), Fraction(1, 1)), (Fraction(2, 1), Fraction(2, 1)))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import DeclcnnError, ShapeError
from ..shapes import centre_crop_offset, same_padding
from .graph import Graph, Node

_NOTHING_LO = np.iinfo(np.int64).max // 4
_NOTHING_HI = -_NOTHING_LO
"""The field of a unit that sees no input pixel: ``lo > hi``, neutral for min and max."""


@dataclass(frozen=True)
class AxisField:
    """One axis of a layer's receptive field, in input pixels.

    ``size`` is the largest field over the layer's units and ``size_min`` the smallest (they
    differ where the field depends on alignment, or where merged inputs have different jumps);
    ``jump`` the distance between neighbouring units' fields; ``begin``..``end`` the field of
    unit 0 (``−begin`` is the effective padding) and ``centre`` its middle, ``(begin + end)/2``
    (None when unit 0 sees no pixel).
    """

    size: int
    size_min: int
    jump: Fraction
    begin: int | None
    end: int | None
    centre: Fraction | None


@dataclass(frozen=True)
class LayerField:
    """The receptive field of one layer (graph node): ``h`` and ``w`` axes, warnings."""

    name: str
    type: str
    output: tuple[int, int, int]
    h: AxisField
    w: AxisField
    warnings: tuple[str, ...] = ()

    @property
    def rf(self) -> tuple[int, int]:
        return self.h.size, self.w.size

    @property
    def rf_min(self) -> tuple[int, int]:
        return self.h.size_min, self.w.size_min

    @property
    def jump(self) -> tuple[Fraction, Fraction]:
        return self.h.jump, self.w.jump

    @property
    def start(self) -> tuple[Fraction | None, Fraction | None]:
        """The centre of the first unit's field (the "start" of receptive-field arithmetic)."""
        return self.h.centre, self.w.centre

    @property
    def begin(self) -> tuple[int | None, int | None]:
        return self.h.begin, self.w.begin

    def as_json(self) -> dict:
        """Plain numbers for JSON: fractions become floats (exact ones stay integers)."""

        def number(value):
            if value is None:
                return None
            return int(value) if value.denominator == 1 else float(value)

        axes = (self.h, self.w)
        return {
            "name": self.name, "type": self.type, "output": list(self.output),
            "rf": [a.size for a in axes], "rf_min": [a.size_min for a in axes],
            "jump": [number(a.jump) for a in axes],
            "start": [number(a.centre) for a in axes],
            "begin": [a.begin for a in axes], "end": [a.end for a in axes],
            "warnings": list(self.warnings),
        }


# -- one axis of one layer: which source units each output unit reads -----------------------

Taps = list[tuple[int, np.ndarray, np.ndarray | None]]
"""Per tap: the source's position in the stage's inputs, the source unit per output unit, and
which of those exist (None: all)."""


@dataclass
class _Stage:
    """One step of a layer along one axis: ``taps(o)`` gives the source units each output unit
    ``o`` reads; with ``whole`` every output unit reads every unit of every source."""

    size: int
    taps: Callable[[np.ndarray], Taps] | None = None
    whole: bool = False


@dataclass
class _AxisMap:
    """A layer along one axis: its stages (the first reads the node's inputs, each later one the
    stage before) and the factor its jump multiplies the inputs' jump by."""

    stages: list[_Stage]
    scale: Fraction


def _window(size: int, kernel: int, stride: int, begin: int, dilation: int) -> _Stage:
    def taps(o):
        first = stride * o - begin
        return [(0, first + dilation * t, None) for t in range(kernel)]

    return _Stage(size, taps)


def _axis(node: Node, axis: int) -> tuple[int, list[int]]:
    """The node's output size along ``axis`` (1 for a flat output) and its inputs' sizes."""

    def along(shape):
        return shape[1 + axis] if len(shape) == 3 else 1

    return along(node.output_shape), [along(s) for s in node.input_shapes]


def _conv2d(node, axis):
    c = node.config
    size, _ = _axis(node, axis)
    stage = _window(size, c["kernel"][axis], c["stride"][axis], c["padding"][axis][0],
                    c["dilation"][axis])
    return _AxisMap([stage], Fraction(c["stride"][axis]))


def _pool(node, axis):
    c = node.config
    size, _ = _axis(node, axis)
    dilation = c.get("dilation", (1, 1))[axis]
    stage = _window(size, c["kernel"][axis], c["stride"][axis], c["padding"][axis], dilation)
    return _AxisMap([stage], Fraction(c["stride"][axis]))


def _conv_transpose2d(node, axis):
    c = node.config
    size, _ = _axis(node, axis)
    kernel, stride = c["kernel"][axis], c["stride"][axis]
    padding, dilation = c["padding"][axis], c["dilation"][axis]

    def taps(o):
        # Input u writes output u·s − p + d·t: output o reads u = (o + p − d·t)/s when exact.
        taps = []
        for t in range(kernel):
            shifted = o + padding - dilation * t
            taps.append((0, shifted // stride, shifted % stride == 0))
        return taps

    return _AxisMap([_Stage(size, taps)], Fraction(1, stride))


def _upsample(node, axis):
    size, _ = _axis(node, axis)
    scale = node.config["scale"][axis]
    return _AxisMap([_Stage(size, lambda o: [(0, o // scale, None)])], Fraction(1, scale))


def _centre_crop(node, axis):
    """Crop and concat: input k's unit ``o + ⌊(n_k − n)/2⌋`` (the runtime's centre crop, the odd
    pixel off the end); 0 for inputs that already have the output's size."""
    size, sizes_in = _axis(node, axis)
    offsets = [centre_crop_offset(n, size) for n in sizes_in]
    stage = _Stage(size, lambda o: [(k, o + off, None) for k, off in enumerate(offsets)])
    return _AxisMap([stage], Fraction(1))


def _rcl(node, axis):
    size, _ = _axis(node, axis)
    kernel = node.config["kernel"][axis]
    begin, _ = same_padding(kernel, 1)
    stages = [_window(size, kernel, 1, begin, 1) for _ in range(node.config["steps"] + 1)]
    return _AxisMap(stages, Fraction(1))


def _whole(node, axis):
    size, (size_in,) = _axis(node, axis)
    return _AxisMap([_Stage(size, whole=True)], Fraction(size_in))


def _same(node, axis):
    size, _ = _axis(node, axis)
    return _AxisMap([_Stage(size, lambda o: [(0, o, None)])], Fraction(1))


AXIS_MAPS: dict[str, Callable[[Node, int], _AxisMap]] = {
    "conv2d": _conv2d,
    "conv_transpose2d": _conv_transpose2d,
    "maxpool2d": _pool,
    "avgpool2d": _pool,
    "upsample": _upsample,
    "crop": _centre_crop,
    "concat": _centre_crop,
    "add": _centre_crop,
    "rcl": _rcl,
    "global_avgpool": _whole,
    "global_maxpool": _whole,
    "spp": _whole,
    "flatten": _whole,
    "linear": _whole,
    **{name: _same for name in ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "dropout",
                                "batchnorm2d")},
}
"""Layer type → how its units read its inputs' units along one axis."""


# -- tables of fields ------------------------------------------------------------------------

@dataclass
class _Table:
    """Fields ``[lo[i], hi[i]]`` of units ``first + i``; units outside see nothing."""

    first: int
    lo: np.ndarray
    hi: np.ndarray

    def gather(self, units: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        index = units - self.first
        inside = (index >= 0) & (index < len(self.lo))
        if valid is not None:
            inside &= valid
        index = np.where(inside, index, 0)
        return (np.where(inside, self.lo[index], _NOTHING_LO),
                np.where(inside, self.hi[index], _NOTHING_HI))

    def everything(self) -> tuple[int, int]:
        """The hull of all the fields in the table."""
        return int(self.lo.min(initial=_NOTHING_LO)), int(self.hi.max(initial=_NOTHING_HI))


def _read(stage: _Stage, sources: list[_Table], units: np.ndarray,
          whole_of: list[tuple[int, int]]):
    """Per source, the hull of the fields the ``units`` read from it: (lo, hi) arrays."""
    if stage.whole:
        (source,) = sources
        lo, hi = source.gather(np.arange(whole_of[0][0], whole_of[0][1]), None)
        return [(np.full(units.shape, lo.min(initial=_NOTHING_LO)),
                 np.full(units.shape, hi.max(initial=_NOTHING_HI)))]
    parts = [(np.full(units.shape, _NOTHING_LO), np.full(units.shape, _NOTHING_HI))
             for _ in sources]
    for k, source_units, valid in stage.taps(units):
        lo, hi = sources[k].gather(source_units, valid)
        parts[k] = (np.minimum(parts[k][0], lo), np.maximum(parts[k][1], hi))
    return parts


def _requested(stage: _Stage, first: int, last: int, n_sources: int,
               whole_of: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Per source, the range of its units that output units ``first..last`` read."""
    if stage.whole:
        return [(whole_of[0][0], whole_of[0][1] - 1)]
    ranges: list[tuple[int, int] | None] = [None] * n_sources
    for k, units, valid in stage.taps(np.arange(first, last + 1)):
        if valid is not None:
            units = units[valid]
        if units.size:
            low, high = int(units.min()), int(units.max())
            old = ranges[k]
            ranges[k] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
    return ranges


def _hull(a: tuple[int, int] | None, b: tuple[int, int] | None):
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


class _Axis:
    """Every node's table of fields along one axis.

    ``clip`` false: the units before and after each layer's own (its padding) get fields too,
    as the theory has it; true: only real units exist, so a unit's field holds exactly the
    input pixels its value depends on.
    """

    def __init__(self, graph: Graph, axis: int, clip: bool):
        self.graph = graph
        self.clip = clip
        self.maps = {node.name: _map(node, axis) for node in graph.nodes}
        self.size = {Graph.INPUT: graph.input_shape[1 + axis]}
        self.size.update((node.name, _axis(node, axis)[0]) for node in graph.nodes)
        wanted = {name: (0, size - 1) for name, size in self.size.items()}
        if not clip:
            self._widen(wanted)
        first, last = wanted[Graph.INPUT]
        units = np.arange(first, last + 1)
        self.tables = {Graph.INPUT: _Table(first, units, units.copy())}
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for node in graph.nodes:
            self._fill(node, wanted[node.name])

    def _whole_of(self, node: Node) -> list[tuple[int, int]]:
        return [(0, self.size[name]) for name in node.inputs]

    def _stage_ranges(self, node: Node, wanted: tuple[int, int]) -> list[tuple[int, int]]:
        """The units each stage of ``node`` computes so that the last yields ``wanted``: an
        intermediate stage (rcl's steps) has real units ``0..n−1`` only when clipping, else
        whatever its successor reads."""
        stages = self.maps[node.name].stages
        ranges = [wanted]
        for stage in reversed(stages[1:]):
            if self.clip:
                ranges.insert(0, (0, stage.size - 1))
            else:
                ranges.insert(0, _requested(stage, *ranges[0], 1, [])[0])
        return ranges

    def _widen(self, wanted: dict[str, tuple[int, int]]) -> None:
        """Grow each node's range to every unit a later layer reads (padding units too)."""
        for node in reversed(self.graph.nodes):
            first = self._stage_ranges(node, wanted[node.name])[0]
            requests = _requested(self.maps[node.name].stages[0], *first, len(node.inputs),
                                  self._whole_of(node))
            for name, request in zip(node.inputs, requests, strict=True):
                wanted[name] = _hull(wanted[name], request)

    def _fill(self, node: Node, wanted: tuple[int, int]) -> None:
        stages = self.maps[node.name].stages
        sources = [self.tables[name] for name in node.inputs]
        whole_of = self._whole_of(node)
        for stage, (first, last) in zip(stages, self._stage_ranges(node, wanted), strict=True):
            parts = _read(stage, sources, np.arange(first, last + 1), whole_of)
            lo = np.minimum.reduce([p[0] for p in parts])
            hi = np.maximum.reduce([p[1] for p in parts])
            sources = [_Table(first, lo, hi)]
        self.tables[node.name] = sources[0]
        if len(node.inputs) > 1:
            inputs = [self.tables[name] for name in node.inputs]
            self.parts[node.name] = _read(stages[0], inputs, np.arange(self.size[node.name]),
                                          whole_of)

    def own(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The fields of the node's own units ``0..n−1``."""
        return self.tables[name].gather(np.arange(self.size[name]), None)


def _map(node: Node, axis: int) -> _AxisMap:
    try:
        make = AXIS_MAPS[node.type]
    except KeyError:
        raise DeclcnnError(
            f"layer '{node.name}' has type '{node.type}', whose receptive field is not known; "
            f"known types: {', '.join(sorted(AXIS_MAPS))}.") from None
    return make(node, axis)


# -- the report ------------------------------------------------------------------------------

_AXIS_NAMES = ("height", "width")


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value}"


def _jumps(graph: Graph, axes: list[_Axis]) -> tuple[dict, list[list[str]]]:
    """Every node's jump per axis, and per node the warnings about its inputs' jumps."""
    jumps = {Graph.INPUT: (Fraction(1), Fraction(1))}
    warnings = []
    for node in graph.nodes:
        own, notes = [], []
        for axis, field in enumerate(axes):
            incoming = [jumps[name][axis] for name in node.inputs]
            if len(set(incoming)) > 1:
                listed = ", ".join(f"'{name}' {_fraction_text(j)}"
                                   for name, j in zip(node.inputs, incoming, strict=True))
                notes.append(
                    f"{_AXIS_NAMES[axis]}: the inputs' effective strides differ ({listed}), so "
                    f"the union's field changes from unit to unit; the largest jump and field "
                    f"are reported.")
            own.append(max(incoming) * field.maps[node.name].scale)
        jumps[node.name] = tuple(own)
        warnings.append(notes)
    return jumps, warnings


def _misaligned(node: Node, axis: int, parts) -> str | None:
    """A warning when the merged inputs' fields are not centred on one another."""
    centres = [(lo + hi) for lo, hi in parts]  # twice the centre, kept integral
    seen = np.all([lo <= hi for lo, hi in parts], axis=0)
    for k in range(1, len(parts)):
        differ = np.nonzero(seen & (centres[k] != centres[0]))[0]
        if differ.size:
            i = int(differ[0])
            return (f"{_AXIS_NAMES[axis]}: the fields of '{node.inputs[0]}' and "
                    f"'{node.inputs[k]}' are not centred alike (unit {i}: centres "
                    f"{_fraction_text(Fraction(int(centres[0][i]), 2))} and "
                    f"{_fraction_text(Fraction(int(centres[k][i]), 2))}); the union is "
                    f"reported.")
    return None


def _axis_field(lo: np.ndarray, hi: np.ndarray, jump: Fraction) -> AxisField:
    seen = lo <= hi
    sizes = np.where(seen, hi - lo + 1, 0)
    if seen[0]:
        begin, end = int(lo[0]), int(hi[0])
        centre = Fraction(begin + end, 2)
    else:
        begin = end = centre = None
    return AxisField(int(sizes.max()), int(sizes.min()), jump, begin, end, centre)


def _graph_of(graph_or_network) -> Graph:
    graph = getattr(graph_or_network, "graph", graph_or_network)
    if not isinstance(graph, Graph):
        raise DeclcnnError(f"receptive_field needs a Graph or a Network; got "
                           f"{type(graph_or_network).__name__}.")
    if len(graph.input_shape) != 3:
        raise ShapeError(
            f"network '{graph.name}' takes a flat input of {graph.input_shape[0]} features; "
            f"receptive fields need an image input (channels, height, width). Give the spec's "
            f"[network] input as [C, H, W].")
    return graph


def resized(graph: Graph, input_size: tuple[int, int]) -> Graph:
    """The graph rebuilt for an input of ``input_size = (h, w)`` (same channels).

    Rebuilds from the spec file when the graph has one (so problems name its lines), else from
    the graph written back as a spec.
    """
    from ..spec import emit_toml
    from .build import load_graph

    source = graph.source if graph.source and os.path.isfile(graph.source) else None
    return load_graph(source or emit_toml(graph), (graph.input_shape[0], *input_size))


def receptive_field(graph, input_size: tuple[int, int] | None = None) -> list[LayerField]:
    """The receptive field of every node of ``graph`` (a ``Graph`` or a ``Network``).

    ``input_size = (h, w)`` rebuilds the graph for that input first (output sizes, crops and
    whole-input layers depend on it).  Returns one ``LayerField`` per node, in graph order.
    """
    graph = _graph_of(graph)
    if input_size is not None:
        graph = resized(graph, tuple(input_size))
    axes = [_Axis(graph, axis, clip=False) for axis in (0, 1)]
    jumps, warnings = _jumps(graph, axes)
    fields = []
    for node, notes in zip(graph.nodes, warnings, strict=True):
        per_axis = []
        for axis, table in enumerate(axes):
            per_axis.append(_axis_field(*table.own(node.name), jumps[node.name][axis]))
            if node.name in table.parts:
                note = _misaligned(node, axis, table.parts[node.name])
                if note:
                    notes.append(note)
        shape = node.output_shape
        output = shape if len(shape) == 3 else (shape[0], 1, 1)
        fields.append(LayerField(node.name, node.type, tuple(output), *per_axis, tuple(notes)))
    return fields


def unit_field(graph, index: tuple[int, int], layer: str | None = None, clip: bool = True):
    """The field of one unit ``index = (i, j)`` of ``layer`` (default: the output layer), per
    axis ``(lo, hi)`` in input pixels, or None along an axis where it sees no pixel.

    With ``clip`` (the default) only real units and pixels count: the field is exactly the
    bounding box of the input pixels the unit's value depends on (the per-axis caveat of the
    module docstring aside).  Without it, padding units count as the theory has it.
    """
    graph = _graph_of(graph)
    name = layer or graph.output.name
    try:
        node = graph.node(name)
    except KeyError:
        raise DeclcnnError(
            f"network '{graph.name}' has no layer '{name}'; its layers are "
            f"{', '.join(n.name for n in graph.nodes[:12])}"
            f"{' …' if len(graph.nodes) > 12 else ''}.") from None
    result = []
    for axis in (0, 1):
        size = _axis(node, axis)[0]
        if not 0 <= index[axis] < size:
            raise ShapeError(
                f"layer '{name}' has {size} units along its {_AXIS_NAMES[axis]}; unit index "
                f"{index[axis]} is outside 0..{size - 1}.")
        lo, hi = _Axis(graph, axis, clip).tables[name].gather(np.array([index[axis]]), None)
        result.append((int(lo[0]), int(hi[0])) if lo[0] <= hi[0] else None)
    return tuple(result)
