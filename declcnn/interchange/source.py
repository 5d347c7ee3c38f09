"""What an export reads: a graph, its tensors by name, the spec's text, the input normalisation.

``resolve(model, weights, input_size)`` accepts a ``Network``, a spec file's path or a spec's
text, and weights from a checkpoint path or a state dict.  ``fit_state`` is the one strict
comparison of tensors with a graph's parameters and buffers that export and import share: every
missing, unexpected and mis-shaped tensor is listed in one message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DeclcnnError
from ..graph import Graph, build_graph
from ..spec import dumps, parse_spec


@dataclass
class ModelSource:
    """A graph with a float32 tensor for each of its parameters and buffers."""

    graph: Graph
    state: dict[str, np.ndarray]
    spec_text: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


def expected_tensors(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of ``graph`` by state-dict name, with its shape."""
    shapes = {}
    for node in graph.nodes:
        for local, shape in {**node.params, **node.buffers}.items():
            shapes[f"{node.name}.{local}"] = tuple(shape)
    return shapes


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _listed(names, tensors) -> str:
    return ", ".join(f"'{n}' {_shape(tensors[n])}" for n in names)


def fit_state(graph: Graph, tensors: Mapping[str, np.ndarray], where: str,
              fix: str) -> dict[str, np.ndarray]:
    """``tensors`` as float32 arrays in the graph's order, when they are exactly its parameters
    and buffers; otherwise one ``CheckpointError`` listing every missing, unexpected and
    mis-shaped tensor with its shapes, then ``fix``."""
    expected = expected_tensors(graph)
    shapes = {name: tuple(np.shape(value)) for name, value in tensors.items()}
    missing = [n for n in expected if n not in shapes]
    unexpected = [n for n in shapes if n not in expected]
    misshaped = [n for n in expected if n in shapes and shapes[n] != expected[n]]
    not_numbers = [n for n in expected if n in shapes and not _numeric(tensors[n])]
    if missing or unexpected or misshaped or not_numbers:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (the network's {_listed(missing, expected)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (the file's "
                         f"{_listed(unexpected, shapes)})")
        if misshaped:
            parts.append(f"{len(misshaped)} of another shape (" + ", ".join(
                f"'{n}' stored {_shape(shapes[n])}, the network expects {_shape(expected[n])}"
                for n in misshaped) + ")")
        if not_numbers:
            parts.append(f"{len(not_numbers)} not numbers (" + ", ".join(
                f"'{n}' of {np.asarray(tensors[n]).dtype}" for n in not_numbers) + ")")
        origin = f" ({graph.source})" if graph.source else ""
        raise CheckpointError(f"{where}: the tensors do not fit network '{graph.name}'{origin}: "
                              f"{'; '.join(parts)}. {fix}")
    return {n: np.ascontiguousarray(tensors[n], dtype=np.float32) for n in expected}


def _numeric(value) -> bool:
    dtype = np.asarray(value).dtype
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def spec_text_of(graph: Graph) -> str:
    """The spec file's text when the graph was read from one, else the spec rebuilt from the
    graph's document (blocks and all)."""
    if graph.source:
        try:
            return Path(graph.source).read_text(encoding="utf-8")
        except OSError:
            pass
    return dumps(graph.spec)


def read_spec_text(model) -> tuple[str, str | None]:
    """(text, file) of a spec given as a path or as its text."""
    if isinstance(model, str) and "\n" in model:
        return model, None
    path = Path(model)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as err:
        raise DeclcnnError(f"{path}: cannot read the spec ({err.strerror}); check the "
                           f"path.") from None


def _input_shape(graph: Graph, input_size) -> tuple[int, ...] | None:
    """The graph's input with height and width ``input_size``, or None to keep it."""
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                 for d in size):
        raise DeclcnnError(f"input_size must be (height, width), whole numbers ≥ 1; got "
                           f"{input_size!r}.")
    if len(graph.input_shape) != 3:
        raise DeclcnnError(f"network '{graph.name}' takes flat input of "
                           f"{graph.input_shape[0]} features, which has no height and width; "
                           f"drop input_size (--input).")
    return None if size == graph.input_shape[1:] else (graph.input_shape[0], *size)


def resolve(model, weights=None, input_size=None, seed: int = 0) -> ModelSource:
    """The graph and tensors to export.

    ``model``: a ``Network`` (its graph and current tensors), a spec path or a spec's text.
    ``weights``: None, a checkpoint path or a state dict (name → array), which replaces the
    network's tensors.  ``input_size``: ``(H, W)`` to rebuild the graph at.
    """
    mean = std = None
    if isinstance(model, (str, Path)):
        text, file = read_spec_text(model)
        graph = build_graph(parse_spec(text, file))
        state = None
    elif hasattr(model, "graph") and hasattr(model, "state_dict"):
        graph, state = model.graph, model.state_dict()
        text, file = spec_text_of(graph), graph.source
    else:
        raise DeclcnnError(f"export needs a Network, a spec file's path or a spec's text; got "
                           f"{type(model).__name__}.")
    resized = _input_shape(graph, input_size)
    if resized is not None:
        graph = build_graph(parse_spec(text, file), resized)
    where = "state dict"
    if isinstance(weights, (str, Path)):
        from ..train.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(weights)
        state, where = {**checkpoint.params, **checkpoint.buffers}, str(weights)
        mean, std = checkpoint.mean, checkpoint.std
    elif isinstance(weights, Mapping):
        state = weights
    elif weights is not None:
        raise DeclcnnError(f"weights must be a checkpoint path or a state dict (name → array); "
                           f"got {type(weights).__name__}.")
    if state is None:
        from ..runtime import Network

        state = Network(graph, seed=seed).state_dict()
        where = f"the initial parameters (seed {seed})"
    state = fit_state(graph, state, where, "Export with the spec the weights were saved from, "
                                           "at the input size they were trained for.")
    return ModelSource(graph, state, text, mean, std)
