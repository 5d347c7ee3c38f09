"""The spec language: reading, line numbers, blocks, references, [training], and every structural
problem with its exact message (a message is a contract)."""

from __future__ import annotations

import datetime
import math
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib

from declcnn.errors import SpecError
from declcnn.spec import dumps, emit_toml, parse_spec, read_spec
from declcnn.spec.locate import locate
from declcnn.spec.training import DEFAULTS

NET = '[network]\ninput = [1, 28, 28]\n'  # lines 1-2; the snippets below start on line 3

LENET = """\
[network]
name = "lenet5"
input = [1, 28, 28]            # channels, height, width

[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 6
kernel = 5
padding = 2

[[layers]]
type = "relu"

[[layers]]
type = "maxpool2d"
kernel = [2, 2]

[[layers]]
type = "flatten"

[[layers]]
name = "fc"
type = "linear"
out_features = 10
"""


def parse(text: str, file: str = "s.toml"):
    return parse_spec(textwrap.dedent(text), file=file)


def messages(snippet: str) -> list[str]:
    return [str(p) for p in parse(NET + textwrap.dedent(snippet)).problems]


def layers(spec) -> list[tuple]:
    return [(e.name, e.type, e.keys, e.inputs) for e in spec.layers]


# -- the format ------------------------------------------------------------------------------

def test_lenet_layers_names_inputs_and_lines():
    spec = parse(LENET, "lenet.toml")
    assert spec.problems == []
    assert spec.name == "lenet5" and spec.input_shape == (1, 28, 28)
    assert layers(spec) == [
        ("conv1", "conv2d", {"out_channels": 6, "kernel": 5, "padding": 2}, ["input"]),
        ("relu1", "relu", {}, ["conv1"]),
        ("maxpool2d2", "maxpool2d", {"kernel": [2, 2]}, ["relu1"]),
        ("flatten3", "flatten", {}, ["maxpool2d2"]),
        ("fc", "linear", {"out_features": 10}, ["flatten3"]),
    ]
    assert [e.line for e in spec.layers] == [5, 12, 15, 19, 22]
    assert spec.layers[0].key_lines == {"name": 6, "type": 7, "out_channels": 8, "kernel": 9,
                                        "padding": 10}
    assert [e.index for e in spec.layers] == [0, 1, 2, 3, 4]
    assert spec.document["network"]["name"] == "lenet5"


def test_flat_input_default_name_and_explicit_inputs():
    spec = parse("""\
        input = 3
        [network]
        input = [784]
        [[layers]]
        type = "linear"
        [[layers]]
        name = "a"
        type = "relu"
        input = "input"
        [[layers]]
        type = "concat"
        inputs = ["a", "linear0"]
        """, file=None)
    assert spec.input_shape == (784,)
    assert spec.name == "network"
    assert [e.inputs for e in spec.layers] == [["input"], ["input"], ["a", "linear0"]]
    assert [str(p) for p in spec.problems] == [
        "<spec>:1 key 'input': unknown top-level key. A spec has "
        "[network], [[layers]], [blocks.NAME] and [training]."]


def test_network_name_defaults_to_the_file_stem():
    assert parse(NET + '[[layers]]\ntype = "relu"\n', "specs/my-net.toml").name == "my-net"


RESNET = """\
[network]
input = [3, 32, 32]

[blocks.basic]
params = { stride = 1, scale = 0.5, bias = false, kernel = [3, 3] }
required = { ch = "int" }

[[blocks.basic.layers]]
name = "conv1"
type = "conv2d"
out_channels = "$ch"
kernel = "$kernel"
stride = "$stride"
bias = "$bias"

[[blocks.basic.layers]]
name = "drop"
type = "dropout"
p = "$scale"

[[blocks.basic.layers]]
name = "add"
type = "add"
inputs = ["drop", "$input"]

[[layers]]
name = "stem"
type = "conv2d"
out_channels = 16
kernel = 3

[[layers]]
name = "stage1"
block = "basic"
args = { ch = 16 }
repeat = 2

[[layers]]
name = "down"
block = "basic"
args = { ch = 32, stride = 2, kernel = [1, 5], scale = 0 }

[[layers]]
type = "concat"
inputs = ["stage1", "down"]
"""


