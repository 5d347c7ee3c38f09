"""Per-layer forward and backward times of a network, as Caffe's ``caffe time`` reports them.

:func:`profile_network` runs one random batch through the network ``repeats`` times after
``warmup`` runs, in training mode and with training's backward (``input_grad=False``: the input
gets no gradient), and returns a :class:`Profile`:

* per graph node, in node order, the median time of its forward and of its backward, each
  timed alone through the ``around`` hook of :meth:`Network.forward` and
  :meth:`Network.backward`;
* the median of whole forward passes and of whole forward + backward passes, run without the
  hook, so they include what lies between the nodes (input checks, freeing activations);
* per conv and transposed-conv node, the algorithm the conv plan ran for each pass at this
  batch and why (``declcnn/ops/conv_plan.py``).

Within a repeat the three kinds of run take turns, so load from other processes falls on all of
them alike.  The gradients are zeroed, untimed, before every backward, as a training step does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DeclcnnError
from ..graph.build import BYTES_PER_VALUE, machine_memory
from ..graph.summary import activation_bytes, parameter_count
from ..threads import get_num_threads
from .network import Network


@dataclass(frozen=True)
class LayerTime:
    """One node's line: ``backward_ms`` is None when no gradient passes through the node (it
    lies before every parameter), ``share`` its part of the sum of all nodes' times;
    ``algorithms`` maps each pass of a conv node (forward, input_grad, weight_grad) to the
    algorithm that ran and why (empty for other nodes)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    forward_ms: float
    backward_ms: float | None
    share: float
    algorithms: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Profile:
    network: str
    input_shape: tuple[int, ...]
    batch_size: int
    threads: int
    repeats: int
    warmup: int
    layers: list[LayerTime]
    forward_ms: float
    forward_backward_ms: float

    @property
    def forward_images_per_second(self) -> float:
        return self.batch_size / (self.forward_ms / 1e3)

    @property
    def images_per_second(self) -> float:
        """Training throughput: images through a whole forward + backward per second."""
        return self.batch_size / (self.forward_backward_ms / 1e3)

    def as_json(self) -> dict:
        result = asdict(self)
        result["forward_images_per_second"] = self.forward_images_per_second
        result["images_per_second"] = self.images_per_second
        return result


def _check_counts(network: Network, batch_size: int, repeats: int, warmup: int) -> None:
    for name, value, least in (("batch size", batch_size, 1), ("repeats", repeats, 1),
                               ("warm-up runs", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise DeclcnnError(f"profile: {name} must be a whole number ≥ {least}; got "
                               f"{value!r}.")
    graph = network.graph
    kept = activation_bytes(graph, batch_size)
    # Backward holds a gradient beside each kept activation; weights have their gradients.
    needed = 2 * kept + 2 * BYTES_PER_VALUE * parameter_count(graph)
    memory = machine_memory()
    if needed > memory:
        per_sample = 2 * activation_bytes(graph, 1)
        largest = max(1, (memory - 2 * BYTES_PER_VALUE * parameter_count(graph)) // per_sample)
        raise DeclcnnError(
            f"batch size {batch_size}: network '{graph.name}' would keep {kept:,} bytes of "
            f"activations for backward and as many again for their gradients, more than this "
            f"machine's {memory:,} bytes of memory; use a batch size of at most about "
            f"{largest:,}.")


def _stopwatch(times: dict[str, list[float]]):
    """An ``around`` hook that adds each node's call time (s) to ``times[node.name]``."""

    def around(node, run, *args):
        start = time.perf_counter()
        result = run(*args)
        times[node.name].append(time.perf_counter() - start)
        return result

    return around


def profile_network(network: Network, batch_size: int = 64, repeats: int = 10,
                    warmup: int = 3, seed: int = 0) -> Profile:
    """Time ``network`` layer by layer on a batch of ``batch_size`` standard-normal inputs with
    a standard-normal output gradient, both drawn from ``seed``.

    The network is put in training mode; its gradients, batch-norm statistics and dropout
    generator change as in training.
    """
    _check_counts(network, batch_size, repeats, warmup)
    graph = network.graph
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *graph.input_shape), dtype=np.float32)
    grad_out = rng.standard_normal((batch_size, *graph.output.output_shape), dtype=np.float32)
    network.train()

    def step(forward_hook=None, backward_hook=None):
        network.zero_grad()
        network.forward(x, around=forward_hook)
        network.backward(grad_out, input_grad=False, around=backward_hook)

    for _ in range(warmup):
        step()
    forward_times = {node.name: [] for node in graph.nodes}
    backward_times = {node.name: [] for node in graph.nodes}
    whole_forward, whole_step = [], []
    for _ in range(repeats):
        step(_stopwatch(forward_times), _stopwatch(backward_times))
        start = time.perf_counter()
        network.forward(x)
        whole_forward.append(time.perf_counter() - start)
        network.zero_grad()  # untimed, as before every backward
        start = time.perf_counter()
        network.forward(x)
        network.backward(grad_out, input_grad=False)
        whole_step.append(time.perf_counter() - start)

    def median_ms(samples):
        return 1e3 * statistics.median(samples) if samples else None

    medians = [(node, median_ms(forward_times[node.name]), median_ms(backward_times[node.name]))
               for node in graph.nodes]
    total = sum(f + (b or 0.0) for _, f, b in medians) or 1.0
    plans = network.algorithms(batch_size)
    layers = [LayerTime(node.name, node.type, (batch_size, *node.output_shape), f, b,
                        (f + (b or 0.0)) / total, plans.get(node.name, {}))
              for node, f, b in medians]
    return Profile(graph.name, tuple(graph.input_shape), batch_size, get_num_threads(), repeats,
                   warmup, layers, median_ms(whole_forward), median_ms(whole_step))
