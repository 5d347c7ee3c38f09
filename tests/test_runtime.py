"""The runtime against PyTorch: every node type forward and backward, fan-out, modes, state dicts,
input checks, a float64 finite-difference check of a whole network, and RCL's unrolling.

``TorchGraph`` runs a declcnn ``Graph`` with ``torch.nn.functional``, layer by layer, from the
node configs; PyTorch computes every value and gradient (autograd), so declcnn's nodes and
backward pass are compared with an independent implementation.  ``tests/test_specs_torch.py``
uses it for the shipped specs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from oracle import assert_close, gradcheck, torch_or_skip

from declcnn.errors import CheckpointError, DeclcnnError, ShapeError
from declcnn.graph import Graph, Node
from declcnn.graph.layers import INIT_CHOICES
from declcnn.runtime import Network, load, loads
from declcnn.runtime import init as initialisers
from declcnn.shapes import centre_crop_offset

# PyTorch's padding="same" with an even kernel warns that it copies the input; that is fine here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def spec(input_shape, *layers: str) -> str:
    """A spec text: ``input_shape`` and ``[[layers]]`` bodies such as ``'name="c" type=...'``."""
    head = f'[network]\nname = "t"\ninput = {list(input_shape)}\n'
    return head + "".join("\n[[layers]]\n" + "\n".join(layer.split(";")) + "\n"
                          for layer in layers)


# -- PyTorch twin of a Graph -------------------------------------------------------------------

def _crop(x, size):
    top = (x.shape[2] - size[0]) // 2
    left = (x.shape[3] - size[1]) // 2
    return x[:, :, top:top + size[0], left:left + size[1]]


def _torch_conv(F, x, weight, bias, padding, stride=(1, 1), dilation=(1, 1), groups=1):
    (top, bottom), (left, right) = padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, 0, dilation,
                    groups)


def _torch_rcl(F, torch, c, p, x):
    """Liang & Hu's RCL unrolled explicitly: the feed-forward conv applied afresh at each
    step, PyTorch's own padding="same"."""
    def feedforward(u):
        return F.conv2d(u, p["feedforward.weight"], p.get("feedforward.bias"), padding="same")

    state = torch.relu(feedforward(x))
    for _ in range(c["steps"]):
        state = torch.relu(feedforward(x) + F.conv2d(state, p["recurrent.weight"], None,
                                                     padding="same"))
    return state


def _torch_layer(torch, node, xs, p, b, training, dropout_mask):
    F = torch.nn.functional
    c = node.config
    x = xs[0]
    kind = node.type
    if kind == "conv2d":
        return _torch_conv(F, x, p["weight"], p.get("bias"), c["padding"], c["stride"],
                           c["dilation"], c["groups"])
    if kind == "conv_transpose2d":
        return F.conv_transpose2d(x, p["weight"], p.get("bias"), c["stride"], c["padding"],
                                  c["output_padding"], c["groups"], c["dilation"])
    if kind == "linear":
        return F.linear(x, p["weight"], p.get("bias"))
    if kind == "maxpool2d":
        return F.max_pool2d(x, c["kernel"], c["stride"], c["padding"], c["dilation"],
                            c["ceil_mode"])
    if kind == "avgpool2d":
        return F.avg_pool2d(x, c["kernel"], c["stride"], c["padding"], c["ceil_mode"],
                            c["count_include_pad"])
    if kind == "global_avgpool":
        return F.adaptive_avg_pool2d(x, 1)
    if kind == "global_maxpool":
        return F.adaptive_max_pool2d(x, 1)
    if kind == "spp":
        pool = F.adaptive_max_pool2d if c["pool"] == "max" else F.adaptive_avg_pool2d
        return torch.cat([torch.flatten(pool(x, level), 1) for level in c["levels"]], 1)
    if kind == "flatten":
        return torch.flatten(x, 1)
    if kind == "relu":
        return torch.relu(x)
    if kind == "leaky_relu":
        return F.leaky_relu(x, c["negative_slope"])
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "softmax":
        return torch.softmax(x, 1)
    if kind == "dropout":
        if not training:
            return x
        # declcnn draws its own mask; PyTorch applies the same one with its scaling rule.
        return x * torch.from_numpy(dropout_mask) / (1 - c["p"])
    if kind == "batchnorm2d":
        return F.batch_norm(x, b["running_mean"], b["running_var"], p["weight"], p["bias"],
                            training, c["momentum"], c["eps"])
    if kind == "concat":
        size = node.output_shape[1:]
        return torch.cat([_crop(t, size) if c["crop"] else t for t in xs], 1)
    if kind == "add":
        return sum(xs[1:], xs[0])
    if kind == "crop":
        return _crop(x, c["size"])
    if kind == "upsample":
        return F.interpolate(x, scale_factor=c["scale"], mode="nearest")
    if kind == "rcl":
        return _torch_rcl(F, torch, c, p, x)
    raise AssertionError(f"no PyTorch twin for {kind}")


