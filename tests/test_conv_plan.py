"""The conv plan: every algorithm eligible for a shape, forced, against the naive twin (float64)
and PyTorch (float32); the plan's choices on shapes whose answer is known; forcing errors.

Tests force each algorithm through ``ConvPlan(force=...)``, so a retune of the rules in
``declcnn/ops/conv_plan.py`` cannot move a test off the path it was written for.
"""

from __future__ import annotations

import numpy as np
import pytest

import declcnn
from declcnn import ShapeError
from declcnn._kernels import naive_conv
from declcnn.ops.conv import ConvPlan
from declcnn.ops.conv_plan import ConvView, Machine, choose, live_taps, machine
from tests.oracle import assert_close, to_torch, torch_or_skip
from tests.test_conv import (
    _conv_args,
    _random_conv_case,
    _random_transpose_case,
    _sides,
    _transpose_args,
)

PASSES = ("forward", "input_grad", "weight_grad")


def _naive_padding(case):
    padding = case["padding"]
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                     for k, d in zip(case["w_shape"][2:], case["dilation"], strict=True))
    return _sides(padding)


def _plan(case, transposed, force=None):
    sample = case["x_shape"][1:]
    if transposed:
        return ConvPlan.conv_transpose2d(sample, case["w_shape"], force=force,
                                         **_transpose_args(case))
    return ConvPlan.conv2d(sample, case["w_shape"], force=force, **_conv_args(case))


def _run(plan, x, w, b, gy_seed):
    y = np.full((x.shape[0], *plan.output_shape), np.nan, x.dtype)
    plan.forward(x, w, b, y)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(x.dtype)
    gx, gw = np.full_like(x, np.nan), np.full_like(w, np.nan)
    plan.backward(gy, x, w, gx, gw, None)
    return y, gy, gx, gw


def _naive(case, transposed, x, w, b, gy):
    if transposed:
        args = (case["stride"], _sides(case["padding"]), case["output_padding"],
                case["dilation"], case["groups"])
        pad = tuple(p[0] for p in args[1])
        y = naive_conv.conv_transpose2d(x, w, b, args[0], pad, args[2], args[3], args[4])
        gx = naive_conv.conv_transpose2d_grad_input(gy, x.shape, w, args[0], pad, args[2],
                                                    args[3], args[4])
        gw = naive_conv.conv_transpose2d_grad_weight(gy, x, w.shape, args[0], pad, args[2],
                                                     args[3], args[4])
        return y, gx, gw
    pad = _naive_padding(case)
    args = (case["stride"], pad, case["dilation"], case["groups"])
    y = naive_conv.conv2d(x, w, b, *args)
    gx = naive_conv.conv2d_grad_input(gy, x.shape, w, *args)
    gw = naive_conv.conv2d_grad_weight(gy, x, w.shape, *args)
    return y, gx, gw


def _cases():
    for seed in range(40):
        yield pytest.param(False, seed, id=f"conv-{seed}")
    for seed in range(25):
        yield pytest.param(True, seed, id=f"transposed-{seed}")


def _case(transposed, seed):
    if transposed:
        return _random_transpose_case(seed)
    case = _random_conv_case(seed)
    if seed % 4 == 0:  # small maps with much padding: dead taps, the plan's gemm rule
        case["padding"] = ((2, 1), (1, 2))
        case["x_shape"] = (*case["x_shape"][:2], 1 + seed % 3, 2)
        case["stride"] = (1, 1)
        case["dilation"] = (1, 1)
    return case


