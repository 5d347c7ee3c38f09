"""One node implementation per layer type, registered by the type's name.

A node is the stateful side of an op (Chainer's links): it reads its normalised ``config`` (the
table in docs/ARCHITECTURE.md), initialises its parameters, runs the op forward and keeps what
the op's backward needs until the network's backward has used it.  ``forward(xs)`` gets the list
of input arrays (one per entry of ``node.inputs``); ``backward(grad_y, needs)`` gets the gradient
of the node's output and, per input, whether its gradient is wanted; it adds its parameter
gradients into ``network.grads`` and returns one input gradient (or None) per input.
"""

from __future__ import annotations

import numpy as np

from ..errors import DeclcnnError
from ..ops import activation, conv, linear, norm, pool, resample
from ..shapes import centre_crop_offset, same_padding
from . import init as initialisers

NODE_TYPES: dict[str, type[NodeImpl]] = {}


def register(type_name: str):
    """Class decorator: the node implementation of the layer type ``type_name``."""

    def add(cls):
        NODE_TYPES[type_name] = cls
        return cls

    return add


def make_node(node, network) -> NodeImpl:
    try:
        cls = NODE_TYPES[node.type]
    except KeyError:
        raise DeclcnnError(
            f"layer '{node.name}' has type '{node.type}', which the runtime cannot run; known "
            f"types: {', '.join(sorted(NODE_TYPES))}."
        ) from None
    return cls(node, network)


def _centre_window(shape: tuple[int, ...], target: tuple[int, int]) -> tuple[slice, ...]:
    """The index ``[:, :, top:top+h, left:left+w]`` of a centre crop of an NCHW ``shape``."""
    top = centre_crop_offset(shape[2], target[0])
    left = centre_crop_offset(shape[3], target[1])
    return (slice(None), slice(None), slice(top, top + target[0]), slice(left, left + target[1]))


class NodeImpl:
    """Base of every node: the graph node, its network, and what forward saved for backward.

    Outputs and gradients go into buffers the node keeps (:meth:`buffer`), allocated once per
    batch size and reused: a fresh array per call costs page faults that took a fifth of a
    LeNet training step.  Whatever may still be read after the call returns must not live in
    them: the network's output node (``fresh_output``) allocates its output every call.
    """

    has_params = False
    may_alias_input = False  # forward may return (a view of) its input

    def __init__(self, node, network):
        self.node = node
        self.config = node.config
        self.network = network
        self.saved = None
        self.fresh_output = False
        self._buffers: dict[str, np.ndarray] = {}
        self._full_names: dict[str, str] = {}

    def full_name(self, local: str) -> str:
        name = self._full_names.get(local)
        if name is None:
            name = self._full_names[local] = f"{self.node.name}.{local}"
        return name

    def param(self, local: str) -> np.ndarray:
        return self.network.params[self.full_name(local)]

    def grad(self, local: str) -> np.ndarray:
        """The gradient array of parameter ``local`` that backward adds into."""
        return self.network.grads[self.full_name(local)]

    def add_grad(self, local: str, grad: np.ndarray) -> None:
        self.network.grads[self.full_name(local)] += grad

    def buffer(self, key: str, shape: tuple[int, ...], dtype=None) -> np.ndarray:
        """This node's reusable array ``key`` of ``shape`` (the network's dtype by default),
        reallocated only when the shape (a new batch size) or dtype changes."""
        dtype = self.network.dtype if dtype is None else dtype
        array = self._buffers.get(key)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._buffers[key] = np.empty(shape, dtype)
        return array

    def output(self, shape: tuple[int, ...]) -> np.ndarray:
        """The array forward writes its output into: reused, or new for the output node."""
        if self.fresh_output:
            return np.empty(shape, self.network.dtype)
        return self.buffer("y", shape)

    def inspect(self, xs: list[np.ndarray]) -> np.ndarray:
        """Forward for :meth:`Network.outputs`: this node's own output even where the runtime
        fused it with a neighbour."""
        return self.forward(xs)

    def initialise(self, rng: np.random.Generator) -> None:
        """Create this node's entries in ``network.params`` / ``network.buffers``."""

    def release(self) -> None:
        """Drop what forward saved: backward has used it (or will never run)."""
        self.saved = None

    def forward(self, xs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_y: np.ndarray, needs: list[bool]) -> list[np.ndarray | None]:
        raise NotImplementedError