class TorchGraph:
    """The network's graph run in PyTorch with a copy of its parameters and buffers."""

    def __init__(self, torch, net: Network):
        self.torch, self.graph = torch, net.graph
        state = net.state_dict()
        self.tensors = {name: torch.from_numpy(value) for name, value in state.items()}
        for name in net.params:
            self.tensors[name].requires_grad_(True)

    def local(self, node, names):
        prefix = node.name + "."
        return {local: self.tensors[prefix + local] for local in names}

    def forward(self, x, training, dropout_masks=None):
        values = {Graph.INPUT: x}
        for node in self.graph.nodes:
            xs = [values[i] for i in node.inputs]
            values[node.name] = _torch_layer(
                self.torch, node, xs, self.local(node, node.params),
                self.local(node, node.buffers), training, (dropout_masks or {}).get(node.name))
        return values[self.graph.output.name]


def dropout_masks(net: Network) -> dict[str, np.ndarray]:
    """The masks the last forward drew, per dropout node (what its backward will use)."""
    return {impl.node.name: impl.saved for impl in net._nodes
            if impl.node.type == "dropout" and impl.saved is not None}


def compare_with_torch(net: Network, x: np.ndarray, training=True, seed=0, what="",
                       rtol=1e-4, atol=1e-5, input_grad=True, deep=False, gradients=True):
    """Forward and backward ``x`` through ``net`` and its PyTorch twin; compare the output,
    the input gradient, every parameter gradient and the updated buffers (only the output
    without ``gradients``).

    ``deep``: errors within ``rtol`` of each array's largest value.  Through tens of layers
    (and batch norm's division by small deviations) float32 rounding in different summation
    orders grows beyond ``rtol`` of the smallest entries, not of the array's scale.
    """
    torch = torch_or_skip()

    def check(actual, expected, quantity):
        limit = max(atol, rtol * float(np.abs(expected).max(initial=0.0))) if deep else atol
        assert_close(actual, expected, f"{what} {quantity}", rtol, limit)

    net.train() if training else net.eval()
    twin = TorchGraph(torch, net)
    y = net.forward(x)
    tx = torch.tensor(x, requires_grad=input_grad)
    ty = twin.forward(tx, training, dropout_masks(net))
    check(y, ty.detach().numpy(), "output")
    if not gradients:
        return y
    grad_out = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    net.zero_grad()
    gx = net.backward(grad_out, input_grad=input_grad)
    ty.backward(torch.tensor(grad_out))
    if input_grad:
        check(gx, tx.grad.numpy(), "input gradient")
    else:
        assert gx is None
    assert set(net.grads) == set(net.params)
    for name, grad in net.grads.items():
        check(grad, twin.tensors[name].grad.numpy(), f"gradient of {name}")
    for name, value in net.buffers.items():
        check(value, twin.tensors[name].detach().numpy(), f"buffer {name}")
    return y


# -- every node type against PyTorch ----------------------------------------------------------

