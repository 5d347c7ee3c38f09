"""The layer graph: what a validated spec becomes, before any array exists.

A ``Graph`` is a list of ``Node`` in topological order with every shape inferred.  It is plain
data: ``runtime/`` compiles it into a ``Network``, ``graph/summary.py`` and
``graph/receptive_field.py`` read it.  Nothing here needs compiled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]
"""A per-sample shape: ``(C, H, W)`` for images, ``(F,)`` for flat features."""


@dataclass
class Node:
    """One layer after block expansion.

    ``config`` is normalised by the layer type (see ``graph/layers.py``): pairs are tuples
    ``(h, w)``, conv padding is ``((top, bottom), (left, right))``, in/out channels are filled in.
    ``params`` maps a local parameter name (``"weight"``, ``"bias"``, ``"running_mean"``…) to its
    shape; the full name is ``f"{node.name}.{local}"``, as in a PyTorch ``state_dict``.
    """

    name: str
    type: str
    config: dict[str, Any]
    inputs: list[str]
    input_shapes: list[Shape]
    output_shape: Shape
    params: dict[str, Shape] = field(default_factory=dict)
    buffers: dict[str, Shape] = field(default_factory=dict)
    index: int = 0
    line: int | None = None
    layer_name: str | None = None

    def param_names(self) -> list[str]:
        return [f"{self.name}.{local}" for local in self.params]


@dataclass
class Graph:
    """A network's nodes in topological order; the last node is the output.

    ``input`` is the name every first layer reads (``"input"``).  ``training`` is the validated
    ``[training]`` table (or an empty dict), ``source`` the spec's file name when it has one.
    """

    name: str
    input_shape: Shape
    nodes: list[Node]
    training: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    INPUT = "input"

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        """Who reads each tensor (``"input"`` included): where gradients must be summed."""
        readers: dict[str, list[str]] = {self.INPUT: []}
        for n in self.nodes:
            readers.setdefault(n.name, [])
            for i in n.inputs:
                readers.setdefault(i, []).append(n.name)
        return readers