@pytest.mark.parametrize("transposed, seed", list(_cases()))
def test_every_eligible_algorithm_matches_the_twin(transposed, seed, restore_threads):
    """float64, every pass and every eligible algorithm of it forced, 2 threads."""
    declcnn.set_num_threads(2)
    case = _case(transposed, seed)
    try:
        plain = _plan(case, transposed)
    except ShapeError:
        pytest.skip("the random output collapsed for this padding")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x_shape"])
    w = rng.standard_normal(case["w_shape"])
    b = rng.standard_normal(plain.output_shape[0]) if case["bias"] else None
    for name in PASSES:
        for algorithm in plain.eligible(name):
            plan = _plan(case, transposed, force={name: algorithm})
            assert plan.chosen(x.shape[0])[name] == (algorithm, "forced")
            y, gy, gx, gw = _run(plan, x, w, b, seed)
            ey, egx, egw = _naive(case, transposed, x, w, b, gy)
            what = f"{name}={algorithm} on {case}"
            assert_close(y, ey, f"output, {what}", rtol=1e-10, atol=1e-10)
            assert_close(gx, egx, f"input gradient, {what}", rtol=1e-10, atol=1e-10)
            assert_close(gw, egw, f"weight gradient, {what}", rtol=1e-10, atol=1e-10)