CASES = {
    "conv2d": ((3, 9, 8), ['name="c";type="conv2d";out_channels=4;kernel=[3,2];stride=[2,1];'
                           'padding=[1,0];dilation=[1,2]']),
    "conv2d_same_even": ((2, 7, 7), ['name="c";type="conv2d";out_channels=3;kernel=4;'
                                     'padding="same";dilation=2;bias=false']),
    "conv2d_groups": ((4, 6, 6), ['name="c";type="conv2d";out_channels=6;kernel=3;groups=2']),
    "separable": ((4, 6, 6), ['name="s";type="separable_conv2d";out_channels=5;kernel=3;'
                              'padding=1', 'name="p";type="pointwise";out_channels=2',
                              'name="d";type="depthwise";kernel=3']),
    "conv_transpose2d": ((4, 5, 4), ['name="t";type="conv_transpose2d";out_channels=6;'
                                     'kernel=3;stride=2;padding=1;output_padding=1;groups=2']),
    "maxpool2d": ((2, 9, 8), ['name="p";type="maxpool2d";kernel=3;stride=2;padding=1;'
                              'ceil_mode=true']),
    "maxpool2d_dilated": ((2, 9, 9), ['name="p";type="maxpool2d";kernel=2;dilation=2']),
    "avgpool2d": ((2, 9, 8), ['name="p";type="avgpool2d";kernel=3;stride=2;padding=1;'
                              'ceil_mode=true;count_include_pad=false']),
    "global_pools": ((3, 5, 6), ['name="a";type="global_avgpool"',
                                 'name="m";type="global_maxpool";input="input"',
                                 'name="j";type="concat";inputs=["a","m"]']),
    "spp_max": ((3, 7, 5), ['name="s";type="spp";levels=[1,2,3]']),
    "spp_avg": ((3, 6, 6), ['name="s";type="spp";levels=[1,4];pool="avg"']),
    "flatten_linear": ((3, 4, 4), ['name="f";type="flatten"',
                                   'name="l";type="linear";out_features=5',
                                   'name="m";type="linear";out_features=3;bias=false']),
    "activations": ((3, 4, 5), ['name="a";type="relu"', 'name="b";type="leaky_relu";'
                                'negative_slope=0.2;input="input"',
                                'name="c";type="sigmoid";input="input"',
                                'name="d";type="tanh";input="input"',
                                'name="e";type="add";inputs=["a","b","c","d"]',
                                'name="s";type="softmax"']),
    "softmax_flat": ((7,), ['name="s";type="softmax"']),
    "batchnorm2d": ((3, 4, 5), ['name="bn";type="batchnorm2d";momentum=0.3;eps=0.001']),
    "dropout": ((3, 4, 4), ['name="d";type="dropout";p=0.3', 'name="f";type="flatten"',
                            'name="l";type="linear";out_features=2']),
    "concat_crop": ((2, 9, 8), ['name="a";type="conv2d";out_channels=3;kernel=3',
                                'name="b";type="conv2d";out_channels=2;kernel=4;'
                                'input="input"',
                                'name="j";type="concat";inputs=["input","a","b"];crop=true']),
    "crop_upsample": ((2, 7, 6), ['name="c";type="crop";size=[4,3]',
                                  'name="u";type="upsample";scale=[2,3]']),
    "rcl": ((3, 6, 5), ['name="r";type="rcl";out_channels=4;kernel=3;steps=3']),
    "rcl_even_no_bias": ((2, 5, 5), ['name="r";type="rcl";out_channels=3;kernel=2;steps=1;'
                                     'bias=false']),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_node_matches_torch(case, training):
    input_shape, layers = CASES[case]
    net = loads(spec(input_shape, *layers), seed=3)
    for name, value in net.buffers.items():  # away from the initial 0/1 so eval mode shows
        value += np.random.default_rng(1).uniform(0.2, 0.9, value.shape).astype(np.float32)
        assert name.endswith(("running_mean", "running_var"))
    x = np.random.default_rng(2).standard_normal((3, *input_shape)).astype(np.float32)
    compare_with_torch(net, x, training, what=case)


def test_every_layer_type_has_a_node_and_a_case():
    """Each type the graph can hold (conveniences expand into conv2d) runs, and is exercised
    above."""
    from declcnn.graph import LAYER_TYPES
    from declcnn.runtime.nodes import NODE_TYPES

    conveniences = {"pointwise", "depthwise", "separable_conv2d"}
    assert set(LAYER_TYPES) - conveniences == set(NODE_TYPES)
    covered = {node.type for shape, layers in CASES.values()
               for node in loads(spec(shape, *layers)).graph.nodes}
    assert covered == set(NODE_TYPES)


def test_first_layer_skips_input_gradient_when_not_asked():
    net = loads(spec((2, 6, 6), 'name="c";type="conv2d";out_channels=3;kernel=3',
                     'name="r";type="relu"', 'name="d";type="conv2d";out_channels=2;kernel=3'))
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    compare_with_torch(net, x, input_grad=False, what="input_grad=False")


# -- fan-out ---------------------------------------------------------------------------------

def test_fan_out_gradients_are_summed():
    """The input feeds four readers, 'a' feeds three (twice to one add)."""
    net = loads(spec((2, 6, 6),
                     'name="a";type="conv2d";out_channels=2;kernel=3;padding=1',
                     'name="b";type="conv2d";out_channels=2;kernel=1;input="input"',
                     'name="s";type="add";inputs=["a","a","b","input"]',
                     'name="t";type="tanh";input="a"',
                     'name="j";type="concat";inputs=["s","t","input"]',
                     'name="c";type="conv2d";out_channels=3;kernel=3'))
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    compare_with_torch(net, x, what="fan-out")


def test_user_grad_out_is_not_modified():
    net = loads(spec((3,), 'name="a";type="add";inputs=["input","input"]',
                     'name="b";type="add";inputs=["a","a"]'))
    net.forward(np.ones((2, 3), np.float32))
    grad_out = np.ones((2, 3), np.float32)
    assert_close(net.backward(grad_out), np.full((2, 3), 4.0), "d(4x)/dx")
    assert (grad_out == 1).all()


# -- train / eval ------------------------------------------------------------------------------

DROPOUT = spec((1000,), 'name="d";type="dropout";p=0.25')


def test_dropout_masks_in_training_and_is_identity_in_eval():
    net = loads(DROPOUT, seed=5)
    x = np.random.default_rng(0).uniform(1, 2, (4, 1000)).astype(np.float32)
    y = net.forward(x)
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    assert_close(y[kept], x[kept] / 0.75, "survivors scaled by 1/(1-p)")
    grad = net.backward(np.ones_like(y))
    assert_close(grad, kept / 0.75, "gradient through the mask")
    assert not np.array_equal(net.forward(x) != 0, kept), "a new mask per forward"
    net.eval()
    assert_close(net.forward(x), x, "eval: identity")
    assert_close(net.backward(np.ones_like(x)), np.ones_like(x), "eval: identity gradient")
    masks = [loads(DROPOUT, seed=5).forward(x) != 0 for _ in range(2)]
    assert np.array_equal(*masks), "the seed fixes the dropout stream"


def test_batchnorm_modes_differ_and_running_stats_follow_torch():
    net = loads(spec((3, 4, 4), 'name="bn";type="batchnorm2d"'))
    x = np.random.default_rng(0).normal(2.0, 3.0, (5, 3, 4, 4)).astype(np.float32)
    train_out = compare_with_torch(net, x, training=True, what="batchnorm train")
    assert_close(train_out.mean(axis=(0, 2, 3)), np.zeros(3), "batch statistics", atol=1e-5)
    assert net.buffers["bn.running_mean"].mean() > 0.1, "running mean moved toward 2"
    eval_out = compare_with_torch(net, x, training=False, what="batchnorm eval")
    assert np.abs(eval_out - train_out).max() > 0.1
    assert net.train() is net and net.training and not net.eval().training


# -- parameters --------------------------------------------------------------------------------

BN_NET = spec((2, 5, 5), 'name="c";type="conv2d";out_channels=3;kernel=3',
              'name="bn";type="batchnorm2d"', 'name="f";type="flatten"',
              'name="fc";type="linear";out_features=4')


def test_parameter_names_follow_pytorch_state_dict():
    net = loads(BN_NET)
    assert list(net.params) == ["c.weight", "c.bias", "bn.weight", "bn.bias", "fc.weight",
                                "fc.bias"]
    assert list(net.buffers) == ["bn.running_mean", "bn.running_var"]
    assert list(net.state_dict()) == list(net.params) + list(net.buffers)
    assert all(v.dtype == np.float32 for v in net.state_dict().values())
    torch = torch_or_skip()
    module = torch.nn.Sequential()
    module.add_module("c", torch.nn.Conv2d(2, 3, 3))
    module.add_module("bn", torch.nn.BatchNorm2d(3))
    module.add_module("fc", torch.nn.Linear(27, 4))
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in net.state_dict().items()} == expected


