"""conv2d and conv_transpose2d against PyTorch, against the numpy twins, and by finite differences.

Sweeps are seeded: a failing case's id is its seed, and the assertion message prints the case.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import declcnn
from declcnn import ShapeError
from declcnn._kernels import naive_conv
from declcnn.ops.conv import (
    ConvPlan,
    conv2d,
    conv2d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
)
from declcnn.shapes import conv_transpose_output_size, dilated_extent
from tests.oracle import assert_close, gradcheck, to_torch, torch_or_skip

# ---------------------------------------------------------------------------------------------
# random cases


def _sides(padding):
    """((top, bottom), (left, right)) of any explicit padding form (not "same"/"valid")."""
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0], padding[0]), (padding[1], padding[1])
    return padding


def _random_conv_case(seed, max_channels=16, max_kernel=7, max_dilation=3, max_extra=6,
                      depthwise_stride1=False):
    """A valid conv2d configuration: channels, groups dividing both, every padding form."""
    rng = np.random.default_rng(seed)
    if depthwise_stride1 or rng.random() < 0.15:  # depthwise, channel multiplier 1 or 2
        C = int(rng.integers(1, max_channels // 2 + 1))
        groups, O = C, C * int(rng.integers(1, 3))
    else:
        groups = int(rng.choice([1, 1, 1, 2, 3, 4]))
        C = groups * int(rng.integers(1, max_channels // groups + 1))
        O = groups * int(rng.integers(1, max_channels // groups + 1))
    kernel = tuple(int(k) for k in rng.integers(1, max_kernel + 1, size=2))
    stride = (1, 1) if depthwise_stride1 else tuple(int(s) for s in rng.integers(1, 4, size=2))
    dilation = tuple(int(d) for d in rng.integers(1, max_dilation + 1, size=2))
    form = int(rng.integers(5))
    pads = [int(p) for p in rng.integers(0, 4, size=4)]
    padding = [pads[0], (pads[0], pads[1]), ((pads[0], pads[1]), (pads[2], pads[3])), "same",
               "valid"][form]
    if padding == "same":
        stride = (1, 1)
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    elif padding == "valid":
        total = [0, 0]
    else:
        total = [sum(side) for side in _sides(padding)]
    spatial = [max(1, dilated_extent(k, d) - t + int(rng.integers(0, max_extra + 1)))
               for k, d, t in zip(kernel, dilation, total, strict=True)]
    return dict(x_shape=(int(rng.integers(1, 5)), C, *spatial),
                w_shape=(O, C // groups, *kernel), bias=bool(rng.random() < 0.7),
                stride=stride, padding=padding, dilation=dilation, groups=groups)


def _random_transpose_case(seed, max_channels=16, max_kernel=7, max_dilation=3, max_size=6,
                           depthwise_stride1=False):
    """A valid conv_transpose2d configuration, output_padding anywhere below its limit;
    ``depthwise_stride1``: one output channel per group, stride 1."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 1, 1, 2, 3, 4]))
    C = groups * int(rng.integers(1, max_channels // groups + 1))
    O = groups if depthwise_stride1 else groups * int(rng.integers(1, max_channels // groups + 1))
    kernel = tuple(int(k) for k in rng.integers(1, max_kernel + 1, size=2))
    stride = (1, 1) if depthwise_stride1 else tuple(int(s) for s in rng.integers(1, 4, size=2))
    dilation = tuple(int(d) for d in rng.integers(1, max_dilation + 1, size=2))
    pads = tuple(int(p) for p in rng.integers(0, 4, size=2))
    padding = pads[0] if rng.random() < 0.5 else pads
    pad_pair = (padding, padding) if isinstance(padding, int) else padding
    output_padding = tuple(int(rng.integers(0, max(s, d)))
                           for s, d in zip(stride, dilation, strict=True))
    spatial = []
    for axis in range(2):
        size = int(rng.integers(1, max_size + 1))
        while conv_transpose_output_size(size, kernel[axis], stride[axis], pad_pair[axis],
                                         dilation[axis], output_padding[axis]) < 1:
            size += 1
        spatial.append(size)
    return dict(x_shape=(int(rng.integers(1, 5)), C, *spatial),
                w_shape=(C, O // groups, *kernel), bias=bool(rng.random() < 0.7),
                stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups)


def _arrays(case, seed, dtype=np.float32, transposed=False):
    rng = np.random.default_rng(seed + 10_000)
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal(case["w_shape"]).astype(dtype)
    out_channels = case["w_shape"][1] * case["groups"] if transposed else case["w_shape"][0]
    b = rng.standard_normal(out_channels).astype(dtype) if case["bias"] else None
    return rng, x, w, b


def _conv_args(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


def _transpose_args(case):
    return dict(stride=case["stride"], padding=case["padding"],
                output_padding=case["output_padding"], dilation=case["dilation"],
                groups=case["groups"])


# ---------------------------------------------------------------------------------------------
# PyTorch as the oracle


@pytest.fixture(autouse=True, scope="module")
def torch_on_one_thread():
    """The oracle runs on one thread: its pool and the kernels' OpenMP threads (which spin a
    while after each parallel loop) would otherwise fight over the cores, making these tiny
    cases up to 100× slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _torch_conv2d(torch, xt, wt, bt, case):
    padding = case["padding"]
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        # PyTorch's conv2d pads symmetrically only: pad first, as a model with uneven padding
        # would
        (top, bottom), (left, right) = padding
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
        padding = 0
    with warnings.catch_warnings():
        # PyTorch warns that "same" with an even kernel copies the input; that is expected here
        warnings.simplefilter("ignore", UserWarning)
        return torch.nn.functional.conv2d(xt, wt, bt, case["stride"], padding, case["dilation"],
                                          case["groups"])


def check_conv2d_against_torch(case, seed=0):
    torch = torch_or_skip()
    rng, x, w, b = _arrays(case, seed)
    oracle = np.float64 if case.get("oracle64") else np.float32
    xt, wt = to_torch(torch, x.astype(oracle), True), to_torch(torch, w.astype(oracle), True)
    bt = to_torch(torch, b.astype(oracle), True) if b is not None else None
    yt = _torch_conv2d(torch, xt, wt, bt, case)
    gy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(gy.astype(oracle)))
    y = conv2d(x, w, b, **_conv_args(case))
    gx, gw, gb = conv2d_backward(gy, x, w, **_conv_args(case), has_bias=b is not None)
    what = f"conv2d {case}"
    assert_close(y, yt.detach().numpy(), f"{what}: output")
    assert_close(gx, xt.grad.numpy(), f"{what}: grad input")
    assert_close(gw, wt.grad.numpy(), f"{what}: grad weight")
    if b is not None:
        assert_close(gb, bt.grad.numpy(), f"{what}: grad bias")
    else:
        assert gb is None


def check_conv_transpose2d_against_torch(case, seed=0):
    torch = torch_or_skip()
    rng, x, w, b = _arrays(case, seed, transposed=True)
    xt, wt = to_torch(torch, x, True), to_torch(torch, w, True)
    bt = to_torch(torch, b, True) if b is not None else None
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, case["stride"], case["padding"],
                                              case["output_padding"], case["groups"],
                                              case["dilation"])
    gy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(gy))
    y = conv_transpose2d(x, w, b, **_transpose_args(case))
    gx, gw, gb = conv_transpose2d_backward(gy, x, w, **_transpose_args(case),
                                           has_bias=b is not None)
    what = f"conv_transpose2d {case}"
    assert_close(y, yt.detach().numpy(), f"{what}: output")
    assert_close(gx, xt.grad.numpy(), f"{what}: grad input")
    assert_close(gw, wt.grad.numpy(), f"{what}: grad weight")
    if b is not None:
        assert_close(gb, bt.grad.numpy(), f"{what}: grad bias")


@pytest.mark.parametrize("seed", range(300))
def test_conv2d_matches_torch(seed):
    check_conv2d_against_torch(_random_conv_case(seed), seed)


@pytest.mark.parametrize("seed", range(300))
def test_conv_transpose2d_matches_torch(seed):
    check_conv_transpose2d_against_torch(_random_transpose_case(seed), seed)


@pytest.mark.parametrize("seed", range(40))
def test_depthwise_stride1_matches_torch(seed):
    """Stride-1 convs whose output channels each read one input channel take their own loops
    (a flattened padded plane), which the main sweeps reach only a few times."""
    check_conv2d_against_torch(_random_conv_case(2000 + seed, depthwise_stride1=True), seed)
    check_conv_transpose2d_against_torch(
        _random_transpose_case(2000 + seed, depthwise_stride1=True), seed)


@pytest.mark.parametrize("seed", range(16))
def test_depthwise_wide_planes_match_torch(seed):
    """Depthwise convs on planes wider than a vector, where the depthwise loops move rows VL
    floats at a time (the last VL overlapping) and their output blocks span rows; the sweeps'
    small images seldom get there."""
    rng = np.random.default_rng(4000 + seed)
    C, multiplier = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    pairs = [tuple(int(v) for v in rng.integers(low, high, size=2))
             for low, high in ((1, 6), (1, 3), (1, 3), (0, 4), (16, 40))]
    kernel, stride, dilation, padding, spatial = pairs
    check_conv2d_against_torch(dict(x_shape=(2, C, *spatial), w_shape=(C * multiplier, 1, *kernel),
                                    bias=True, stride=stride, padding=padding,
                                    dilation=dilation, groups=C), seed)


def _wide_conv_case(seed):
    """A conv with 16 to 80 output channels a group: when it runs on the phase kernels, its
    weight gradient holds the output channels in vector lanes (``_lanes_backward_weight``),
    in blocks of 16, 32 or 64, over chunks of whole samples or of rows of one large image."""
    rng = np.random.default_rng(5000 + seed)
    groups = int(rng.choice([1, 1, 2]))
    Cg, Og = int(rng.integers(1, 7)), int(rng.integers(16, 81))
    kernel = tuple(int(k) for k in rng.integers(2, 6, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 3, size=2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, size=2))
    padding = tuple(int(p) for p in rng.integers(0, 3, size=2))
    spatial = tuple(int(v) for v in rng.integers(12, 40 if rng.random() < 0.3 else 20, size=2))
    return dict(x_shape=(int(rng.integers(1, 4)), groups * Cg, *spatial),
                w_shape=(groups * Og, Cg, *kernel), bias=True, stride=stride, padding=padding,
                dilation=dilation, groups=groups)


@pytest.mark.parametrize("seed", range(24))
def test_wide_convs_match_torch(seed):
    """The main sweeps' at most 16 output channels seldom reach the lanes weight gradient."""
    check_conv2d_against_torch(_wide_conv_case(seed), seed)


def test_lanes_weight_gradient_split_by_samples_matches_torch(restore_threads):
    """LeNet's conv2 has 13 blocks of taps × channels: on two threads they split the samples
    (every thread all blocks, into sums of its own) instead of the blocks."""
    declcnn.set_num_threads(2)
    check_conv2d_against_torch(dict(x_shape=(20, 6, 14, 14), w_shape=(16, 6, 5, 5), bias=True,
                                    stride=1, padding=0, dilation=1, groups=1))


def test_lanes_weight_gradient_over_several_waves_matches_torch():
    """Three samples of about 2 MB of laid-out gy each go through the lanes weight gradient
    in waves (LANES_WAVE_FLOATS), each wave's layout reusing the last one's buffer.  Sums of
    23,000 products: PyTorch's float32 gradient is off by 1e-3 here (ours by 1e-4), so the
    oracle runs in float64."""
    check_conv2d_against_torch(dict(x_shape=(3, 2, 90, 90), w_shape=(64, 2, 3, 3), bias=False,
                                    stride=1, padding=0, dilation=1, groups=1, oracle64=True))


# ---------------------------------------------------------------------------------------------
# the fast kernels against the numpy twins (no torch needed)


@pytest.mark.parametrize("seed", range(6))
def test_wide_weight_gradient_matches_naive_twin_in_float64(seed):
    case = _wide_conv_case(seed)
    rng, x, w, _ = _arrays(case, seed, np.float64)
    y = conv2d(x, w, **_conv_args(case))
    gy = rng.standard_normal(y.shape)
    _, gw, _ = conv2d_backward(gy, x, w, **_conv_args(case), has_bias=False)
    expected = naive_conv.conv2d_grad_weight(gy, x, w.shape, stride=case["stride"],
                                             padding=_sides(case["padding"]),
                                             dilation=case["dilation"], groups=case["groups"])
    assert_close(gw, expected, f"{case} gw", rtol=1e-12, atol=1e-12)


def _naive_conv_padding(case, w_shape):
    padding = case["padding"]
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        from declcnn.shapes import same_padding
        return tuple(same_padding(k, d) for k, d in zip(w_shape[2:], case["dilation"],
                                                       strict=True))
    return _sides(padding)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(25))
def test_conv2d_matches_naive_twin(seed, dtype):
    case = _random_conv_case(1000 + seed, max_channels=6, max_kernel=4, max_dilation=2,
                             max_extra=3)
    rng, x, w, b = _arrays(case, seed, dtype)
    args = dict(stride=case["stride"], padding=_naive_conv_padding(case, w.shape),
                dilation=case["dilation"], groups=case["groups"])
    y = conv2d(x, w, b, **_conv_args(case))
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = conv2d_backward(gy, x, w, **_conv_args(case))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(y, naive_conv.conv2d(x, w, b, **args), f"{case} output", **tol)
    assert_close(gx, naive_conv.conv2d_grad_input(gy, x.shape, w, **args), f"{case} gx", **tol)
    assert_close(gw, naive_conv.conv2d_grad_weight(gy, x, w.shape, **args), f"{case} gw", **tol)
    assert_close(gb, naive_conv.grad_bias(gy), f"{case} gb", **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(25))
def test_conv_transpose2d_matches_naive_twin(seed, dtype):
    case = _random_transpose_case(1000 + seed, max_channels=6, max_kernel=4, max_dilation=2,
                                  max_size=4)
    rng, x, w, b = _arrays(case, seed, dtype, transposed=True)
    pad = case["padding"]
    args = dict(stride=case["stride"], padding=(pad, pad) if isinstance(pad, int) else pad,
                output_padding=case["output_padding"], dilation=case["dilation"],
                groups=case["groups"])
    y = conv_transpose2d(x, w, b, **_transpose_args(case))
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = conv_transpose2d_backward(gy, x, w, **_transpose_args(case))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(y, naive_conv.conv_transpose2d(x, w, b, **args), f"{case} output", **tol)
    assert_close(gx, naive_conv.conv_transpose2d_grad_input(gy, x.shape, w, **args),
                 f"{case} gx", **tol)
    assert_close(gw, naive_conv.conv_transpose2d_grad_weight(gy, x, w.shape, **args),
                 f"{case} gw", **tol)
    assert_close(gb, naive_conv.grad_bias(gy), f"{case} gb", **tol)


# ---------------------------------------------------------------------------------------------
# finite differences in float64: one case per kernel path (see ``_uses_phases`` in
# declcnn/_kernels/conv.pyx: phase kernels with the input gradient as a flipped forward conv or
# as scattered tap rows, im2col + GEMM, 1×1, depthwise strided, and depthwise stride 1 on a
# flattened padded plane)

GRADCHECK_CONV = {
    "phases, scattered input gradient": dict(
        x_shape=(2, 4, 7, 6), w_shape=(6, 2, 3, 2), bias=True, stride=(2, 1),
        padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2),
    "phases, flipped input gradient": dict(
        x_shape=(2, 10, 6, 7), w_shape=(10, 5, 3, 2), bias=True, stride=1,
        padding=((2, 0), (1, 1)), dilation=(1, 2), groups=2),
    "phases, one input channel": dict(
        x_shape=(2, 1, 6, 5), w_shape=(6, 1, 3, 3), bias=True, stride=1, padding=2,
        dilation=1, groups=1),
    "phases, output pixels × a vector of channels": dict(
        x_shape=(2, 3, 7, 9), w_shape=(12, 3, 3, 4), bias=True, stride=1,
        padding=((1, 0), (0, 2)), dilation=1, groups=1),
    "phases, output channels in lanes": dict(
        x_shape=(2, 4, 6, 7), w_shape=(34, 2, 3, 2), bias=True, stride=(1, 2), padding=(1, 2),
        dilation=(2, 1), groups=2),
    "im2col": dict(x_shape=(2, 4, 7, 6), w_shape=(5, 4, 3, 3), bias=True, stride=2, padding=1,
                   dilation=1, groups=1),
    "pointwise": dict(x_shape=(2, 4, 5, 5), w_shape=(3, 4, 1, 1), bias=True, stride=1, padding=0,
                      dilation=1, groups=1),
    "depthwise strided": dict(x_shape=(2, 3, 6, 5), w_shape=(6, 1, 3, 3), bias=True, stride=2,
                              padding=1, dilation=1, groups=3),
    "depthwise flat": dict(x_shape=(2, 3, 7, 6), w_shape=(6, 1, 3, 2), bias=True, stride=1,
                           padding=((2, 0), (1, 2)), dilation=(2, 1), groups=3),
}

GRADCHECK_TRANSPOSE = {
    "im2col": dict(x_shape=(2, 4, 3, 4), w_shape=(4, 3, 3, 2), bias=True, stride=(2, 3),
                   padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=1),
    "phases, scattered": dict(x_shape=(2, 4, 3, 3), w_shape=(4, 3, 4, 4), bias=True, stride=2,
                              padding=1, output_padding=1, dilation=1, groups=1),
    "phases, flipped": dict(x_shape=(2, 8, 4, 3), w_shape=(8, 6, 3, 3), bias=True, stride=1,
                            padding=(2, 1), output_padding=0, dilation=(1, 2), groups=2),
    "pointwise": dict(x_shape=(2, 4, 4, 4), w_shape=(4, 2, 1, 1), bias=True, stride=1,
                      padding=0, output_padding=0, dilation=1, groups=2),
    "depthwise strided": dict(x_shape=(2, 4, 3, 3), w_shape=(4, 1, 4, 4), bias=True, stride=2,
                              padding=1, output_padding=1, dilation=1, groups=2),
    "depthwise flat": dict(x_shape=(2, 4, 4, 3), w_shape=(4, 1, 3, 2), bias=True, stride=1,
                           padding=(1, 0), output_padding=(1, 0), dilation=(2, 1), groups=4),
}


@pytest.mark.parametrize("name", GRADCHECK_CONV)
def test_conv2d_gradcheck(name):
    case = GRADCHECK_CONV[name]
    _, x, w, b = _arrays(case, 0, np.float64)
    args = _conv_args(case)
    for seed in range(3):
        gradcheck(lambda x, w, b: conv2d(x, w, b, **args), [x, w, b],
                  lambda gy, x, w, b: list(conv2d_backward(gy, x, w, **args)), seed=seed)


@pytest.mark.parametrize("name", GRADCHECK_TRANSPOSE)
def test_conv_transpose2d_gradcheck(name):
    case = GRADCHECK_TRANSPOSE[name]
    _, x, w, b = _arrays(case, 0, np.float64, transposed=True)
    args = _transpose_args(case)
    for seed in range(3):
        gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, **args), [x, w, b],
                  lambda gy, x, w, b: list(conv_transpose2d_backward(gy, x, w, **args)),
                  seed=seed)


# ---------------------------------------------------------------------------------------------
# named edge cases, each against PyTorch


def _conv_case(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, bias=True,
               oracle64=False):
    """``oracle64``: PyTorch computes in float64, for sums so long (tens of thousands of terms
    per weight-gradient entry) that its float32 result misses the exact one by more than the
    tolerance (by 2e-3 where declcnn's misses by 9e-5)."""
    case = dict(x_shape=x_shape, w_shape=w_shape, bias=bias, stride=stride, padding=padding,
                dilation=dilation, groups=groups)
    if oracle64:
        case["oracle64"] = True
    return case


def _transpose_case(x_shape, w_shape, stride=1, padding=0, output_padding=0, dilation=1,
                    groups=1, bias=True):
    return dict(x_shape=x_shape, w_shape=w_shape, bias=bias, stride=stride, padding=padding,
                output_padding=output_padding, dilation=dilation, groups=groups)


EDGE_CONV = {
    "batch 1": _conv_case((1, 3, 9, 7), (5, 3, 3, 3), stride=2, padding=1),
    "1x1 input, 3x3 kernel padded": _conv_case((2, 3, 1, 1), (4, 3, 3, 3), padding=1),
    "1x1 input, 1x1 kernel": _conv_case((2, 3, 1, 1), (4, 3, 1, 1)),
    "kernel as large as the padded input": _conv_case((2, 2, 5, 4), (3, 2, 7, 6), padding=1),
    "dilated kernel as large as the input": _conv_case((2, 2, 5, 5), (3, 2, 3, 3), dilation=2),
    "depthwise, multiplier 2": _conv_case((2, 4, 8, 7), (8, 1, 3, 3), stride=2, padding=1,
                                          groups=4),
    "depthwise, multiplier 1, no bias": _conv_case((3, 5, 6, 6), (5, 1, 5, 3), padding=(2, 1),
                                                   groups=5, bias=False),
    "dilation with padding": _conv_case((2, 3, 10, 9), (4, 3, 3, 2), padding=(2, 3),
                                        dilation=(2, 3)),
    "same, even kernel": _conv_case((2, 3, 7, 6), (4, 3, 4, 2), padding="same"),
    "same, even kernel, dilated": _conv_case((2, 3, 7, 6), (4, 3, 4, 4), padding="same",
                                             dilation=(1, 2)),
    "pointwise 1x1 grouped": _conv_case((3, 6, 5, 4), (4, 3, 1, 1), groups=2),
    "pointwise 1x1 strided": _conv_case((3, 6, 5, 4), (4, 6, 1, 1), stride=2),
    "uneven padding": _conv_case((2, 3, 6, 6), (4, 3, 3, 3), padding=((0, 2), (1, 0))),
    # a large stride-1 image (on the phase kernels now; "several tiles, strided, grouped" keeps
    # im2col's tiles of rows covered: two, the last shorter)
    "several im2col tiles": _conv_case((1, 16, 61, 47), (8, 16, 3, 3), padding=1),
    "several tiles, strided, grouped": _conv_case((2, 32, 121, 95), (8, 16, 3, 3), stride=2,
                                                  padding=1, groups=2),
    "several tiles, pointwise": _conv_case((1, 64, 70, 65), (4, 64, 1, 1)),
    # the phase kernels (declcnn/_kernels/conv.pyx): LeNet's shapes, block edges, padding past
    # the kernel's reach (negative padding for the flipped input gradient), tiles and waves
    "LeNet conv1: one input channel, 6 outputs": _conv_case((3, 1, 28, 28), (6, 1, 5, 5),
                                                            padding=2),
    "LeNet conv2": _conv_case((3, 6, 14, 14), (16, 6, 5, 5)),
    "depthwise, multiplier 4 (phases)": _conv_case((2, 3, 9, 8), (12, 1, 3, 3), padding=1,
                                                   groups=3),
    "grouped, 8 channels per group": _conv_case((2, 16, 12, 11), (16, 8, 3, 3), padding=1,
                                                groups=2),
    "output channels past a block of 8, taps past a block of 6": _conv_case(
        (2, 5, 9, 10), (17, 5, 1, 7), padding=(0, 3)),
    "padding past the kernel's reach": _conv_case((2, 5, 5, 6), (4, 5, 3, 3), padding=(3, 4)),
    "5x5 stride 2 (phases, scattered input gradient)": _conv_case((2, 6, 13, 12), (7, 6, 5, 5),
                                                                  stride=2, padding=2),
    "dilated stride 2": _conv_case((2, 4, 15, 14), (5, 4, 3, 3), stride=(2, 3), padding=2,
                                   dilation=(2, 3)),
    # weight gradient: 4 output blocks in tiles of 3 (the last one short)
    "weight-gradient tiles": _conv_case((2, 4, 100, 96), (16, 4, 3, 3), padding=1,
                                        oracle64=True),
    # weight gradient: more than WAVE_FLOATS of phase planes and gy, so samples go in waves
    "weight-gradient waves": _conv_case((4, 16, 256, 256), (16, 16, 3, 3), padding=1,
                                        bias=False, oracle64=True),
}

EDGE_TRANSPOSE = {
    "batch 1": _transpose_case((1, 3, 4, 5), (3, 2, 3, 3), stride=2, padding=1),
    "1x1 input": _transpose_case((2, 3, 1, 1), (3, 4, 3, 3)),
    "output_padding at its stride limit": _transpose_case((2, 3, 4, 3), (3, 2, 3, 3), stride=3,
                                                          output_padding=2),
    "output_padding at its dilation limit": _transpose_case((2, 3, 4, 3), (3, 2, 3, 3),
                                                            dilation=3, output_padding=2),
    "depthwise, multiplier 2": _transpose_case((2, 4, 5, 5), (4, 2, 3, 3), stride=2,
                                               padding=1, groups=4),
    "dilation with padding": _transpose_case((2, 3, 5, 4), (3, 2, 3, 2), padding=(2, 1),
                                             dilation=(2, 3)),
    "U-Net up k2 s2": _transpose_case((2, 8, 4, 4), (8, 4, 2, 2), stride=2),
    "padding larger than the kernel's reach": _transpose_case((2, 2, 6, 6), (2, 3, 3, 3),
                                                              stride=1, padding=2),
    "several im2col tiles": _transpose_case((1, 8, 50, 45), (8, 16, 3, 3), stride=2,
                                            padding=1, output_padding=1),
    "k4 s2 p1 (phases)": _transpose_case((2, 6, 7, 6), (6, 5, 4, 4), stride=2, padding=1),
    "stride 1, grouped (phases, flipped)": _transpose_case((2, 12, 6, 5), (12, 5, 3, 3),
                                                           padding=1, groups=2),
    # the scattered input gradient adding into the output as it stands (stride 1, no padding),
    # on two threads' runs of samples, with the bias as its starting value
    "LeNet conv2's adjoint (phases, scattered into the output)": _transpose_case(
        (5, 16, 10, 10), (16, 6, 5, 5)),
    "grouped, scattered into the output": _transpose_case((8, 16, 7, 6), (16, 3, 5, 4),
                                                          groups=2),
    # 3x3 outputs: a sample's last block reaches across the next two samples' outputs
    "1x1 input, scattered into the output": _transpose_case((9, 6, 1, 1), (6, 2, 3, 3)),
}


@pytest.mark.parametrize("name", EDGE_CONV)
def test_conv2d_edge_case(name):
    check_conv2d_against_torch(EDGE_CONV[name])


@pytest.mark.parametrize("name", EDGE_TRANSPOSE)
def test_conv_transpose2d_edge_case(name):
    check_conv_transpose2d_against_torch(EDGE_TRANSPOSE[name])


def test_batch_zero_gives_empty_outputs_and_zero_parameter_gradients():
    torch = torch_or_skip()
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    y = conv2d(x, w, np.ones(4, np.float32), padding=1)
    assert y.shape == tuple(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                       padding=1).shape) == (0, 4, 8, 8)
    gx, gw, gb = conv2d_backward(np.zeros(y.shape, np.float32), x, w, padding=1)
    assert gx.shape == x.shape and not gw.any() and gw.shape == w.shape and not gb.any()
    wt = np.ones((3, 2, 2, 2), np.float32)
    yt = conv_transpose2d(x, wt, stride=2)
    assert yt.shape == (0, 2, 16, 16)
    gx, gw, gb = conv_transpose2d_backward(np.zeros(yt.shape, np.float32), x, wt, stride=2)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def test_backward_skips_input_and_bias_gradients_when_asked():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    gx, gw, gb = conv2d_backward(gy, x, w, needs_input_grad=False, has_bias=False)
    assert gx is None and gb is None
    assert_close(gw, naive_conv.conv2d_grad_weight(gy, x, w.shape, (1, 1), ((0, 0), (0, 0)),
                                                   (1, 1), 1), "grad weight")
    wt = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    gx, gw, gb = conv_transpose2d_backward(rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
                                           x, wt, needs_input_grad=False, has_bias=False)
    assert gx is None and gb is None and gw.shape == wt.shape


def test_out_buffer_is_written_and_returned():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out = np.full((2, 4, 6, 6), np.nan, np.float32)
    assert conv2d(x, w, padding=1, out=out) is out
    assert_close(out, naive_conv.conv2d(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1), "out")
    wt = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    out = np.full((2, 2, 12, 12), np.nan, np.float32)
    assert conv_transpose2d(x, wt, stride=2, out=out) is out
    assert_close(out, naive_conv.conv_transpose2d(x, wt, None, (2, 2), (0, 0), (0, 0), (1, 1), 1),
                 "out")


def test_non_contiguous_inputs_are_accepted():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 3, 5)).astype(np.float32).transpose(0, 3, 2, 1)
    w = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)[:, :, ::-1]
    expected = naive_conv.conv2d(x, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert_close(conv2d(x, w, padding="valid"), expected, "non-contiguous")


# ---------------------------------------------------------------------------------------------
# invalid input: declcnn's message, and PyTorch rejects it too


def _f32(*shape):
    return np.ones(shape, np.float32)


INVALID = [
    ("input 2-D", lambda: conv2d(_f32(8, 8), _f32(4, 3, 3, 3)),
     "conv2d: input must be 4-D (N, C, H, W); got 2-D input of shape [8, 8].", True),
    ("weight 3-D", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3)),
     "conv2d: weight must be 4-D (out_channels, in_channels/groups, kh, kw); got 3-D weight of "
     "shape [4, 3, 3].", True),
    ("channel mismatch", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 2, 3, 3), groups=2),
     "conv2d: Given groups=2, weight of size [4, 2, 3, 3], expected input[1, 3, 8, 8] to have 4 "
     "channels, but got 3 channels instead.", True),
    ("groups do not divide out_channels", lambda: conv2d(_f32(1, 4, 8, 8), _f32(3, 2, 3, 3),
                                                         groups=2),
     "conv2d: Given groups=2, expected weight to be divisible by 2 at dimension 0 "
     "(out_channels), but got weight of size [3, 2, 3, 3] instead.", True),
    ("groups 0", lambda: conv2d(_f32(1, 4, 8, 8), _f32(4, 4, 3, 3), groups=0),
     "conv2d: groups must be an integer ≥ 1; got 0.", True),
    ("stride 0", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), stride=0),
     "conv2d: stride must be an integer ≥ 1 or a pair of them (height, width); got 0.", True),
    ("dilation (1, 0)", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), dilation=(1, 0)),
     "conv2d: dilation must be an integer ≥ 1 or a pair of them (height, width); got (1, 0).",
     True),
    ("negative padding", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), padding=-1),
     "conv2d: padding must be an integer ≥ 0, a pair (height, width), a pair of pairs ((top, "
     "bottom), (left, right)) with every side ≥ 0, 'same' or 'valid'; got -1.", True),
    ("unknown padding word", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), padding="full"),
     "conv2d: padding must be an integer ≥ 0, a pair (height, width), a pair of pairs ((top, "
     "bottom), (left, right)) with every side ≥ 0, 'same' or 'valid'; got 'full'.", True),
    ("same with stride 2", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), stride=2,
                                          padding="same"),
     "conv2d: padding='same' needs stride 1 (as in PyTorch); got stride=(2, 2). Give the "
     "padding as numbers, or padding='valid', for a stride > 1.", True),
    ("output smaller than a pixel", lambda: conv2d(_f32(1, 1, 4, 6), _f32(1, 1, 5, 5)),
     "conv2d: the output would be 0×2 pixels, less than 1: height (input 4 + padding 0+0 − "
     "dilated kernel 5) // stride 1 + 1 = 0. Use a larger input, more padding, or a smaller "
     "kernel, stride or dilation.", True),
    ("dilated output smaller than a pixel", lambda: conv2d(_f32(1, 1, 9, 2), _f32(1, 1, 3, 3),
                                                          dilation=2, padding=(0, 1)),
     "conv2d: the output would be 5×0 pixels, less than 1: width (input 2 + padding 1+1 − "
     "dilated kernel 5) // stride 1 + 1 = 0.", True),
    ("integer input", lambda: conv2d(np.ones((1, 3, 8, 8), np.int64), _f32(4, 3, 3, 3)),
     "conv2d: input must be a float32 numpy array (float64 for gradient checks); got a int64 "
     "array of shape [1, 3, 8, 8]. Convert it with np.asarray(input, dtype=np.float32).", True),
    ("weight dtype differs", lambda: conv2d(_f32(1, 3, 8, 8), np.ones((4, 3, 3, 3))),
     "conv2d: weight has dtype float64 but the input has float32; all arrays of one call must "
     "share a dtype.", True),
    ("bias of the wrong shape", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), _f32(3)),
     "conv2d: bias must have shape (4,), one value per output channel; got shape (3,).", True),
    ("grad_y of the wrong shape", lambda: conv2d_backward(_f32(1, 4, 5, 5), _f32(1, 3, 8, 8),
                                                          _f32(4, 3, 3, 3)),
     "conv2d_backward: grad_y must have the shape of the forward output, [1, 4, 6, 6]; got "
     "[1, 4, 5, 5].", False),
    ("out of the wrong shape", lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3),
                                              out=_f32(1, 4, 8, 8)),
     "conv2d: out must be a writeable C-contiguous float32 array of shape [1, 4, 6, 6]; got a "
     "float32 array of shape [1, 4, 8, 8].", True),
    ("transposed: channel mismatch", lambda: conv_transpose2d(_f32(1, 3, 8, 8),
                                                              _f32(4, 2, 3, 3)),
     "conv_transpose2d: Given transposed=1, weight of size [4, 2, 3, 3], expected "
     "input[1, 3, 8, 8] to have 4 channels, but got 3 channels instead.", True),
    ("transposed: groups do not divide in_channels",
     lambda: conv_transpose2d(_f32(1, 3, 8, 8), _f32(3, 2, 3, 3), groups=2),
     "conv_transpose2d: Given groups=2, expected weight to be divisible by 2 at dimension 0 "
     "(in_channels), but got weight of size [3, 2, 3, 3] instead.", True),
    ("transposed: output_padding equal to stride",
     lambda: conv_transpose2d(_f32(1, 3, 8, 8), _f32(3, 2, 3, 3), stride=2, output_padding=2),
     "conv_transpose2d: output_padding must be smaller than either stride or dilation; got "
     "output_padding=(2, 2), stride=(2, 2), dilation=(1, 1). Use output_padding < max(stride, "
     "dilation) on each axis.", True),
    ("transposed: output_padding with stride 1",
     lambda: conv_transpose2d(_f32(1, 3, 8, 8), _f32(3, 2, 3, 3), output_padding=(0, 1)),
     "conv_transpose2d: output_padding must be smaller than either stride or dilation; got "
     "output_padding=(0, 1), stride=(1, 1), dilation=(1, 1).", True),
    ("transposed: negative padding",
     lambda: conv_transpose2d(_f32(1, 3, 8, 8), _f32(3, 2, 3, 3), padding=(1, -1)),
     "conv_transpose2d: padding must be an integer ≥ 0 or a pair of them (height, width); got "
     "(1, -1).", True),
    ("transposed: output smaller than a pixel",
     lambda: conv_transpose2d(_f32(1, 1, 1, 3), _f32(1, 1, 1, 1), padding=(1, 0)),
     "conv_transpose2d: the output would be -1×3 pixels, less than 1: height (input 1 − 1)·stride "
     "1 − 2·padding 1 + dilation 1·(kernel 1 − 1) + output_padding 0 + 1 = -1.", True),
]


