"""Theoretical receptive fields: published values, hand-derived values for every shipped spec,
each layer type's rule on small hand-built graphs, warnings, errors and the ``rf`` command.

The brute-force comparison with backpropagation is in ``tests/test_effective_rf.py``.
"""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from declcnn.cli import main
from declcnn.errors import DeclcnnError, ShapeError
from declcnn.graph import load_graph
from declcnn.graph.graph import Graph, Node
from declcnn.graph.receptive_field import receptive_field, unit_field

SPECS = Path(__file__).resolve().parent.parent / "specs"


def fields_of(name: str, input_size=None) -> dict:
    return {f.name: f for f in receptive_field(load_graph(SPECS / f"{name}.toml"), input_size)}


def square(field, rf, jump, begin, rf_min=None):
    """Both axes: size ``rf`` (smallest ``rf_min``), ``jump``, unit 0's field from ``begin``."""
    assert field.rf == (rf, rf), field
    assert field.rf_min == ((rf_min or rf),) * 2, field
    assert field.jump == (Fraction(jump),) * 2, field
    assert field.begin == (begin, begin), field


# -- published values (Araujo, Norris & Sim, Distill 2019; their library's table) ----------

def test_alexnet_matches_distill():
    # conv1 k11 s4: 11, jump 4 | pool1 k3 s2: 11 + 2·4 = 19, jump 8 | conv2 k5 p2:
    # 19 + 4·8 = 51, padding 2·8 = 16 | pool2 k3 s2: 51 + 2·8 = 67, jump 16 | conv3, conv4, conv5
    # k3 p1: + 2·16 each = 99, 131, 163, padding + 16 each = 64 | pool5 k3 s2: 163 + 2·16 = 195,
    # jump 32.  Distill's table: alexnet_v2 pool5 195, stride 32, effective padding 64.
    f = fields_of("alexnet")
    square(f["conv2"], 51, 8, -16)
    square(f["conv5"], 163, 16, -64)
    square(f["pool5"], 195, 32, -64)
    # The classifier sees every pool5 unit: 6 units from −64, the last ending at
    # −64 + 5·32 + 194 = 290: 355 pixels; jump 32·6 = 192 (as a kernel 6, stride 6 would).
    square(f["fc8"], 355, 192, -64)


def test_vgg16_matches_distill():
    # Per stage: each k3 p1 conv adds 2·jump, each k2 pool adds jump then doubles it:
    # 1 + 2·2 = 5, pool 6 (j2); + 2·2·2 = 14, pool 16 (j4); + 3·2·4 = 40, pool 44 (j8);
    # + 3·2·8 = 92, pool 100 (j16); + 3·2·16 = 196, pool 212 (j32).  Padding: 1 per conv at
    # its jump: 2·1 + 2·2 + 3·4 + 3·8 + 3·16 = 90.  Distill: vgg_16 pool5 212, 32, 90.
    f = fields_of("vgg16")
    square(f["pool1"], 6, 2, -2)
    square(f["pool4"], 100, 16, -42)
    square(f["pool5"], 212, 32, -90)
    assert f["pool5"].start == (Fraction(31, 2),) * 2  # −90 + (212 − 1)/2
    # fc6 sees the 7 pool5 units: −90 .. −90 + 6·32 + 211 = 313, 404 pixels.
    square(f["fc6"], 404, 224, -90)


def test_mobilenet_v1_matches_distill():
    # conv1 k3 s2 p1: 3, j2, padding 1.  Each depthwise k3 p1 adds 2·jump and 1·jump of padding
    # at the jump it reads; strides 2 in sep2, sep4, sep6, sep8.  Jumps read: sep1 2, sep2 2,
    # sep3 4, sep4 4, sep5 8, sep6 8, sep7×5 16, sep8 16, sep9 32; sum 156:
    # 3 + 2·156 = 315, padding 1 + 156 = 157.  Distill: mobilenet_v1 Conv2d_13_pointwise 315,
    # stride 32 (TF's "SAME" pads differently, so its effective padding differs from 157).
    f = fields_of("mobilenet_v1")
    square(f["sep9.pw"], 315, 32, -157)
    square(f["sep7.4.pw"], 219, 16, -109)  # Distill's Conv2d_11_pointwise: 219, 16


