"""A network as a standard ONNX model: every layer type onto ONNX operators, weights as
initializers named as in the state dict.

``export_onnx(model, path)`` writes the model of a ``Network``, a spec file or a spec's text,
in inference form (batch norm on its running statistics, dropout removed), and returns the
path.  The ``onnx`` package is needed only here (``pip install "declcnn[onnx]"``).

Names: the graph's input is ``input``, each layer's output value and its main ONNX node carry the
layer's (node's) name (``layer2a.conv1``), the output is the last layer's; helper values a layer
needs (a crop's offsets, an RCL's steps) are ``LAYER/what``, which no spec name can collide with
(spec names never contain ``/``).  The spec's text goes into ``metadata_props`` under
``declcnn.spec``.

Each layer type has one exporter, registered by its name as the runtime registers its nodes; a
type without one is refused with a message that names the layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..errors import DeclcnnError
from ..graph.graph import Graph, Node
from ..shapes import adaptive_bin, centre_crop_offset, same_padding
from .source import ModelSource, resolve

DEFAULT_OPSET = 17
MIN_OPSET = 13
"""Softmax over one axis, Resize without a region of interest and Slice from inputs: opset 13."""

INSTALL = 'pip install "declcnn[onnx]"'


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DeclcnnError(f"ONNX export needs the onnx package, which is not installed; "
                           f"install it with: {INSTALL}") from None
    return onnx


# -- the model being built -------------------------------------------------------------------

@dataclass
class _Model:
    """Nodes, initializers and value shapes of the ONNX graph under construction."""

    onnx: object
    graph: Graph
    state: dict[str, np.ndarray]
    opset: int
    batch: int | str
    nodes: list = field(default_factory=list)
    initializers: dict[str, object] = field(default_factory=dict)
    value_shapes: dict[str, tuple] = field(default_factory=dict)

    def weight(self, node: Node, local: str) -> str:
        """The initializer of the node's parameter or buffer ``local``, named as in the state
        dict."""
        name = f"{node.name}.{local}"
        if name not in self.initializers:
            array = np.ascontiguousarray(self.state[name], dtype=np.float32)
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def constant(self, name: str, values, dtype=np.int64) -> str:
        """An initializer holding ``values`` (Slice's starts, Resize's scales)."""
        array = np.asarray(values, dtype=dtype)
        self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: list[str], output: str, shape: tuple, name=None,
           **attributes) -> str:
        """Append one ONNX node writing ``output`` (per-sample ``shape``)."""
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output],
                                                     name=name or output, **attributes))
        self.value_shapes[output] = tuple(shape)
        return output


Exporter = Callable[[_Model, Node, list[str]], str]
"""``export(model, node, inputs) -> output value``: adds the node's ONNX nodes, named after it."""

EXPORTERS: dict[str, Exporter] = {}


def exports(*type_names: str):
    """Decorator: the exporter of the layer types ``type_names``."""

    def add(func):
        for name in type_names:
            EXPORTERS[name] = func
        return func

    return add


def _pads(pairs) -> list[int]:
    """``((top, bottom), (left, right))`` → ONNX's ``[top, left, bottom, right]``."""
    (top, bottom), (left, right) = pairs
    return [top, left, bottom, right]


def _symmetric(padding) -> list[int]:
    ph, pw = padding
    return [ph, pw, ph, pw]


# -- convolutions ----------------------------------------------------------------------------

def _weight_and_bias(m: _Model, node: Node, prefix: str = "") -> list[str]:
    """The initializers ``PREFIXweight`` and, when the layer has one, ``PREFIXbias``."""
    names = [m.weight(node, f"{prefix}weight")]
    if node.config["bias"]:
        names.append(m.weight(node, f"{prefix}bias"))
    return names


@exports("conv2d")
def _conv2d(m: _Model, node: Node, inputs: list[str]) -> str:
    c = node.config
    return m.op("Conv", inputs + _weight_and_bias(m, node), node.name, node.output_shape,
                kernel_shape=list(c["kernel"]), strides=list(c["stride"]),
                pads=_pads(c["padding"]), dilations=list(c["dilation"]), group=c["groups"])