def test_blocks_expand_with_prefixes_repeat_and_the_block_input():
    spec = parse(RESNET)
    assert spec.problems == []
    names = [e.name for e in spec.layers]
    assert names == ["stem", "stage1.0.conv1", "stage1.0.drop", "stage1.0.add",
                     "stage1.1.conv1", "stage1.1.drop", "stage1.1.add",
                     "down.conv1", "down.drop", "down.add", "concat3"]
    by_name = {e.name: e for e in spec.layers}
    # Repetition 1 reads repetition 0; "$input" is what feeds each repetition.
    assert by_name["stage1.0.conv1"].inputs == ["stem"]
    assert by_name["stage1.0.add"].inputs == ["stage1.0.drop", "stem"]
    assert by_name["stage1.1.conv1"].inputs == ["stage1.0.add"]
    assert by_name["stage1.1.add"].inputs == ["stage1.1.drop", "stage1.0.add"]
    # The use's name stands for its last layer.
    assert by_name["down.conv1"].inputs == ["stage1.1.add"]
    assert by_name["concat3"].inputs == ["stage1.1.add", "down.add"]
    # Substituted values keep their TOML type; defaults fill the rest.
    assert by_name["stage1.0.conv1"].keys == {"out_channels": 16, "kernel": [3, 3], "stride": 1,
                                              "bias": False}
    assert by_name["down.conv1"].keys == {"out_channels": 32, "kernel": [1, 5], "stride": 2,
                                          "bias": False}
    assert by_name["down.drop"].keys == {"p": 0} and by_name["stage1.0.drop"].keys == {"p": 0.5}
    assert type(by_name["down.conv1"].inputs[0]) is str
    # Lines: the block's layer, the argument (where a value came from), the use.
    assert by_name["down.conv1"].line == 8
    assert by_name["down.conv1"].key_lines == {"name": 9, "type": 10, "out_channels": 41,
                                               "kernel": 41, "stride": 41, "bias": 5}
    assert by_name["down.conv1"].origin == "block 'basic' used as 'down' (line 38)"
    assert [e.index for e in spec.layers] == [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3]


def test_nested_blocks_pass_arguments_and_layer_names_resolve_where_written():
    spec = parse("""\
        [network]
        input = [1, 64, 64]
        [blocks.up]
        required = { skip = "string", ch = "int" }
        [[blocks.up.layers]]
        name = "cat"
        type = "concat"
        inputs = ["$input", "$skip"]
        [[blocks.up.layers]]
        name = "conv"
        block = "conv_relu"
        args = { ch = "$ch" }
        [blocks.conv_relu]
        params = { ch = 8, act = "relu" }
        [[blocks.conv_relu.layers]]
        type = "conv2d"
        out_channels = "$ch"
        [[blocks.conv_relu.layers]]
        type = "$act"
        [[layers]]
        name = "enc1"
        type = "conv2d"
        out_channels = 8
        [[layers]]
        name = "pool"
        type = "maxpool2d"
        [[layers]]
        name = "up1"
        block = "up"
        args = { skip = "enc1", ch = 4 }
        """)
    assert spec.problems == []
    assert layers(spec)[2:] == [
        ("up1.cat", "concat", {}, ["pool", "enc1"]),
        ("up1.conv.conv2d0", "conv2d", {"out_channels": 4}, ["up1.cat"]),
        ("up1.conv.act1", "relu", {}, ["up1.conv.conv2d0"]),
    ]
    assert spec.layers[3].key_lines == {"type": 16, "out_channels": 30}


# -- line numbers ------------------------------------------------------------------------------

def test_locator_skips_multiline_values_and_finds_inline_keys():
    text = textwrap.dedent('''\
        [network]
        input = [1,
          28,  # a comment with [[layers]] in it
          28]
        [[layers]]
        note = """
        type = "not a key"
        [[layers]]
        """
        'quoted' = 'it s'
        args = { ch = 64, inner = { k = [1, 2] } }
        [layers.extra]
        z = "a \\" [b] = 1"

        [[blocks.b.layers]]
        type = "relu"
        ''')
    tomllib.loads(text)
    lines = locate(text)
    assert lines[("network", "input", 2)] == 4
    assert lines[("layers", 0)] == 5
    assert ("layers", 1) not in lines
    assert lines[("layers", 0, "quoted")] == 10
    assert lines[("layers", 0, "args", "inner", "k")] == 11
    assert lines[("layers", 0, "extra", "z")] == 13
    assert lines[("blocks", "b", "layers", 0, "type")] == 16


def test_toml_syntax_errors_keep_line_and_column():
    assert messages('[[layers]]\ntype = relu\n') == [
        "s.toml:4: invalid TOML: Invalid value at column 8. Fix the syntax (docs/SPEC.md shows "
        "the format)."]
    assert messages('[[layers]]\ntype = ["relu"\n') == [
        "s.toml:5: invalid TOML: Unclosed array at the end of the file. Fix the syntax "
        "(docs/SPEC.md shows the format)."]
    spec = parse(NET + "[[layers]]\ntype = 'relu'\ntype = 'x'\n")
    assert spec.layers == [] and spec.input_shape == ()
    assert str(spec.problems[0]).startswith("s.toml:5: invalid TOML: Cannot overwrite a value")


# -- structural problems, each with its message --------------------------------------------------