@pytest.mark.parametrize("name, call, message, torch_rejects", INVALID,
                         ids=[row[0] for row in INVALID])
def test_invalid_arguments_are_rejected_with_a_message(name, call, message, torch_rejects):
    with pytest.raises(ShapeError, match="^" + re.escape(message)):
        call()


TORCH_INVALID = {
    "input 2-D": lambda t, F: F.conv2d(t.ones(8, 8), t.ones(4, 3, 3, 3)),
    "weight 3-D": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3)),
    "channel mismatch": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 2, 3, 3), groups=2),
    "groups do not divide out_channels": lambda t, F: F.conv2d(t.ones(1, 4, 8, 8),
                                                               t.ones(3, 2, 3, 3), groups=2),
    "groups 0": lambda t, F: F.conv2d(t.ones(1, 4, 8, 8), t.ones(4, 4, 3, 3), groups=0),
    "stride 0": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3), stride=0),
    "dilation (1, 0)": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3),
                                             dilation=(1, 0)),
    "negative padding": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3),
                                              padding=-1),
    "unknown padding word": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3),
                                                  padding="full"),
    "same with stride 2": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3),
                                                stride=2, padding="same"),
    "output smaller than a pixel": lambda t, F: F.conv2d(t.ones(1, 1, 4, 6), t.ones(1, 1, 5, 5)),
    "dilated output smaller than a pixel": lambda t, F: F.conv2d(
        t.ones(1, 1, 9, 2), t.ones(1, 1, 3, 3), dilation=2, padding=(0, 1)),
    "integer input": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8, dtype=t.int64),
                                           t.ones(4, 3, 3, 3)),
    "weight dtype differs": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8),
                                                  t.ones(4, 3, 3, 3, dtype=t.float64)),
    "bias of the wrong shape": lambda t, F: F.conv2d(t.ones(1, 3, 8, 8), t.ones(4, 3, 3, 3),
                                                     t.ones(3)),
    "out of the wrong shape": None,
    "transposed: channel mismatch": lambda t, F: F.conv_transpose2d(t.ones(1, 3, 8, 8),
                                                                    t.ones(4, 2, 3, 3)),
    "transposed: groups do not divide in_channels": lambda t, F: F.conv_transpose2d(
        t.ones(1, 3, 8, 8), t.ones(3, 2, 3, 3), groups=2),
    "transposed: output_padding equal to stride": lambda t, F: F.conv_transpose2d(
        t.ones(1, 3, 8, 8), t.ones(3, 2, 3, 3), stride=2, output_padding=2),
    "transposed: output_padding with stride 1": lambda t, F: F.conv_transpose2d(
        t.ones(1, 3, 8, 8), t.ones(3, 2, 3, 3), output_padding=(0, 1)),
    "transposed: negative padding": lambda t, F: F.conv_transpose2d(
        t.ones(1, 3, 8, 8), t.ones(3, 2, 3, 3), padding=(1, -1)),
    "transposed: output smaller than a pixel": lambda t, F: F.conv_transpose2d(
        t.ones(1, 1, 1, 3), t.ones(1, 1, 1, 1), padding=(1, 0)),
}