def test_state_dict_round_trip():
    source, target = loads(BN_NET, seed=1), loads(BN_NET, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    source.forward(x)  # moves the running statistics
    state = source.state_dict()
    assert not np.array_equal(state["c.weight"], target.params["c.weight"])
    weight = target.params["c.weight"]
    target.load_state_dict(state)
    assert target.params["c.weight"] is weight, "loaded in place: optimisers keep their arrays"
    source.eval(), target.eval()
    assert_close(target.forward(x), source.forward(x), "after load_state_dict")
    state["c.weight"][:] = 0
    assert not (source.params["c.weight"] == 0).all(), "state_dict returns copies"
    target.load_state_dict({k: v.astype(np.float64) for k, v in source.state_dict().items()})
    assert target.params["fc.bias"].dtype == np.float32


def test_load_state_dict_names_the_mismatch():
    net = loads(BN_NET)
    before = net.state_dict()
    state = net.state_dict()
    state["c.weight"] = np.zeros((3, 1, 3, 3), np.float32)
    state["fc.bias"] = np.ones(4)
    with pytest.raises(CheckpointError) as err:
        net.load_state_dict(state)
    assert str(err.value) == (
        "network 't': parameter 'c.weight' is stored with shape (3, 1, 3, 3) but the network "
        "expects (3, 2, 3, 3). The checkpoint was saved from a spec whose layer differs; use "
        "that spec, or retrain with this one.")
    assert (net.params["fc.bias"] == before["fc.bias"]).all(), "nothing loaded on failure"
    state = net.state_dict()
    del state["bn.running_var"]
    state["bn.num_batches_tracked"] = np.array(3)
    with pytest.raises(CheckpointError) as err:
        net.load_state_dict(state)
    assert str(err.value) == (
        "network 't': the checkpoint does not fit the network: 1 entry of the network's missing "
        "from it ('bn.running_var') and 1 entry in it that the network lacks "
        "('bn.num_batches_tracked'). It was saved from a different spec: load it into the "
        "network built from that spec, or retrain with this one.")
    with pytest.raises(CheckpointError, match="needs a mapping of parameter names to arrays"):
        net.load_state_dict([1, 2])
    state = net.state_dict()
    state["fc.weight"] = np.full((4, 27), "x")
    with pytest.raises(CheckpointError, match="parameter 'fc.weight' is stored as <U1, not "
                                              "numbers; the checkpoint is corrupt"):
        net.load_state_dict(state)


def test_initialisation_follows_pytorch_defaults():
    net = loads(spec((4, 6, 6), 'name="c";type="conv2d";out_channels=50;kernel=3;groups=2',
                     'name="t";type="conv_transpose2d";out_channels=40;kernel=2;groups=2',
                     'name="bn";type="batchnorm2d"', 'name="f";type="flatten"',
                     'name="fc";type="linear";out_features=30'))
    # fan_in: conv (4/2)·3·3; transposed conv, as PyTorch, (40/2)·2·2; linear 40·5·5.
    for name, fan_in in [("c", 18), ("t", 80), ("fc", 40 * 25)]:
        bound = 1 / math.sqrt(fan_in)
        for local in ("weight", "bias"):
            value = net.params[f"{name}.{local}"]
            assert np.abs(value).max() <= bound
            if value.size > 500:  # U(−b, b) has std b/√3
                assert abs(value.std() - bound / math.sqrt(3)) < 0.1 * bound
    assert (net.params["bn.weight"] == 1).all() and (net.params["bn.bias"] == 0).all()
    assert (net.buffers["bn.running_mean"] == 0).all()
    assert (net.buffers["bn.running_var"] == 1).all()
    torch = torch_or_skip()
    torch_bound = torch.nn.ConvTranspose2d(4, 40, 2, groups=2).weight.abs().max().item()
    assert 0.9 / math.sqrt(80) < torch_bound <= 1 / math.sqrt(80), "PyTorch's fan agrees"


@pytest.mark.parametrize("init, std", [("kaiming_normal", math.sqrt(2 / 288)),
                                       ("kaiming_uniform", math.sqrt(2 / 288)),
                                       ("xavier_normal", math.sqrt(2 / (288 + 576))),
                                       ("xavier_uniform", math.sqrt(2 / (288 + 576))),
                                       ("zeros", 0.0)])
def test_init_schemes(init, std):
    net = loads(spec((32, 5, 5), f'name="c";type="conv2d";out_channels=64;kernel=3;'
                                 f'init="{init}"'))
    weight = net.params["c.weight"]
    assert abs(weight.std() - std) <= 0.05 * std
    assert abs(weight.mean()) <= 0.05 * std + 1e-12
    assert (net.params["c.bias"] == 0).all()


def test_init_is_reproducible_and_schemes_match_the_registry():
    assert set(initialisers.SCHEMES) == set(INIT_CHOICES)
    a, b, c = (loads(BN_NET, seed=s).state_dict() for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc.weight"], c["fc.weight"])
    with pytest.raises(DeclcnnError, match="layer 'x': unknown init 'he'; use one of default, "):
        initialisers.weight_and_bias(np.random.default_rng(), (2, 2), None, "he", np.float32,
                                     "layer 'x'")


def test_zero_grad_and_accumulation():
    net = loads(BN_NET)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    g = np.ones((2, 4), np.float32)
    net.forward(x)
    net.backward(g)
    once = {k: v.copy() for k, v in net.grads.items()}
    net.forward(x)
    net.backward(g, input_grad=False)
    for name, grad in net.grads.items():
        assert_close(grad, 2 * once[name], f"accumulated {name}")
    net.zero_grad()
    assert all((grad == 0).all() for grad in net.grads.values())


# -- input checks and misuse -------------------------------------------------------------------

def test_input_checks_name_expected_and_actual_shapes(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(spec((1, 4, 4), 'name="f";type="flatten"'))
    net = load(path)
    where = f"network 't' ({path})"
    with pytest.raises(ShapeError) as err:
        net.forward(np.zeros((2, 3, 4, 4), np.float32))
    assert str(err.value) == (
        f"{where} expects input of shape (N, 1, 4, 4), i.e. (1, 4, 4) per sample; got an array "
        f"of shape (2, 3, 4, 4). Resize the data to the spec's [network] input, or change that "
        f"input in the spec.")
    with pytest.raises(ShapeError, match=r"got an array of shape \(1, 4, 4\). Add the batch axis "
                                         r"with x\[None\] for a single sample."):
        net.forward(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ShapeError) as err:
        net.forward(np.zeros((2, 1, 4, 4), np.uint8))
    assert str(err.value) == (
        f"{where} expects floating-point input of shape (N, 1, 4, 4); got a uint8 array. "
        f"Convert it with x.astype(np.float32) (scaling bytes to [0, 1] first if these are "
        f"images).")
    with pytest.raises(ShapeError, match=r"expects a numpy array of shape \(N, 1, 4, 4\); got "
                                         r"list\."):
        net.forward([[0.0]])


def test_float64_strided_and_nan_input_are_accepted():
    net = loads(BN_NET).eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 10))
    y64 = net.forward(x[..., ::2])
    y32 = net.forward(np.ascontiguousarray(x[..., ::2], dtype=np.float32))
    assert y64.dtype == np.float32
    assert_close(y64, y32, "float64 strided input")
    x[0, 0, 0, 0] = np.nan
    y = net.forward(x[..., ::2])
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()


def test_backward_misuse_is_explained():
    net = loads(BN_NET)
    with pytest.raises(DeclcnnError, match=r"network 't': backward needs the state of a forward "
                                           r"pass, and there is none"):
        net.backward(np.ones((2, 4), np.float32))
    net.forward(np.zeros((2, 2, 5, 5), np.float32))
    with pytest.raises(ShapeError) as err:
        net.backward(np.ones((3, 4), np.float32))
    assert str(err.value) == ("network 't': grad_out must have the shape of the last forward's "
                              "output, (2, 4); got (3, 4).")
    net.backward(np.ones((2, 4), np.float32))
    with pytest.raises(DeclcnnError, match="backward already ran for the last forward"):
        net.backward(np.ones((2, 4), np.float32))


def test_backward_frees_saved_state():
    net = loads(BN_NET)
    net.forward(np.zeros((2, 2, 5, 5), np.float32))
    assert any(impl.saved is not None for impl in net._nodes)
    net.backward(np.ones((2, 4), np.float32), input_grad=False)
    assert all(impl.saved is None for impl in net._nodes)


def test_outputs_yields_every_layer_and_keeps_no_state():
    net = loads(BN_NET).eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    named = [(node.name, y) for node, y in net.outputs(x)]
    assert [name for name, _ in named] == ["c", "bn", "f", "fc"]
    assert named[1][1].shape == (2, 3, 3, 3)
    assert_close(named[-1][1], net.forward(x), "last output is forward's")
    list(net.outputs(x))
    assert all(impl.saved is None for impl in net._nodes)
    with pytest.raises(DeclcnnError, match="there is none"):
        net.backward(np.ones((2, 4), np.float32))


# -- reused buffers, folded relus, flat parameters ---------------------------------------------

LENET_LIKE = spec(
    (1, 8, 8), 'name="c";type="conv2d";out_channels=3;kernel=3;padding=1',
    'name="r1";type="relu"', 'name="p";type="maxpool2d";kernel=2', 'name="f";type="flatten"',
    'name="fc";type="linear";out_features=5', 'name="r2";type="relu"',
    'name="out";type="linear";out_features=4')


def test_relus_fold_into_pools_or_overwrite_only_where_safe():
    net = loads(LENET_LIKE)
    kinds = {impl.node.name: impl for impl in net._nodes}
    assert kinds["r1"].fused and kinds["p"].relu_before and not kinds["r1"].in_place
    assert kinds["r2"].applied_before and kinds["fc"].relu_after and not kinds["r2"].in_place
    net = loads(spec((2, 4, 4), 'name="c";type="conv2d";out_channels=2;kernel=1',
                     'name="r";type="relu"', 'name="f";type="flatten"'))
    assert net._nodes[1].in_place
    # A relu reading the input, or a tensor with another reader, or being the output, keeps
    # its own buffer.
    net = loads(spec((3,), 'name="r";type="relu"', 'name="fc";type="linear";out_features=2',
                     'name="r2";type="relu"', 'name="s";type="add";inputs=["fc", "r2"]',
                     'name="r3";type="relu"'))
    assert not any(getattr(impl, "in_place", False) or getattr(impl, "fused", False)
                   for impl in net._nodes)


def test_folded_relus_match_the_unfolded_network():
    """The folded and in-place relus give the values and gradients of plain ones."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    g = rng.standard_normal((4, 4)).astype(np.float32)
    fast, plain = loads(LENET_LIKE, seed=2), loads(LENET_LIKE, seed=2)
    for impl in plain._nodes:
        impl.fused = impl.in_place = impl.relu_before = False
        impl.applied_before = impl.relu_after = False
    for net in (fast, plain):
        net.forward(x)
        net.backward(g)
    assert_close(fast.forward(x), plain.forward(x), "output")
    for name in fast.grads:
        assert np.array_equal(fast.grads[name], plain.grads[name]), name
    inspected = dict((node.name, y) for node, y in fast.outputs(x))
    assert (inspected["r1"] >= 0).all() and (inspected["c"] < 0).any()
    assert (inspected["r2"] >= 0).all() and (inspected["fc"] < 0).any()


def test_backward_after_an_evaluation_forward():
    """In evaluation a 2×2 max pool keeps no indices; a backward then finds them again."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    trained, evaluated = loads(LENET_LIKE, seed=1), loads(LENET_LIKE, seed=1).eval()
    gx = [net.forward(x) is not None and net.backward(g) for net in (trained, evaluated)]
    np.testing.assert_array_equal(gx[0], gx[1])
    for name in trained.grads:
        np.testing.assert_array_equal(trained.grads[name], evaluated.grads[name])


def test_returned_arrays_are_the_callers_own():
    """Layers reuse their buffers from call to call; forward's output and backward's input
    gradient must not change under the caller afterwards."""
    net = loads(LENET_LIKE)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((2, 1, 8, 8)).astype(np.float32) for _ in range(2))
    g = np.ones((2, 4), np.float32)
    y1 = net.forward(x1)
    gx1 = net.backward(g)
    kept_y, kept_gx = y1.copy(), gx1.copy()
    net.forward(x2)
    net.backward(g * 2)
    assert np.array_equal(y1, kept_y) and np.array_equal(gx1, kept_gx)
    # A network ending in a layer that returns its input's memory still returns a copy.
    flat = loads(spec((2, 2, 2), 'name="c";type="conv2d";out_channels=2;kernel=1',
                      'name="f";type="flatten"'))
    a = flat.forward(np.ones((1, 2, 2, 2), np.float32))
    kept = a.copy()
    flat.forward(np.zeros((1, 2, 2, 2), np.float32))
    assert np.array_equal(a, kept)


