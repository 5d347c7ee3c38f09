"""Graph building: shapes per layer type (vs shapes.py and vs torch), every problem's message,
several problems in one run, the summary, and the check/summary commands."""

from __future__ import annotations

import math
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
from click.testing import CliRunner
from oracle import torch_or_skip

from declcnn import shapes
from declcnn.cli import main
from declcnn.errors import Problem, ShapeError, SpecError
from declcnn.graph import LAYER_TYPES, build_graph, load_graph
from declcnn.graph import build as build_module
from declcnn.graph.layers import INIT_CHOICES, infer_shape
from declcnn.graph.summary import activation_bytes, format_summary, multiply_adds, parameter_count
from declcnn.spec import parse_spec
from declcnn.spec.model import LayerEntry, ParsedSpec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def spec(layers: str, input_shape="[3, 8, 8]") -> str:
    """A spec's text: two [network] lines, then ``layers`` (so its line k is the file's k + 2)."""
    return f"[network]\ninput = {input_shape}\n" + dedent(layers).lstrip("\n")


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        build_graph(parse_spec(text, "net.toml"))
    return [str(p) for p in caught.value.problems]


def build(text: str):
    return build_graph(parse_spec(text, "net.toml"))


# -- shapes vs shapes.py ---------------------------------------------------------------------

def test_conv2d_node_uses_the_shapes_formulas_and_normalises_its_config():
    graph = build(spec("""
        [[layers]]
        name = "c"
        type = "conv2d"
        out_channels = 9
        kernel = [3, 4]
        stride = [2, 1]
        padding = [[1, 0], [2, 1]]
        dilation = 2
        groups = 3
        bias = false
        init = "kaiming_normal"
        """, "[6, 17, 13]"))
    node = graph.node("c")
    assert node.config == {"in_channels": 6, "out_channels": 9, "kernel": (3, 4),
                           "stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (2, 2),
                           "groups": 3, "bias": False, "init": "kaiming_normal"}
    assert node.output_shape == (9, shapes.conv_output_size(17, 3, 2, 1, 0, 2),
                                 shapes.conv_output_size(13, 4, 1, 2, 1, 2))
    assert node.params == {"weight": (9, 2, 3, 4)}
    assert (node.inputs, node.input_shapes, node.line, node.layer_name) == (
        ["input"], [(6, 17, 13)], 3, "c")


def test_same_padding_is_resolved_with_the_shapes_helper():
    node = build(spec("""
        [[layers]]
        name = "c"
        type = "conv2d"
        out_channels = 2
        kernel = 4
        dilation = [1, 3]
        padding = "same"
        """)).node("c")
    assert node.config["padding"] == (shapes.same_padding(4, 1), shapes.same_padding(4, 3))
    assert node.output_shape == (2, 8, 8)


# Normalised config keys per node type, as docs/ARCHITECTURE.md's table lists them.
CONFIG_KEYS = {
    "conv2d": {"in_channels", "out_channels", "kernel", "stride", "padding", "dilation", "groups",
               "bias", "init"},
    "conv_transpose2d": {"in_channels", "out_channels", "kernel", "stride", "padding",
                         "output_padding", "dilation", "groups", "bias", "init"},
    "maxpool2d": {"kernel", "stride", "padding", "dilation", "ceil_mode"},
    "avgpool2d": {"kernel", "stride", "padding", "ceil_mode", "count_include_pad"},
    "global_avgpool": set(), "global_maxpool": set(), "spp": {"levels", "pool"},
    "flatten": set(), "linear": {"in_features", "out_features", "bias", "init"},
    "relu": set(), "sigmoid": set(), "tanh": set(), "softmax": set(),
    "leaky_relu": {"negative_slope"}, "dropout": {"p"},
    "batchnorm2d": {"num_features", "eps", "momentum"}, "concat": {"crop"}, "add": set(),
    "crop": {"size"}, "upsample": {"scale"},
    "rcl": {"in_channels", "out_channels", "kernel", "steps", "bias", "init"},
}