def test_resnet18():
    # conv1 k7 s2 p3: 7, j2, padding 3 | maxpool k3 s2 p1: 7 + 2·2 = 11, j4, padding 3 + 2 = 5 |
    # layer1: four k3 convs at j4: 11 + 4·8 = 43 | layer2: first conv stride 2 at j4: 51, then
    # three at j8: 99 | layer3: 99 + 16 = 115, + 3·32 = 211 | layer4: 211 + 32 = 243,
    # + 3·64 = 435; padding grows by half of each increase: 5 + (435 − 11)/2 = 217.
    # The 1×1 shortcuts see a subset of the main path, so the adds change nothing.
    f = fields_of("resnet18")
    square(f["layer1.1.add"], 43, 4, -21)
    square(f["layer2a.shortcut"], 43, 8, -21)
    square(f["layer3b.add"], 211, 16, -105)
    square(f["layer4b.add"], 435, 32, -217)
    assert not any(field.warnings for field in f.values())
    # avgpool: 7 units from −217 to −217 + 6·32 + 434 = 409: 627 pixels.
    square(f["fc"], 627, 224, -217)


def test_resnext():
    # stem k3 p1: 3 | stage1: 1×1, grouped k3 at j1: 5 | stage2 grouped k3 s2 at j1: 7, j2 |
    # stage3 grouped k3 s2 at j2: 7 + 2·2 = 11, j4, padding 1 + 1 + 1 + 2 = 5.
    f = fields_of("resnext")
    square(f["stage1.add"], 5, 1, -2)
    square(f["stage3.add"], 11, 4, -5)
    # global average over 8 units: −5 .. −5 + 7·4 + 10 = 33, 39 pixels; jump 4·8 = 32.
    square(f["classifier"], 39, 32, -5)


def test_rcnn_unrolls_the_recurrent_layers():
    # conv1 k5 p2: 5 | each rcl k3 with 3 steps is 1 + 3 stride-1 k3 convolutions: + 4·2 per
    # layer at j1: 13, 21 | pool2 k3 s2 p1: 23, j2 | rcl3, rcl4 at j2: + 4·4 each: 39, 55;
    # padding 2 + 4 + 4 + 1 + 8 + 8 = 27.
    f = fields_of("rcnn")
    square(f["rcl1"], 13, 1, -6)
    square(f["rcl4"], 55, 2, -27)
    # global max over 16 units: −27 .. −27 + 15·2 + 54 = 57, 85 pixels.
    square(f["classifier"], 85, 32, -27)


def test_lenet_and_spp():
    # LeNet: conv1 k5 p2: 5 | pool k2: 6, j2 | conv2 k5: 6 + 4·2 = 14 | pool: 16, j4; the
    # classifier sees pool2's 5 units: −2 .. −2 + 4·4 + 15 = 29, 32 pixels.
    f = fields_of("lenet")
    square(f["pool2"], 16, 4, -2)
    square(f["fc3"], 32, 20, -2)
    # SPP net: (conv k3 p1, pool k2) twice: 3, 4 (j2), 8, 10 (j4); conv3 k3 p1: 18; spp reads
    # all 16 units: −7 .. −7 + 15·4 + 17 = 70, 78 pixels; at 96×96 input, 24 units: 110.
    f = fields_of("spp")
    square(f["conv3"], 18, 4, -7)
    square(f["spp"], 78, 64, -7)
    square(fields_of("spp", (96, 96))["spp"], 110, 96, -7)


def test_unet():
    # Contracting path (no padding): two k3 convs add 2·2·j, a k2 pool adds j and doubles j:
    # 5, 6 | 14, 16 | 32, 36 | 68, 76 | bottom 76 + 4·16 = 140, j16, begin 0.
    # Expanding: an up-convolution k2 s2 gives unit o the field of unit ⌊o/2⌋ below.  At up4
    # the crop-concatenated skip (down4, field [8(o+4), 8(o+4) + 67]) lies inside the
    # up-convolution's [16⌊o/2⌋, 16⌊o/2⌋ + 139], and so at every level, so unit o's field is
    # [16⌊o/q⌋, 16⌊(o + r)/q⌋ + c]: conv1 reads o..o+2, conv2 o..o+4 of the concat.
    #   up4 (q 2): conv1 r 2, c 139: 140 + 16 = 156; conv2 r 4 − 2 = 2 more: c 155, 172.
    #   up3 (q 4): the concat is [16⌊o/4⌋, +171]; conv1: ⌊(o+2)/4⌋ − ⌊o/4⌋ is 0 or 1 → 172 or
    #   188; conv2: ⌊(o+4)/4⌋ − ⌊o/4⌋ = 1 → 188 for every unit.
    #   up2 (q 8): concat [16⌊o/8⌋, +187]; conv1 and conv2 read 3 and 5 units: 188 or 204.
    #   up1 (q 16): the same, 188 or 204; the 1×1 classifier keeps it.
    f = fields_of("unet")
    square(f["bottom.conv2"], 140, 16, 0)
    square(f["up4.conv.conv1"], 156, 8, 0)
    square(f["up4.conv.conv2"], 172, 8, 0)
    square(f["up3.conv.conv1"], 188, 4, 0, rf_min=172)
    square(f["up3.conv.conv2"], 188, 4, 0)
    square(f["up2.conv.conv2"], 204, 2, 0, rf_min=188)
    square(f["classifier"], 204, 1, 0, rf_min=188)
    # The skip's centre is not the up-convolution's: unit 0 of up1.concat reads down1 unit
    # 0 + (568 − 392)/2 = 88, centre 88 + 2 = 90; the up path's centre is (0 + 187)/2.
    assert f["up1.concat"].warnings == (
        "height: the fields of 'down1.relu2' and 'up1.upconv' are not centred alike (unit 0: "
        "centres 90 and 187/2); the union is reported.",
        "width: the fields of 'down1.relu2' and 'up1.upconv' are not centred alike (unit 0: "
        "centres 90 and 187/2); the union is reported.")


