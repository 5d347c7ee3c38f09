"""ONNX export against onnxruntime: every shipped spec and seeded random specs give declcnn's
output within 1e-4 (relative), at batch 1 and at another batch through a dynamic batch axis.

The random specs are chains with branches (concat, add) drawn from every layer type with odd
sizes, groups, dilations, asymmetric padding, both ceil modes and both count_include_pad
values; ``test_random_specs_cover`` checks that the seeds reach all of that, so that a change
of the generator cannot quietly drop a case.  Every export runs
``onnx.checker.check_model(full_check=True)``, whose shape inference must agree with every
shape declcnn inferred.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_close
from test_specs_torch import RUNS, SPECS

from declcnn.errors import CheckpointError, DeclcnnError, SpecError
from declcnn.graph import LAYER_TYPES, load_graph
from declcnn.runtime import Network, loads

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from declcnn.interchange import EXPORTERS, export_onnx  # noqa: E402

CONVENIENCES = {"pointwise", "depthwise", "separable_conv2d"}


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def with_statistics(net: Network, seed: int = 1) -> Network:
    """Running statistics away from 0 and 1, so that batch norm's inference form shows."""
    rng = np.random.default_rng(seed)
    for value in net.buffers.values():
        value += rng.uniform(0.2, 0.9, value.shape).astype(value.dtype)
    return net.eval()


def check_against_runtime(net: Network, path: Path, batches=(1, 3), what="", seed=0):
    """Export ``net`` with a dynamic batch; run onnxruntime at each batch size on the first
    samples of one batch, and compare with declcnn's output for them (in evaluation mode
    each sample's output is its own, so declcnn runs once, at the largest batch)."""
    export_onnx(net, path, dynamic_batch=True)
    run = session(path)
    x = np.random.default_rng(seed).standard_normal(
        (max(batches), *net.graph.input_shape)).astype(np.float32)
    expected = net.forward(x)
    for batch in batches:
        (actual,) = run.run(None, {"input": x[:batch]})
        assert_close(actual, expected[:batch], f"{what} batch {batch}", rtol=1e-4,
                     atol=1e-4 * max(1e-2, float(np.abs(expected).max())))


# -- the shipped specs -------------------------------------------------------------------------

@pytest.mark.parametrize("run", list(RUNS))
def test_shipped_spec_matches_onnxruntime(run, tmp_path):
    input_shape = RUNS[run][0]
    net = with_statistics(Network(load_graph(SPECS / f"{run.split('@')[0]}.toml", input_shape)))
    check_against_runtime(net, tmp_path / "model.onnx", batches=(1, 2), what=run)


# -- random specs --------------------------------------------------------------------------------

def _pair(rng, low, high):
    a, b = (int(v) for v in rng.integers(low, high + 1, 2))
    return f"[{a},{b}]" if rng.random() < 0.5 else str(a)


KINDS = ["conv2d", "conv_transpose2d", "maxpool2d", "avgpool2d", "batchnorm2d", "relu",
         "sigmoid", "tanh", "leaky_relu", "dropout", "crop", "upsample", "rcl", "depthwise",
         "separable_conv2d", "pointwise", "softmax"]