ALL_TYPES = spec("""
    [[layers]]
    name = "conv"
    type = "conv2d"
    out_channels = 8
    kernel = 3
    padding = 1
    [[layers]]
    name = "pw"
    type = "pointwise"
    out_channels = 8
    [[layers]]
    name = "dw"
    type = "depthwise"
    kernel = 3
    padding = 1
    multiplier = 2
    [[layers]]
    name = "sep"
    type = "separable_conv2d"
    out_channels = 8
    kernel = 3
    padding = 1
    [[layers]]
    name = "up"
    type = "conv_transpose2d"
    out_channels = 4
    kernel = 2
    stride = 2
    [[layers]]
    name = "max"
    type = "maxpool2d"
    kernel = 2
    [[layers]]
    name = "avg"
    type = "avgpool2d"
    kernel = 3
    stride = 1
    padding = 1
    [[layers]]
    name = "bn"
    type = "batchnorm2d"
    [[layers]]
    name = "rcl"
    type = "rcl"
    out_channels = 6
    kernel = 3
    steps = 2
    [[layers]]
    name = "ups"
    type = "upsample"
    scale = [1, 2]
    [[layers]]
    name = "crop"
    type = "crop"
    size = [6, 8]
    [[layers]]
    name = "cat"
    type = "concat"
    inputs = ["crop", "bn"]
    crop = true
    [[layers]]
    name = "add"
    type = "add"
    inputs = ["cat", "cat"]
    [[layers]]
    name = "lrelu"
    type = "leaky_relu"
    negative_slope = 0.2
    [[layers]]
    name = "sig"
    type = "sigmoid"
    [[layers]]
    name = "tanh"
    type = "tanh"
    [[layers]]
    name = "soft"
    type = "softmax"
    [[layers]]
    name = "gmax"
    type = "global_maxpool"
    input = "add"
    [[layers]]
    name = "gavg"
    type = "global_avgpool"
    input = "add"
    [[layers]]
    name = "spp"
    type = "spp"
    input = "add"
    levels = [1, 2]
    pool = "avg"
    [[layers]]
    name = "drop"
    type = "dropout"
    p = 0.25
    [[layers]]
    name = "relu"
    type = "relu"
    [[layers]]
    name = "flat"
    type = "flatten"
    input = "gavg"
    [[layers]]
    name = "fc"
    type = "linear"
    out_features = 3
    """)


def test_every_layer_type_builds_with_the_documented_config_and_shapes():
    graph = build(ALL_TYPES)
    assert {n.type for n in graph.nodes} | {"pointwise", "depthwise", "separable_conv2d"} == set(
        LAYER_TYPES)
    for node in graph.nodes:
        assert set(node.config) == CONFIG_KEYS[node.type], node.name
    shape = {n.name: n.output_shape for n in graph.nodes}
    assert shape == {
        "conv": (8, 8, 8), "pw": (8, 8, 8), "dw": (16, 8, 8), "sep.depthwise": (16, 8, 8),
        "sep.pointwise": (8, 8, 8), "up": (4, 16, 16), "max": (4, 8, 8), "avg": (4, 8, 8),
        "bn": (4, 8, 8), "rcl": (6, 8, 8), "ups": (6, 8, 16), "crop": (6, 6, 8),
        "cat": (10, 6, 8), "add": (10, 6, 8), "lrelu": (10, 6, 8), "sig": (10, 6, 8),
        "tanh": (10, 6, 8), "soft": (10, 6, 8), "gmax": (10, 1, 1), "gavg": (10, 1, 1),
        "spp": (10 * (1 + 4),), "drop": (50,), "relu": (50,), "flat": (10,), "fc": (3,)}
    params = {n.name: n.params for n in graph.nodes if n.params}
    assert params == {
        "conv": {"weight": (8, 3, 3, 3), "bias": (8,)},
        "pw": {"weight": (8, 8, 1, 1), "bias": (8,)},
        "dw": {"weight": (16, 1, 3, 3), "bias": (16,)},
        "sep.depthwise": {"weight": (16, 1, 3, 3), "bias": (16,)},
        "sep.pointwise": {"weight": (8, 16, 1, 1), "bias": (8,)},
        "up": {"weight": (8, 4, 2, 2), "bias": (4,)},
        "bn": {"weight": (4,), "bias": (4,)},
        "rcl": {"feedforward.weight": (6, 4, 3, 3), "feedforward.bias": (6,),
                "recurrent.weight": (6, 6, 3, 3)},
        "fc": {"weight": (3, 10), "bias": (3,)}}
    assert graph.node("bn").buffers == {"running_mean": (4,), "running_var": (4,)}
    assert graph.node("dw").config["groups"] == 8
    assert graph.node("sep.depthwise").config["groups"] == 16
    # The separable layer's name stands for its pointwise node.
    assert graph.node("up").inputs == ["sep.pointwise"]
    assert graph.node("sep.pointwise").inputs == ["sep.depthwise"]
    assert {n.layer_name for n in graph.nodes if n.name.startswith("sep")} == {"sep"}
    assert graph.node("max").config["stride"] == (2, 2)  # stride defaults to the kernel
    assert graph.node("lrelu").config == {"negative_slope": 0.2}
    assert graph.node("bn").config == {"num_features": 4, "eps": 1e-5, "momentum": 0.1}
    assert graph.node("rcl").config["init"] in INIT_CHOICES