def test_unet_small():
    # "same" k3 convs pad 1 each: down1 5 (j1, begin −2), pool 6 | down2 14, pool 16 (j4) |
    # down3 32, pool 36 (j8) | bottom 36 + 4·8 = 68; each conv pads 1 unit at its jump:
    # 1 + 1 + 2 + 2 + 4 + 4 + 8 + 8 = 30.
    f = fields_of("unet_small")
    square(f["bottom.conv2"], 68, 8, -30)
    # up3: upconv k2 s2 keeps 68 at j4; its conv1 reads 3 units = 2 bottom units: 68 + 8 = 76
    # with 4 more pixels of padding (−38 reads bottom unit −1); conv2: 4 units = 2 or 3 bottom
    # units, but the first unit reads upconv −2..2 → bottom −1..1: 68 + 16 = 84.
    square(f["up3.conv.conv1"], 76, 4, -38)
    square(f["up3.conv.conv2"], 84, 4, -38)


def test_every_shipped_spec_has_fields():
    for path in sorted(SPECS.glob("*.toml")):
        fields = receptive_field(load_graph(path))
        assert all(f.rf[0] >= 1 and f.rf[1] >= 1 for f in fields), path


# -- each layer type's rule, on hand-built graphs --------------------------------------------

def graph(input_hw, *layers) -> Graph:
    """A chain (or, with explicit inputs, a graph) of (name, type, config, output_hw[, inputs])."""
    shapes = {"input": (1, *input_hw)}
    nodes, previous = [], "input"
    for layer in layers:
        name, kind, config, out_hw = layer[:4]
        inputs = layer[4] if len(layer) > 4 else [previous]
        shape = (1, *out_hw) if out_hw is not None else (7,)
        nodes.append(Node(name, kind, config, inputs, [shapes[i] for i in inputs], shape))
        shapes[name], previous = shape, name
    return Graph("g", (1, *input_hw), nodes)


def conv(k, s=1, p=0, d=1):
    pad = p if isinstance(p[0] if isinstance(p, tuple) else p, tuple) else None
    padding = pad or ((p, p), (p, p))
    return {"kernel": (k, k), "stride": (s, s), "padding": padding, "dilation": (d, d)}


def test_dilation_sees_what_the_wider_kernel_sees():
    (f,) = receptive_field(graph((9, 9), ("c", "conv2d", conv(3, d=2), (5, 5))))
    (g,) = receptive_field(graph((9, 9), ("c", "conv2d", conv(5), (5, 5))))
    assert f == g
    assert f.rf == (5, 5) and f.start == (2, 2)


def test_asymmetric_same_padding_shifts_the_centre():
    # kernel 4 "same": 1 pixel before, 2 after; unit 0 sees −1..2, centre 1/2.
    config = conv(4, p=((1, 2), (1, 2)))
    (f,) = receptive_field(graph((8, 8), ("c", "conv2d", config, (8, 8))))
    assert f.rf == (4, 4) and f.begin == (-1, -1)
    assert f.start == (Fraction(1, 2),) * 2


def test_pooling_with_ceil_mode_keeps_the_window():
    # 5 pixels, k2 s2 ceil: 3 units, the last hanging over; the field is still 2, jump 2.
    config = {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
              "ceil_mode": True}
    g = graph((5, 5), ("p", "maxpool2d", config, (3, 3)))
    (f,) = receptive_field(g)
    assert f.rf == (2, 2) and f.jump == (2, 2)
    assert unit_field(g, (2, 2), clip=False) == ((4, 5), (4, 5))
    assert unit_field(g, (2, 2)) == ((4, 4), (4, 4))  # the image ends at pixel 4


