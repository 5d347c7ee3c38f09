"""Compiled networks: ``Network`` over a Graph, and ``load`` / ``loads`` from a spec."""

from __future__ import annotations

from ..graph import build_graph, load_graph
from ..spec import parse_spec
from .network import Network


def load(path, seed: int = 0, input_shape: tuple[int, ...] | None = None) -> Network:
    """The network of the spec file at ``path``, parameters initialised from ``seed``;
    ``input_shape`` replaces the spec's input (a fully convolutional or SPP network runs at any
    size)."""
    return Network(load_graph(path, input_shape), seed=seed)


def loads(text: str, seed: int = 0, input_shape: tuple[int, ...] | None = None) -> Network:
    """The network of the spec ``text`` (the contents of a spec file), as :func:`load`."""
    return Network(build_graph(parse_spec(text), input_shape), seed=seed)


__all__ = ["Network", "load", "loads"]