PROBLEMS = {
    "missing network": (
        '[[layers]]\ntype = "relu"\n',
        "s.toml [network]: missing; add a [network] table with input = [channels, height, "
        "width]."),
    "network not a table": (
        'network = 3\n[[layers]]\ntype = "relu"\n',
        "s.toml:1 [network]: must be a table ([network]); got 3 (an integer)."),
    "unknown network key": (
        '[network]\ninput = [1, 2, 2]\ninputs = 3\n[[layers]]\ntype = "relu"\n',
        "s.toml:3 [network] key 'inputs': unknown key. Did you mean 'input'? [network] takes "
        "name and input."),
    "missing input": (
        '[network]\nname = "x"\n[[layers]]\ntype = "relu"\n',
        "s.toml:1 [network] key 'input': missing; give input = [channels, height, width] (e.g. "
        "[1, 28, 28]), or [features] for flat input."),
    "input not three positive ints": (
        '[network]\ninput = [1, 0, 28.0]\n[[layers]]\ntype = "relu"\n',
        "s.toml:2 [network] key 'input': must be [channels, height, width] or [features], each "
        "an integer ≥ 1; got [1, 0, 28.0]."),
    "input two numbers": (
        '[network]\ninput = [28, 28]\n[[layers]]\ntype = "relu"\n',
        "s.toml:2 [network] key 'input': must be [channels, height, width] or [features], each "
        "an integer ≥ 1; got [28, 28]."),
    "input absurd": (
        '[network]\ninput = [3, 1048577, 2]\n[[layers]]\ntype = "relu"\n',
        "s.toml:2 [network] key 'input': each size must be at most 1048576 (2**20); got [3, "
        "1048577, 2]. Use a smaller input."),
    "layers not tables": (
        "layers = 5\n" + NET,
        "s.toml:1 [layers]: must be an array of tables ([[layers]]); got 5 (an integer)."),
    "layer not a table": (
        'layers = ["relu"]\n' + NET,
        "s.toml:1 layer 0 'layer0': must be a table ([[layers]]); got \"relu\" (a string)."),
    "blocks not tables": (
        'blocks = 3\n' + NET + '[[layers]]\ntype = "relu"\n',
        "s.toml:1 [blocks]: must be tables [blocks.NAME]; got 3 (an integer)."),
    "network name not a string": (
        '[network]\nname = true\ninput = [1]\n[[layers]]\ntype = "relu"\n',
        "s.toml:2 [network] key 'name': must be a string; got true (a boolean)."),
}