@exports("conv_transpose2d")
def _conv_transpose2d(m: _Model, node: Node, inputs: list[str]) -> str:
    c = node.config
    return m.op("ConvTranspose", inputs + _weight_and_bias(m, node), node.name, node.output_shape,
                kernel_shape=list(c["kernel"]), strides=list(c["stride"]),
                pads=_symmetric(c["padding"]), output_padding=list(c["output_padding"]),
                dilations=list(c["dilation"]), group=c["groups"])


@exports("rcl")
def _rcl(m: _Model, node: Node, inputs: list[str]) -> str:
    """Unrolled as declcnn runs it: ``f = ff(u)``, ``s0 = relu(f)``, ``s_t = relu(rec(s_{t−1})
    + f)``; the recurrent weight is one initializer that every step reads."""
    c, shape = node.config, node.output_shape
    same = [same_padding(k, 1) for k in c["kernel"]]
    conv = dict(kernel_shape=list(c["kernel"]), strides=[1, 1], pads=_pads(same),
                dilations=[1, 1], group=1)
    f = m.op("Conv", inputs + _weight_and_bias(m, node, "feedforward."),
             f"{node.name}/feedforward", shape, **conv)
    steps = c["steps"]  # ≥ 1
    state = m.op("Relu", [f], f"{node.name}/state0", shape)
    recurrent = m.weight(node, "recurrent.weight")
    for t in range(1, steps + 1):
        z = m.op("Conv", [state, recurrent], f"{node.name}/recurrent{t}", shape, **conv)
        z = m.op("Add", [z, f], f"{node.name}/sum{t}", shape)
        state = m.op("Relu", [z], node.name if t == steps else f"{node.name}/state{t}", shape)
    return state


# -- pooling ---------------------------------------------------------------------------------