class _WeightedNode(NodeImpl):
    """A layer whose ``weight`` and optional ``bias`` follow ``init`` (conv, linear)."""

    has_params = True

    def __init__(self, node, network):
        super().__init__(node, network)
        self.has_bias = "bias" in node.params

    def initialise(self, rng):
        weight, bias = initialisers.weight_and_bias(
            rng, self.node.params["weight"], self.node.params.get("bias"),
            self.config.get("init"), self.network.dtype, f"layer '{self.node.name}'")
        self.network.params[self.full_name("weight")] = weight
        if bias is not None:
            self.network.params[self.full_name("bias")] = bias

    def bias(self) -> np.ndarray | None:
        return self.param("bias") if self.has_bias else None

    def add_weight_grads(self, grad_w, grad_b) -> None:
        self.add_grad("weight", grad_w)
        if self.has_bias:
            self.add_grad("bias", grad_b)


class _Conv(_WeightedNode):
    """Runs its layer's :class:`~declcnn.ops.conv.ConvPlan`, made when the graph is built."""

    plan: conv.ConvPlan

    def forward(self, xs):
        (x,) = xs
        self.saved = x
        y = self.output((x.shape[0], *self.plan.output_shape))
        self.plan.forward(x, self.param("weight"), self.bias(), y)
        return y

    def backward(self, grad_y, needs):
        x, weight = self.saved, self.param("weight")
        grad_x = self.buffer("grad_x", x.shape) if needs[0] else None
        grad_w = self.buffer("grad_weight", weight.shape)
        grad_b = self.buffer("grad_bias", (grad_y.shape[1],)) if self.has_bias else None
        self.plan.backward(grad_y, x, weight, grad_x, grad_w, grad_b)
        self.add_weight_grads(grad_w, grad_b)
        return [grad_x]

    def algorithms(self, batch: int) -> dict[str, tuple[str, str]]:
        """Per pass, the algorithm the conv plan runs at ``batch`` and why."""
        return self.plan.chosen(batch)


@register("conv2d")
class Conv2d(_Conv):
    """``y = W ⋆ x + b`` (cross-correlation), PyTorch's ``Conv2d``."""

    def __init__(self, node, network):
        super().__init__(node, network)
        c = self.config
        self.plan = conv.ConvPlan.conv2d(node.input_shapes[0], node.params["weight"],
                                         c["stride"], c["padding"], c["dilation"], c["groups"])


@register("conv_transpose2d")
class ConvTranspose2d(_Conv):
    """The adjoint of ``conv2d`` in its input, plus a bias: PyTorch's ``ConvTranspose2d``."""

    def __init__(self, node, network):
        super().__init__(node, network)
        c = self.config
        self.plan = conv.ConvPlan.conv_transpose2d(
            node.input_shapes[0], node.params["weight"], c["stride"], c["padding"],
            c["output_padding"], c["groups"], c["dilation"])


@register("linear")
class Linear(_WeightedNode):
    """``y = x Wᵀ + b`` on ``N × F``."""

    relu_after = False  # set by the network: apply the relu that alone reads the output

    def __init__(self, node, network):
        super().__init__(node, network)
        self.plan = linear.LinearPlan(self.config["in_features"], self.config["out_features"])

    def forward(self, xs):
        (x,) = xs
        self.saved = x
        y = self.output((x.shape[0], self.plan.out_features))
        self.plan.forward(x, self.param("weight"), self.bias(), y, self.relu_after)
        return y

    def inspect(self, xs):
        (x,) = xs
        y = np.empty((x.shape[0], self.plan.out_features), self.network.dtype)
        self.plan.forward(x, self.param("weight"), self.bias(), y)
        return y

    def backward(self, grad_y, needs):
        x = self.saved
        grad_x = self.buffer("grad_x", x.shape) if needs[0] else None
        # The GEMMs add the weight and bias gradients straight into the network's.
        self.plan.backward(grad_y, x, self.param("weight"), grad_x, self.grad("weight"),
                           self.grad("bias") if self.has_bias else None)
        return [grad_x]


