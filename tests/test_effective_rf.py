"""The theoretical field against backpropagation, and the effective receptive field.

Brute force: for random small specs (sequential and branching; strides, dilation, padding,
transposed convolution, upsampling, average pooling with ceil mode, crops, rcl, add and
crop-concat), the field ``unit_field`` gives each output unit must be the bounding box of the
input pixels whose gradient is non-zero when that unit alone is backpropagated.  Two oracles:

* the runtime's own backward pass, with every parameter positive, batch norm and dropout in
  evaluation mode and no ReLUs (so no gradient can cancel or be cut);
* a naive 2-D reachability backprop in numpy (below), independent of the per-axis tables.

Fields are per axis, which is exact unless a merge reads a unit that sees no pixel along one
axis only (module docstring of ``declcnn.graph.receptive_field``).  The specs avoid such units:
conv padding at most half the dilated kernel, transposed convolutions with kernel ≥ stride and
output_padding ≤ padding (the output_padding units would otherwise read only past the input).
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from declcnn.errors import DeclcnnError, SpecError
from declcnn.graph import load_graph
from declcnn.graph.receptive_field import receptive_field, unit_field

SPECS_PER_ORACLE = 200
UNITS_PER_SPEC = 48


# -- random specs ----------------------------------------------------------------------------

def _layer(rng, name: str, source: str) -> list[str]:
    """One random layer reading ``source`` as TOML lines."""
    kind = rng.choice(["conv2d", "conv2d", "avgpool2d", "conv_transpose2d", "upsample", "crop",
                       "batchnorm2d", "dropout", "rcl"])
    lines = [f'name = "{name}"', f'type = "{kind}"', f'input = "{source}"']
    if kind == "conv2d":
        k, s, d = rng.integers(1, 5), rng.integers(1, 4), rng.integers(1, 4)
        most = d * (k - 1) // 2
        padding = rng.choice([f"{rng.integers(0, most + 1)}", '"same"' if s == 1 else "0",
                              f"[[{rng.integers(0, most + 1)}, {rng.integers(0, most + 1)}], "
                              f"[{rng.integers(0, most + 1)}, {rng.integers(0, most + 1)}]]"])
        lines += ["out_channels = 2", f"kernel = {k}", f"stride = {s}", f"dilation = {d}",
                  f"padding = {padding}"]
    elif kind == "avgpool2d":
        k = rng.integers(1, 4)
        lines += [f"kernel = {k}", f"stride = {rng.integers(1, 4)}",
                  f"padding = {rng.integers(0, k // 2 + 1)}",
                  f"ceil_mode = {'true' if rng.random() < 0.5 else 'false'}"]
    elif kind == "conv_transpose2d":
        s = rng.integers(1, 4)
        k, p = rng.integers(s, 5), rng.integers(0, 3)
        lines += ["out_channels = 2", f"kernel = {k}", f"stride = {s}", f"padding = {p}",
                  f"output_padding = {rng.integers(0, min(s - 1, p) + 1)}"]
    elif kind == "upsample":
        lines += [f"scale = {rng.integers(1, 4)}"]
    elif kind == "crop":
        lines += [f"size = [{rng.integers(3, 9)}, {rng.integers(3, 9)}]"]
    elif kind == "rcl":
        lines += ["out_channels = 2", f"kernel = {rng.integers(1, 4)}",
                  f"steps = {rng.integers(1, 3)}"]
    return lines


def random_spec(rng) -> str:
    """A spec of 1–4 steps; a step is a layer or two short paths merged by add or concat."""
    h, w = rng.integers(5, 20, size=2)
    tables = [f'[network]\nname = "random"\ninput = [2, {h}, {w}]\n']
    count, current = 0, "input"

    def add(lines):
        tables.append("[[layers]]\n" + "\n".join(lines) + "\n")

    for _ in range(rng.integers(1, 5)):
        if rng.random() < 0.4:
            ends = []
            for path_length in (rng.integers(1, 3), rng.integers(0, 3)):
                end = current
                for _ in range(path_length):
                    count += 1
                    add(_layer(rng, f"l{count}", end))
                    end = f"l{count}"
                ends.append(end)
            count += 1
            merge = ('type = "add"' if rng.random() < 0.5 else 'type = "concat"\ncrop = true')
            add([f'name = "l{count}"', merge, f'inputs = ["{ends[0]}", "{ends[1]}"]'])
        else:
            count += 1
            add(_layer(rng, f"l{count}", current))
        current = f"l{count}"
    return "\n".join(tables)


def random_graphs(seed: int, count: int):
    """``count`` random graphs that build, whose every map is at most 48 pixels a side."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        text = random_spec(rng)
        try:
            graph = load_graph(text)
        except SpecError:
            continue
        if any(max(n.output_shape[1:]) > 48 for n in graph.nodes):
            continue
        made += 1
        yield text, graph


