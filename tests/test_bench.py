"""The per-layer profile and ``declcnn bench``: what they report, never how fast anything ran."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from declcnn.cli import main
from declcnn.errors import DeclcnnError
from declcnn.graph import load_graph
from declcnn.runtime import load, loads
from declcnn.runtime.profile import profile_network

SPECS = Path(__file__).resolve().parents[1] / "specs"

# A pooling layer before the first parameter: with the input getting no gradient, nothing
# flows back through it, so its backward never runs.
POOL_FIRST = """
[network]
name = "pool_first"
input = [2, 12, 12]
[[layers]]
name = "pool"
type = "maxpool2d"
kernel = 2
[[layers]]
name = "conv"
type = "conv2d"
out_channels = 3
kernel = 3
[[layers]]
name = "relu"
type = "relu"
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
out_features = 4
"""

FLAT = """
[network]
name = "flat"
input = [5]
[[layers]]
name = "fc"
type = "linear"
out_features = 2
"""


def run(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def test_around_hook_sees_every_node_and_changes_nothing():
    net, twin = load(SPECS / "lenet.toml"), load(SPECS / "lenet.toml")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 28, 28), dtype=np.float32)
    grad_out = rng.standard_normal((3, 10), dtype=np.float32)
    seen = []

    def around(node, run, *args):
        seen.append(node.name)
        return run(*args)

    np.testing.assert_array_equal(net.forward(x, around=around), twin.forward(x))
    names = [node.name for node in net.graph.nodes]
    assert seen == names
    seen.clear()
    net.backward(grad_out, input_grad=False, around=around)
    twin.backward(grad_out, input_grad=False)
    assert seen == names[::-1]
    for name, grad in twin.grads.items():
        np.testing.assert_array_equal(net.grads[name], grad, err_msg=name)


def test_profile_rows_follow_the_graph():
    net = load(SPECS / "lenet.toml")
    profile = profile_network(net, batch_size=4, repeats=2, warmup=1)
    nodes = net.graph.nodes
    assert [(r.name, r.type) for r in profile.layers] == [(n.name, n.type) for n in nodes]
    assert [r.output_shape for r in profile.layers] == [(4, *n.output_shape) for n in nodes]
    assert all(r.forward_ms > 0 and r.backward_ms > 0 for r in profile.layers)
    assert sum(r.share for r in profile.layers) == pytest.approx(1)
    assert profile.forward_ms > 0 and profile.forward_backward_ms > 0
    assert profile.images_per_second == pytest.approx(4e3 / profile.forward_backward_ms)
    assert (profile.network, profile.input_shape, profile.batch_size) == ("lenet", (1, 28, 28), 4)


def test_layers_before_every_parameter_have_no_backward():
    profile = profile_network(loads(POOL_FIRST), batch_size=2, repeats=1, warmup=0)
    backward = {r.name: r.backward_ms for r in profile.layers}
    assert backward["pool"] is None
    assert all(backward[name] is not None for name in ("conv", "relu", "flatten", "fc"))


@pytest.mark.parametrize("options, message", [
    (dict(batch_size=0), "profile: batch size must be a whole number ≥ 1; got 0."),
    (dict(repeats=0), "profile: repeats must be a whole number ≥ 1; got 0."),
    (dict(warmup=-1), "profile: warm-up runs must be a whole number ≥ 0; got -1."),
])
def test_profile_refuses_bad_counts(options, message):
    with pytest.raises(DeclcnnError) as err:
        profile_network(loads(FLAT), **options)
    assert str(err.value) == message


def test_cli_table_has_a_row_per_layer_and_totals():
    result = run(SPECS / "lenet.toml", "--batch-size", 2, "--threads", 1, "--repeats", 1,
                 "--warmup", 0)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("lenet: input 1×28×28, batch 2, 1 thread; median of 1 runs")
    assert lines[1].split() == ["layer", "type", "output", "forward", "ms", "backward", "ms",
                                "share", "algorithms", "(fwd", "/", "dx", "/", "dw)"]
    nodes = load_graph(SPECS / "lenet.toml").nodes
    for line, node in zip(lines[2:], nodes, strict=False):
        name, type_, output, *_ = line.split()
        assert (name, type_, output) == (node.name, node.type,
                                         "×".join(map(str, (2, *node.output_shape))))
    assert lines[2 + len(nodes)].startswith("sum of layers")
    assert lines[3 + len(nodes)].startswith("whole forward:")
    assert lines[4 + len(nodes)].startswith("whole forward + backward:")
    assert "images/s" in lines[4 + len(nodes)]
    # every conv layer names its three algorithms in the table and says why below it
    conv2 = next(line for line in lines if line.startswith("conv2 "))
    assert conv2.split()[-5:-3] and conv2.count(" / ") == 2
    why = lines.index("why (the conv plan, declcnn/ops/conv_plan.py):")
    assert [line.split(":")[0].strip() for line in lines[why + 1:]] == [
        f"{conv} {label}" for conv in ("conv1", "conv2")
        for label in ("forward", "input gradient", "weight gradient")]


def test_cli_json_with_another_input_size(tmp_path):
    spec = tmp_path / "pool_first.toml"
    spec.write_text(POOL_FIRST)
    result = run(spec, "--json", "--input", "16x20", "-b", 3, "--repeats", 1, "--warmup", 0)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["input_shape"] == [2, 16, 20] and report["batch_size"] == 3
    assert [layer["name"] for layer in report["layers"]] == ["pool", "conv", "relu", "flatten",
                                                              "fc"]
    assert report["layers"][1]["output_shape"] == [3, 3, 6, 8]
    assert report["layers"][0]["backward_ms"] is None
    assert report["layers"][0]["algorithms"] == {}
    assert set(report["layers"][1]["algorithms"]) == {"forward", "input_grad", "weight_grad"}
    assert {"forward_ms", "forward_backward_ms", "images_per_second",
            "forward_images_per_second", "threads", "repeats", "warmup"} <= report.keys()


def test_cli_errors_are_one_paragraph(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text(FLAT)
    for args, message in [
        (["missing.toml"], "error: missing.toml: no such file"),
        ([SPECS / "lenet.toml", "-b", 10**12], "error: batch size 1000000000000: network "
                                               "'lenet' would keep"),
        ([SPECS / "lenet.toml", "--input", "3x3"], "error: "),
        ([flat, "--input", "8x8"], "error: --input: network 'flat' takes flat input of 5 "
                                   "features, which has no height and width; leave --input out."),
    ]:
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(message), result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "the input 6×1×1 is too small" in run(SPECS / "lenet.toml", "--input", "3x3").output


@pytest.mark.parametrize("args", [["--input", "0x5"], ["--input", "big"], ["-b", "0"],
                                  ["--repeats", "0"], ["--threads", "0"]])
def test_cli_malformed_options_are_usage_errors(args):
    result = run(SPECS / "lenet.toml", *args)
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert "Traceback" not in result.output