LAYER_PROBLEMS = {
    "no layers": (
        "",
        "s.toml [layers]: no layers; add at least one [[layers]] table with a type."),
    "missing type": (
        '[[layers]]\nname = "c"\nkernel = 3\n',
        "s.toml:3 layer 0 'c' key 'type': missing; every layer needs type = \"...\" (e.g. "
        "\"conv2d\" or \"relu\"), or block = \"NAME\" to use a block."),
    "type not a string": (
        '[[layers]]\ntype = ["relu"]\n',
        "s.toml:4 layer 0 'layer0' key 'type': must be the name of a layer type (a string such "
        "as \"conv2d\"); got [\"relu\"]."),
    "duplicate name": (
        '[[layers]]\nname = "a"\ntype = "relu"\n[[layers]]\nname = "a"\ntype = "tanh"\n',
        "s.toml:7 layer 1 'a' key 'name': 'a' is already the name of layer 0 (line 3); layer "
        "names must be unique, so rename one."),
    "duplicate default name": (
        '[[layers]]\nname = "relu1"\ntype = "relu"\n[[layers]]\ntype = "relu"\n',
        "s.toml:6 layer 1 'relu1' key 'name': the default name 'relu1' is already the name of "
        "layer 0 (line 3); layer names must be unique, so rename one."),
    "reserved name": (
        '[[layers]]\nname = "input"\ntype = "relu"\n',
        "s.toml:4 layer 0 'relu0' key 'name': 'input' is reserved for the network's input; "
        "choose another name."),
    "bad character": (
        '[[layers]]\nname = "conv 1"\ntype = "relu"\n',
        "s.toml:4 layer 0 'relu0' key 'name': 'conv 1' contains ' '; names may contain only "
        "letters, digits, '_' and '-' (e.g. 'conv_1')."),
    "empty part": (
        '[[layers]]\nname = "a..b"\ntype = "relu"\n',
        "s.toml:4 layer 0 'relu0' key 'name': 'a..b' has an empty part between dots; name "
        "layers like 'conv1'."),
    "name not a string": (
        '[[layers]]\nname = 1\ntype = "relu"\n',
        "s.toml:4 layer 0 'relu0' key 'name': must be a string; got 1 (an integer)."),
    "input and inputs": (
        '[[layers]]\ntype = "add"\ninput = "input"\ninputs = ["input"]\n',
        "s.toml:6 layer 0 'add0' key 'inputs': both input and inputs are given; use input = "
        "\"NAME\" for one input or inputs = [\"A\", \"B\"] for a merge."),
    "input not a string": (
        '[[layers]]\ntype = "relu"\ninput = 0\n',
        "s.toml:5 layer 0 'relu0' key 'input': must be the name of a layer (a string, or "
        "\"input\" for the network input); got 0."),
    "inputs empty": (
        '[[layers]]\ntype = "add"\ninputs = []\n',
        "s.toml:5 layer 0 'add0' key 'inputs': must be a non-empty array of layer names, e.g. "
        "inputs = [\"up1\", \"enc4\"]; got []."),
    "dangling": (
        '[[layers]]\nname = "conv2"\ntype = "conv2d"\n[[layers]]\ntype = "relu"\n'
        'input = "conv3"\n',
        "s.toml:8 layer 1 'relu1' key 'input': 'conv3' names no layer; did you mean 'conv2'? A "
        "layer reads a layer above it, or \"input\" (the network input)."),
    "forward": (
        '[[layers]]\nname = "fc"\ntype = "linear"\ninput = "later"\n\n[[layers]]\n'
        'name = "later"\ntype = "relu"\ninput = "input"\n',
        "s.toml:6 layer 0 'fc' key 'input': 'later' is defined later (layer 1, line 8); layers "
        "run in file order, so a layer can read only layers above it. Move 'later' above this "
        "layer."),
    "cycle": (
        '[[layers]]\nname = "a"\ntype = "add"\ninputs = ["input", "c"]\n[[layers]]\n'
        'name = "b"\ntype = "relu"\n[[layers]]\nname = "c"\ntype = "relu"\n',
        "s.toml:6 layer 0 'a' key 'inputs': 'c' (layer 2, line 10) reads this layer back: the "
        "cycle 'a' → 'c' → 'b' → 'a' can never run. Layers run in file order; break the cycle."),
    "self": (
        '[[layers]]\nname = "a"\ntype = "relu"\ninput = "a"\n',
        "s.toml:6 layer 0 'a' key 'input': the layer reads itself ('a'); name a layer above it."),
    "repeat on a plain layer": (
        '[[layers]]\ntype = "relu"\nrepeat = 2\n',
        "s.toml:5 layer 0 'relu0' key 'repeat': repeat belongs to a block use (a layer with "
        "block = \"NAME\"); a plain layer cannot take it."),
    "param outside a block": (
        '[[layers]]\ntype = "conv2d"\nout_channels = "$ch"\n',
        "s.toml:5 layer 0 'conv2d0' key 'out_channels': '$ch' refers to a block parameter, but "
        "this layer is not inside a block."),
    "int beyond int64": (
        '[[layers]]\ntype = "conv2d"\nout_channels = [9223372036854775808]\n',
        "s.toml:5 layer 0 'conv2d0' key 'out_channels': 9223372036854775808 is beyond the 64-bit "
        "integer range (±9223372036854775807); use a smaller number."),
}

BLOCK = """\
[blocks.down]
params = { ch = 64, stride = 1 }
required = { k = "int" }
[[blocks.down.layers]]
name = "conv"
type = "conv2d"
out_channels = "$ch"
kernel = "$k"
"""  # lines 3-10