def _image_layer(rng, channels: int, kind: str | None = None) -> str:
    """The keys of one image layer (after ``type=``), of ``kind`` or a random kind, valid or
    not for the incoming shape: the builder's verdict decides (``random_spec`` draws again on
    a SpecError)."""
    kind = kind or rng.choice(KINDS + ["conv2d", "maxpool2d", "avgpool2d"])
    groups = int(rng.choice([d for d in (1, 2, 3) if channels % d == 0]))
    out = groups * int(rng.integers(1, 4))
    if kind == "conv2d":
        padding = rng.choice([_pair(rng, 0, 2), '"same"', "[[0,1],[2,1]]", "[[1,0],[0,2]]"])
        stride = "1" if padding == '"same"' else _pair(rng, 1, 2)
        return (f'conv2d";out_channels={out};kernel={_pair(rng, 1, 4)};stride={stride};'
                f'padding={padding};dilation={_pair(rng, 1, 2)};groups={groups};'
                f'bias={"true" if rng.random() < 0.7 else "false"}')
    if kind == "conv_transpose2d":
        stride = int(rng.integers(1, 3))
        return (f'conv_transpose2d";out_channels={out};kernel={_pair(rng, 1, 3)};'
                f'stride={stride};padding={_pair(rng, 0, 1)};'
                f'output_padding={stride - 1 if rng.random() < 0.6 else 0};groups={groups};'
                f'dilation={_pair(rng, 1, 2)}')
    if kind in ("maxpool2d", "avgpool2d"):
        kernel = int(rng.integers(1, 4))
        keys = (f'{kind}";kernel={kernel};stride={_pair(rng, 1, 3)};'
                f'padding={int(rng.integers(0, kernel // 2 + 1))};'
                f'ceil_mode={"true" if rng.random() < 0.6 else "false"}')
        if kind == "maxpool2d":
            return keys + f";dilation={_pair(rng, 1, 2)}"
        return keys + f';count_include_pad={"true" if rng.random() < 0.5 else "false"}'
    if kind == "leaky_relu":
        return 'leaky_relu";negative_slope=0.2'
    if kind == "crop":
        return f'crop";size={_pair(rng, 2, 9)}'
    if kind == "upsample":
        return f'upsample";scale={_pair(rng, 1, 2)}'
    if kind == "rcl":
        return (f'rcl";out_channels={int(rng.integers(1, 4))};kernel={_pair(rng, 1, 3)};'
                f'steps={int(rng.integers(1, 3))};bias={"true" if rng.random() < 0.5 else "false"}')
    if kind == "depthwise":
        return (f'depthwise";kernel={_pair(rng, 1, 3)};padding=1;'
                f'multiplier={int(rng.integers(1, 3))}')
    if kind == "separable_conv2d":
        return f'separable_conv2d";out_channels={out};kernel=3;padding="same"'
    if kind == "pointwise":
        return f'pointwise";out_channels={out};groups={groups}'
    if kind == "batchnorm2d":
        return 'batchnorm2d";eps=0.001'
    if kind == "dropout":
        return 'dropout";p=0.3'
    return f'{kind}"'


HEADS = [
    [],
    ['global_avgpool"', 'flatten"', 'linear";out_features=3'],
    ['global_maxpool"', 'flatten"'],
    ['spp";levels=[1,2,3]', 'linear";out_features=4;bias=false', 'softmax"'],
    ['spp";levels=[2,4];pool="avg"', 'dropout";p=0.5'],
    ['flatten"', 'linear";out_features=5', 'relu"', 'linear";out_features=2'],
]