def test_transposed_convolution_field_depends_on_alignment():
    # k3 s2 p0 on 4 pixels → 9: output o reads input (o − t)/2 for t = 0, 1, 2 where exact:
    # even o reads o/2 − 1 and o/2 (2 pixels), odd o reads (o − 1)/2 only.
    config = {"kernel": (3, 3), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
              "output_padding": (0, 0)}
    g = graph((4, 4), ("t", "conv_transpose2d", config, (9, 9)))
    (f,) = receptive_field(g)
    assert f.rf == (2, 2) and f.rf_min == (1, 1)
    assert f.jump == (Fraction(1, 2),) * 2
    assert f.begin == (-1, -1)  # unit 0 reads the padding unit −1 and pixel 0
    assert unit_field(g, (0, 3)) == ((0, 0), (1, 1))
    # A kernel smaller than the stride leaves odd units seeing nothing.
    config = dict(config, kernel=(1, 1))
    g = graph((4, 4), ("t", "conv_transpose2d", config, (7, 7)))
    (f,) = receptive_field(g)
    assert f.rf == (1, 1) and f.rf_min == (0, 0)
    assert unit_field(g, (1, 2)) == (None, (1, 1))


def test_upsample_then_conv():
    # ×2 nearest: units 2u, 2u+1 see pixel u; a k2 conv after it sees 1 or 2 pixels.
    g = graph((4, 4), ("u", "upsample", {"scale": (2, 2)}, (8, 8)),
              ("c", "conv2d", conv(2), (7, 7)))
    up, c = receptive_field(g)
    assert up.rf == (1, 1) and up.jump == (Fraction(1, 2),) * 2
    assert c.rf == (2, 2) and c.rf_min == (1, 1) and c.jump == (Fraction(1, 2),) * 2


def test_crop_shifts_the_start():
    # Centre crop 10 → 6 keeps pixels 2..7: unit 0 is pixel 2; 9 → 6 keeps 1..6.
    (f,) = receptive_field(graph((10, 9), ("c", "crop", {"size": (6, 6)}, (6, 6))))
    assert f.begin == (2, 1) and f.rf == (1, 1)


def test_global_layers_see_the_whole_input():
    g = graph((6, 4), ("c", "conv2d", conv(3, p=1), (6, 4)),
              ("g", "global_avgpool", {}, (1, 1)), ("f", "flatten", {}, None),
              ("l", "linear", {}, None))
    c, gp, fl, lin = receptive_field(g)
    # 6 rows from −1, the last ending at −1 + 5 + 2 = 6: 8 rows; 4 columns: 6.
    assert gp.rf == (8, 6) and gp.begin == (-1, -1) and gp.jump == (6, 4)
    assert fl.rf == lin.rf == gp.rf and lin.output == (7, 1, 1)


def test_rcl_widens_with_its_steps():
    config = {"kernel": (3, 3), "steps": 2}
    (f,) = receptive_field(graph((8, 8), ("r", "rcl", config, (8, 8))))
    assert f.rf == (7, 7) and f.begin == (-3, -3)  # 1 + 2 steps = 3 convolutions of k3


def test_concat_of_different_jumps_warns():
    # 8 pixels: a k4 s2 p1 conv and a k5 conv both give 4 units; unit i sees
    # [2i − 1, 2i + 2] ∪ [i, i + 4]: unit 0 [−1, 4] and unit 3 [3, 8] (6 pixels), units 1 and 2
    # [1, 5] and [2, 6] (5 pixels).
    g = graph((8, 8), ("a", "conv2d", conv(4, s=2, p=1), (4, 4), ["input"]),
              ("b", "conv2d", conv(5), (4, 4), ["input"]),
              ("m", "concat", {"crop": False}, (4, 4), ["a", "b"]))
    m = receptive_field(g)[-1]
    assert m.rf == (6, 6) and m.rf_min == (5, 5)
    assert m.jump == (2, 2)
    assert m.warnings[0] == (
        "height: the inputs' effective strides differ ('a' 2, 'b' 1), so the union's field "
        "changes from unit to unit; the largest jump and field are reported.")