@register("maxpool2d")
class MaxPool2d(NodeImpl):
    """Window maxima; backward routes each gradient to its window's winner (saved indices).

    With ``relu_before`` (set by the network when a relu's only reader is this pool) the pool
    also applies that relu, after pooling: ``max(relu(x)) = relu(max(x))``, on a quarter of the
    values for a 2×2 pool.  The gradient is the same too: where a window's maximum is > 0 both
    route to the same first maximum, and elsewhere both give 0.
    """

    relu_before = False

    def __init__(self, node, network):
        super().__init__(node, network)
        c = self.config
        # The graph checked the window against the input's shape: this cannot fail.
        self.plan = pool.MaxPool2dPlan(node.input_shapes[0], c["kernel"], c["stride"],
                                       c["padding"], c["dilation"], c["ceil_mode"])

    def forward(self, xs):
        (x,) = xs
        shape = (x.shape[0], *self.plan.output_shape)
        y = self.output(shape)
        indices = None
        if self.network.training or not self.plan.indices_optional:
            indices = self.buffer("indices", shape, np.int64)
        self.plan.forward(x, y, indices, self.relu_before)
        self.saved = (indices, x, y)
        return y

    def backward(self, grad_y, needs):
        indices, x, y = self.saved
        if indices is None:
            # An evaluation-mode forward skipped the indices; find them again (the input is
            # the forward's, which nothing overwrites before the next forward).
            indices = self.buffer("indices", y.shape, np.int64)
            self.plan.forward(x, self.buffer("y_again", y.shape), indices, self.relu_before)
        grad_x = self.buffer("grad_x", x.shape)
        self.plan.backward(grad_y, indices, grad_x, y if self.relu_before else None)
        return [grad_x]


@register("avgpool2d")
class AvgPool2d(NodeImpl):
    """Window means; backward spreads each gradient over its window (only the shape is kept)."""

    def _window(self):
        c = self.config
        return c["kernel"], c["stride"], c["padding"], c["ceil_mode"], c["count_include_pad"]

    def forward(self, xs):
        (x,) = xs
        self.saved = x.shape
        return pool.avg_pool2d(x, *self._window())

    def backward(self, grad_y, needs):
        return [pool.avg_pool2d_backward(grad_y, self.saved, *self._window())]


@register("global_avgpool")
class GlobalAvgPool(NodeImpl):
    """Mean over each plane: adaptive average pooling to 1×1."""

    def forward(self, xs):
        (x,) = xs
        self.saved = x.shape
        return pool.adaptive_avg_pool2d(x, 1)

    def backward(self, grad_y, needs):
        return [pool.adaptive_avg_pool2d_backward(grad_y, self.saved)]


@register("global_maxpool")
class GlobalMaxPool(NodeImpl):
    """Max over each plane: adaptive max pooling to 1×1."""

    def forward(self, xs):
        (x,) = xs
        y, indices = pool.adaptive_max_pool2d(x, 1)
        self.saved = (indices, x.shape)
        return y

    def backward(self, grad_y, needs):
        indices, shape = self.saved
        return [pool.adaptive_max_pool2d_backward(grad_y, indices, shape)]