def random_spec(seed: int) -> str:
    """A small random network: image layers, concats and adds of earlier outputs, a head."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 5)), int(rng.integers(5, 14)), int(rng.integers(5, 14)))
    head = f'[network]\nname = "random{seed}"\ninput = {list(shape)}\n'
    layers: list[str] = []
    shapes = {"input": shape}

    def text(extra):
        return head + "".join(f'\n[[layers]]\nname = "{n}"\n' + "\n".join(b.split(";")) + "\n"
                              for n, b in layers + extra)

    def attempt(name, body):
        try:
            graph = load_graph(text([(name, body)]))
        except SpecError:
            return False
        out = graph.output.output_shape  # the new layer's (its last node, for a separable)
        if len(out) == 3 and (max(out[1:]) > 24 or out[0] > 12):
            return False
        layers.append((name, body))
        shapes[name] = out
        return True

    for i in range(int(rng.integers(3, 7))):
        name = f"l{i}"
        images = [n for n, s in shapes.items() if len(s) == 3]
        source = images[-1]
        draw = rng.random()
        if draw < 0.15 and len(images) > 1:
            a, b = rng.choice(images, 2, replace=False)
            if attempt(name, f'type="concat";inputs=["{a}","{b}"];crop=true'):
                continue
        if draw < 0.25:
            same = [n for n in images if shapes[n] == shapes[source] and n != source]
            if same and attempt(name, f'type="add";inputs=["{source}","{same[-1]}"]'):
                continue
        for attempts in range(20):
            # The first layer is of the seed's kind (while it fits), so the seeds cover all.
            kind = KINDS[seed % len(KINDS)] if i == 0 and attempts < 10 else None
            body = f'type="{_image_layer(rng, shapes[source][0], kind)};input="{source}"'
            if attempt(name, body):
                break
    for j, body in enumerate(HEADS[int(rng.integers(len(HEADS)))]):
        if not attempt(f"h{j}", f'type="{body}'):
            break
    return text([])


SEEDS = range(40)


@pytest.fixture(scope="module")
def random_specs():
    return {seed: random_spec(seed) for seed in SEEDS}


def test_random_specs_cover(random_specs):
    """Every layer type, and each variant the brief names, occurs among the seeds."""
    configs: dict[str, list[dict]] = {}
    for text in random_specs.values():
        for node in load_graph(text).nodes:
            configs.setdefault(node.type, []).append(node.config)
    assert set(configs) == set(LAYER_TYPES) - CONVENIENCES
    assert set(EXPORTERS) == set(LAYER_TYPES) - CONVENIENCES

    def seen(kind, test):
        return any(test(c) for c in configs[kind])

    assert seen("conv2d", lambda c: c["groups"] > 1)
    assert seen("conv2d", lambda c: c["dilation"] != (1, 1))
    assert seen("conv2d", lambda c: c["padding"][0][0] != c["padding"][0][1])
    assert seen("conv_transpose2d", lambda c: c["output_padding"] != (0, 0))
    assert seen("conv_transpose2d", lambda c: c["groups"] > 1)
    for kind in ("maxpool2d", "avgpool2d"):
        assert seen(kind, lambda c: c["ceil_mode"]) and seen(kind, lambda c: not c["ceil_mode"])
    assert seen("maxpool2d", lambda c: c["dilation"] != (1, 1))
    assert seen("avgpool2d", lambda c: c["count_include_pad"])
    assert seen("avgpool2d", lambda c: not c["count_include_pad"])
    assert seen("concat", lambda c: c["crop"])
    assert seen("spp", lambda c: c["pool"] == "avg") and seen("spp", lambda c: c["pool"] == "max")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_spec_matches_onnxruntime(seed, random_specs, tmp_path):
    net = with_statistics(loads(random_specs[seed], seed=seed), seed)
    check_against_runtime(net, tmp_path / "model.onnx", what=f"random spec {seed}\n"
                                                            f"{random_specs[seed]}")


# -- pooling where ONNX's rounding differs from PyTorch's --------------------------------------

@pytest.mark.parametrize("layer", [
    'type="maxpool2d";kernel=2;stride=2;padding=1;ceil_mode=true',   # 5 → 3, ONNX's rule 4
    'type="avgpool2d";kernel=2;stride=2;padding=1;ceil_mode=true',
    'type="avgpool2d";kernel=3;stride=[3,2];padding=1;ceil_mode=true;count_include_pad=false',
    'type="maxpool2d";kernel=1;stride=3;ceil_mode=true',
])
def test_ceil_mode_keeps_pytorch_sizes(layer, tmp_path):
    """PyTorch drops a last window that would start in the right padding; ONNX's ceil_mode
    does not, so the exporter writes floor rounding (or slices) where that rule applies."""
    net = loads('[network]\ninput = [2, 5, 7]\n[[layers]]\nname = "p"\n'
                + "\n".join(layer.split(";")) + "\n").eval()
    check_against_runtime(net, tmp_path / "pool.onnx", what=layer)


# -- the model itself ------------------------------------------------------------------------

LENET = SPECS / "lenet.toml"


def test_names_metadata_and_fixed_batch(tmp_path):
    net = Network(load_graph(LENET))
    path = export_onnx(net, tmp_path / "lenet.onnx")
    assert path == tmp_path / "lenet.onnx"
    model = onnx.load(path)
    graph = model.graph
    assert [n.name for n in graph.node] == [n.name for n in net.graph.nodes]
    assert [n.output[0] for n in graph.node] == [n.name for n in net.graph.nodes]
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["fc3"]
    assert {i.name for i in graph.initializer} == set(net.params)
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 28, 28]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["declcnn.spec"] == LENET.read_text()
    assert props["declcnn.input_shape"] == "[1, 28, 28]"
    assert model.opset_import[0].version == 17
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    assert_close(session(path).run(None, {"input": x})[0], net.eval().forward(x), "lenet")
    with pytest.raises(Exception, match="(?i)got invalid dimensions|index: 0"):
        session(path).run(None, {"input": np.concatenate([x, x])})


def test_dynamic_batch_is_symbolic_and_opset_is_chosen(tmp_path):
    path = export_onnx(LENET, tmp_path / "m.onnx", dynamic_batch=True, opset=13)
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 13
    path = export_onnx(LENET, tmp_path / "m.onnx", batch_size=4, opset=21)
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert model.opset_import[0].version == 21


def test_other_input_size(tmp_path):
    """An SPP network at another size: the pools are fixed at that size, the classifier
    unchanged."""
    net = with_statistics(Network(load_graph(SPECS / "spp.toml")))
    path = export_onnx(net, tmp_path / "spp.onnx", input_size=(40, 52))
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 52)).astype(np.float32)
    resized = Network(load_graph(SPECS / "spp.toml", (3, 40, 52)))
    resized.load_state_dict(net.state_dict())
    assert_close(session(path).run(None, {"input": x})[0], resized.eval().forward(x), "spp 40x52")
    with pytest.raises(CheckpointError, match=re.escape(
            "state dict: the tensors do not fit network 'lenet' (" + str(LENET) + "): 1 of "
            "another shape ('fc1.weight' stored (120, 400), the network expects (120, 576)). "
            "Export with the spec the weights were saved from, at the input size they were "
            "trained for.")):
        export_onnx(LENET, tmp_path / "a.onnx", weights=Network(load_graph(LENET)).state_dict(),
                    input_size=(32, 32))


def test_unexportable_layer_is_named(tmp_path, monkeypatch):
    monkeypatch.delitem(EXPORTERS, "rcl")
    with pytest.raises(DeclcnnError) as err:
        export_onnx(SPECS / "rcnn.toml", tmp_path / "r.onnx")
    message = str(err.value)
    assert message.startswith(f"{SPECS / 'rcnn.toml'}: layer 'rcl1' (type 'rcl') cannot be "
                              f"exported to ONNX: declcnn has no ONNX form for this layer type "
                              f"yet (the types it exports: add, avgpool2d, batchnorm2d, ")
    assert message.endswith("Remove or replace the layer to export the network.")
    assert not (tmp_path / "r.onnx").exists()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(DeclcnnError, match=r"ONNX export: opset must be an integer from 13 to "
                                           r"\d+ \(the newest this onnx .* knows\); got 12\."):
        export_onnx(LENET, tmp_path / "m.onnx", opset=12)
    with pytest.raises(DeclcnnError, match=r"batch_size must be an integer ≥ 1; got 0\."):
        export_onnx(LENET, tmp_path / "m.onnx", batch_size=0)
    with pytest.raises(DeclcnnError, match=r"input_size must be \(height, width\)"):
        export_onnx(LENET, tmp_path / "m.onnx", input_size=(0, 3))
    flat = '[network]\ninput = [5]\n[[layers]]\ntype = "linear"\nout_features = 2\n'
    with pytest.raises(DeclcnnError, match=r"takes flat input of 5 features, which has no "
                                           r"height and width; drop input_size \(--input\)\."):
        export_onnx(flat, tmp_path / "m.onnx", input_size=(3, 3))
    with pytest.raises(DeclcnnError, match="export needs a Network, a spec file's path or a "
                                           "spec's text; got int."):
        export_onnx(3, tmp_path / "m.onnx")