BLOCK_PROBLEMS = {
    "unknown block": (
        '[[layers]]\nblock = "dwn"\n',
        "s.toml:12 layer 0 'dwn0' key 'block': 'dwn' is not a block; did you mean 'down'? "
        "Define it as [blocks.dwn]."),
    "type and block": (
        '[[layers]]\nblock = "down"\ntype = "conv2d"\nargs = {k = 3}\n',
        "s.toml:13 layer 0 'down0' key 'type': not allowed in a block use. Use type for a layer "
        "or block for a block use, not both. A block use takes name, block, args, repeat and "
        "input."),
    "missing argument": (
        '[[layers]]\nblock = "down"\nargs = {ch = 3}\n',
        "s.toml:13 layer 0 'down0' key 'args': block 'down' needs argument 'k' (int); add it, "
        "e.g. args = {k = ...}."),
    "unknown argument": (
        '[[layers]]\nblock = "down"\nargs = {k = 3, chan = 8}\n',
        "s.toml:13 layer 0 'down0' key 'args': block 'down' has no parameter 'chan'; did you "
        "mean 'ch'?"),
    "wrongly typed argument": (
        '[[layers]]\nblock = "down"\nargs = {k = 3, ch = "64"}\n',
        "s.toml:13 layer 0 'down0' key 'args': argument 'ch' of block 'down' must be of type int "
        "(like its default 64); got \"64\" (a string)."),
    "wrongly typed required argument": (
        '[[layers]]\nblock = "down"\nargs = {k = [3, 3]}\n',
        "s.toml:13 layer 0 'down0' key 'args': argument 'k' of block 'down' must be of type int; "
        "got [3, 3] (an array)."),
    "args not a table": (
        '[[layers]]\nblock = "down"\nargs = [3]\n',
        "s.toml:13 layer 0 'down0' key 'args': must be a table of arguments, e.g. args = {ch = "
        "64}; got [3]."),
    "repeat zero": (
        '[[layers]]\nblock = "down"\nargs = {k = 3}\nrepeat = 0\n',
        "s.toml:14 layer 0 'down0' key 'repeat': must be an integer from 1 to 10000; got 0."),
    "repeat absurd": (
        '[[layers]]\nblock = "down"\nargs = {k = 3}\nrepeat = 1_000_000_000\n',
        "s.toml:14 layer 0 'down0' key 'repeat': must be an integer from 1 to 10000; got "
        "1000000000."),
    "inputs on a use": (
        '[[layers]]\nblock = "down"\nargs = {k = 3}\ninputs = ["input"]\n',
        "s.toml:14 layer 0 'down0' key 'inputs': not allowed in a block use. Did you mean "
        "'input'? A block use takes name, block, args, repeat and input."),
    "dangling argument": (
        '[[layers]]\nname = "enc4"\ntype = "relu"\n[[layers]]\nblock = "up"\n'
        'args = {skip = "enc5"}\n[blocks.up]\nrequired = {skip = "string"}\n'
        '[[blocks.up.layers]]\ntype = "concat"\ninputs = ["$input", "$skip"]\n',
        "s.toml:16 layer 1 'up1' key 'args': argument 'skip' = 'enc5' names no layer; did you "
        "mean 'enc4'?"),
    "forward argument": (
        '[[layers]]\nblock = "up"\nargs = {skip = "enc4"}\n[[layers]]\nname = "enc4"\n'
        'type = "relu"\n[blocks.up]\nrequired = {skip = "string"}\n'
        '[[blocks.up.layers]]\ntype = "concat"\ninputs = ["$input", "$skip"]\n',
        "s.toml:13 layer 0 'up0' key 'args': argument 'skip' = 'enc4' names a layer that is "
        "defined after this use; a block can read only layers above it, so move 'enc4' up."),
    "argument used as a type": (
        '[[layers]]\nblock = "act"\nargs = {kind = 3}\n[blocks.act]\nrequired = {kind = "any"}\n'
        '[[blocks.act.layers]]\ntype = "$kind"\n',
        "s.toml:13 layer 0 'act0' key 'args': argument 'kind' is used as the type of layer "
        "'kind0', so it must name a layer type (a string); got 3."),
}

BLOCK_DEFINITION_PROBLEMS = {
    "undefined parameter": (
        '[blocks.b]\nparams = {ch = 8}\n[[blocks.b.layers]]\ntype = "conv2d"\n'
        'out_channels = "$chn"\n',
        "s.toml:9 [blocks.b] key 'out_channels': layer 0 'conv2d0': '$chn' names no parameter of "
        "block 'b'; did you mean '$ch'? Declare it in params (with a default) or required."),
    "block input outside input keys": (
        '[blocks.b]\n[[blocks.b.layers]]\ntype = "conv2d"\nout_channels = "$input"\n',
        "s.toml:8 [blocks.b] key 'out_channels': layer 0 'conv2d0': '$input' (the block's "
        "input) can be used only in input, inputs or a nested block's args."),
    "dangling inside a block": (
        '[blocks.b]\n[[blocks.b.layers]]\ntype = "relu"\ninput = "inptu"\n',
        "s.toml:8 [blocks.b] key 'input': layer 0 'relu0': 'inptu' names no layer; did you mean "
        "'input'? A block's layer reads a layer above it in the block, \"$input\" (the block's "
        "input) or \"input\" (the network input)."),
    "dotted name inside a block": (
        '[blocks.b]\n[[blocks.b.layers]]\nname = "a.b"\ntype = "relu"\n',
        "s.toml:7 [blocks.b] key 'name': layer 0 'relu0': 'a.b' contains '.'; names may "
        "contain only letters, digits, '_' and '-' (e.g. 'conv_1')."),
    "recursive": (
        '[blocks.a]\n[[blocks.a.layers]]\nblock = "b"\n[blocks.b]\n[[blocks.b.layers]]\n'
        'block = "a"\n',
        "s.toml:5 [blocks.a] key 'layers': block 'a' uses itself (a → b → a); blocks cannot be "
        "recursive. Use repeat = N to stack a block."),
    "self recursive": (
        '[blocks.a]\n[[blocks.a.layers]]\nblock = "a"\n',
        "s.toml:5 [blocks.a] key 'layers': block 'a' uses itself (a → a); blocks cannot be "
        "recursive. Use repeat = N to stack a block."),
    "no layers": (
        '[blocks.a]\nparams = {x = 1}\n',
        "s.toml:5 [blocks.a] key 'layers': block 'a' has no layers; add [[blocks.a.layers]] "
        "tables (got none)."),
    "unknown block key": (
        '[blocks.a]\nparam = {x = 1}\n[[blocks.a.layers]]\ntype = "relu"\n',
        "s.toml:6 [blocks.a] key 'param': unknown key. Did you mean 'params'? A block has "
        "params, required and layers."),
    "reserved parameter": (
        '[blocks.a]\nparams = {input = 1}\n[[blocks.a.layers]]\ntype = "relu"\n',
        "s.toml:6 [blocks.a] key 'params': 'input' is reserved for the block's input ($input)."),
    "bad required type": (
        '[blocks.a]\nrequired = {x = "integer"}\n[[blocks.a.layers]]\ntype = "relu"\n',
        "s.toml:6 [blocks.a] key 'required': the type of required parameter 'x' must be one of "
        "\"int\", \"float\", \"bool\", \"string\", \"array\", \"table\", \"any\"; got "
        "\"integer\"."),
    "both default and required": (
        '[blocks.a]\nparams = {x = 1}\nrequired = {x = "int"}\n[[blocks.a.layers]]\n'
        'type = "relu"\n',
        "s.toml:7 [blocks.a] key 'required': 'x' is both in params and in required; keep one."),
}


