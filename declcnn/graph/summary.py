"""A network at a glance: per node its output shape, parameters and multiply-adds, then totals.

>>> from declcnn.graph import load_graph
>>> graph = load_graph('''
... [network]
... input = [1, 28, 28]
... [[layers]]
... type = "conv2d"
... name = "conv"
... out_channels = 6
... kernel = 5
... [[layers]]
... type = "flatten"
... name = "flat"
... ''')
>>> parameter_count(graph), multiply_adds(graph)
(156, 86400)
>>> activation_bytes(graph, batch_size=2)   # 2 · 4 bytes · (784 + 3456 + 3456)
61568
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import shapes
from .build import BYTES_PER_VALUE
from .graph import Graph, Node
from .layers import LAYER_TYPES, format_shape


@dataclass(frozen=True)
class Row:
    """One node's line of the summary."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    parameters: int
    multiply_adds: int


def _row(node: Node) -> Row:
    macs = LAYER_TYPES[node.type].macs(node.config, node.input_shapes, node.output_shape)
    return Row(node.name, node.type, node.output_shape,
               sum(shapes.flat_size(s) for s in node.params.values()), macs)


def rows(graph: Graph) -> list[Row]:
    return [_row(n) for n in graph.nodes]


def parameter_count(graph: Graph) -> int:
    """Trainable values (buffers such as running means excluded, as published counts do)."""
    return sum(r.parameters for r in rows(graph))


def multiply_adds(graph: Graph) -> int:
    """Multiply-adds with weights for one sample."""
    return sum(r.multiply_adds for r in rows(graph))


def activation_bytes(graph: Graph, batch_size: int = 1) -> int:
    """float32 bytes of the forward activations kept for a batch: the input and every node's
    output, ``4 · N · (Σ sizes)``."""
    values = shapes.flat_size(graph.input_shape) + sum(shapes.flat_size(n.output_shape)
                                                       for n in graph.nodes)
    return BYTES_PER_VALUE * batch_size * values


def _bytes(count: int) -> str:
    """``1,536 bytes (1.5 KiB)``: exact, and in the largest binary unit below 1024."""
    exponent = min(4, max(1, (count.bit_length() - 1) // 10))
    unit = ("KiB", "MiB", "GiB", "TiB")[exponent - 1]
    return f"{count:,} bytes ({count / 1024 ** exponent:.1f} {unit})"


def format_summary(graph: Graph, batch_size: int = 1) -> str:
    """The summary as a text table with totals and memory for ``batch_size`` samples."""
    table = [("name", "type", "output", "parameters", "multiply-adds")]
    table += [(r.name, r.type, format_shape(r.output_shape), f"{r.parameters:,}",
               f"{r.multiply_adds:,}") for r in rows(graph)]
    table.append(("total", "", "", f"{parameter_count(graph):,}",
                  f"{multiply_adds(graph):,}"))
    widths = [max(len(line[i]) for line in table) for i in range(5)]

    def render(line):
        left = [cell.ljust(w) for cell, w in zip(line[:3], widths, strict=False)]
        right = [cell.rjust(w) for cell, w in zip(line[3:], widths[3:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [f"{graph.name}: input {format_shape(graph.input_shape)}", render(table[0]), rule]
    out += [render(line) for line in table[1:-1]]
    out += [rule, render(table[-1]), "",
            f"parameters (float32): {_bytes(BYTES_PER_VALUE * parameter_count(graph))}",
            f"forward activations (float32, batch size {batch_size}): "
            f"{_bytes(activation_bytes(graph, batch_size))}"]
    return "\n".join(out)