def output_units(graph, rng) -> list[tuple[int, int]]:
    _, h, w = graph.output.output_shape
    units = [(i, j) for i in range(h) for j in range(w)]
    if len(units) > UNITS_PER_SPEC:
        chosen = rng.choice(len(units), UNITS_PER_SPEC, replace=False)
        units = [units[k] for k in sorted(chosen)]
    return units


def bounding_box(mask: np.ndarray):
    """Per axis (lo, hi) of the True pixels, or None where there are none."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None, None
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


def check_units(graph, text, units, masks) -> int:
    """Compare each unit's theoretical field with its mask's bounding box; count the checks."""
    for unit, mask in zip(units, masks, strict=True):
        expected = unit_field(graph, unit)
        if None in expected:
            expected = (None, None)
        assert bounding_box(mask) == expected, f"unit {unit} of\n{text}"
    return len(units)


# -- the numpy oracle: which input pixels can reach an output unit ---------------------------

def _windows(out_size: int, in_size: int, kernel: int, stride: int, begin: int, dilation: int):
    """Per tap, (output indices, input indices) of the pairs inside both maps."""
    out = np.arange(out_size)
    pairs = []
    for t in range(kernel):
        src = stride * out - begin + dilation * t
        keep = (src >= 0) & (src < in_size)
        pairs.append((out[keep], src[keep]))
    return pairs


def _through_window(mask, in_hw, kernels, strides, begins, dilations):
    reached = np.zeros(in_hw, bool)
    rows = _windows(mask.shape[0], in_hw[0], kernels[0], strides[0], begins[0], dilations[0])
    cols = _windows(mask.shape[1], in_hw[1], kernels[1], strides[1], begins[1], dilations[1])
    for out_r, in_r in rows:
        for out_c, in_c in cols:
            reached[np.ix_(in_r, in_c)] |= mask[np.ix_(out_r, out_c)]
    return reached


def _transposed_window(mask, in_hw, config):
    # Input u writes output u·s − p + d·t: the input reaches the outputs it writes.
    reached = np.zeros(in_hw, bool)
    per_axis = []
    for axis in (0, 1):
        u = np.arange(in_hw[axis])
        taps = []
        for t in range(config["kernel"][axis]):
            out = u * config["stride"][axis] - config["padding"][axis] + \
                config["dilation"][axis] * t
            keep = (out >= 0) & (out < mask.shape[axis])
            taps.append((u[keep], out[keep]))
        per_axis.append(taps)
    for in_r, out_r in per_axis[0]:
        for in_c, out_c in per_axis[1]:
            reached[np.ix_(in_r, in_c)] |= mask[np.ix_(out_r, out_c)]
    return reached


def _crop_into(mask, in_hw):
    reached = np.zeros(in_hw, bool)
    top, left = (in_hw[0] - mask.shape[0]) // 2, (in_hw[1] - mask.shape[1]) // 2
    reached[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
    return reached


def reach_back(node, mask) -> list[np.ndarray]:
    """The input masks that ``mask`` (output units) of ``node`` depends on."""
    c = node.config
    hws = [tuple(s[1:]) for s in node.input_shapes]
    kind = node.type
    if kind == "conv2d":
        return [_through_window(mask, hws[0], c["kernel"], c["stride"],
                                [p[0] for p in c["padding"]], c["dilation"])]
    if kind == "avgpool2d":
        return [_through_window(mask, hws[0], c["kernel"], c["stride"], c["padding"], (1, 1))]
    if kind == "conv_transpose2d":
        return [_transposed_window(mask, hws[0], c)]
    if kind == "upsample":
        sh, sw = c["scale"]
        return [mask.reshape(hws[0][0], sh, hws[0][1], sw).any(axis=(1, 3))]
    if kind in ("crop", "concat"):
        return [_crop_into(mask, hw) for hw in hws]
    if kind == "rcl":
        k = c["kernel"]
        begins = [(kk - 1) // 2 for kk in k]

        def same(m):
            return _through_window(m, m.shape, k, (1, 1), begins, (1, 1))

        # s_t reads ff(u) and rec(s_{t−1}): u is reached through ff after 0..steps recurrences.
        state, reached = mask, same(mask)
        for _ in range(c["steps"]):
            state = same(state)
            reached |= same(state)
        return [reached]
    return [mask] * len(hws)  # add, batch norm, dropout: unit for unit


def numpy_masks(graph, units) -> list[np.ndarray]:
    masks = []
    for unit in units:
        wanted = {graph.output.name: np.zeros(graph.output.output_shape[1:], bool)}
        wanted[graph.output.name][unit] = True
        for node in reversed(graph.nodes):
            if node.name not in wanted:
                continue
            for name, reached in zip(node.inputs, reach_back(node, wanted.pop(node.name)),
                                     strict=True):
                wanted[name] = wanted[name] | reached if name in wanted else reached
        masks.append(wanted["input"])
    return masks


def runtime_masks(graph, units) -> list[np.ndarray]:
    from declcnn.runtime import Network

    network = Network(graph, dtype=np.float64).eval()
    rng = np.random.default_rng(1)
    for value in network.params.values():
        value[...] = rng.uniform(0.5, 1.0, value.shape)
    x = rng.uniform(0.5, 1.0, (len(units), *graph.input_shape))
    y = network.forward(x)
    grad = np.zeros_like(y)
    for b, (i, j) in enumerate(units):
        grad[b, :, i, j] = 1.0
    return list(network.backward(grad).sum(axis=1) != 0)


def _runtime_or_skip():
    try:
        import declcnn.runtime  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the runtime cannot be imported yet: {err}")


@pytest.mark.parametrize("oracle", ["numpy", "runtime"])
def test_fields_equal_backpropagated_support(oracle):
    if oracle == "runtime":
        _runtime_or_skip()
    masks_of = numpy_masks if oracle == "numpy" else runtime_masks
    rng = np.random.default_rng(7)
    checked = 0
    for text, graph in random_graphs(seed=2024, count=SPECS_PER_ORACLE):
        units = output_units(graph, rng)
        checked += check_units(graph, text, units, masks_of(graph, units))
    assert checked > SPECS_PER_ORACLE * 10


def test_theory_equals_clipped_field_away_from_the_borders():
    """Where a unit's theoretical field lies inside the image and no crop moves the padding
    into it, the theory (padding units included) is the real field."""
    compared = 0
    for _, graph in random_graphs(seed=99, count=SPECS_PER_ORACLE):
        if any(n.type in ("crop", "concat") for n in graph.nodes):
            continue
        _, h, w = graph.output.output_shape
        for unit in [(i, j) for i in range(h) for j in range(w)][::7]:
            theory = unit_field(graph, unit, clip=False)
            if None in theory:
                continue
            (top, bottom), (left, right) = theory
            if top >= 0 and left >= 0 and bottom < graph.input_shape[1] and \
                    right < graph.input_shape[2]:
                assert unit_field(graph, unit) == theory
                compared += 1
    assert compared > 100


def test_layer_sizes_are_the_extremes_of_unit_fields():
    for _, graph in random_graphs(seed=5, count=40):
        last = receptive_field(graph)[-1]
        _, h, w = graph.output.output_shape
        sizes = [[], []]
        for i in range(h):
            for axis, extent in enumerate(unit_field(graph, (i, min(i, w - 1)), clip=False)):
                sizes[axis].append(0 if extent is None else extent[1] - extent[0] + 1)
        assert last.h.size == max(sizes[0]) and last.h.size_min == min(sizes[0])


# -- the effective receptive field -----------------------------------------------------------

CONV_SPEC = """
[network]
name = "two_convs"
input = [1, 15, 11]

