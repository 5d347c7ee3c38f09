"""From a checked spec to a ``Graph``: per-layer key checks, expansion, shape inference.

``build_graph`` reports every problem of a spec in one ``SpecError``: the structural ones
``spec/`` found plus, per layer, unknown types and keys, bad values, and keys that do not fit the
incoming shape.  A layer with a problem gets no shape, and the layers that read it are skipped
silently rather than reporting follow-on noise.
"""

from __future__ import annotations

import heapq
import os

from .. import shapes
from ..errors import Problem, ShapeError, SpecError
from ..spec._values import closest, show
from ..spec.model import LayerEntry, ParsedSpec
from .graph import Graph, Node, Shape
from .layers import LAYER_TYPES, LayerProblem, format_shape

BYTES_PER_VALUE = 4
"""float32: what parameters and activations are stored in."""


def machine_memory() -> int:
    """Bytes of physical memory (``os.sysconf`` pages × page size)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _inputs_key(entry: LayerEntry) -> str:
    return "input" if "input" in entry.key_lines else "inputs"


def _order(entries: list[LayerEntry]) -> tuple[list[LayerEntry], list[LayerEntry]]:
    """Entries in topological order (file order among the ready ones), and those left over
    (reading an unknown name, or in or after a cycle)."""
    position = {e.name: i for i, e in enumerate(entries)}
    waiting = [0] * len(entries)
    readers: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        for name in set(e.inputs) - {Graph.INPUT}:
            waiting[i] += 1
            readers.setdefault(name, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    placed = []
    while ready:
        i = heapq.heappop(ready)
        placed.append(i)
        if position[entries[i].name] != i:  # a duplicate name (spec/ reports it) feeds nobody
            continue
        for j in readers.get(entries[i].name, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    done = set(placed)
    return [entries[i] for i in placed], [e for i, e in enumerate(entries) if i not in done]


class _Builder:
    def __init__(self, parsed: ParsedSpec, input_shape: Shape | None):
        self.parsed = parsed
        self.problems: list[Problem] = []
        self.flagged = {(p.layer, p.key) for p in parsed.problems if p.layer is not None}
        self.flagged_layers = {layer for layer, _ in self.flagged}
        shape = tuple(input_shape) if input_shape is not None else tuple(parsed.input_shape)
        # Which node holds each name's output (a separable layer's name is its pointwise node);
        # None for a name whose layer failed, so that its readers are skipped.
        self.output_of: dict[str, str | None] = {Graph.INPUT: Graph.INPUT if shape else None}
        self.shape_of: dict[str, Shape] = {Graph.INPUT: shape}
        self.nodes: list[Node] = []
        self.memory = BYTES_PER_VALUE * shapes.flat_size(shape) if shape else 0
        self.memory_limit = machine_memory()
        self.memory_reported = False

    def report(self, entry: LayerEntry, key: str | None, message: str) -> None:
        if key is not None and ((entry.index, entry.name), key) in self.flagged:
            return  # spec/ already reported this key (a bad block argument, say)
        line = entry.key_lines.get(key, entry.line) if key is not None else entry.line
        self.problems.append(Problem(message, self.parsed.file, line,
                                     (entry.index, entry.name), key))

    def unordered(self, left: list[LayerEntry]) -> None:
        """Report the entries that could not be ordered unless spec/ already did."""
        known = {e.name for e in self.parsed.layers} | {Graph.INPUT}
        blocked: set[str] = set()
        for entry in left:
            unknown = [i for i in entry.inputs if i not in known]
            if unknown:
                blocked.add(entry.name)
                if (entry.index, entry.name) not in self.flagged_layers:
                    hint = closest(unknown[0], sorted(known))
                    self.report(entry, _inputs_key(entry),
                                f"reads '{unknown[0]}', which is not a layer"
                                + (f"; did you mean '{hint}'?" if hint else ".")
                                + " Name an earlier layer or \"input\".")
        changed = True
        while changed:
            before = len(blocked)
            blocked |= {e.name for e in left if blocked & set(e.inputs)}
            changed = len(blocked) != before
        cycle = [e for e in left if e.name not in blocked]
        if cycle and not any((e.index, e.name) in self.flagged_layers for e in cycle):
            names = ", ".join(f"'{e.name}'" for e in cycle[:8])
            self.report(cycle[0], _inputs_key(cycle[0]),
                        f"the layers {names} read each other in a cycle; a layer may only read "
                        f"layers that do not depend on it.")

    def add(self, entry: LayerEntry) -> None:
        layer = LAYER_TYPES.get(entry.type)
        if layer is None:
            hint = closest(str(entry.type), LAYER_TYPES)
            self.report(entry, "type", f"unknown layer type {show(entry.type)}"
                        + (f'; did you mean "{hint}"?' if hint else ".")
                        + " Known types: " + ", ".join(sorted(LAYER_TYPES)) + ".")
            return
        values, key_problems = layer.read_keys(entry.keys)
        for key, message in key_problems:
            self.report(entry, key, message)
        sources = [self.output_of.get(name) for name in entry.inputs]
        if key_problems or None in sources:
            return
        count = len(sources)
        if count < layer.min_inputs or (layer.max_inputs is not None
                                        and count > layer.max_inputs):
            self.report(entry, _inputs_key(entry), self.arity_message(layer, entry))
            return
        shapes_in = [self.shape_of[s] for s in sources]
        try:
            parts = layer.expand(values, shapes_in, list(entry.inputs))
            made = []
            for part in parts:
                part_type = LAYER_TYPES[part.type]
                shape_out = part_type.output_shape(part.config, shapes_in)
                name = entry.name if part.suffix is None else f"{entry.name}.{part.suffix}"
                made.append(Node(name, part.type, part.config, sources, shapes_in, shape_out,
                                 part_type.params(part.config), part_type.buffers(part.config),
                                 entry.index, entry.line, entry.name))
                sources, shapes_in = [name], [shape_out]
        except LayerProblem as problem:
            self.report(entry, problem.key, problem.message)
            return
        self.nodes += made
        self.output_of[entry.name] = made[-1].name
        self.shape_of[made[-1].name] = made[-1].output_shape
        self.check_memory(entry, made)

    @staticmethod
    def arity_message(layer, entry: LayerEntry) -> str:
        got = ", ".join(f"'{i}'" for i in entry.inputs)
        if layer.max_inputs == 1:
            return (f"{layer.name} reads one input; got {len(entry.inputs)} ({got}). Combine them "
                    f"first with a concat or add layer.")
        return (f"{layer.name} reads at least {layer.min_inputs} inputs; got {len(entry.inputs)} "
                f"({got}). List them with inputs = [\"a\", \"b\"].")

    def check_memory(self, entry: LayerEntry, made: list[Node]) -> None:
        """Refuse a network whose float32 parameters and batch-1 activations exceed memory."""
        values = sum(shapes.flat_size(s) for n in made
                     for s in [*n.params.values(), *n.buffers.values(), n.output_shape])
        values += sum(LAYER_TYPES[n.type].kept_values(n.config, n.output_shape) for n in made)
        own = BYTES_PER_VALUE * values
        self.memory += own
        if self.memory > self.memory_limit and not self.memory_reported:
            self.memory_reported = True
            self.report(entry, None,
                        f"the network would need {self.memory:,} bytes for its parameters and "
                        f"activations (float32, batch size 1) up to this layer, more than this "
                        f"machine's {self.memory_limit:,} bytes of memory; this layer alone "
                        f"needs {own:,} bytes (output {format_shape(made[-1].output_shape)}). "
                        f"Use fewer channels or features, or a smaller input.")


def _check_input_shape(input_shape) -> None:
    if input_shape is None:
        return
    dims = tuple(input_shape)
    if len(dims) not in (1, 3) or not all(isinstance(d, int) and d >= 1 for d in dims):
        raise ShapeError(f"input_shape must be (channels, height, width) or (features,), each "
                         f"an integer ≥ 1; got {input_shape!r}.")


def build_graph(parsed: ParsedSpec, input_shape: Shape | None = None) -> Graph:
    """The graph of a parsed spec, every shape inferred; ``input_shape`` replaces the spec's
    (to run a network such as an SPP one at another size).

    Raises ``SpecError`` listing ``parsed.problems`` and every problem found here.
    """
    _check_input_shape(input_shape)
    builder = _Builder(parsed, input_shape)
    order, left = _order(parsed.layers)
    builder.unordered(left)
    for entry in order:
        builder.add(entry)
    problems = sorted(parsed.problems + builder.problems, key=lambda p: p.line or 0)
    if not problems and not builder.nodes:
        problems = [Problem("no layers; add at least one [[layers]] table with a type.",
                            parsed.file, section="layers")]
    if problems:
        raise SpecError(problems)
    shape = builder.shape_of[Graph.INPUT]
    return Graph(parsed.name, shape, builder.nodes, dict(parsed.training), parsed.file,
                 dict(parsed.document))


def load_graph(source, input_shape: Shape | None = None) -> Graph:
    """Read, check and build a spec: ``source`` is a path, or the spec's text (a string with a
    line break)."""
    from ..spec import parse_spec, read_spec

    if isinstance(source, str) and "\n" in source:
        parsed = parse_spec(source)
    else:
        parsed = read_spec(source)
    return build_graph(parsed, input_shape)
