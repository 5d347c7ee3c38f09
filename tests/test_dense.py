"""Linear and nearest upsampling: PyTorch parity over seeded sweeps (forward and every gradient),
numpy twins, float64 gradient checks, thread reproducibility and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_close, gradcheck, to_torch, torch_or_skip

from declcnn import ShapeError, set_num_threads
from declcnn._kernels import naive_dense as naive
from declcnn.ops import linear as L
from declcnn.ops import resample as R

SWEEP = 60



def linear_case(rng, index):
    """Batch 0 and 1 first; both weight-gradient partitions (out ≥ in and out < in) occur."""
    batch = index if index < 2 else int(rng.integers(1, 40))
    fin, fout = (int(v) for v in rng.integers(1, 70, 2))
    return batch, fin, fout, bool(index % 4), bool(index % 3)


def test_linear_matches_torch_and_numpy_twin(restore_threads):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    for i in range(SWEEP):
        set_num_threads(1 + i % 2)
        batch, fin, fout, has_bias, needs_input_grad = linear_case(rng, i)
        x = rng.standard_normal((batch, fin)).astype(np.float32)
        w = rng.standard_normal((fout, fin)).astype(np.float32)
        b = rng.standard_normal(fout).astype(np.float32) if has_bias else None
        gy = rng.standard_normal((batch, fout)).astype(np.float32)
        xt, wt = to_torch(torch, x, True), to_torch(torch, w, True)
        bt = to_torch(torch, b, True) if has_bias else None
        yt = F.linear(xt, wt, bt)
        yt.backward(to_torch(torch, gy))
        what = f"linear N={batch} in={fin} out={fout} bias={has_bias}"
        y = L.linear(x, w, b)
        assert_close(y, yt.detach().numpy(), what)
        assert_close(y, naive.linear(x, w, b), what + " vs twin")
        gx, gw, gb = L.linear_backward(gy, x, w, needs_input_grad=needs_input_grad,
                                       has_bias=has_bias)
        twin = naive.linear_backward(gy, x, w)
        if needs_input_grad:
            assert_close(gx, xt.grad.numpy(), what + " grad input")
            assert_close(gx, twin[0], what + " grad input vs twin")
        else:
            assert gx is None
        assert_close(gw, wt.grad.numpy(), what + " grad weight")
        assert_close(gw, twin[1], what + " grad weight vs twin")
        if has_bias:
            assert_close(gb, bt.grad.numpy(), what + " grad bias")
            assert_close(gb, twin[2], what + " grad bias vs twin")
        else:
            assert gb is None


def test_linear_gradcheck_float64():
    rng = np.random.default_rng(11)
    for i in range(10):
        batch, fin, fout, _, _ = linear_case(rng, i + 1)
        x = rng.standard_normal((batch, fin))
        w = rng.standard_normal((fout, fin))
        b = rng.standard_normal(fout)
        gradcheck(L.linear, [x, w, b], lambda g, x_, w_, b_: L.linear_backward(g, x_, w_),
                  seed=i)


def test_linear_out_buffer_and_no_bias():
    x = np.ones((2, 3), np.float32)
    out = np.full((2, 4), 7, np.float32)
    assert L.linear(x, np.ones((4, 3), np.float32), out=out) is out
    np.testing.assert_array_equal(out, np.full((2, 4), 3))


@pytest.mark.parametrize("fin, fout", [(300, 50), (40, 400)])
def test_linear_bits_run_to_run_and_one_versus_two_threads(restore_threads, fin, fout):
    """Both weight-gradient partitions (by rows of gW when out ≥ in, by columns otherwise)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((64, fin)).astype(np.float32)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    gy = rng.standard_normal((64, fout)).astype(np.float32)
    runs = {}
    for threads in (1, 2):
        set_num_threads(threads)
        first = (L.linear(x, w, b), *L.linear_backward(gy, x, w))
        second = (L.linear(x, w, b), *L.linear_backward(gy, x, w))
        for a, c in zip(first, second, strict=True):
            assert np.array_equal(a, c), f"{threads} threads: not the same bits run to run"
        runs[threads] = first
    for name, a, c in zip(("y", "gx", "gw", "gb"), runs[1], runs[2], strict=True):
        assert_close(c, a, f"{name}: 2 threads vs 1", rtol=1e-5, atol=1e-5)
    assert np.array_equal(runs[1][3], runs[2][3]), "the bias gradient sums in a fixed order"


def test_linear_error_messages():
    x = np.zeros((4, 10), np.float32)
    w = np.zeros((3, 12), np.float32)
    with pytest.raises(ShapeError, match=(
            r"^linear: the layer expects in_features=12 \(weight of size \[3, 12\]\) but the "
            r"input of shape \[4, 10\] has 10 features \(PyTorch: mat1 and mat2 shapes cannot be "
            r"multiplied \(4x10 and 12x3\)\)\. Set in_features=10, or feed the layer an input "
            r"with 12 features\.$")):
        L.linear(x, w)
    with pytest.raises(ShapeError, match=(
            r"^linear: the input must be 2-D \(N, in_features=12\); got shape \[2, 3, 2, 2\]\. "
            r"Flatten images first")):
        L.linear(np.zeros((2, 3, 2, 2), np.float32), w)
    with pytest.raises(ShapeError, match=(
            r"^linear: bias must have shape \(3,\), one value per output feature of weight "
            r"\[3, 12\]; got shape \(4,\)\.$")):
        L.linear(np.zeros((4, 12), np.float32), w, np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match=r"^linear: weight has dtype float64 but the input has "
                       r"float32"):
        L.linear(x, np.zeros((3, 10)))
    with pytest.raises(ShapeError, match=r"^linear: weight of size \[0, 10\] has no elements"):
        L.linear(x, np.zeros((0, 10), np.float32))
    with pytest.raises(ShapeError, match=r"^linear: out must be a writeable C-contiguous float32 "
                       r"array of shape \[4, 3\]"):
        L.linear(x, np.zeros((3, 10), np.float32), out=np.zeros((4, 4), np.float32))
    with pytest.raises(ShapeError, match=(
            r"^linear_backward: grad_y must have the shape of the forward output "
            r"\(N, out_features\), \[4, 3\]; got \[4, 2\]\.")):
        L.linear_backward(np.zeros((4, 2), np.float32), x, np.zeros((3, 10), np.float32))