@pytest.mark.parametrize("snippet, expected", PROBLEMS.values(), ids=list(PROBLEMS))
def test_network_problem(snippet, expected):
    assert [str(p) for p in parse(snippet).problems] == [expected]


@pytest.mark.parametrize("snippet, expected", LAYER_PROBLEMS.values(), ids=list(LAYER_PROBLEMS))
def test_layer_problem(snippet, expected):
    assert messages(snippet) == [expected]


@pytest.mark.parametrize("snippet, expected", BLOCK_PROBLEMS.values(), ids=list(BLOCK_PROBLEMS))
def test_block_use_problem(snippet, expected):
    assert messages(BLOCK + snippet) == [expected]


@pytest.mark.parametrize("snippet, expected", BLOCK_DEFINITION_PROBLEMS.values(),
                         ids=list(BLOCK_DEFINITION_PROBLEMS))
def test_block_definition_problem(snippet, expected):
    assert messages('[[layers]]\ntype = "relu"\n' + snippet) == [expected]


def test_a_bad_argument_of_a_block_used_many_times_is_reported_once():
    found = messages(BLOCK + '[[layers]]\nblock = "down"\nargs = {k = 3}\n'
                     '[[layers]]\nblock = "down"\nargs = {k = 3}\n'
                     '[blocks.wrap]\nrequired = {n = "any"}\n[[blocks.wrap.layers]]\n'
                     'block = "down"\nargs = {k = "$n"}\n'
                     '[[layers]]\nblock = "wrap"\nargs = {n = "x"}\nrepeat = 3\n')
    assert found == ["s.toml:24 layer 2 'wrap2' key 'args': argument 'k' of block 'down' must be "
                     "of type int; got \"x\" (a string)."]


def test_all_problems_reported_in_one_run_in_file_order():
    spec = parse("""\
        [network]
        input = [1, 28]
        [[layers]]
        name = "conv1"
        type = "conv2d"
        [[layers]]
        name = "conv1"
        type = "relu"
        [[layers]]
        type = "relu"
        input = "conv0"
        [training]
        lr = 0
        optimzer = "adam"
        [extras]
        """)
    assert [(p.line, p.key) for p in spec.problems] == [
        (2, "input"), (7, "name"), (11, "input"), (13, "lr"), (14, "optimzer"), (15, "extras")]
    assert [e.name for e in spec.layers] == ["conv1"]  # the layers that could be read


def test_expansion_is_capped_before_it_exhausts_memory():
    text = NET + textwrap.dedent("""\
        [blocks.a]
        [[blocks.a.layers]]
        type = "relu"
        [blocks.b]
        [[blocks.b.layers]]
        block = "a"
        repeat = 10000
        [[layers]]
        block = "b"
        repeat = 10000
        """)
    spec = parse(text)
    assert len(spec.layers) == 100_000
    assert [str(p) for p in spec.problems] == [
        "s.toml:12 layer 0 'b0' key 'repeat': the network expands to more than 100000 layers; "
        "lower repeat."]


# -- [training] ---------------------------------------------------------------------------------