@pytest.mark.parametrize("name", [name for name, *_, rejects in INVALID
                                  if rejects and TORCH_INVALID.get(name)])
def test_torch_rejects_the_same_arguments(name):
    torch = torch_or_skip()
    with pytest.raises((RuntimeError, ValueError)):
        TORCH_INVALID[name](torch, torch.nn.functional)


# ---------------------------------------------------------------------------------------------
# threads



def _backward_both(threads):
    """Every gradient of both ops on each kernel path, large enough (over 2¹⁸ multiply-adds)
    that the ops really use ``threads`` threads."""
    declcnn.set_num_threads(threads)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 16, 24, 23)).astype(np.float32)
    results = []
    for w, groups, stride in ((rng.standard_normal((16, 8, 3, 3)), 2, 1),   # phases, flipped
                              (rng.standard_normal((16, 16, 3, 3)), 1, 2),  # im2col + GEMM
                              (rng.standard_normal((16, 16, 5, 5)), 1, 2),  # phases, scattered
                              (rng.standard_normal((64, 1, 3, 3)), 16, 1),  # phases, 1 channel
                              (rng.standard_normal((32, 1, 3, 3)), 16, 1),  # depthwise
                              (rng.standard_normal((16, 16, 1, 1)), 1, 1)):  # pointwise
        w = w.astype(np.float32)
        pad = w.shape[2] // 2
        y_shape = conv2d(x, w, stride=stride, padding=pad, groups=groups).shape
        gy = rng.standard_normal(y_shape).astype(np.float32)
        results += conv2d_backward(gy, x, w, stride=stride, padding=pad, groups=groups)
        # the same weight read as a transposed conv's maps the O channels of gy back to 16
        gyt = rng.standard_normal(x.shape).astype(np.float32)
        out_pad = x.shape[3] - conv_transpose_output_size(y_shape[3], w.shape[3], stride, pad,
                                                          1, 0)
        results += conv_transpose2d_backward(gyt, gy, w, stride=stride, padding=pad,
                                             output_padding=(1, out_pad) if stride == 2 else 0,
                                             groups=groups)
    return results