def test_parameters_and_gradients_are_views_of_one_flat_array():
    net = loads(LENET_LIKE)
    for arrays, flat in ((net.params, net._flat_params), (net.grads, net._flat_grads)):
        assert all(a.base is flat for a in arrays.values())
        assert sum(a.size for a in arrays.values()) == flat.size
    net.forward(np.ones((2, 1, 8, 8), np.float32))
    net.backward(np.ones((2, 4), np.float32), input_grad=False)
    assert net._flat_grads.any()
    replaced = net.grads["fc.bias"] = np.ones(5, np.float32)  # a caller's own array
    net.zero_grad()
    assert not net._flat_grads.any() and not replaced.any()


def test_unknown_node_type_lists_known_ones():
    node = Node("odd", "mystery", {}, ["input"], [(3,)], (3,))
    with pytest.raises(DeclcnnError, match="layer 'odd' has type 'mystery', which the runtime "
                                           "cannot run; known types: add, avgpool2d, "):
        Network(Graph("g", (3,), [node]))


def test_summary_and_crop_offsets():
    net = loads(BN_NET)
    assert net.summary().startswith("t: input ")
    assert "fc" in net.summary(batch_size=8)
    # U-Net: a 64×64 map cropped to 56×56 starts at 4; an odd margin leaves the extra pixel at
    # the end.
    assert centre_crop_offset(64, 56) == 4 and centre_crop_offset(7, 4) == 1