def test_training_defaults_and_accepted_values(tmp_path):
    spec = parse(NET + '[[layers]]\ntype = "relu"\n')
    assert spec.training == DEFAULTS
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    np.savez(tmp_path / "set.npz", x=np.zeros(1), y=np.zeros(1))
    for dataset, resolved in (("data", str(data)), ("set.npz", str(tmp_path / "set.npz")),
                              ("shapes", "shapes")):
        path = tmp_path / "net.toml"
        path.write_text(NET + f'[[layers]]\ntype = "relu"\n[training]\ndataset = "{dataset}"\n'
                        'optimizer = "adam"\nbetas = [0.5, 0.9]\nlr = 1\naugment = ["flip"]\n'
                        'schedule = "step"\ngamma = 0.5\n')
        spec = read_spec(path)
        assert spec.problems == []
        assert spec.training["dataset"] == resolved
        assert spec.training["lr"] == 1 and spec.training["betas"] == [0.5, 0.9]
        assert spec.training["epochs"] == 10
        assert spec.training_lines["gamma"] == 12


TRAINING_PROBLEMS = {
    'lr = "fast"': "key 'lr': must be a finite number > 0; got \"fast\".",
    "lr = inf": "key 'lr': must be a finite number > 0; got inf.",
    "momentum = 1.0": "key 'momentum': must be a finite number ≥ 0 and < 1; got 1.0.",
    "batch_size = 0": "key 'batch_size': must be an integer ≥ 1 and ≤ 1048576; got 0.",
    "epochs = 2.5": "key 'epochs': must be an integer ≥ 1 and ≤ 1000000; got 2.5.",
    "seed = -1": "key 'seed': must be an integer ≥ 0; got -1.",
    "nesterov = 1": "key 'nesterov': must be true or false; got 1 (an integer).",
    'loss = "mae"': "key 'loss': 'mae' is not a choice; did you mean 'mse'?",
    "loss = 3": "key 'loss': must be one of 'cross_entropy', 'mse'; got 3 (an integer).",
    'schedule = "linear"': "key 'schedule': 'linear' is not a choice; valid choices: 'none', "
                           "'step', 'cosine', 'plateau'.",
    'augment = ["flip", "flip"]': "key 'augment': lists an augmentation twice; got [\"flip\", "
                                  "\"flip\"].",
    'augment = "flip"': "key 'augment': must be an array of names from 'flip', 'crop', 'shift'; "
                        "got \"flip\".",
    "betas = [0.9]": "key 'betas': must be two numbers ≥ 0 and < 1, e.g. [0.9, 0.999]; got "
                     "[0.9].",
    "batchsize = 3": "key 'batchsize': unknown key; did you mean 'batch_size'?",
    'dataset = "fashion_mnist"': "key 'dataset': 'fashion_mnist' is neither a built-in data set "
                                 "nor an existing path: {dir}/fashion_mnist does not exist "
                                 "(relative paths are relative to the spec file); did you mean "
                                 "'fashion-mnist'?",
    'dataset = "net.toml"': "key 'dataset': 'net.toml' is a file but not an .npz archive; give an "
                            "npz with arrays x and y, or a folder with one sub-folder per class.",
    "step_size = 5": "key 'step_size': applies only when schedule = 'step', but schedule is "
                     "'none'; remove step_size or set schedule.",
    "momentum = 0\nnesterov = true": "key 'nesterov': Nesterov momentum needs momentum > 0; set "
                                     "momentum (e.g. 0.9) or nesterov = false.",
    "warmup_epochs = 20": "key 'warmup_epochs': 20 warm-up epochs exceed the 10 epochs of "
                          "training; lower warmup_epochs or raise epochs.",
}


@pytest.mark.parametrize("line, expected", TRAINING_PROBLEMS.items(), ids=list(TRAINING_PROBLEMS))
def test_training_problem(tmp_path, line, expected):
    path = tmp_path / "net.toml"
    path.write_text(NET + '[[layers]]\ntype = "relu"\n[training]\n' + line + "\n")
    spec = read_spec(path)
    last = 5 + line.count("\n") + 1
    key = expected.split("'")[1]
    where = last if key not in ("nesterov",) else last
    expected = expected.replace("{dir}", str(tmp_path)).replace("give an npz", "give an .npz")
    assert [str(p) for p in spec.problems] == [f"{path}:{where} [training] {expected}"]


def test_training_table_must_be_a_table():
    assert [str(p) for p in parse('training = "fast"\n' + NET + '[[layers]]\ntype = "relu"\n'
                                  ).problems] == [
        "s.toml:1 [training]: must be a table ([training]); got \"fast\" (a string)."]


# -- files -------------------------------------------------------------------------------------