# shapes from real networks, at the batch they train at; a GEMM over the whole batch and the
# phase kernels both forced, against torch in float32
REAL_SHAPES = [
    # (N, C, H, W), (O, Cg, kh, kw), stride, padding, groups
    ((32, 512, 1, 1), (512, 512, 3, 3), 1, 1, 1),    # ResNet-18's last stage on 32×32 input
    ((32, 256, 2, 2), (512, 256, 3, 3), 2, 1, 1),
    ((4, 128, 4, 4), (128, 128, 3, 3), 1, 1, 1),
    ((1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),   # batch 1, a 14×14 map
    ((3, 96, 7, 5), (64, 48, 3, 3), 1, 2, 2),
    ((2, 64, 3, 3), (64, 1, 3, 3), 2, 1, 64),        # depthwise, MobileNet's last maps
]


@pytest.mark.parametrize("shape", REAL_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_real_shapes_on_every_algorithm_match_torch(shape, restore_threads):
    torch = torch_or_skip()
    F = torch.nn.functional
    declcnn.set_num_threads(2)
    x_shape, w_shape, stride, padding, groups = shape
    rng = np.random.default_rng(len(x_shape) + x_shape[1])
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    tx, tw, tb = (to_torch(torch, a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=groups)
    gy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    expected = {"forward": ty.detach().numpy(), "input_grad": tx.grad.numpy(),
                "weight_grad": tw.grad.numpy()}
    args = dict(stride=stride, padding=padding, groups=groups)
    plain = ConvPlan.conv2d(x_shape[1:], w_shape, **args)
    for name in PASSES:
        for algorithm in plain.eligible(name):
            plan = ConvPlan.conv2d(x_shape[1:], w_shape, force={name: algorithm}, **args)
            y = np.empty((x_shape[0], *plan.output_shape), np.float32)
            plan.forward(x, w, b, y)
            gx, gw = np.empty_like(x), np.empty_like(w)
            plan.backward(gy, x, w, gx, gw, None)
            got = {"forward": y, "input_grad": gx, "weight_grad": gw}
            assert_close(got[name], expected[name], f"{name}={algorithm}, {shape}",
                         rtol=1e-4, atol=1e-4)


def test_gemm_drops_the_taps_that_read_only_padding():
    view = ConvView((32, 512, 1, 1), (32, 512, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert live_taps(view) == [4]
    # a 2×2 map: the corner taps of a 3×3 pad-1 conv still reach one pixel each
    view2 = ConvView((8, 64, 2, 2), (8, 64, 2, 2), (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert live_taps(view2) == list(range(9))
    # stride 2 on a 2×2 map: output 1×1 reads rows/columns 0 and 1 of the 3×3 window's last two
    view3 = ConvView((8, 64, 2, 2), (8, 64, 1, 1), (3, 3), (2, 2), (1, 1), (1, 1), 1)
    assert live_taps(view3) == [4, 5, 7, 8]


AVX512 = Machine(vector_bytes=64, vector_registers=32, l2_bytes=2 << 20)
AVX2 = Machine(vector_bytes=32, vector_registers=16, l2_bytes=512 << 10)


@pytest.mark.parametrize("sample, weight, kwargs, on_avx512, on_avx2", [
    # ResNet-18 on CIFAR: a 1×1 map, 8 of 9 taps in the padding → GEMM over the batch
    ((512, 1, 1), (512, 512, 3, 3), dict(padding=1), ("gemm",) * 3, ("gemm",) * 3),
    # VGG on 56×56: the flat layout wastes 4% → phase kernels where their blocks fit the
    # registers, GEMM where they spill
    ((64, 56, 56), (64, 64, 3, 3), dict(padding=1), ("phases", "flipped:phases", "lanes"),
     ("gemm",) * 3),
    # LeNet's conv2: 16 channels in one vector of lanes
    ((6, 14, 14), (16, 6, 5, 5), {}, ("pixels", "scatter", "lanes"),
     ("pixels", "scatter", "lanes")),
    # grouped, 8 channels a group: one channel at a time where the blocks spill
    ((256, 28, 28), (256, 8, 3, 3), dict(padding=1, groups=32),
     ("phases", "flipped:phases", "reduce"), ("depthwise", "flipped:phases", "reduce")),
    # a pointwise conv is a GEMM
    ((256, 28, 28), (256, 256, 1, 1), {}, ("gemm",) * 3, ("gemm",) * 3),
    # depthwise 3×3
    ((256, 28, 28), (256, 1, 3, 3), dict(padding=1, groups=256),
     ("depthwise", "flipped:depthwise", "depthwise"),
     ("depthwise", "flipped:depthwise", "depthwise")),
])
def test_the_plan_chooses_by_the_stated_rules(sample, weight, kwargs, on_avx512, on_avx2):
    view = ConvPlan.conv2d(sample, weight, **kwargs).view.with_batch(32)
    for on, expected in ((AVX512, on_avx512), (AVX2, on_avx2)):
        chosen = choose(view, on)
        assert tuple(chosen[p].algorithm for p in PASSES) == expected, (on, chosen)
        assert all(chosen[p].why for p in PASSES)


def test_the_plan_reads_this_machine():
    """The chooser's machine is this one: the build's vector registers and a real L2 size."""
    on = machine()
    assert on.vector_bytes in (16, 32, 64) and on.vector_registers in (16, 32)
    assert on.l2_bytes >= 64 << 10
    plan = ConvPlan.conv2d((64, 56, 56), (64, 64, 3, 3), padding=1)
    assert plan.chosen(8) == {p: (c.algorithm, c.why)
                              for p, c in zip(PASSES, choose(plan.view.with_batch(8), on),
                                              strict=True)}


def test_a_transposed_conv_names_its_own_passes():
    """A transposed conv's forward is its view's input gradient: the plan reports (and forces)
    by the op's pass names."""
    plan = ConvPlan.conv_transpose2d((128, 28, 28), (128, 64, 2, 2), stride=2,
                                     force={"forward": "gemm"})
    assert plan.chosen(8)["forward"] == ("gemm", "forced")
    assert plan.eligible("forward") == ["gemm", "scatter"]


def test_forcing_an_ineligible_algorithm_names_the_options():
    with pytest.raises(ShapeError, match=r"conv plan: the input_grad pass cannot run "
                                         r"'flipped:phases' for this layer; the algorithms "
                                         r"that can are gemm, scatter\."):
        ConvPlan.conv2d((8, 9, 9), (8, 8, 3, 3), stride=2, force={"input_grad": "flipped:phases"})
    with pytest.raises(ShapeError, match=r"conv plan: no pass 'backward'; the passes are "
                                         r"forward, input_grad, weight_grad\."):
        ConvPlan.conv2d((8, 9, 9), (8, 8, 3, 3), force={"backward": "gemm"})


def test_gemm_gives_the_same_bits_run_to_run(restore_threads):
    declcnn.set_num_threads(2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 64, 4, 4)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    plan = ConvPlan.conv2d(x.shape[1:], w.shape, padding=1,
                           force=dict.fromkeys(PASSES, "gemm"))
    first = _run(plan, x, w, None, 1)
    second = _run(plan, x, w, None, 1)
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()