# -- upsampling ------------------------------------------------------------------------------

def upsample_case(rng, index):
    batch = index if index < 2 else int(rng.integers(1, 4))
    shape = (batch, int(rng.integers(1, 5)), *(int(v) for v in rng.integers(1, 9, 2)))
    scale = int(rng.integers(1, 4)) if index % 2 else tuple(int(v) for v in rng.integers(1, 5, 2))
    return shape, scale


def test_upsample_matches_torch_and_numpy_twin(restore_threads):
    torch = torch_or_skip()
    rng = np.random.default_rng(13)
    for i in range(SWEEP):
        set_num_threads(1 + i % 2)
        shape, scale = upsample_case(rng, i)
        pair = scale if isinstance(scale, tuple) else (scale, scale)
        x = rng.standard_normal(shape).astype(np.float32)
        xt = to_torch(torch, x, True)
        yt = torch.nn.functional.interpolate(xt, scale_factor=pair, mode="nearest")
        gy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        yt.backward(to_torch(torch, gy))
        what = f"upsample {shape} scale={scale}"
        y = R.upsample_nearest2d(x, scale)
        assert np.array_equal(y, yt.detach().numpy()), what
        assert np.array_equal(y, naive.upsample_nearest2d(x, pair)), what + " vs twin"
        gx = R.upsample_nearest2d_backward(gy, scale)
        assert_close(gx, xt.grad.numpy(), what + " grad")
        assert_close(gx, naive.upsample_nearest2d_backward(gy, pair), what + " grad vs twin")


def test_upsample_gradcheck_float64():
    rng = np.random.default_rng(14)
    for i in range(10):
        shape, scale = upsample_case(rng, i + 1)
        gradcheck(lambda x, s=scale: R.upsample_nearest2d(x, s), [rng.standard_normal(shape)],
                  lambda g, x, s=scale: [R.upsample_nearest2d_backward(g, s)], seed=i)


def test_upsample_error_messages():
    x = np.zeros((1, 2, 3, 3), np.float32)
    for bad in (0, 1.5, (2, 0), (2, 2, 2), True):
        with pytest.raises(ShapeError, match=(
                r"^upsample_nearest2d: scale must be an integer ≥ 1 or a pair of them \(height, "
                r"width\); got .*\. Use e\.g\. scale=2 or scale=\(2, 3\)\.$")):
            R.upsample_nearest2d(x, bad)
    with pytest.raises(ShapeError, match=r"^upsample_nearest2d: input must be 4-D \(N, C, H, W\); "
                       r"got 3-D input of shape \[2, 3, 3\]\. Add a batch axis with input\[None\] "
                       r"for a single image\.$"):
        R.upsample_nearest2d(x[0], 2)
    with pytest.raises(ShapeError, match=(
            r"^upsample_nearest2d_backward: grad_y of shape \[1, 2, 6, 7\] cannot come from "
            r"upsampling by scale \(2, 2\): its height and width must be multiples of the "
            r"scale\.")):
        R.upsample_nearest2d_backward(np.zeros((1, 2, 6, 7), np.float32), 2)


@pytest.mark.parametrize("batch", [0, 1, 7])
def test_linear_backward_into_buffers_and_accumulating(batch):
    """``out=`` buffers and ``accumulate`` (what the runtime uses): the same gradients, added
    onto what the buffers held; LinearPlan gives the same bits as the checked op."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 9)).astype(np.float32)
    w = rng.standard_normal((5, 9)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    gy = rng.standard_normal((batch, 5)).astype(np.float32)
    gx, gw, gb = L.linear_backward(gy, x, w)
    held_w, held_b = rng.standard_normal((2, 5, 9)).astype(np.float32)[0], np.ones(5, np.float32)
    out = (np.empty_like(x), held_w.copy(), held_b.copy())
    gx2, gw2, gb2 = L.linear_backward(gy, x, w, out=out, accumulate=True)
    assert gx2 is out[0] and gw2 is out[1] and gb2 is out[2]
    assert_close(gx2, gx, "gx")
    assert_close(gw2, held_w + gw, "accumulated gW", atol=1e-5)
    np.testing.assert_array_equal(gb2, held_b + gb)
    plan, y = L.LinearPlan(9, 5), np.empty((batch, 5), np.float32)
    plan.forward(x, w, b, y)
    np.testing.assert_array_equal(y, L.linear(x, w, b))
    with_nan = x.copy()
    with_nan[:1, :1] = np.nan  # relu keeps NaN
    plan.forward(with_nan, w, b, y, relu=True)
    expected = L.linear(with_nan, w, b)
    np.testing.assert_array_equal(y, np.where(expected < 0, 0, expected))
    assert batch == 0 or np.isnan(y[0]).all()
    plan_out = (np.empty_like(x), np.zeros_like(w), np.zeros_like(b))
    plan.backward(gy, x, w, *plan_out)
    for ours, theirs in zip(plan_out, (gx, gw, gb), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ShapeError, match="accumulate=True adds into out's gW and gb"):
        L.linear_backward(gy, x, w, accumulate=True)