@register("spp")
class SpatialPyramidPool(NodeImpl):
    """He et al.'s spatial pyramid pooling: adaptive pooling to ``l × l`` for each level ``l``,
    each flattened (channel-major, as ``flatten``) and concatenated in level order.

    Shape: ``(N, C, H, W) → (N, C·Σ l²)``.
    """

    def forward(self, xs):
        (x,) = xs
        n = x.shape[0]
        is_max = self.config["pool"] == "max"
        pieces, saved = [], []
        for level in self.config["levels"]:
            if is_max:
                y, indices = pool.adaptive_max_pool2d(x, level)
            else:
                y, indices = pool.adaptive_avg_pool2d(x, level), None
            pieces.append(y.reshape(n, -1))
            saved.append((y.shape, indices))
        self.saved = (x.shape, saved)
        return np.concatenate(pieces, axis=1)

    def backward(self, grad_y, needs):
        shape, saved = self.saved
        grad_x, start = None, 0
        for level_shape, indices in saved:
            size = int(np.prod(level_shape[1:]))
            g = np.ascontiguousarray(grad_y[:, start:start + size]).reshape(level_shape)
            start += size
            if indices is None:
                part = pool.adaptive_avg_pool2d_backward(g, shape)
            else:
                part = pool.adaptive_max_pool2d_backward(g, indices, shape)
            grad_x = part if grad_x is None else np.add(grad_x, part, out=grad_x)
        return [grad_x]


@register("flatten")
class Flatten(NodeImpl):
    """``(N, C, H, W) → (N, C·H·W)`` in C order, as ``torch.flatten(x, 1)``."""

    may_alias_input = True

    def forward(self, xs):
        (x,) = xs
        self.saved = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_y, needs):
        return [grad_y.reshape(self.saved)]


class _Elementwise(NodeImpl):
    """An activation whose backward reads its input (``by_output`` False) or its output."""

    by_output = False

    def forward(self, xs):
        (x,) = xs
        y = self.apply(x, self.output(x.shape))
        self.saved = y if self.by_output else x
        return y

    def backward(self, grad_y, needs):
        return [self.derive(grad_y, self.saved, self.buffer("grad_x", grad_y.shape))]


@register("relu")
class ReLU(_Elementwise):
    """``max(x, 0)``.  Backward reads the output (``y > 0`` exactly where ``x > 0``), so the
    network may let relu overwrite its input (``in_place``: the input's only reader, made by a
    layer whose backward does not read its output), let the linear layer that makes its input
    apply it (``applied_before``: forward passes through, backward as usual), or fold it into
    the max pool that is its only reader (``fused``: forward and backward pass through; see
    :class:`MaxPool2d`)."""

    by_output = True
    in_place = False
    applied_before = False
    fused = False

    @property
    def may_alias_input(self):
        return self.in_place or self.fused or self.applied_before

    def forward(self, xs):
        if self.fused:
            return xs[0]
        if not (self.in_place or self.applied_before):
            return super().forward(xs)
        (x,) = xs
        if self.in_place:
            activation.relu_into(x, x)
        self.saved = x
        return x

    def backward(self, grad_y, needs):
        return [grad_y] if self.fused else super().backward(grad_y, needs)

    def inspect(self, xs):
        return activation.relu(xs[0])

    def apply(self, x, out):
        activation.relu_into(x, out)
        return out

    def derive(self, grad_y, y, out):
        activation.relu_backward_into(grad_y, y, out)
        return out


@register("leaky_relu")
class LeakyReLU(_Elementwise):
    def apply(self, x, out):
        return activation.leaky_relu(x, self.config["negative_slope"], out=out)

    def derive(self, grad_y, x, out):
        return activation.leaky_relu_backward(grad_y, x, self.config["negative_slope"], out=out)


@register("sigmoid")
class Sigmoid(_Elementwise):
    by_output = True

    def apply(self, x, out):
        return activation.sigmoid(x, out=out)

    def derive(self, grad_y, y, out):
        return activation.sigmoid_backward(grad_y, y, out=out)


@register("tanh")
class Tanh(_Elementwise):
    by_output = True

    def apply(self, x, out):
        return activation.tanh(x, out=out)

    def derive(self, grad_y, y, out):
        return activation.tanh_backward(grad_y, y, out=out)