def test_backward_is_bit_reproducible_for_a_thread_count(restore_threads):
    first, second = _backward_both(2), _backward_both(2)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


def test_one_and_two_threads_agree(restore_threads):
    """To float32 rounding: GEMM over the batch cuts its columns by the thread count, so its
    weight gradient sums in another order (1×1 conv: 6e-5 apart on values of 180)."""
    for a, b in zip(_backward_both(1), _backward_both(2), strict=True):
        assert_close(a, b, "1 vs 2 threads", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_plan_matches_the_checked_ops(transposed):
    """A plan checked once for a per-sample shape runs the same loops as the ops: same bits,
    forward and all three gradients, into buffers that held NaN (every value is written), and
    for a batch of 0 the weight and bias gradients are zeros."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(6 if transposed else 4).astype(np.float32)
    if transposed:
        args = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
        y = conv_transpose2d(x, w, b, **args)
        plan = ConvPlan.conv_transpose2d(x.shape[1:], w.shape, **args)
        grads = conv_transpose2d_backward
    else:
        args = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
        w = w[:, :2].copy()
        y = conv2d(x, w, b, **args)
        plan = ConvPlan.conv2d(x.shape[1:], w.shape, **args)
        grads = conv2d_backward
    assert plan.output_shape == y.shape[1:]
    y2 = np.full_like(y, np.nan)
    plan.forward(x, w, b, y2)
    assert y2.tobytes() == y.tobytes()
    gy = rng.standard_normal(y.shape).astype(np.float32)
    expected = grads(gy, x, w, **args)
    got = (np.full_like(x, np.nan), np.full_like(w, np.nan), np.full_like(b, np.nan))
    plan.backward(gy, x, w, *got)
    for a, e in zip(got, expected, strict=True):
        assert a.tobytes() == e.tobytes()
    plan.backward(gy[:0], x[:0], w, None, got[1], got[2])
    assert not got[1].any() and not got[2].any()


def test_conv_plan_checks_once_with_the_ops_messages():
    with pytest.raises(ShapeError, match=r"expected a per-sample shape \(C, H, W\).*\[4, 9\]"):
        ConvPlan.conv2d((4, 9), (2, 4, 3, 3))
    with pytest.raises(ShapeError, match="expected input\\[1, 4, 9, 9\\] to have 6 channels"):
        ConvPlan.conv2d((4, 9, 9), (2, 3, 3, 3), groups=2)
    with pytest.raises(ShapeError, match="output_padding must be smaller"):
        ConvPlan.conv_transpose2d((4, 5, 5), (4, 2, 3, 3), stride=2, output_padding=2)