# -- float64 finite differences of a whole network ---------------------------------------------

FD_NET = spec((2, 6, 6), 'name="c";type="conv2d";out_channels=3;kernel=3;padding=1',
              'name="bn";type="batchnorm2d"', 'name="t";type="tanh"',
              'name="r";type="rcl";out_channels=3;kernel=3;steps=2',
              'name="s";type="add";inputs=["r","t"]',
              'name="u";type="conv_transpose2d";out_channels=2;kernel=2;stride=2',
              'name="j";type="concat";inputs=["u","input"];crop=true',
              'name="p";type="avgpool2d";kernel=2', 'name="f";type="flatten"',
              'name="fc";type="linear";out_features=3', 'name="o";type="softmax"')


def test_whole_network_float64_finite_differences():
    graph = loads(FD_NET).graph
    net = Network(graph, seed=4, dtype=np.float64)
    names = list(net.params)
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6))

    def forward(x, *params):
        for name, value in zip(names, params, strict=True):
            net.params[name] = value
        return net.forward(x)

    def backward(grad, x, *params):
        forward(x, *params)
        net.zero_grad()
        gx = net.backward(grad)
        return [gx] + [net.grads[name].copy() for name in names]

    for seed in range(3):
        gradcheck(forward, [x] + [net.params[n].copy() for n in names], backward, seed=seed,
                  tol=1e-6)