@register("softmax")
class Softmax(_Elementwise):
    """Softmax over the channel (feature) axis 1."""

    by_output = True

    def apply(self, x, out):
        return activation.softmax(x, axis=1, out=out)

    def derive(self, grad_y, y, out):
        return activation.softmax_backward(grad_y, y, axis=1)


@register("dropout")
class Dropout(NodeImpl):
    """In training, zero each value with probability ``p`` and scale the rest by ``1/(1−p)``
    (inverted dropout, as PyTorch), drawing from the network's dropout generator; in
    evaluation, the identity."""

    may_alias_input = True

    def forward(self, xs):
        (x,) = xs
        p = self.config["p"]
        if not self.network.training or p == 0:
            self.saved = None
            return x
        y, mask = norm.dropout(x, p, self.network.dropout_rng)
        self.saved = mask
        return y

    def backward(self, grad_y, needs):
        if self.saved is None:
            return [grad_y]
        return [norm.dropout_backward(grad_y, self.saved, self.config["p"])]


@register("batchnorm2d")
class BatchNorm2d(NodeImpl):
    """``y = (x − μ)/√(σ² + eps)·γ + β`` per channel: batch statistics (and a running-average
    update with ``momentum``) in training, the running statistics in evaluation."""

    has_params = True

    def initialise(self, rng):
        dtype = self.network.dtype
        channels = self.node.params["weight"]
        self.network.params[self.full_name("weight")] = np.ones(channels, dtype)
        self.network.params[self.full_name("bias")] = np.zeros(channels, dtype)
        self.network.buffers[self.full_name("running_mean")] = np.zeros(channels, dtype)
        self.network.buffers[self.full_name("running_var")] = np.ones(channels, dtype)

    def forward(self, xs):
        (x,) = xs
        buffers = self.network.buffers
        y, self.saved = norm.batch_norm2d(
            x, self.param("weight"), self.param("bias"), buffers[self.full_name("running_mean")],
            buffers[self.full_name("running_var")], self.network.training,
            self.config["momentum"], self.config["eps"])
        return y

    def backward(self, grad_y, needs):
        grad_x, grad_w, grad_b = norm.batch_norm2d_backward(grad_y, self.saved)
        self.add_grad("weight", grad_w)
        self.add_grad("bias", grad_b)
        return [grad_x]


@register("concat")
class Concat(NodeImpl):
    """Join along channels; with ``crop``, each input is first centre-cropped to the output's
    height and width (U-Net's skip connections)."""

    def forward(self, xs):
        size = self.node.output_shape[1:]
        if self.config.get("crop"):
            xs = [x[_centre_window(x.shape, size)] for x in xs]
        return np.concatenate(xs, axis=1)

    def backward(self, grad_y, needs):
        grads, start = [], 0
        size = self.node.output_shape[1:]
        for need, in_shape in zip(needs, self.node.input_shapes, strict=True):
            channels = in_shape[0]
            part = grad_y[:, start:start + channels]
            start += channels
            if not need:
                grads.append(None)
                continue
            if in_shape[1:] == size:
                grads.append(np.ascontiguousarray(part))
            else:
                grad_x = np.zeros((grad_y.shape[0], *in_shape), grad_y.dtype)
                grad_x[_centre_window(grad_x.shape, size)] = part
                grads.append(grad_x)
        return grads


@register("add")
class Add(NodeImpl):
    """Elementwise sum of equal-shaped inputs (residual connections)."""

    def forward(self, xs):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y

    def backward(self, grad_y, needs):
        return [grad_y if need else None for need in needs]