def test_topological_order_follows_inputs_not_file_order():
    entries = [LayerEntry(0, "b", "relu", {}, ["a"], line=3),
               LayerEntry(1, "a", "flatten", {}, ["input"], line=6)]
    graph = build_graph(ParsedSpec(None, "net", (2, 3, 3), entries))
    assert [n.name for n in graph.nodes] == ["a", "b"]
    assert graph.output.output_shape == (18,)


# -- shapes vs torch -------------------------------------------------------------------------

def _torch_shape(function, *args):
    """Output shape of a torch call (batch dimension dropped), or None when torch rejects it.

    An empty output counts as a rejection: torch's transposed convolution returns one where its
    convolution raises, and declcnn refuses both (a layer must leave at least one pixel).
    """
    try:
        shape = tuple(function(*args).shape[1:])
    except RuntimeError:
        return None
    return shape if 0 not in shape else None


def _our_shape(type_name, *shapes_in, **keys):
    try:
        return infer_shape(type_name, *shapes_in, **keys)
    except ShapeError:
        return None


def _sweep(seed, count):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield lambda low, high, rng=rng: [int(v) for v in rng.integers(low, high + 1, 2)]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_shapes_agree_with_torch_on_a_sweep():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    agreed = rejected = 0
    for pick in _sweep(1, 150):
        groups = int(rng.integers(1, 4))
        channels, out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        size, kernel, stride = pick(1, 12), pick(1, 4), pick(1, 3)
        padding, dilation = pick(0, 2), pick(1, 2)
        if rng.random() < 0.2:
            stride, padding = [1, 1], "same"
        x = torch.zeros(1, channels, *size)
        w = torch.zeros(out, channels // groups, *kernel)
        expected = _torch_shape(F.conv2d, x, w, None, stride, padding, dilation, groups)
        got = _our_shape("conv2d", (channels, *size), out_channels=out, kernel=kernel,
                         stride=stride, padding=padding, dilation=dilation, groups=groups)
        assert got == expected, (size, kernel, stride, padding, dilation, groups)
        agreed += expected is not None
        rejected += expected is None
    assert agreed > 40 and rejected > 10


def test_uneven_conv_padding_agrees_with_torch_pad_then_conv():
    torch = torch_or_skip()
    F = torch.nn.functional
    for pick in _sweep(2, 40):
        (top, bottom), (left, right) = pick(0, 3), pick(0, 3)
        size, kernel, stride = pick(1, 9), pick(1, 4), pick(1, 3)
        x = F.pad(torch.zeros(1, 2, *size), (left, right, top, bottom))
        expected = _torch_shape(F.conv2d, x, torch.zeros(3, 2, *kernel), None, stride)
        got = _our_shape("conv2d", (2, *size), out_channels=3, kernel=kernel, stride=stride,
                         padding=[[top, bottom], [left, right]])
        assert got == expected


def test_conv_transpose2d_shapes_agree_with_torch_on_a_sweep():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    agreed = rejected = 0
    for pick in _sweep(3, 150):
        groups = int(rng.integers(1, 3))
        channels, out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        size, kernel, stride = pick(1, 8), pick(1, 4), pick(1, 3)
        padding, output_padding, dilation = pick(0, 3), pick(0, 2), pick(1, 2)
        x = torch.zeros(1, channels, *size)
        w = torch.zeros(channels, out // groups, *kernel)
        expected = _torch_shape(F.conv_transpose2d, x, w, None, stride, padding,
                                output_padding, groups, dilation)
        got = _our_shape("conv_transpose2d", (channels, *size), out_channels=out,
                         kernel=kernel, stride=stride, padding=padding,
                         output_padding=output_padding, dilation=dilation, groups=groups)
        assert got == expected, (size, kernel, stride, padding, output_padding, dilation)
        agreed += expected is not None
        rejected += expected is None
    assert agreed > 40 and rejected > 10


@pytest.mark.parametrize("pool", ["maxpool2d", "avgpool2d"])
def test_pool_shapes_agree_with_torch_on_a_sweep(pool):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    agreed = rejected = 0
    for pick in _sweep(4, 150):
        size, kernel, stride, padding = pick(1, 10), pick(1, 4), pick(1, 3), pick(0, 2)
        ceil_mode = bool(rng.random() < 0.5)
        x = torch.zeros(1, 2, *size)
        keys = {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
        if pool == "maxpool2d":
            dilation = pick(1, 2)
            keys["dilation"] = dilation
            expected = _torch_shape(F.max_pool2d, x, kernel, stride, padding, dilation,
                                    ceil_mode)
        else:
            expected = _torch_shape(F.avg_pool2d, x, kernel, stride, padding, ceil_mode)
        assert _our_shape(pool, (2, *size), **keys) == expected, keys
        agreed += expected is not None
        rejected += expected is None
    assert agreed > 40 and rejected > 10


def test_other_layer_shapes_agree_with_torch():
    torch = torch_or_skip()
    F = torch.nn.functional
    for pick in _sweep(5, 30):
        size, scale = pick(1, 9), pick(1, 3)
        x = torch.zeros(1, 3, *size)
        assert infer_shape("upsample", (3, *size), scale=scale) == tuple(
            F.interpolate(x, scale_factor=tuple(map(float, scale)), mode="nearest").shape[1:])
        levels = sorted({int(v) for v in pick(1, 5)})
        spp = torch.cat([F.adaptive_max_pool2d(x, level).flatten(1) for level in levels], 1)
        assert infer_shape("spp", (3, *size), levels=levels) == tuple(spp.shape[1:])
        assert infer_shape("global_avgpool", (3, *size)) == tuple(
            F.adaptive_avg_pool2d(x, 1).shape[1:])
        assert infer_shape("flatten", (3, *size)) == tuple(x.flatten(1).shape[1:])
        kernel = pick(1, 3)
        rcl = F.conv2d(x, torch.zeros(5, 3, *kernel), padding="same")
        assert infer_shape("rcl", (3, *size), out_channels=5, kernel=kernel) == tuple(
            rcl.shape[1:])
    assert infer_shape("linear", (7,), out_features=4) == tuple(
        F.linear(torch.zeros(1, 7), torch.zeros(4, 7)).shape[1:])


# -- problems, one kind at a time ------------------------------------------------------------

CONV = """
    [[layers]]
    name = "c1"
    type = "conv2d"
    """


def test_unknown_key_names_the_closest_valid_one():
    assert problems(spec(CONV + "out_channels = 4\nkernal = 3\n")) == [
        "net.toml:7 layer 0 'c1' key 'kernal': conv2d has no key 'kernal'. Did you mean "
        "'kernel'?"]


def test_unknown_key_without_a_close_one_lists_the_keys():
    assert problems(spec(CONV + "out_channels = 4\nkernel = 3\ncolour = 1\n")) == [
        "net.toml:8 layer 0 'c1' key 'colour': conv2d has no key 'colour'. Valid keys: "
        "'out_channels', 'kernel', 'stride', 'padding', 'dilation', 'groups', 'bias', 'init'."]


def test_key_on_a_layer_without_keys():
    assert problems(spec('[[layers]]\nname = "r"\ntype = "relu"\nslope = 1\n')) == [
        "net.toml:6 layer 0 'r' key 'slope': relu has no key 'slope'. It takes no keys; "
        "remove it."]


def test_unknown_layer_type_lists_the_known_ones():
    assert problems(spec('[[layers]]\nname = "c"\ntype = "conv"\n')) == [
        'net.toml:5 layer 0 \'c\' key \'type\': unknown layer type "conv"; did you mean '
        '"conv2d"? Known types: add, avgpool2d, batchnorm2d, concat, conv2d, conv_transpose2d, '
        'crop, depthwise, dropout, flatten, global_avgpool, global_maxpool, leaky_relu, linear, '
        'maxpool2d, pointwise, rcl, relu, separable_conv2d, sigmoid, softmax, spp, tanh, '
        'upsample.']


def test_wrong_value_type_names_the_type():
    assert problems(spec(CONV + 'out_channels = 4\nkernel = 3\nstride = "2"\n')) == [
        "net.toml:8 layer 0 'c1' key 'stride': must be an integer ≥ 1 or a pair of them; got "
        "\"2\" (a string)."]
    assert problems(spec(CONV + "out_channels = 4\nkernel = 3\nbias = 1\n")) == [
        "net.toml:8 layer 0 'c1' key 'bias': must be true or false; got 1 (an integer)."]


def test_missing_required_key_gives_an_example():
    assert problems(spec(CONV + "kernel = 3\n")) == [
        "net.toml:3 layer 0 'c1' key 'out_channels': conv2d needs 'out_channels' (an integer "
        "≥ 1); add e.g. out_channels = 16."]


@pytest.mark.parametrize("line, message", [
    ("stride = 0", "must be an integer ≥ 1 or a pair of them; got 0."),
    ("stride = [1, 2, 3]", "must be an integer ≥ 1 or a pair of them; got [1, 2, 3]."),
    ("padding = -1", 'must be an integer ≥ 0, a pair of them, a pair of [begin, end] pairs, '
                     '"same" or "valid"; got -1.'),
    ("padding = \"full\"", 'must be an integer ≥ 0, a pair of them, a pair of [begin, end] '
                           'pairs, "same" or "valid"; got "full".'),
    ("init = \"kaiming\"", 'must be one of "default", "kaiming_normal", "kaiming_uniform", '
                           '"xavier_normal", "xavier_uniform", "zeros"; got "kaiming". Did you '
                           'mean "kaiming_normal"?'),
])
def test_value_out_of_range(line, message):
    key = line.split(" =")[0]
    assert problems(spec(CONV + f"out_channels = 4\nkernel = 3\n{line}\n")) == [
        f"net.toml:8 layer 0 'c1' key '{key}': {message}"]


@pytest.mark.parametrize("layer, key, message", [
    ('type = "dropout"\np = 1', "p", "must be a number in [0, 1); got 1."),
    ('type = "batchnorm2d"\neps = 0', "eps", "must be a number in (0, inf]; got 0."),
    ('type = "batchnorm2d"\nmomentum = 1.5', "momentum", "must be a number in [0, 1]; got 1.5."),
    ('type = "spp"\nlevels = []', "levels", "must be a non-empty array of integers ≥ 1; got []."),
    ('type = "spp"\npool = "mean"', "pool", 'must be one of "max", "avg"; got "mean".'),
    ('type = "leaky_relu"\nnegative_slope = true', "negative_slope",
     "must be a number; got true (a boolean)."),
    ('type = "rcl"\nout_channels = 4\nkernel = 3\nsteps = 0', "steps",
     "must be an integer ≥ 1 and ≤ 1000; got 0."),
])
def test_value_range_of_other_layer_types(layer, key, message):
    text = spec(f'[[layers]]\nname = "x"\n{layer}\n')
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(key + " "))
    assert problems(text) == [f"net.toml:{line} layer 0 'x' key '{key}': {message}"]


def test_groups_must_divide_both_channel_counts():
    assert problems(spec(CONV + "out_channels = 6\nkernel = 3\ngroups = 4\n",
                         "[8, 8, 8]")) == [
        "net.toml:8 layer 0 'c1' key 'groups': groups = 4 must divide both the input's 8 "
        "channels and out_channels = 6; use one of 1, 2."]


def test_output_collapsing_to_no_pixels_shows_the_arithmetic():
    assert problems(spec(CONV + "out_channels = 4\nkernel = [3, 5]\nstride = 2\ndilation = 2\n",
                         "[3, 9, 8]")) == [
        "net.toml:3 layer 0 'c1': the output would be 3×0 pixels: the input 3×9×8 is too small "
        "for this conv2d (width = (8 + 0 + 0 − 2·(5 − 1) − 1) // 2 + 1 = 0). Use a smaller "
        "kernel, stride or dilation, more padding, or a larger input."]


def test_pool_and_transposed_conv_collapse_messages():
    assert problems(spec('[[layers]]\nname = "p"\ntype = "maxpool2d"\nkernel = [2, 3]\n',
                         "[1, 2, 2]")) == [
        "net.toml:3 layer 0 'p': the output would be 1×0 pixels: the input 1×2×2 is too small "
        "for this maxpool2d (width = floor((2 + 2·0 − 1·(3 − 1) − 1) / 3) + 1 = 0). Use a "
        "smaller kernel or a larger input, or remove this pooling layer."]
    # With ceil_mode the window may hang over the end: 1×1, as in PyTorch.
    assert infer_shape("maxpool2d", (1, 2, 2), kernel=3, ceil_mode=True) == (1, 1, 1)
    assert problems(spec('[[layers]]\nname = "t"\ntype = "conv_transpose2d"\nout_channels = 1\n'
                         'kernel = 1\npadding = [0, 1]\n', "[1, 1, 1]")) == [
        "net.toml:3 layer 0 't': the output would be 1×-1 pixels: the input 1×1×1 is too small "
        "for this conv_transpose2d (width = (1 − 1)·1 − 2·1 + 1·(1 − 1) + 0 + 1 = -1). Use "
        "less padding or a larger input."]


def test_linear_after_an_image_suggests_flatten():
    assert problems(spec('[[layers]]\nname = "fc"\ntype = "linear"\nout_features = 10\n')) == [
        "net.toml:3 layer 0 'fc': linear needs a flat input; got the input 3×8×8 from 'input'. "
        "Add a layer with type = \"flatten\" before it (it would give 192 features), or a "
        "global_avgpool then a flatten."]


def test_image_layer_after_flatten():
    assert problems(spec('[[layers]]\nname = "f"\ntype = "flatten"\n' + CONV
                         + "out_channels = 4\nkernel = 3\n")) == [
        "net.toml:7 layer 1 'c1': conv2d needs a C×H×W input; got a flat input of 192 "
        "features. Place it before the flatten layer."]


MERGE = """
    [[layers]]
    name = "half"
    type = "maxpool2d"
    kernel = 2
    [[layers]]
    name = "m"
    inputs = ["input", "half"]
    """


def test_concat_of_mismatched_sizes_shows_the_shapes():
    assert problems(spec(MERGE + 'type = "concat"\n')) == [
        "net.toml:7 layer 1 'm': concat needs inputs of one height and width; got 3×8×8 "
        "('input'), 3×4×4 ('half'). Set crop = true to centre-crop them to the smallest, or "
        "change the layers so the sizes agree."]
    assert build(spec(MERGE + 'type = "concat"\ncrop = true\n')).output.output_shape == (6, 4, 4)


def test_add_of_mismatched_shapes_shows_the_shapes():
    assert problems(spec(MERGE + 'type = "add"\n')) == [
        "net.toml:7 layer 1 'm': add needs inputs of one shape; got 3×8×8 ('input'), 3×4×4 "
        "('half'). Make the shapes agree, e.g. with a 1×1 conv2d (stride 2 to halve the size) "
        "on the shortcut."]


def test_number_of_inputs():
    assert problems(spec(MERGE + 'type = "relu"\n')) == [
        "net.toml:9 layer 1 'm' key 'inputs': relu reads one input; got 2 ('input', 'half'). "
        "Combine them first with a concat or add layer."]
    assert problems(spec('[[layers]]\nname = "a"\ntype = "add"\ninputs = ["input"]\n')) == [
        "net.toml:6 layer 0 'a' key 'inputs': add reads at least 2 inputs; got 1 ('input'). "
        "List them with inputs = [\"a\", \"b\"]."]


def test_output_padding_must_be_below_stride_or_dilation():
    assert problems(spec('[[layers]]\nname = "t"\ntype = "conv_transpose2d"\nout_channels = 2\n'
                         'kernel = 3\nstride = [2, 1]\noutput_padding = [1, 1]\n')) == [
        "net.toml:9 layer 0 't' key 'output_padding': output_padding must be smaller than the "
        "stride or the dilation (as in PyTorch); got output_padding = 1 with stride = [2, 1] "
        "and dilation = 1. Use output_padding < stride."]


def test_same_padding_with_a_stride():
    assert problems(spec(CONV + 'out_channels = 4\nkernel = 5\nstride = 2\npadding = "same"\n')
                    ) == [
        "net.toml:9 layer 0 'c1' key 'padding': padding = \"same\" needs stride 1 (as in "
        "PyTorch); got stride = 2. Give the padding as numbers instead, e.g. padding = 2 for "
        "kernel 5."]


def test_pool_padding_at_most_half_the_kernel():
    assert problems(spec('[[layers]]\nname = "p"\ntype = "avgpool2d"\nkernel = [4, 3]\n'
                         'padding = [2, 2]\n')) == [
        "net.toml:7 layer 0 'p' key 'padding': padding must be at most half the kernel (as in "
        "PyTorch); got padding = 2 with kernel = [4, 3]. Use padding ≤ 1."]


def test_crop_larger_than_the_input():
    assert problems(spec('[[layers]]\nname = "c"\ntype = "crop"\nsize = [9, 4]\n')) == [
        "net.toml:6 layer 0 'c' key 'size': size = [9, 4] is larger than the input 3×8×8 from "
        "'input'; a crop can only shrink. Use a size of at most 8×8."]


def test_network_larger_than_memory_is_refused(monkeypatch):
    monkeypatch.setattr(build_module, "machine_memory", lambda: 20_000)
    text = spec(CONV + "out_channels = 100\nkernel = 1\n" + CONV.replace("c1", "c2")
                + "out_channels = 4\nkernel = 1\n")
    # input 3·8·8, then c1's 100·3 + 100 parameters and 100·8·8 outputs: 4 bytes each.
    assert problems(text) == [
        "net.toml:3 layer 0 'c1': the network would need 27,968 bytes for its parameters and "
        "activations (float32, batch size 1) up to this layer, more than this machine's 20,000 "
        "bytes of memory; this layer alone needs 27,200 bytes (output 100×8×8). Use fewer "
        "channels or features, or a smaller input."]


def test_memory_check_counts_huge_layers_without_allocating():
    message = problems(spec(CONV + "out_channels = 1000000000\nkernel = 3\n"))[0]
    assert "more than this machine's" in message and "output 1000000000×6×6" in message


def test_dangling_reference_and_cycle_are_reported_when_spec_did_not():
    entries = [LayerEntry(0, "a", "relu", {}, ["b"], line=3, key_lines={"input": 5}),
               LayerEntry(1, "b", "relu", {}, ["a"], line=6, key_lines={"input": 8}),
               LayerEntry(2, "c", "relu", {}, ["nope"], line=9, key_lines={"inputs": 11}),
               LayerEntry(3, "d", "relu", {}, ["c"], line=12)]
    with pytest.raises(SpecError) as caught:
        build_graph(ParsedSpec("net.toml", "net", (1, 2, 2), entries))
    assert [str(p) for p in caught.value.problems] == [
        "net.toml:5 layer 0 'a' key 'input': the layers 'a', 'b' read each other in a cycle; a "
        "layer may only read layers that do not depend on it.",
        "net.toml:11 layer 2 'c' key 'inputs': reads 'nope', which is not a layer. Name an "
        "earlier layer or \"input\"."]


def test_key_already_reported_by_spec_is_not_reported_again():
    entry = LayerEntry(0, "c", "conv2d", {"out_channels": "$ch", "kernel": 3}, ["input"], line=3)
    spec_problem = Problem("argument 'ch' is missing.", "net.toml", 4, (0, "c"), "out_channels")
    with pytest.raises(SpecError) as caught:
        build_graph(ParsedSpec("net.toml", "net", (1, 4, 4), [entry], problems=[spec_problem]))
    assert caught.value.problems == [spec_problem]


def test_every_problem_is_reported_in_one_run_without_follow_on_noise():
    text = spec("""
        [[layers]]
        name = "c1"
        type = "conv2d"
        out_channels = 4
        kernal = 3
        [[layers]]
        name = "after_c1"
        type = "conv2d"
        out_channels = 4
        kernel = 3
        groups = 3
        [[layers]]
        name = "c2"
        type = "conv"
        input = "input"
        [[layers]]
        name = "c3"
        type = "conv2d"
        input = "input"
        out_channels = 4
        kernel = 9
        [[layers]]
        name = "fc"
        type = "linear"
        input = "input"
        out_features = 2
        [[layers]]
        name = "d"
        type = "dropout"
        input = "input"
        p = 2
        """)
    found = problems(text)
    assert [p.split(":")[1].split(" ")[0] for p in found] == ["7", "16", "18", "24", "33"]
    assert [p.split("'")[1] for p in found] == ["c1", "c2", "c3", "fc", "d"]
    # 'after_c1' reads a layer with a problem: skipped, although groups = 3 would not divide 4.
    assert not any("after_c1" in p for p in found)
    with pytest.raises(SpecError) as caught:
        build(text)
    assert str(caught.value).startswith("5 problems:\n  net.toml:7 layer 0 'c1' key 'kernal'")


def test_problems_inside_blocks_point_at_the_block_layer():
    found = problems(spec("""
        [blocks.b]
        params = {ch = 4}
        [[blocks.b.layers]]
        name = "conv"
        type = "conv2d"
        out_channels = "$ch"
        kernel = 3
        stride = 0
        [[layers]]
        name = "use"
        block = "b"
        """))
    assert found == ["net.toml:10 layer 0 'use.conv' key 'stride': must be an integer ≥ 1 or a "
                     "pair of them; got 0."]


def test_infer_shape_raises_shape_error_with_the_message():
    with pytest.raises(ShapeError, match=r"^key 'kernel': must be an integer ≥ 1 or a pair"):
        infer_shape("conv2d", (1, 4, 4), out_channels=1, kernel=0)
    with pytest.raises(ShapeError, match=r"^the output would be 0×0 pixels: the input 1×4×4"):
        infer_shape("conv2d", (1, 4, 4), out_channels=1, kernel=5)


def test_input_shape_override_is_checked():
    parsed = parse_spec(spec(CONV + "out_channels = 4\nkernel = 3\n"))
    assert build_graph(parsed, (3, 5, 6)).output.output_shape == (4, 3, 4)
    with pytest.raises(ShapeError, match=r"input_shape must be \(channels, height, width\)"):
        build_graph(parsed, (3, 0, 6))


# -- summary ---------------------------------------------------------------------------------

def test_summary_counts_lenet_by_hand():
    graph = load_graph(SPECS / "lenet.toml")
    assert parameter_count(graph) == 61_706
    # conv1 28·28·6·25, conv2 10·10·16·150, then the three linear layers' weights.
    assert multiply_adds(graph) == 117_600 + 240_000 + 48_000 + 10_080 + 840
    outputs = [6 * 28 * 28] * 2 + [6 * 14 * 14, 16 * 10 * 10, 16 * 10 * 10, 400, 400, 120, 120,
                                   84, 84, 10]
    assert activation_bytes(graph, batch_size=3) == 4 * 3 * (784 + sum(outputs))
    text = format_summary(graph, batch_size=3)
    lines = text.splitlines()
    assert lines[0] == "lenet: input 1×28×28"
    assert lines[3].split() == ["conv1", "conv2d", "6×28×28", "156", "117,600"]
    assert "total" in text and "61,706" in text and "416,520" in text
    assert lines[-1] == ("forward activations (float32, batch size 3): 189,432 bytes "
                         "(185.0 KiB)")


def test_load_graph_reads_text_or_path():
    text = (SPECS / "lenet.toml").read_text()
    assert load_graph(text).output.output_shape == load_graph(str(SPECS / "lenet.toml")).output.\
        output_shape


# -- the commands ----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, list(args))


def test_check_all_shipped_specs():
    result = run("check", *sorted(str(p) for p in SPECS.glob("*.toml")))
    assert result.exit_code == 0, result.output
    assert f"{SPECS / 'lenet.toml'}: ok (12 layers, 61,706 parameters)" in result.output
    assert len(result.output.splitlines()) == len(list(SPECS.glob("*.toml")))


def test_check_reports_every_problem_and_exits_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(spec(CONV + "out_channels = 4\nkernal = 3\n" + CONV.replace("c1", "c2")
                        + "out_channels = 0\nkernel = 3\n"))
    result = run("check", str(SPECS / "lenet.toml"), str(bad), str(tmp_path / "missing.toml"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{SPECS / 'lenet.toml'}: ok" in result.output
    assert f"error: 2 problems:\n  {bad}:7 layer 0 'c1' key 'kernal'" in result.output
    assert f"  {bad}:12 layer 1 'c2' key 'out_channels': must be an integer ≥ 1; got 0." in \
        result.output
    assert f"error: {tmp_path / 'missing.toml'}: no such file" in result.output


def test_summary_command(tmp_path):
    result = run("summary", str(SPECS / "spp.toml"), "--input", "3x100x80", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("spp: input 3×100×80\n")
    assert "forward activations (float32, batch size 4)" in result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line}
    assert rows["spp"][2] == "1344" and rows["total"][1] == "370,474"

    result = run("summary", str(SPECS / "lenet.toml"), "--input", "1x8x8")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "layer 3 'conv2': the output would be 0×0 pixels" in result.output

    result = run("summary", str(SPECS / "lenet.toml"), "--input", "1x0")
    assert result.exit_code == 2
    assert "Invalid value for '--input': must be CxHxW (e.g. 3x224x224) or F" in result.output


def test_summary_table_rows_match_graph():
    graph = load_graph(SPECS / "resnet18.toml")
    text = format_summary(graph)
    assert sum(1 for line in text.splitlines() if line.startswith("layer")) == sum(
        1 for n in graph.nodes if n.name.startswith("layer"))
    assert math.isclose(multiply_adds(graph), 1.814e9, rel_tol=2e-3)  # torchvision: 1.81 GMACs


def test_structural_and_layer_problems_come_in_one_file_ordered_report():
    text = spec(CONV + "out_channels = 0\nkernel = 3\n[training]\nepochs = 0\n").replace(
        "[network]\n", "[network]\ncolour = 1\n")
    found = problems(text)
    assert [p.split(" ")[0] for p in found] == ["net.toml:2", "net.toml:7", "net.toml:10"]
    assert "key 'colour'" in found[0] and "key 'out_channels'" in found[1]
    assert "[training] key 'epochs'" in found[2]