def _pool(m: _Model, node: Node, inputs: list[str], op_type: str, **attributes) -> str:
    """A pooling node with declcnn's (PyTorch's) output size.

    ONNX's ``ceil_mode`` rounds up without PyTorch's rule that the last window must start
    inside the input or its left padding.  Where that rule drops a window, PyTorch's size is
    the floor size, whose windows are the same: so ``ceil_mode`` is written only where some
    axis needs it, and an axis for which ONNX would then give one window more is sliced back.
    """
    c = node.config
    dilation = c.get("dilation", (1, 1))
    spans = [n + 2 * p - d * (k - 1) - 1 for n, k, p, d in
             zip(node.input_shapes[0][1:], c["kernel"], c["padding"], dilation, strict=True)]
    floor = [span // s + 1 for span, s in zip(spans, c["stride"], strict=True)]
    target = list(node.output_shape[1:])
    ceil_mode = floor != target
    sizes = [-(-span // s) + 1 for span, s in zip(spans, c["stride"], strict=True)] \
        if ceil_mode else floor
    output = node.name if sizes == target else f"{node.name}/pool"
    m.op(op_type, inputs, output, (node.output_shape[0], *sizes), name=node.name,
         kernel_shape=list(c["kernel"]), strides=list(c["stride"]),
         pads=_symmetric(c["padding"]), ceil_mode=int(ceil_mode), **attributes)
    if output == node.name:
        return output
    axes = [a + 2 for a in range(2) if sizes[a] != target[a]]
    return _slice(m, output, axes, [0] * len(axes), [target[a - 2] for a in axes],
                  node.name, node.output_shape, name=f"{node.name}/trim")


@exports("maxpool2d")
def _maxpool2d(m: _Model, node: Node, inputs: list[str]) -> str:
    return _pool(m, node, inputs, "MaxPool", dilations=list(node.config["dilation"]))


@exports("avgpool2d")
def _avgpool2d(m: _Model, node: Node, inputs: list[str]) -> str:
    """``count_include_pad`` is always written: ONNX's default (0) is not PyTorch's (true)."""
    return _pool(m, node, inputs, "AveragePool",
                 count_include_pad=int(node.config["count_include_pad"]))


@exports("global_avgpool")
def _global_avgpool(m: _Model, node: Node, inputs: list[str]) -> str:
    return m.op("GlobalAveragePool", inputs, node.name, node.output_shape)


@exports("global_maxpool")
def _global_maxpool(m: _Model, node: Node, inputs: list[str]) -> str:
    return m.op("GlobalMaxPool", inputs, node.name, node.output_shape)


def _uniform_bins(size: int, level: int) -> tuple[int, int] | None:
    """(kernel, stride) of a plain pool whose windows are the adaptive bins of ``size`` into
    ``level``, or None when the bins are not all one size at one spacing."""
    bins = [adaptive_bin(i, size, level) for i in range(level)]
    kernels = {end - start for start, end in bins}
    steps = {b[0] - a[0] for a, b in pairwise(bins)}
    if len(kernels) != 1 or len(steps) > 1:
        return None
    kernel = kernels.pop()
    step = steps.pop() if steps else kernel
    return (kernel, step) if step > 0 else None  # a plane smaller than the level repeats bins


@exports("spp")
def _spp(m: _Model, node: Node, inputs: list[str]) -> str:
    """Each level's adaptive bins at the exported size become fixed pools: one pool where both
    axes' bins are uniform, else per axis a pool (uniform) or one Slice and pool per bin joined
    by a Concat; then Flatten, and a Concat of the levels.  Max and mean over a bin are
    separable, so pooling the axes one after the other is exact."""
    c = node.config
    channels, height, width = node.input_shapes[0]
    op_type = "MaxPool" if c["pool"] == "max" else "AveragePool"
    extra = {} if c["pool"] == "max" else {"count_include_pad": 0}
    flats = []

    def pool(source, kernel, stride, output, shape):
        return m.op(op_type, [source], output, shape, kernel_shape=list(kernel),
                    strides=list(stride), pads=[0, 0, 0, 0], **extra)

    for level in c["levels"]:
        stem = f"{node.name}/level{level}"
        uniform = [_uniform_bins(height, level), _uniform_bins(width, level)]
        if all(uniform):
            value = pool(inputs[0], [u[0] for u in uniform], [u[1] for u in uniform], stem,
                         (channels, level, level))
        else:
            value, shape = inputs[0], [channels, height, width]
            for axis, (size, bins) in enumerate(zip((height, width), uniform, strict=True)):
                ones, shape[axis + 1] = [1, 1], level
                if bins is not None:
                    kernel, stride = list(ones), list(ones)
                    kernel[axis], stride[axis] = bins
                    value = pool(value, kernel, stride, f"{stem}/axis{axis}", tuple(shape))
                    continue
                parts = []
                for i in range(level):
                    start, end = adaptive_bin(i, size, level)
                    piece_shape = list(shape)
                    piece_shape[axis + 1] = end - start
                    piece = _slice(m, value, [axis + 2], [start], [end],
                                   f"{stem}/axis{axis}/bin{i}/slice", tuple(piece_shape))
                    kernel = list(ones)
                    kernel[axis] = end - start
                    piece_shape[axis + 1] = 1
                    parts.append(pool(piece, kernel, ones, f"{stem}/axis{axis}/bin{i}",
                                      tuple(piece_shape)))
                value = m.op("Concat", parts, f"{stem}/axis{axis}", tuple(shape),
                             axis=axis + 2)
        flats.append(m.op("Flatten", [value], f"{stem}/flat", (channels * level * level,),
                          axis=1))
    return m.op("Concat", flats, node.name, node.output_shape, axis=1)


# -- shape changes ---------------------------------------------------------------------------

def _slice(m: _Model, source: str, axes, starts, ends, output: str, shape, name=None) -> str:
    """``source[..., start:end, ...]`` on ``axes``; the constants are named after the node."""
    name = name or output
    inputs = [source, m.constant(f"{name}/starts", starts), m.constant(f"{name}/ends", ends),
              m.constant(f"{name}/axes", axes)]
    return m.op("Slice", inputs, output, shape, name=name)


def _centre_crop(m: _Model, source: str, in_shape, size, output: str) -> str:
    """Slice of rows and columns ``[offset, offset + size)``, the offsets of ``crop``."""
    starts = [centre_crop_offset(n, s) for n, s in zip(in_shape[1:], size, strict=True)]
    ends = [b + s for b, s in zip(starts, size, strict=True)]
    return _slice(m, source, [2, 3], starts, ends, output, (in_shape[0], *size))


@exports("crop")
def _crop(m: _Model, node: Node, inputs: list[str]) -> str:
    return _centre_crop(m, inputs[0], node.input_shapes[0], node.config["size"], node.name)


@exports("concat")
def _concat(m: _Model, node: Node, inputs: list[str]) -> str:
    size = node.output_shape[1:]
    parts = [value if shape[1:] == size else
             _centre_crop(m, value, shape, size, f"{node.name}/crop{i}")
             for i, (value, shape) in enumerate(zip(inputs, node.input_shapes, strict=True))]
    return m.op("Concat", parts, node.name, node.output_shape, axis=1)


@exports("add")
def _add(m: _Model, node: Node, inputs: list[str]) -> str:
    """A chain of Adds in input order (declcnn's summation order)."""
    total = inputs[0]
    for i, value in enumerate(inputs[1:], 1):
        last = i == len(inputs) - 1
        total = m.op("Add", [total, value], node.name if last else f"{node.name}/sum{i}",
                     node.output_shape)
    return total


@exports("upsample")
def _upsample(m: _Model, node: Node, inputs: list[str]) -> str:
    """Nearest neighbour by integer factors: ``y[i] = x[floor(i / s)]`` is Resize's
    "asymmetric" coordinates with "floor" rounding."""
    scales = m.constant(f"{node.name}/scales", [1, 1, *node.config["scale"]], np.float32)
    return m.op("Resize", [inputs[0], "", scales], node.name, node.output_shape, mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@exports("flatten")
def _flatten(m: _Model, node: Node, inputs: list[str]) -> str:
    return m.op("Flatten", inputs, node.name, node.output_shape, axis=1)


@exports("linear")
def _linear(m: _Model, node: Node, inputs: list[str]) -> str:
    return m.op("Gemm", inputs + _weight_and_bias(m, node), node.name, node.output_shape, transB=1)


# -- element-wise ----------------------------------------------------------------------------

def _unary(op_type: str, **attributes) -> Exporter:
    def export(m: _Model, node: Node, inputs: list[str]) -> str:
        values = {k: v(node.config) if callable(v) else v for k, v in attributes.items()}
        return m.op(op_type, inputs, node.name, node.output_shape, **values)

    return export


for _type, _op, _attributes in [
    ("relu", "Relu", {}), ("sigmoid", "Sigmoid", {}), ("tanh", "Tanh", {}),
    ("softmax", "Softmax", {"axis": 1}),
    ("leaky_relu", "LeakyRelu", {"alpha": lambda c: c["negative_slope"]}),
]:
    exports(_type)(_unary(_op, **_attributes))


@exports("dropout")
def _dropout(m: _Model, node: Node, inputs: list[str]) -> str:
    """Inference form: the identity, so no node at all; readers read the input."""
    return inputs[0]


@exports("batchnorm2d")
def _batchnorm2d(m: _Model, node: Node, inputs: list[str]) -> str:
    names = [m.weight(node, k) for k in ("weight", "bias", "running_mean", "running_var")]
    return m.op("BatchNormalization", inputs + names, node.name, node.output_shape,
                epsilon=node.config["eps"], momentum=1 - node.config["momentum"])


# -- the model -------------------------------------------------------------------------------

def _check_opset(onnx, opset) -> int:
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise DeclcnnError(f"ONNX export: opset must be an integer from {MIN_OPSET} to {latest} "
                           f"(the newest this onnx {onnx.__version__} knows); got {opset!r}. "
                           f"The default, {DEFAULT_OPSET}, runs on onnxruntime 1.12 and later.")
    return opset


def _value_info(onnx, name: str, batch, shape) -> object:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [batch, *shape])


def build_model(source: ModelSource, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                batch_size: int = 1):
    """The ``onnx.ModelProto`` of a resolved model (see :func:`export_onnx`)."""
    onnx = _onnx()
    opset = _check_opset(onnx, opset)
    graph = source.graph
    batch = "batch" if dynamic_batch else batch_size
    m = _Model(onnx, graph, source.state, opset, batch)
    values = {Graph.INPUT: Graph.INPUT}
    for node in graph.nodes:
        exporter = EXPORTERS.get(node.type)
        if exporter is None:
            where = f"{graph.source}: " if graph.source else ""
            raise DeclcnnError(
                f"{where}layer '{node.name}' (type '{node.type}') cannot be exported to ONNX: "
                f"declcnn has no ONNX form for this layer type yet (the types it exports: "
                f"{', '.join(sorted(EXPORTERS))}). Remove or replace the layer to export the "
                f"network.")
        values[node.name] = exporter(m, node, [values[name] for name in node.inputs])
    output = values[graph.output.name]
    if output != graph.output.name:  # the last layer was removed (a dropout): name the output
        output = m.op("Identity", [output], graph.output.name, graph.output.output_shape)
    m.value_shapes.pop(output)
    inner = [_value_info(onnx, name, batch, shape) for name, shape in m.value_shapes.items()]
    onnx_graph = onnx.helper.make_graph(
        m.nodes, graph.name or "declcnn",
        [_value_info(onnx, Graph.INPUT, batch, graph.input_shape)],
        [_value_info(onnx, output, batch, graph.output.output_shape)],
        initializer=list(m.initializers.values()), value_info=inner,
        doc_string=f"declcnn network '{graph.name}', input {list(graph.input_shape)}")
    opsets = [onnx.helper.make_opsetid("", opset)]
    from .. import __version__

    model = onnx.helper.make_model(
        onnx_graph, opset_imports=opsets, producer_name="declcnn", producer_version=__version__,
        ir_version=onnx.helper.find_min_ir_version_for(opsets))
    metadata = {"declcnn.spec": source.spec_text,
                "declcnn.input_shape": json.dumps(list(graph.input_shape))}
    if source.mean is not None:
        metadata["declcnn.input_mean"] = json.dumps([float(v) for v in source.mean])
        metadata["declcnn.input_std"] = json.dumps([float(v) for v in source.std])
    onnx.helper.set_model_props(model, metadata)
    return model


def export_onnx(model, path, *, weights=None, opset: int = DEFAULT_OPSET, input_size=None,
                dynamic_batch: bool = False, batch_size: int = 1, seed: int = 0,
                check: bool = True) -> Path:
    """Write ``model`` as an ONNX file at ``path``; returns the path.

    ``model``: a ``Network`` (its current parameters), a spec file's path or a spec's text.
    ``weights``: a checkpoint path (``.npz`` written by ``declcnn train`` or
    ``declcnn import-weights``) or a state dict to export instead; without either, a spec's
    network is exported with its initial parameters from ``seed``.  ``input_size``: ``(H, W)``
    to export at instead of the spec's input (a fully convolutional or SPP network).
    ``dynamic_batch``: the batch axis is the symbolic ``batch``; otherwise it is
    ``batch_size``.  ``check`` runs ``onnx.checker.check_model(full_check=True)``, which also
    infers every shape and compares it with declcnn's.

    The model is the network in inference form: batch norm uses its running statistics,
    dropout is the identity.  Its input is the normalised input the network takes; a
    checkpoint's normalisation is stored in the metadata (``declcnn.input_mean``,
    ``declcnn.input_std``, per channel, on inputs scaled to [0, 1]).

    >>> import declcnn, tempfile, os                              # doctest: +SKIP
    >>> net = declcnn.load("specs/lenet.toml")                    # doctest: +SKIP
    >>> declcnn.export_onnx(net, "lenet.onnx", dynamic_batch=True)  # doctest: +SKIP
    PosixPath('lenet.onnx')
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DeclcnnError(f"ONNX export: batch_size must be an integer ≥ 1; got "
                           f"{batch_size!r}.")
    onnx = _onnx()
    source = resolve(model, weights, input_size, seed)
    proto = build_model(source, opset, dynamic_batch, batch_size)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(proto.SerializeToString())
    except OSError as err:
        raise DeclcnnError(f"{path}: cannot write the ONNX model ({err.strerror}); check the "
                           f"path.") from None
    return path