def test_add_of_misaligned_paths_warns_and_takes_the_union():
    # k3 p0 on 7 pixels and a 7→5 crop: unit 0 sees 0..2 (centre 1) and pixel 1.
    g = graph((7, 7), ("a", "conv2d", conv(3), (5, 5), ["input"]),
              ("b", "crop", {"size": (5, 5)}, (5, 5), ["input"]),
              ("s", "add", {}, (5, 5), ["a", "b"]))
    assert not receptive_field(g)[-1].warnings
    g = graph((7, 7), ("a", "conv2d", conv(3), (5, 5), ["input"]),
              ("b", "conv2d", conv(2), (6, 6), ["input"]),
              ("c", "crop", {"size": (5, 5)}, (5, 5), ["b"]),
              ("s", "add", {}, (5, 5), ["a", "c"]))
    s = receptive_field(g)[-1]
    # 'c' unit 0 is 'b' unit 0 (crop 6 → 5 keeps 0..4): pixels 0..1, centre 1/2.
    assert s.rf == (3, 3)
    assert s.warnings[1] == (
        "width: the fields of 'a' and 'c' are not centred alike (unit 0: centres 1 and 1/2); "
        "the union is reported.")


# -- errors ----------------------------------------------------------------------------------

def test_flat_input_is_refused():
    g = Graph("mlp", (10,), [Node("l", "linear", {}, ["input"], [(10,)], (3,))])
    with pytest.raises(ShapeError) as err:
        receptive_field(g)
    assert str(err.value) == (
        "network 'mlp' takes a flat input of 10 features; receptive fields need an image input "
        "(channels, height, width). Give the spec's [network] input as [C, H, W].")


def test_unknown_type_and_unit_are_refused():
    g = graph((4, 4), ("x", "mystery", {}, (4, 4)))
    with pytest.raises(DeclcnnError, match="layer 'x' has type 'mystery', whose receptive field "
                                           "is not known; known types: add, avgpool2d"):
        receptive_field(g)
    g = graph((4, 4), ("c", "conv2d", conv(3), (2, 2)))
    with pytest.raises(ShapeError) as err:
        unit_field(g, (0, 2))
    assert str(err.value) == ("layer 'c' has 2 units along its width; unit index 2 is outside "
                              "0..1.")


def test_network_is_accepted_through_its_graph():
    class Holder:
        graph = load_graph(SPECS / "lenet.toml")

    assert receptive_field(Holder())[-1].rf == (32, 32)


# -- the command -----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, ["rf", *map(str, args)])


def test_cli_json():
    result = run(SPECS / "vgg16.toml", "--layer", "pool5", "--json")
    assert result.exit_code == 0, result.output
    (pool5,) = json.loads(result.output)
    assert pool5["name"] == "pool5" and pool5["type"] == "maxpool2d"
    assert pool5["output"] == [512, 7, 7] and pool5["rf"] == [212, 212]
    assert pool5["jump"] == [32, 32] and pool5["start"] == [15.5, 15.5]
    assert pool5["begin"] == [-90, -90]


def test_cli_table_input_and_layer_of_a_block():
    result = run(SPECS / "alexnet.toml", "--input", "300x200", "--layer", "pool5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "alexnet: input 3×300×200"
    assert lines[2].split() == ["pool5", "maxpool2d", "256×8×5", "195", "195", "32", "33",
                                "-64"]
    result = run(SPECS / "resnet18.toml", "--layer", "layer4b", "--json")
    assert json.loads(result.output)[0]["name"] == "layer4b.relu2"


def test_cli_warnings_and_errors():
    result = run(SPECS / "unet.toml")
    assert result.exit_code == 0
    assert ("warning: layer 'up4.concat': height: the fields of 'down4.relu2' and 'up4.upconv' "
            "are not centred alike") in result.output
    result = run(SPECS / "vgg16.toml", "--layer", "pool9")
    assert result.exit_code == 1
    assert result.output == (
        "error: --layer: network 'vgg16' has no layer 'pool9'; did you mean 'pool5'? Its layers "
        f"are listed by 'declcnn rf {SPECS / 'vgg16.toml'}'.\n")
    result = run(SPECS / "vgg16.toml", "--input", "3x0")
    assert result.exit_code == 2
    assert ("Invalid value for '--input': must be HxW (e.g. 224x224) or one size for both, each "
            "a whole number ≥ 1; got '3x0'.") in result.output
    result = run(SPECS / "vgg16.toml", "--input", "20x20")
    assert result.exit_code == 1 and "the output would be 0×0 pixels" in result.output
    result = run(SPECS / "vgg16.toml", "--png", "x.png")
    assert result.exit_code == 1
    assert result.output == "error: --png draws the effective receptive field; add --erf.\n"


def test_unet_in_well_under_a_second():
    start = time.perf_counter()
    result = run(SPECS / "unet.toml")
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0
    assert elapsed < 1.0, f"declcnn rf specs/unet.toml took {elapsed:.2f} s"