def test_read_spec_refuses_missing_directories_and_binary_files(tmp_path):
    with pytest.raises(SpecError) as err:
        read_spec(tmp_path / "nope.toml")
    assert str(err.value) == f"{tmp_path}/nope.toml: no such file; check the path (e.g. " \
                             f"specs/lenet.toml)."
    with pytest.raises(SpecError) as err:
        read_spec(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, not a spec file; give the path of a " \
                             f".toml file."
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError) as err:
        read_spec(tmp_path / "bin.toml")
    assert str(err.value) == f"{tmp_path}/bin.toml: is not UTF-8 text (byte 0 cannot be " \
                             f"decoded); save the spec as UTF-8."


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_spec_refuses_unreadable_files(tmp_path):
    path = tmp_path / "locked.toml"
    path.write_text(LENET)
    path.chmod(0)
    with pytest.raises(SpecError, match="locked.toml: cannot be read \\(Permission denied\\)"):
        read_spec(path)


# -- writing TOML back -------------------------------------------------------------------------

def test_parsed_spec_round_trips_through_emit_toml():
    for text in (LENET, RESNET):
        spec = parse(text)
        again = parse_spec(emit_toml(spec))
        assert again.problems == []
        assert layers(again) == layers(spec)
        assert again.input_shape == spec.input_shape and again.name == spec.name


def test_emit_toml_writes_only_training_keys_that_differ(tmp_path):
    spec = parse(LENET + '[training]\nlr = 0.1\nepochs = 10\ndataset = "shapes"\n')
    text = emit_toml(spec)
    assert text.endswith('[training]\ndataset = "shapes"\nlr = 0.1\n')
    assert parse_spec(text).training == spec.training


def test_dumps_round_trips_every_value_kind():
    document = {
        "title": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f unicode é 雪 🙂',
        "ints": [0, -1, 2**63 - 1, -(2**63)],
        "floats": [0.1, -0.0, 1e-300, 1.5e300, math.inf, -math.inf],
        "flags": [True, False],
        "when": datetime.date(2024, 2, 29),
        "nested": [[1, 2], [], ["a"]],
        "with spaces": {"a.b": 1, "x": {"y": [{"z": 1}]}},
        "empty": {},
        "rows": [{"n": 1, "t": {"k": "v"}}, {"n": 2}],
    }
    again = tomllib.loads(dumps(document))
    nan = tomllib.loads(dumps({"x": math.nan}))["x"]
    assert again == document and math.isnan(nan)


def test_dumps_refuses_values_toml_cannot_hold():
    with pytest.raises(TypeError, match="cannot write object"):
        dumps({"x": [object()]})


BUILDABLE = """\
[network]
input = [3, 16, 16]

[blocks.residual]
params = { ch = 8 }
[[blocks.residual.layers]]
name = "conv"
type = "conv2d"
out_channels = "$ch"
kernel = 3
padding = "same"
[[blocks.residual.layers]]
name = "bn"
type = "batchnorm2d"
[[blocks.residual.layers]]
type = "add"
inputs = ["bn", "$input"]

[[layers]]
name = "stem"
type = "conv2d"
out_channels = 8
kernel = [3, 5]
padding = [1, 2]
bias = false
[[layers]]
name = "stage"
block = "residual"
repeat = 2
[[layers]]
type = "separable_conv2d"
out_channels = 12
kernel = 3
[[layers]]
type = "maxpool2d"
kernel = 2
[[layers]]
type = "leaky_relu"
negative_slope = 0.2
[[layers]]
name = "skip"
type = "avgpool2d"
kernel = 2
input = "stage"
[[layers]]
type = "concat"
inputs = ["skip", "leaky_relu4"]
crop = true
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out_features = 10
"""


def test_graph_round_trip_spec_graph_toml_spec():
    graph_module = pytest.importorskip("declcnn.graph")
    if not hasattr(graph_module, "build_graph"):
        pytest.skip("declcnn.graph.build_graph is not written yet")
    for text in (LENET, BUILDABLE):
        graph = graph_module.build_graph(parse(text))
        again = graph_module.build_graph(parse_spec(emit_toml(graph)))
        assert [(n.name, n.type, n.config, n.inputs, n.output_shape) for n in again.nodes] == \
               [(n.name, n.type, n.config, n.inputs, n.output_shape) for n in graph.nodes]


def test_every_complete_example_in_the_spec_reference_is_valid():
    text = (Path(__file__).parent.parent / "docs" / "SPEC.md").read_text(encoding="utf-8")
    examples = [e for e in re.findall(r"```toml\n(.*?)```", text, re.S) if "[network]" in e]
    assert len(examples) == 5
    try:
        from declcnn.graph import build_graph
    except ImportError:
        build_graph = None
    for example in examples:
        spec = parse_spec(example, "SPEC.md")
        assert spec.problems == [], spec.problems
        if build_graph is not None:
            build_graph(spec)
    up = parse_spec(examples[3])
    assert [e.name for e in up.layers][-4:] == ["up1.upconv", "up1.cat", "up1.conv.conv2d0",
                                                "up1.conv.act1"]
