"""A compiled network: a Graph's nodes with parameters, run forward and backward.

``Network(graph, seed=0)`` creates one node implementation per graph node (``nodes.py``),
initialises the parameters from ``seed`` in node order, and keeps

* ``params`` and ``grads``: name → array, names as in a PyTorch ``state_dict``
  (``conv1.weight``, ``block.bn.bias``); ``backward`` adds into ``grads`` (as PyTorch
  accumulates into ``.grad``) until ``zero_grad()``;
* ``buffers``: batch norm's running statistics.

As a ``torch.nn.Module``, a new network is in training mode (dropout active, batch norm on
batch statistics); ``eval()`` switches both off.  Optimisers must update ``params`` in place or
by assigning new arrays to its keys: nodes look their parameters up on every call.

The arrays of ``params`` are views into one flat array, in order, and so are those of
``grads``: ``zero_grad`` is one fill, and an optimiser can update every parameter in one
vectorised pass (``train/optimizers.py`` does when it finds them so).  Activations and
gradients live in buffers each node reuses from batch to batch; what ``forward`` and
``backward`` return is the caller's own.  A relu that only a max pool reads is folded into the
pool; one that alone reads a linear layer's output is applied by that layer's kernel; one that
alone reads a conv or batch-norm output overwrites it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ..errors import CheckpointError, DeclcnnError, ShapeError
from ..graph.graph import Graph, Node
from ..graph.summary import format_summary
from .nodes import Linear, MaxPool2d, ReLU, make_node

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Layers whose backward reads neither their output nor anything sharing its memory: a relu may
# overwrite their output in place.
_OVERWRITABLE = frozenset({"conv2d", "conv_transpose2d", "batchnorm2d"})

NodeCall = Callable[..., object]
"""``around(node, run, *args)`` runs one node's step as ``run(*args)`` and returns its result."""


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Network:
    """A runnable network over ``graph``; ``dtype`` float64 is for finite-difference checks."""

    def __init__(self, graph: Graph, seed: int = 0, dtype=np.float32):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise DeclcnnError(f"Network: dtype must be float32 or float64; got {self.dtype}.")
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._nodes = [make_node(node, self) for node in graph.nodes]
        init_rng = np.random.default_rng(init_seed)
        for impl in self._nodes:
            impl.initialise(init_rng)
        self._flat_params = _flatten(self.params, self.dtype)
        self.grads = {name: np.zeros_like(value) for name, value in self.params.items()}
        self._flat_grads = _flatten(self.grads, self.dtype)
        self.dropout_rng = np.random.default_rng(dropout_seed)
        self.training = True
        consumers = graph.consumers()
        self._requires_grad: dict[bool, dict[str, bool]] = {}
        self._output_shape: tuple[int, ...] | None = None
        self._plan_in_place(consumers)
        self._schedule = self._make_schedule()

    def _plan_in_place(self, consumers: dict[str, list[str]]) -> None:
        """Mark the output node to allocate its output every call, and the relus that can fold
        into a max pool or overwrite their input."""
        by_name = {impl.node.name: impl for impl in self._nodes}
        output = by_name[self.graph.output.name]
        output.fresh_output = True
        for impl in self._nodes:
            if not isinstance(impl, ReLU) or impl is output:
                continue
            readers = consumers[impl.node.name]
            source = impl.node.inputs[0]
            if len(readers) == 1 and isinstance(by_name[readers[0]], MaxPool2d):
                impl.fused = True
                by_name[readers[0]].relu_before = True
            elif source == Graph.INPUT or len(consumers[source]) != 1:
                continue
            elif isinstance(by_name[source], Linear):
                impl.applied_before = True
                by_name[source].relu_after = True
            elif by_name[source].node.type in _OVERWRITABLE:
                impl.in_place = True
        self._copy_output = output.may_alias_input

    def _make_schedule(self):
        """Per node: (impl, indices of its inputs in the value list, indices freed after it).

        Slot 0 is the input, slot i + 1 node i's output; a value is freed after its last
        reader has run (reused buffers stay with their nodes; this frees the rest)."""
        slot = {Graph.INPUT: 0}
        for i, impl in enumerate(self._nodes):
            slot[impl.node.name] = i + 1
        last_reader = {}
        for i, impl in enumerate(self._nodes):
            for name in impl.node.inputs:
                last_reader[name] = i
        schedule = []
        for i, impl in enumerate(self._nodes):
            frees = tuple(sorted({slot[name] for name in impl.node.inputs
                                  if last_reader[name] == i and name != self.graph.output.name}))
            schedule.append((impl, tuple(slot[name] for name in impl.node.inputs), frees))
        return schedule

    # -- modes and parameters -------------------------------------------------------------

    def train(self) -> Network:
        self.training = True
        return self

    def eval(self) -> Network:
        self.training = False
        return self

    def zero_grad(self) -> None:
        self._flat_grads.fill(0)
        for grad in self.grads.values():
            if grad.base is not self._flat_grads:  # replaced by the caller
                grad.fill(0)

    def summary(self, batch_size: int = 1) -> str:
        """The layer table of ``graph/summary.py``: shapes, parameters, multiply-adds."""
        return format_summary(self.graph, batch_size)

    def algorithms(self, batch_size: int = 1) -> dict[str, dict[str, tuple[str, str]]]:
        """Per conv and transposed-conv layer, the algorithm of each pass (forward, input_grad,
        weight_grad) at ``batch_size`` and why: the choices of ``declcnn/ops/conv_plan.py``."""
        return {impl.node.name: impl.algorithms(batch_size) for impl in self._nodes
                if hasattr(impl, "algorithms")}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, by name, in node order."""
        state = {name: value.copy() for name, value in self.params.items()}
        state.update((name, value.copy()) for name, value in self.buffers.items())
        return state

    def load_state_dict(self, state) -> None:
        """Copy ``state`` (name → array) into the parameters and buffers, all or nothing.

        Every name must be present, none extra, and each shape equal to the network's; values
        are converted to the network's dtype.
        """
        where = self._where()
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"{where}: load_state_dict needs a mapping of parameter names to arrays (as "
                f"state_dict() returns); got {type(state).__name__}."
            )
        expected = {**self.params, **self.buffers}
        missing = [name for name in expected if name not in state]
        unexpected = [name for name in state if name not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{_count(missing)} of the network's missing from it "
                             f"({_names(missing)})")
            if unexpected:
                parts.append(f"{_count(unexpected)} in it that the network lacks "
                             f"({_names(unexpected)})")
            raise CheckpointError(
                f"{where}: the checkpoint does not fit the network: "
                f"{' and '.join(parts)}. It was saved from a different spec: load it into the "
                f"network built from that spec, or retrain with this one."
            )
        arrays = {}
        for name, target in expected.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise CheckpointError(
                    f"{where}: parameter '{name}' is stored with shape "
                    f"{_shape_text(value.shape)} but the network expects "
                    f"{_shape_text(target.shape)}. The checkpoint was saved from a spec whose "
                    f"layer differs; use that spec, or retrain with this one."
                )
            if not (np.issubdtype(value.dtype, np.floating)
                    or np.issubdtype(value.dtype, np.integer)):
                raise CheckpointError(
                    f"{where}: parameter '{name}' is stored as {value.dtype}, not numbers; the "
                    f"checkpoint is corrupt or not a declcnn state dict."
                )
            arrays[name] = value
        for name, value in arrays.items():
            np.copyto(expected[name], value, casting="unsafe")

    # -- running ---------------------------------------------------------------------------

    def _where(self) -> str:
        graph = self.graph
        return f"network '{graph.name}'" + (f" ({graph.source})" if graph.source else "")

    def _check_input(self, x) -> np.ndarray:
        """Check dtype, rank and per-sample shape once; convert float64 / strided input."""
        expected = tuple(self.graph.input_shape)
        if (type(x) is np.ndarray and x.dtype == self.dtype and x.shape[1:] == expected
                and x.flags.c_contiguous):
            return x
        wanted = _shape_text(("N", *expected))
        if not isinstance(x, np.ndarray):
            raise ShapeError(
                f"{self._where()} expects a numpy array of shape {wanted}; got "
                f"{type(x).__name__}. Convert it with np.asarray(x, dtype=np.float32)."
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ShapeError(
                f"{self._where()} expects floating-point input of shape {wanted}; got a "
                f"{x.dtype} array. Convert it with x.astype(np.float32) (scaling bytes to "
                f"[0, 1] first if these are images)."
            )
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            hint = ("Add the batch axis with x[None] for a single sample."
                    if tuple(x.shape) == expected else
                    "Resize the data to the spec's [network] input, or change that input in "
                    "the spec.")
            raise ShapeError(
                f"{self._where()} expects input of shape {wanted}, i.e. "
                f"{_shape_text(expected)} per sample; got an array of shape "
                f"{_shape_text(x.shape)}. {hint}"
            )
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x: np.ndarray, *, around: NodeCall | None = None) -> np.ndarray:
        """Run the network on a batch ``x`` of shape ``(N, *graph.input_shape)``.

        Each node keeps what its backward needs until :meth:`backward`; an intermediate
        activation is dropped as soon as its last reader has run.  ``around``, when given, runs
        every node's forward as ``around(node, run, xs)`` and must return ``run(xs)`` (a
        profiler times each call; ``runtime/profile.py``).
        """
        values = [self._check_input(x)] + [None] * len(self._nodes)
        self._output_shape = None  # a forward that fails part-way leaves nothing to backward
        for i, (impl, inputs, frees) in enumerate(self._schedule, 1):
            xs = [values[j] for j in inputs]
            values[i] = impl.forward(xs) if around is None else around(impl.node, impl.forward,
                                                                       xs)
            for j in frees:
                values[j] = None
        output = values[len(self._nodes)]
        if self._copy_output:
            output = output.copy()
        self._output_shape = output.shape
        return output

    def outputs(self, x: np.ndarray) -> Iterator[tuple[Node, np.ndarray]]:
        """Run ``x`` node by node, yielding each graph node with its output, for inspection
        (the first non-finite layer, feature maps).  Runs in the current mode, as
        :meth:`forward` (in training, batch norm updates its running statistics), and keeps
        every output but no state for backward."""
        values = {Graph.INPUT: self._check_input(x)}
        self._output_shape = None
        for impl in self._nodes:
            node = impl.node
            values[node.name] = impl.inspect([values[name] for name in node.inputs])
            impl.release()
            # A copy: later layers may overwrite the node's buffer (in place, or next call).
            yield node, values[node.name].copy()

    def _requires(self, input_grad: bool) -> dict[str, bool]:
        """Per tensor: does its gradient reach a parameter (or the input when asked)?"""
        if input_grad not in self._requires_grad:
            requires = {Graph.INPUT: input_grad}
            for impl in self._nodes:
                requires[impl.node.name] = impl.has_params or any(
                    requires[name] for name in impl.node.inputs)
            self._requires_grad[input_grad] = requires
        return self._requires_grad[input_grad]

    def backward(self, grad_out: np.ndarray, input_grad: bool = True, *,
                 around: NodeCall | None = None) -> np.ndarray | None:
        """Backpropagate ``grad_out`` (∂loss/∂output) from the last :meth:`forward`.

        Adds every parameter's gradient into ``grads``; returns ∂loss/∂input, or None with
        ``input_grad=False`` (then no layer computes a gradient nobody needs).  Where a tensor
        feeds several layers, their gradients are summed.  A forward's saved state is freed
        node by node, so one forward allows one backward.  ``around`` is as in
        :meth:`forward`, called as ``around(node, run, grad_y, needs)`` for each node whose
        backward runs (a node no gradient passes through is skipped).
        """
        if self._output_shape is None:
            raise DeclcnnError(
                f"{self._where()}: backward needs the state of a forward pass, and there is "
                f"none (backward already ran for the last forward, or forward never ran). "
                f"Call forward(x) before each backward."
            )
        if not isinstance(grad_out, np.ndarray) or grad_out.shape != self._output_shape:
            got = (_shape_text(grad_out.shape) if isinstance(grad_out, np.ndarray)
                   else type(grad_out).__name__)
            raise ShapeError(
                f"{self._where()}: grad_out must have the shape of the last forward's output, "
                f"{_shape_text(self._output_shape)}; got {got}."
            )
        self._output_shape = None
        requires = self._requires(input_grad)
        grads = {self.graph.output.name: np.ascontiguousarray(grad_out, dtype=self.dtype)}
        owned: set[str] = set()
        for impl in reversed(self._nodes):
            node = impl.node
            grad_y = grads.pop(node.name, None)
            if grad_y is None or not requires[node.name]:
                impl.release()
                continue
            needs = [requires[name] for name in node.inputs]
            grad_inputs = (impl.backward(grad_y, needs) if around is None
                           else around(node, impl.backward, grad_y, needs))
            impl.release()
            for name, need, grad in zip(node.inputs, needs, grad_inputs, strict=True):
                if not need:
                    continue
                if name not in grads:
                    grads[name] = grad
                elif name in owned:
                    grads[name] += grad
                else:
                    # The first gradient may be shared (add passes grad_y to all its inputs):
                    # sum into a new array, then accumulate in place.
                    grads[name] = grads[name] + grad
                    owned.add(name)
        if not input_grad:
            return None
        grad_input = grads.get(Graph.INPUT)
        # The caller's own array, not a layer's reused buffer (nor grad_out itself).
        return None if grad_input is None else np.array(grad_input, copy=True)


def _flatten(arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Copy ``arrays`` into one flat array, in order, and replace each by its view there."""
    flat = np.empty(sum(a.size for a in arrays.values()), dtype)
    views = flat_views(flat, arrays)
    for name, view in views.items():
        view[...] = arrays[name]
    arrays.update(views)
    return flat


def flat_views(flat: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``flat`` cut into consecutive views shaped as the arrays of ``like``, in order."""
    views, offset = {}, 0
    for name, array in like.items():
        views[name] = flat[offset:offset + array.size].reshape(array.shape)
        offset += array.size
    return views


def _count(names: list[str]) -> str:
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