@register("crop")
class Crop(NodeImpl):
    """Centre crop to ``size``: keep rows ``[(H−h)//2, (H−h)//2 + h)``, columns likewise."""

    may_alias_input = True  # a crop to the whole size is the input itself

    def forward(self, xs):
        (x,) = xs
        return np.ascontiguousarray(x[_centre_window(x.shape, self.config["size"])])

    def backward(self, grad_y, needs):
        grad_x = np.zeros((grad_y.shape[0], *self.node.input_shapes[0]), grad_y.dtype)
        grad_x[_centre_window(grad_x.shape, self.config["size"])] = grad_y
        return [grad_x]


@register("upsample")
class Upsample(NodeImpl):
    """Nearest-neighbour upsampling by integer factors ``(sh, sw)``."""

    def forward(self, xs):
        (x,) = xs
        return resample.upsample_nearest2d(x, self.config["scale"])

    def backward(self, grad_y, needs):
        return [resample.upsample_nearest2d_backward(grad_y, self.config["scale"])]


@register("rcl")
class RecurrentConv(NodeImpl):
    """Liang & Hu's recurrent convolutional layer, unrolled for ``steps``:
    ``f = W_ff ⋆ u + b``, ``s₀ = relu(f)``, ``s_t = relu(f + W_rec ⋆ s_{t−1})``; output
    ``s_steps``.  Both convolutions are stride 1 with "same" padding; ``W_rec`` is shared by all
    steps, so backpropagation through time sums its gradient over the steps.

    Shape: ``(N, in_channels, H, W) → (N, out_channels, H, W)``.
    """

    has_params = True

    def __init__(self, node, network):
        super().__init__(node, network)
        self.has_bias = "feedforward.bias" in node.params
        kh, kw = self.config["kernel"]
        self.padding = (same_padding(kh, 1), same_padding(kw, 1))

    def initialise(self, rng):
        params, dtype = self.node.params, self.network.dtype
        init, where = self.config.get("init"), f"layer '{self.node.name}'"
        weight, bias = initialisers.weight_and_bias(
            rng, params["feedforward.weight"], params.get("feedforward.bias"), init, dtype, where)
        recurrent, _ = initialisers.weight_and_bias(
            rng, params["recurrent.weight"], None, init, dtype, where)
        self.network.params[self.full_name("feedforward.weight")] = weight
        if bias is not None:
            self.network.params[self.full_name("feedforward.bias")] = bias
        self.network.params[self.full_name("recurrent.weight")] = recurrent

    def forward(self, xs):
        (u,) = xs
        bias = self.param("feedforward.bias") if self.has_bias else None
        feedforward = conv.conv2d(u, self.param("feedforward.weight"), bias, 1, self.padding)
        recurrent = self.param("recurrent.weight")
        states = [activation.relu(feedforward)]
        for _ in range(self.config["steps"]):
            z = conv.conv2d(states[-1], recurrent, None, 1, self.padding)
            states.append(activation.relu(np.add(z, feedforward, out=z)))
        self.saved = (u, states)
        return states[-1]

    def backward(self, grad_y, needs):
        u, states = self.saved
        recurrent = self.param("recurrent.weight")
        grad_state = grad_y
        grad_feedforward = None
        for t in range(len(states) - 1, -1, -1):
            # relu'(z_t) is 1 exactly where s_t = relu(z_t) > 0, so s_t stands in for z_t.
            grad_z = activation.relu_backward(grad_state, states[t])
            grad_feedforward = (grad_z if grad_feedforward is None
                                else np.add(grad_feedforward, grad_z, out=grad_feedforward))
            if t == 0:
                break
            grad_state, grad_rec, _ = conv.conv2d_backward(
                grad_z, states[t - 1], recurrent, 1, self.padding, has_bias=False)
            self.add_grad("recurrent.weight", grad_rec)
        grad_u, grad_w, grad_b = conv.conv2d_backward(
            grad_feedforward, u, self.param("feedforward.weight"), 1, self.padding,
            needs_input_grad=needs[0], has_bias=self.has_bias)
        self.add_grad("feedforward.weight", grad_w)
        if self.has_bias:
            self.add_grad("feedforward.bias", grad_b)
        return [grad_u]
