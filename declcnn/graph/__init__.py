"""Layer graphs: the registry of layer types, graph building with shape inference, summaries."""

from .build import build_graph, load_graph
from .graph import Graph, Node
from .layers import LAYER_TYPES

__all__ = ["LAYER_TYPES", "Graph", "Node", "build_graph", "load_graph"]