[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 2
kernel = 3
padding = 1

[[layers]]
name = "pool"
type = "avgpool2d"
kernel = 2

[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 3
kernel = 3
"""


def _network(text, positive=True):
    from declcnn.runtime import Network

    network = Network(load_graph(text), seed=3)
    if positive:
        for value in network.params.values():
            value[...] = np.abs(value) + 0.1
    return network


def test_erf_of_one_convolution_with_equal_weights():
    _runtime_or_skip()
    from declcnn.runtime.effective_rf import effective_receptive_field

    text = CONV_SPEC.split("[[layers]]\nname = \"pool\"")[0]
    network = _network(text)
    network.params["conv1.weight"][...] = 1.0
    result = effective_receptive_field(network, samples=3)
    # Output 15×11, centre unit (7, 5): every input pixel of rows 6..8, columns 4..6 gets
    # |∂/∂x| = 2 (one per output channel); a centred 1×1 holds a third of each marginal, so
    # every mass needs the full 3×3.
    expected = np.zeros((15, 11))
    expected[6:9, 4:7] = 2.0
    np.testing.assert_allclose(result.heat, expected)
    assert result.unit == (7, 5) and result.field == ((6, 8), (4, 6))
    assert result.extents == {0.5: (3, 3), 0.9: (3, 3), 0.99: (3, 3)}


def test_erf_support_is_the_theoretical_field():
    _runtime_or_skip()
    from declcnn.runtime.effective_rf import effective_receptive_field

    network = _network(CONV_SPEC)
    result = effective_receptive_field(network, samples=4)
    # conv2's 5×3 output, centre (2, 1): conv2 reads pool 2..4 × 1..3, pool reads conv1
    # 4..9 × 2..7, conv1 reads pixels 3..10 × 1..8 (8 pixels = rf 3 + 1·2 + 2·... per axis:
    # 3, pool 4 (j2), conv2 4 + 2·2 = 8).
    assert bounding_box(result.heat > 0) == ((3, 10), (1, 8))
    assert result.field == ((3, 10), (1, 8)) and result.theory.rf == (8, 8)
    assert result.centre == (Fraction(13, 2), Fraction(9, 2))


def test_erf_of_an_inner_layer_uses_the_networks_parameters():
    _runtime_or_skip()
    from declcnn.runtime.effective_rf import effective_receptive_field

    network = _network(CONV_SPEC)
    network.params["conv1.weight"][...] = 0.0
    network.params["conv1.weight"][:, :, 1, 1] = 1.0  # conv1 is the identity, twice
    result = effective_receptive_field(network, "conv1", samples=2)
    assert result.unit == (7, 5)
    expected = np.zeros((15, 11))
    expected[7, 5] = 1.0  # one of the two channels' unit gradient reaches each of them
    np.testing.assert_allclose(result.heat, 2 * expected)
    assert result.extents[0.99] == (1, 1)


def test_erf_of_a_flat_output_is_the_mean_and_of_dead_weights_is_noted():
    _runtime_or_skip()
    from declcnn.runtime.effective_rf import effective_receptive_field

    text = CONV_SPEC + '\n[[layers]]\nname = "flat"\ntype = "flatten"\n'
    network = _network(text)
    result = effective_receptive_field(network, samples=2)
    assert result.unit is None and result.field == ((-1, 14), (-1, 10))
    # The pool drops conv1's row 14, but its row 13 reads pixel 14: the whole image.
    assert bounding_box(result.heat > 0) == ((0, 14), (0, 10))
    for value in network.params.values():
        value[...] = 0.0
    result = effective_receptive_field(network, samples=2)
    assert result.extents[0.5] == (0, 0)
    assert result.notes == ["the gradient is zero everywhere (dead ReLUs or zero weights?); no "
                            "extent can be measured."]
    with pytest.raises(DeclcnnError, match="samples must be an integer ≥ 1; got 0."):
        effective_receptive_field(network, samples=0)


def test_cli_erf_json_and_png(tmp_path):
    _runtime_or_skip()
    from click.testing import CliRunner

    from declcnn.cli import main

    spec = tmp_path / "two_convs.toml"
    spec.write_text(CONV_SPEC)
    png = tmp_path / "erf.png"
    result = CliRunner().invoke(main, ["rf", str(spec), "--erf", "--samples", "3", "--json",
                                       "--png", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["layer"] == "conv2" and report["unit"] == [2, 1] and report["rf"] == [8, 8]
    assert report["field"] == [[3, 10], [1, 8]] and set(report["extents"]) == {"0.5", "0.9",
                                                                             "0.99"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_erf_with_weights(tmp_path):
    _runtime_or_skip()
    from click.testing import CliRunner

    from declcnn.cli import main

    checkpoints = pytest.importorskip("declcnn.train.checkpoint", exc_type=ImportError)
    spec = tmp_path / "two_convs.toml"
    spec.write_text(CONV_SPEC)
    Checkpoint, save_checkpoint = checkpoints.Checkpoint, checkpoints.save_checkpoint
    state = _network(CONV_SPEC).state_dict()
    weights = tmp_path / "zero.npz"
    save_checkpoint(weights, Checkpoint({k: np.zeros_like(v) for k, v in state.items()}, {}))
    result = CliRunner().invoke(main, ["rf", str(spec), "--erf", "--weights", str(weights),
                                       "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert "warning: the gradient is zero everywhere" in result.output
    save_checkpoint(weights, Checkpoint({"conv1.weight": np.zeros((1, 1, 1, 1))}, {}))
    result = CliRunner().invoke(main, ["rf", str(spec), "--erf", "--weights", str(weights)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {weights}: network 'two_convs'")
