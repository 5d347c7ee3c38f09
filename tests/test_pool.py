"""Pooling: PyTorch parity over seeded sweeps, fast vs naive, float64 gradient checks, named edge
cases, error messages, and bit-reproducibility across runs and thread counts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from oracle import assert_close, gradcheck, to_torch, torch_or_skip

from declcnn import ShapeError, set_num_threads
from declcnn._kernels import naive_pool as naive
from declcnn.ops import pool as P

SWEEP = 300


def distinct(rng, shape, dtype=np.float32):
    """Values with no ties (max pooling's argmax is then unique), spread over [−1, 1)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) / max(size, 1)).astype(dtype).reshape(shape)


def random_window(rng, dilation=True, small=False):
    """A valid random max/avg configuration; one in four is the specialised k2 s2 p0 case."""
    if rng.random() < 0.25:
        k, s, p, d = (2, 2), (2, 2), (0, 0), (1, 1)
    else:
        k = tuple(int(v) for v in rng.integers(1, 8, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, min(3, ki // 2) + 1)) for ki in k)
        d = tuple(int(v) for v in rng.integers(1, 4, 2)) if dilation else (1, 1)
    low = [max(1, di * (ki - 1) + 1 - 2 * pi) for ki, pi, di in zip(k, p, d, strict=True)]
    span = 5 if small else 12
    size = tuple(int(rng.integers(lo, lo + span)) for lo in low)
    batch = int(rng.integers(1, 3 if small else 5))
    channels = int(rng.integers(1, 4 if small else 17))
    return dict(shape=(batch, channels, *size), kernel=k, stride=s, padding=p, dilation=d,
                ceil_mode=bool(rng.integers(2)))


def torch_max(torch, x, cfg, grad_y=None):
    xt = to_torch(torch, x, requires_grad=True)
    y, indices = torch.nn.functional.max_pool2d(
        xt, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"],
        return_indices=True)
    if grad_y is None:
        return y.detach().numpy(), indices.numpy()
    y.backward(to_torch(torch, grad_y))
    return y.detach().numpy(), indices.numpy(), xt.grad.numpy()


def torch_avg(torch, x, cfg, grad_y):
    xt = to_torch(torch, x, requires_grad=True)
    y = torch.nn.functional.avg_pool2d(xt, cfg["kernel"], cfg["stride"], cfg["padding"],
                                       cfg["ceil_mode"], cfg["count_include_pad"])
    y.backward(to_torch(torch, grad_y))
    return y.detach().numpy(), xt.grad.numpy()


def torch_adaptive(torch, x, output_size, grad_y):
    results = []
    for pool in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        xt = to_torch(torch, x, requires_grad=True)
        y = getattr(torch.nn.functional, pool)(xt, output_size)
        y.backward(to_torch(torch, grad_y))
        results.append((y.detach().numpy(), xt.grad.numpy()))
    return results


def max_args(cfg):
    return dict(kernel=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])


def avg_args(cfg):
    return dict(kernel=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                ceil_mode=cfg["ceil_mode"], count_include_pad=cfg["count_include_pad"])


# ---------------------------------------------------------------- PyTorch parity sweeps


def test_max_pool2d_matches_torch_sweep():
    torch = torch_or_skip()
    rng = np.random.default_rng(1)
    checked = rejected = 0
    while checked < SWEEP:
        cfg = random_window(rng)
        x = distinct(rng, cfg["shape"])
        want_y, want_i = torch_max(torch, x, cfg)
        if np.isneginf(want_y).any():
            # a dilated window that misses the input: torch returns −inf, declcnn refuses
            with pytest.raises(ShapeError, match="would see only padding"):
                P.max_pool2d(x, **max_args(cfg))
            rejected += 1
            continue
        y, indices = P.max_pool2d(x, **max_args(cfg))
        grad_y = rng.standard_normal(y.shape).astype(np.float32)
        _, _, want_gx = torch_max(torch, x, cfg, grad_y)
        assert_close(y, want_y, f"max_pool2d y {cfg}")
        np.testing.assert_array_equal(indices, want_i, err_msg=f"max_pool2d indices {cfg}")
        assert_close(P.max_pool2d_backward(grad_y, indices, x.shape), want_gx,
                     f"max_pool2d grad_x {cfg}")
        checked += 1
    assert rejected < checked


def test_avg_pool2d_matches_torch_sweep():
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    for _ in range(SWEEP):
        cfg = random_window(rng, dilation=False)
        cfg["count_include_pad"] = bool(rng.integers(2))
        x = rng.standard_normal(cfg["shape"]).astype(np.float32)
        y = P.avg_pool2d(x, **avg_args(cfg))
        grad_y = rng.standard_normal(y.shape).astype(np.float32)
        want_y, want_gx = torch_avg(torch, x, cfg, grad_y)
        assert_close(y, want_y, f"avg_pool2d y {cfg}")
        assert_close(P.avg_pool2d_backward(grad_y, x.shape, **avg_args(cfg)), want_gx,
                     f"avg_pool2d grad_x {cfg}")


def test_adaptive_pools_match_torch_sweep():
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    for _ in range(SWEEP):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 17)),
                 *(int(v) for v in rng.integers(1, 20, 2)))
        # outputs from 1×1 (global) up to a few pixels more than the input
        output_size = tuple(int(rng.integers(1, n + 4)) for n in shape[2:])
        x = distinct(rng, shape)
        grad_y = rng.standard_normal((*shape[:2], *output_size)).astype(np.float32)
        (want_avg, want_avg_gx), (want_max, want_max_gx) = torch_adaptive(
            torch, x, output_size, grad_y)
        what = f"shape {shape} output_size {output_size}"
        assert_close(P.adaptive_avg_pool2d(x, output_size), want_avg, f"adaptive avg y {what}")
        assert_close(P.adaptive_avg_pool2d_backward(grad_y, shape), want_avg_gx,
                     f"adaptive avg grad_x {what}")
        y, indices = P.adaptive_max_pool2d(x, output_size)
        _, want_i = torch.nn.functional.adaptive_max_pool2d(
            to_torch(torch, x), output_size, return_indices=True)
        assert_close(y, want_max, f"adaptive max y {what}")
        np.testing.assert_array_equal(indices, want_i.numpy(), err_msg=what)
        assert_close(P.adaptive_max_pool2d_backward(grad_y, indices, shape), want_max_gx,
                     f"adaptive max grad_x {what}")


def test_ties_nan_and_infinity_follow_torch():
    """Ties: the first maximum in scan order; NaN: the last NaN of the window; all −inf: the
    window's first input tap — on the general and the k2 s2 paths alike."""
    torch = torch_or_skip()
    x = np.ones((1, 2, 6, 7), np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan
    x[0, 0, 2:4, 2:5] = -np.inf
    x[0, 1, 3, 3] = np.nan
    x[0, 1, 0:2, 0:2] = 5.0
    for cfg in ({"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)},
                {"kernel": (3, 2), "stride": (1, 2), "padding": (1, 1)}):
        for ceil_mode in (False, True):
            cfg.update(dilation=(1, 1), ceil_mode=ceil_mode)
            y, indices = P.max_pool2d(x, **max_args(cfg))
            want_y, want_i = torch_max(torch, x, cfg)
            np.testing.assert_array_equal(y, want_y, err_msg=str(cfg))
            np.testing.assert_array_equal(indices, want_i, err_msg=str(cfg))
    for size in ((1, 1), (2, 3), (9, 9)):
        y, indices = P.adaptive_max_pool2d(x, size)
        want_y, want_i = torch.nn.functional.adaptive_max_pool2d(
            to_torch(torch, x), size, return_indices=True)
        np.testing.assert_array_equal(y, want_y.numpy())
        np.testing.assert_array_equal(indices, want_i.numpy())


# ---------------------------------------------------------------- fast vs naive, float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_naive_twins(dtype):
    rng = np.random.default_rng(4)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    checked = 0
    while checked < 100:
        cfg = random_window(rng, small=True)
        cfg["count_include_pad"] = bool(rng.integers(2))
        x = distinct(rng, cfg["shape"], dtype)
        pairs = {k: cfg[k] for k in ("kernel", "stride", "padding", "dilation")}
        try:
            y, indices = P.max_pool2d(x, **max_args(cfg))
        except ShapeError:  # a dilated window over padding only; the parity sweep covers it
            continue
        want_y, want_i = naive.max_pool2d(x, **pairs, ceil_mode=cfg["ceil_mode"])
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(indices, want_i)
        grad_y = rng.standard_normal(y.shape).astype(dtype)
        assert_close(P.max_pool2d_backward(grad_y, indices, x.shape),
                     naive.max_pool2d_backward(grad_y, want_i, x.shape), "max grad_x", **tol)

        cfg.pop("dilation")
        y = P.avg_pool2d(x, **avg_args(cfg))
        assert_close(y, naive.avg_pool2d(x, **avg_args(cfg)), f"avg y {cfg}", **tol)
        grad_y = rng.standard_normal(y.shape).astype(dtype)
        assert_close(P.avg_pool2d_backward(grad_y, x.shape, **avg_args(cfg)),
                     naive.avg_pool2d_backward(grad_y, x.shape, **avg_args(cfg)),
                     f"avg grad_x {cfg}", **tol)

        size = tuple(int(rng.integers(1, n + 3)) for n in x.shape[2:])
        grad_y = rng.standard_normal((*x.shape[:2], *size)).astype(dtype)
        assert_close(P.adaptive_avg_pool2d(x, size), naive.adaptive_avg_pool2d(x, size),
                     "adaptive avg y", **tol)
        assert_close(P.adaptive_avg_pool2d_backward(grad_y, x.shape),
                     naive.adaptive_avg_pool2d_backward(grad_y, x.shape),
                     "adaptive avg grad_x", **tol)
        y, indices = P.adaptive_max_pool2d(x, size)
        want_y, want_i = naive.adaptive_max_pool2d(x, size)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(indices, want_i)
        assert_close(P.adaptive_max_pool2d_backward(grad_y, indices, x.shape),
                     naive.adaptive_max_pool2d_backward(grad_y, want_i, x.shape),
                     "adaptive max grad_x", **tol)
        checked += 1


GRADCHECK_WINDOWS = [
    dict(kernel=2, stride=2, padding=0, ceil_mode=True),
    dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True),
    dict(kernel=(5, 3), stride=(3, 2), padding=(2, 0), ceil_mode=False),
]


@pytest.mark.parametrize("window", GRADCHECK_WINDOWS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_gradcheck(window, count_include_pad):
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 8))
    args = dict(window, count_include_pad=count_include_pad)
    gradcheck(lambda x: P.avg_pool2d(x, **args), [x],
              lambda g, x: [P.avg_pool2d_backward(g, x.shape, **args)])


@pytest.mark.parametrize("window", GRADCHECK_WINDOWS)
@pytest.mark.parametrize("dilation", [1, (2, 1)])
def test_max_pool2d_gradcheck_away_from_ties(window, dilation):
    # distinct values at least 1/432 apart: a 1e-6 step cannot change any argmax
    x = distinct(np.random.default_rng(6), (2, 3, 9, 8), np.float64)

    def backward(g, x):
        _, indices = P.max_pool2d(x, **window, dilation=dilation)
        return [P.max_pool2d_backward(g, indices, x.shape)]

    gradcheck(lambda x: P.max_pool2d(x, **window, dilation=dilation)[0], [x], backward)


@pytest.mark.parametrize("output_size", [1, (2, 3), (7, 11)])
def test_adaptive_pools_gradcheck(output_size):
    x = distinct(np.random.default_rng(7), (2, 3, 5, 8), np.float64)
    gradcheck(lambda x: P.adaptive_avg_pool2d(x, output_size), [x],
              lambda g, x: [P.adaptive_avg_pool2d_backward(g, x.shape)])

    def backward(g, x):
        _, indices = P.adaptive_max_pool2d(x, output_size)
        return [P.adaptive_max_pool2d_backward(g, indices, x.shape)]

    gradcheck(lambda x: P.adaptive_max_pool2d(x, output_size)[0], [x], backward)


# ---------------------------------------------------------------- named edge cases


def check_all_against_torch(torch, x, cfg, output_size):
    """Every family on one input: outputs, indices and gradients equal PyTorch's."""
    rng = np.random.default_rng(8)
    y, indices = P.max_pool2d(x, **max_args(cfg))
    grad_y = rng.standard_normal(y.shape).astype(np.float32)
    want_y, want_i, want_gx = torch_max(torch, x, cfg, grad_y)
    assert_close(y, want_y, "max y")
    np.testing.assert_array_equal(indices, want_i)
    assert_close(P.max_pool2d_backward(grad_y, indices, x.shape), want_gx, "max grad_x")
    for include in (True, False):
        cfg["count_include_pad"] = include
        y = P.avg_pool2d(x, **avg_args(cfg))
        grad_y = rng.standard_normal(y.shape).astype(np.float32)
        want_y, want_gx = torch_avg(torch, x, cfg, grad_y)
        assert_close(y, want_y, "avg y")
        assert_close(P.avg_pool2d_backward(grad_y, x.shape, **avg_args(cfg)), want_gx, "avg gx")
    grad_y = rng.standard_normal((*x.shape[:2], *output_size)).astype(np.float32)
    (want_avg, want_avg_gx), (want_max, want_max_gx) = torch_adaptive(
        torch, x, output_size, grad_y)
    assert_close(P.adaptive_avg_pool2d(x, output_size), want_avg, "adaptive avg y")
    assert_close(P.adaptive_avg_pool2d_backward(grad_y, x.shape), want_avg_gx, "adaptive avg gx")
    y, indices = P.adaptive_max_pool2d(x, output_size)
    assert_close(y, want_max, "adaptive max y")
    assert_close(P.adaptive_max_pool2d_backward(grad_y, indices, x.shape), want_max_gx,
                 "adaptive max gx")
    return y


def window(kernel, stride=None, padding=0, ceil_mode=False):
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return dict(kernel=pair(kernel), stride=pair(stride or kernel), padding=pair(padding),
                dilation=(1, 1), ceil_mode=ceil_mode)


@pytest.mark.parametrize("batch", [1, 0])
def test_batch_one_and_zero(batch):
    torch = torch_or_skip()
    x = distinct(np.random.default_rng(9), (batch, 3, 7, 6))
    y = check_all_against_torch(torch, x, window(3, 2, 1, ceil_mode=True), (2, 4))
    assert y.shape == (batch, 3, 2, 4)


def test_one_by_one_input():
    torch = torch_or_skip()
    x = np.array([[[[0.5]], [[-2.0]]]], np.float32)
    check_all_against_torch(torch, x, window(1), (1, 1))
    # PyTorch's ceil rule keeps one window for a 2×2 kernel on a 1×1 input
    check_all_against_torch(torch, x, window(2, ceil_mode=True), (3, 2))
    y, indices = P.max_pool2d(x, 2, ceil_mode=True)
    assert y.shape == (1, 2, 1, 1) and not indices.any()


def test_kernel_as_large_as_the_padded_input():
    torch = torch_or_skip()
    x = distinct(np.random.default_rng(10), (2, 3, 3, 4))
    cfg = window((5, 6), padding=(1, 1))
    check_all_against_torch(torch, x, cfg, (1, 1))
    assert P.avg_pool2d(x, (5, 6), padding=1).shape == (2, 3, 1, 1)
    # with the padding counted the divisor is 5·6; without it, the 3·4 input pixels
    np.testing.assert_allclose(P.avg_pool2d(x, (5, 6), padding=1)[..., 0, 0],
                               x.sum(axis=(2, 3)) / 30, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(P.avg_pool2d(x, (5, 6), padding=1, count_include_pad=False)
                               [..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-7)


def test_ceil_mode_window_starting_in_the_padding_is_dropped():
    torch = torch_or_skip()
    x = distinct(np.random.default_rng(11), (1, 2, 5, 5))
    # 5 + 2·1 − 2 = 5 → ceil(5/2) + 1 = 4 windows, but the 4th would start at 3·2 − 1 = 5,
    # in the right padding: PyTorch keeps 3
    y = check_all_against_torch(torch, x, window(2, 2, 1, ceil_mode=True), (3, 3))
    assert P.max_pool2d(x, 2, 2, 1, ceil_mode=True)[0].shape == (1, 2, 3, 3)
    assert P.avg_pool2d(x, 2, 2, 1, ceil_mode=True).shape == (1, 2, 3, 3)
    assert y.shape == (1, 2, 3, 3)


def test_global_pooling_via_adaptive_one_by_one():
    x = np.random.default_rng(12).standard_normal((3, 4, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(P.adaptive_avg_pool2d(x, 1)[..., 0, 0], x.mean(axis=(2, 3)),
                               rtol=1e-5, atol=1e-6)
    y, indices = P.adaptive_max_pool2d(x, 1)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(indices[..., 0, 0], x.reshape(3, 4, -1).argmax(axis=2))
    grad_y = np.ones((3, 4, 1, 1), np.float32)
    np.testing.assert_allclose(P.adaptive_avg_pool2d_backward(grad_y, x.shape),
                               np.full(x.shape, 1 / 35, np.float32), rtol=1e-6)


def test_adaptive_output_larger_than_input():
    torch = torch_or_skip()
    x = distinct(np.random.default_rng(13), (2, 3, 3, 5))
    y = check_all_against_torch(torch, x, window(1), (7, 8))
    assert y.shape == (2, 3, 7, 8)


def test_adaptive_output_size_zero_is_empty_as_in_torch():
    torch = torch_or_skip()
    x = np.ones((1, 2, 4, 4), np.float32)
    assert P.adaptive_avg_pool2d(x, (0, 2)).shape == (1, 2, 0, 2)
    assert torch.nn.functional.adaptive_avg_pool2d(to_torch(torch, x), (0, 2)).shape == (
        1, 2, 0, 2)
    np.testing.assert_array_equal(
        P.adaptive_avg_pool2d_backward(np.ones((1, 2, 0, 2), np.float32), x.shape), 0 * x)


def test_non_contiguous_input_and_out_buffers():
    x = distinct(np.random.default_rng(14), (2, 3, 8, 6))
    view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(P.avg_pool2d(view, 3, 2, 1), P.avg_pool2d(x, 3, 2, 1))
    y_buf, i_buf = np.empty((2, 3, 4, 3), np.float32), np.empty((2, 3, 4, 3), np.int64)
    y, indices = P.max_pool2d(x, 2, out=(y_buf, i_buf))
    assert y is y_buf and indices is i_buf
    np.testing.assert_array_equal(y, P.max_pool2d(x, 2)[0])
    buf = np.empty((2, 3, 2, 5), np.float32)
    assert P.adaptive_avg_pool2d(x, (2, 5), out=buf) is buf
    y, indices = P.adaptive_max_pool2d(x, (2, 5), out=(np.empty_like(buf), np.empty(
        buf.shape, np.int64)))
    np.testing.assert_array_equal(y, P.adaptive_max_pool2d(x, (2, 5))[0])


# ---------------------------------------------------------------- invalid input


def rejects(message, call, *args, **kwargs):
    with pytest.raises(ShapeError, match=re.escape(message)):
        call(*args, **kwargs)


X = np.zeros((2, 3, 6, 6), np.float32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=0), "max_pool2d: kernel must be an integer ≥ 1 or a pair of them "
                     "(height, width); got 0. Use e.g. kernel=2 or kernel=(2, 3)."),
    (dict(kernel=(2, 2, 2)), "kernel must be an integer ≥ 1 or a pair of them "
                             "(height, width); got (2, 2, 2)."),
    (dict(kernel=2.0), "kernel must be an integer ≥ 1 or a pair of them (height, width); got "
                       "2.0."),
    (dict(kernel=True), "kernel must be an integer ≥ 1 or a pair of them (height, width); got "
                        "True."),
    (dict(kernel=2, stride=(1, 0)), "max_pool2d: stride must be an integer ≥ 1 or a pair "
                                    "of them (height, width); got (1, 0)."),
    (dict(kernel=2, padding=-1), "max_pool2d: padding must be an integer ≥ 0 or a pair "
                                 "of them (height, width); got -1. Use e.g. padding=1 or "
                                 "padding=(1, 2)."),
    (dict(kernel=2, dilation=0), "max_pool2d: dilation must be an integer ≥ 1 or a pair "
                                 "of them (height, width); got 0."),
    (dict(kernel=(3, 4), padding=(1, 3)),
     "max_pool2d: padding=(1, 3) is more than half of kernel=(3, 4) on the width axis: PyTorch "
     "requires padding ≤ kernel // 2 = 2 there (dilation does not widen the limit); got 3. Use "
     "a padding ≤ 2 or a larger kernel."),
    (dict(kernel=3, padding=2, dilation=2), "padding=(2, 2) is more than half of kernel=(3, 3) "
                                            "on the height axis"),
    (dict(kernel=(7, 2), stride=3),
     "max_pool2d: given input of size [2, 3, 6, 6], kernel=(7, 2), stride=(3, 3), padding=(0, "
     "0), dilation=(1, 1), ceil_mode=False, the output would be 0×2: on the height axis floor(("
     "6 + 2·0 − 1·(7−1) − 1) / 3) + 1 = 0. Each output side must be ≥ 1: use a larger input, a "
     "smaller kernel, stride or dilation, or more padding."),
    (dict(kernel=(2, 4), dilation=(1, 3), ceil_mode=True),
     "on the width axis ceil((6 + 2·0 − 3·(4−1) − 1) / 4) + 1 = 0."),
])
def test_max_pool2d_rejects_what_torch_rejects(kwargs, message):
    torch = torch_or_skip()
    rejects(message, P.max_pool2d, X, **kwargs)
    torch_kwargs = dict(kwargs)
    torch_kwargs["kernel_size"] = torch_kwargs.pop("kernel")
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        torch.nn.functional.max_pool2d(to_torch(torch, X), **torch_kwargs, return_indices=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=3, padding=2), "avg_pool2d: padding=(2, 2) is more than half of kernel=(3, 3) "
                                "on the height axis: PyTorch requires padding ≤ kernel // 2 = 1 "
                                "there; got 2. Use a padding ≤ 1 or a larger kernel."),
    (dict(kernel=2, stride=0), "avg_pool2d: stride must be an integer ≥ 1"),
    (dict(kernel=(2, 8), stride=2),
     "avg_pool2d: given input of size [2, 3, 6, 6], kernel=(2, 8), stride=(2, 2), padding=(0, "
     "0), ceil_mode=False, the output would be 3×0: on the width axis floor((6 + 2·0 − 8) / 2) "
     "+ 1 = 0. Each output side must be ≥ 1: use a larger input, a smaller kernel or stride, "
     "or more padding."),
])
def test_avg_pool2d_rejects_what_torch_rejects(kwargs, message):
    torch = torch_or_skip()
    rejects(message, P.avg_pool2d, X, **kwargs)
    torch_kwargs = dict(kwargs)
    torch_kwargs["kernel_size"] = torch_kwargs.pop("kernel")
    with pytest.raises(RuntimeError):
        torch.nn.functional.avg_pool2d(to_torch(torch, X), **torch_kwargs)


def test_dilated_window_over_padding_only_is_rejected():
    # taps at −1 and 2 of a height-2 input: PyTorch answers −inf and index 6, outside the plane
    rejects("max_pool2d: with kernel=(2, 2), dilation=(3, 3), padding=(1, 1), the window of "
            "output height 0 takes input heights [-1, 2], all outside 0..1: it would see only "
            "padding. Use a smaller dilation or padding, or a larger input.",
            P.max_pool2d, np.ones((1, 1, 2, 5), np.float32), 2, 1, 1, 3)


@pytest.mark.parametrize("op", [
    lambda x: P.max_pool2d(x, 2), lambda x: P.avg_pool2d(x, 2),
    lambda x: P.adaptive_avg_pool2d(x, 2), lambda x: P.adaptive_max_pool2d(x, 2)])
def test_inputs_must_be_4d_float_with_nonempty_planes(op):
    rejects("x must be 4-D (N, C, H, W); got 3-D x of shape [3, 4, 4]. Add a batch axis with "
            "x[None] for a single image.",
            op, np.zeros((3, 4, 4), np.float32))
    rejects("x must be a float32 numpy array (float64 for gradient checks); got [[1.0]] (list).",
            op, [[1.0]])
    rejects("x must be a float32 numpy array (float64 for gradient checks); got a int64 array "
            "of shape [1, 1, 4, 4]. Convert it with np.asarray(x, dtype=np.float32).", op,
            np.zeros((1, 1, 4, 4), np.int64))
    rejects("expected x of shape (N, C, H, W) with C, H and W ≥ 1 (only the batch may be "
            "empty); got [2, 0, 4, 4].", op, np.zeros((2, 0, 4, 4), np.float32))
    rejects("got [2, 3, 4, 0].", op, np.zeros((2, 3, 4, 0), np.float32))


def test_adaptive_output_size_must_be_non_negative():
    rejects("adaptive_avg_pool2d: output_size must be an integer ≥ 0 or a pair of them "
            "(height, width); got -1.", P.adaptive_avg_pool2d, X, -1)
    rejects("adaptive_max_pool2d: output_size must be an integer ≥ 0 or a pair of them "
            "(height, width); got (2, None).", P.adaptive_max_pool2d, X, (2, None))


def test_out_buffers_are_checked():
    rejects("max_pool2d: out[0] (y) must be a writeable C-contiguous float32 array of shape "
            "[2, 3, 3, 3]; got a float32 array of shape [2, 3, 3, 2]. Pass None to let "
            "max_pool2d allocate it.", P.max_pool2d, X, 2,
            out=(np.empty((2, 3, 3, 2), np.float32), np.empty((2, 3, 3, 3), np.int64)))
    rejects("max_pool2d: out[1] (indices) must be a writeable C-contiguous int64 array of shape "
            "[2, 3, 3, 3]; got a int32 array", P.max_pool2d, X, 2,
            out=(np.empty((2, 3, 3, 3), np.float32), np.empty((2, 3, 3, 3), np.int32)))
    rejects("max_pool2d: out must be a pair (y, indices) of buffers or None; got a float32 "
            "array of shape [2, 3, 3, 3].", P.max_pool2d, X, 2,
            out=np.empty((2, 3, 3, 3), np.float32))
    rejects("avg_pool2d: out must be a writeable C-contiguous float32 array of shape "
            "[2, 3, 3, 3]; got a float64 array of shape [2, 3, 3, 3].", P.avg_pool2d, X, 2,
            out=np.empty((2, 3, 3, 3)))


def test_backward_arguments_are_checked():
    grad_y = np.ones((2, 3, 3, 3), np.float32)
    indices = P.max_pool2d(X, 2)[1]
    rejects("avg_pool2d_backward: input_shape [2, 3, 6, 6] with kernel=(3, 3), stride=(3, 3), "
            "padding=(0, 0), ceil_mode=False gives an output of 2×2, but grad_y is "
            "[2, 3, 3, 3]; pass the forward's configuration and input shape.",
            P.avg_pool2d_backward, grad_y, X.shape, 3)
    rejects("avg_pool2d_backward: grad_y of shape [2, 3, 3, 3] and input_shape [2, 4, 6, 6] "
            "disagree on (N, C) = [2, 3] vs [2, 4]; pass the shape of the forward's input.",
            P.avg_pool2d_backward, grad_y, (2, 4, 6, 6), 2)
    rejects("adaptive_avg_pool2d_backward: input_shape must be the forward input's (N, C, H, "
            "W), with N ≥ 0 and C, H, W ≥ 1; got (3, 6, 6).",
            P.adaptive_avg_pool2d_backward, grad_y, (3, 6, 6))
    rejects("max_pool2d_backward: indices must be the int64 array the forward returned, of "
            "grad_y's shape [2, 3, 3, 3]; got a int32 array of shape [2, 3, 3, 3].",
            P.max_pool2d_backward, grad_y, indices.astype(np.int32), X.shape)
    rejects("max_pool2d_backward: grad_y must be a float32 numpy array (float64 for gradient "
            "checks); got a int64 array", P.max_pool2d_backward, indices, indices, X.shape)
    bad = indices.copy()
    bad[0, 0, 0, 0] = 36
    bad[1, 2, 2, 2] = -1
    rejects("adaptive_max_pool2d_backward: 2 of 54 indices lie outside the input plane "
            "[0, H·W) = [0, 36) of input_shape [2, 3, 6, 6]; pass the indices the forward "
            "returned for that input.", P.adaptive_max_pool2d_backward, grad_y, bad, X.shape)


# ---------------------------------------------------------------- threads



def run_every_pool(x, grad_seed=15):
    rng = np.random.default_rng(grad_seed)
    results = []
    y, indices = P.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    results += [y, indices, P.max_pool2d_backward(rng.standard_normal(y.shape).astype(
        np.float32), indices, x.shape)]
    y, indices = P.max_pool2d(x, 2)
    results += [y, indices, P.max_pool2d_backward(y, indices, x.shape)]
    for cfg in (dict(kernel=2), dict(kernel=(3, 2), stride=(2, 1), padding=1, ceil_mode=True)):
        y = P.avg_pool2d(x, **cfg)
        results += [y, P.avg_pool2d_backward(y * 3, x.shape, **cfg)]
    y = P.adaptive_avg_pool2d(x, (5, 7))
    results += [y, P.adaptive_avg_pool2d_backward(y, x.shape)]
    y, indices = P.adaptive_max_pool2d(x, (5, 7))
    results += [y, indices, P.adaptive_max_pool2d_backward(y, indices, x.shape)]
    return results


def test_same_bits_run_to_run_and_for_one_or_two_threads(restore_threads):
    # large enough for the ops to use the threads they are given
    x = np.random.default_rng(16).standard_normal((4, 8, 33, 35)).astype(np.float32)
    assert x.size >= P._SERIAL_BELOW
    set_num_threads(2)
    first, again = run_every_pool(x), run_every_pool(x)
    set_num_threads(1)
    single = run_every_pool(x)
    for a, b, c in zip(first, again, single, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.parametrize("window", [dict(kernel=2), dict(kernel=3, stride=2, padding=1),
                                    dict(kernel=2, dilation=2, ceil_mode=True)])
def test_max_pool2d_plan_matches_the_checked_op(window):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    y, indices = P.max_pool2d(x, **window)
    plan = P.MaxPool2dPlan(x.shape[1:], **window)
    assert plan.output_shape == y.shape[1:]
    y2, indices2 = np.empty_like(y), np.empty_like(indices)
    plan.forward(x, y2, indices2)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(indices2, indices)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = np.full_like(x, np.nan)  # every value must be written
    plan.backward(gy, indices, gx)
    np.testing.assert_array_equal(gx, P.max_pool2d_backward(gy, indices, x.shape))
    with pytest.raises(ShapeError, match="padding=.* is more than half of kernel"):
        P.MaxPool2dPlan((4, 9, 7), 2, padding=2)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (1, 1, 3, 5), (2, 3, 7, 9), (1, 2, 5, 31),
                                   (2, 1, 4, 32), (1, 2, 9, 33), (3, 2, 6, 50), (1, 1, 3, 71)])
def test_max_pool2d_plan_2x2_rows_of_any_width(shape):
    """The 2×2 forward takes rows VL windows at a time, its last step overlapping the one
    before, and a row narrower than VL reads on into the rows after it, except at the end of
    the batch's last plane: every width, with ties and NaN, against the general loop."""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    y, indices = P.max_pool2d(x, 2)
    plan = P.MaxPool2dPlan(shape[1:], 2)
    y2, indices2, y3 = np.full_like(y, 7.0), np.full_like(indices, -1), np.full_like(y, 7.0)
    for relu in (False, True):
        plan.forward(x, y2, indices2, relu=relu)
        plan.forward(x, y3, None, relu=relu)
        np.testing.assert_array_equal(indices2, indices)
        np.testing.assert_array_equal(y2, np.where(y < 0, 0, y) if relu else y)
        np.testing.assert_array_equal(y3, y2)


@pytest.mark.parametrize("window", [dict(kernel=2), dict(kernel=3, stride=2, padding=1),
                                    dict(kernel=(2, 3))])
def test_max_pool2d_plan_with_relu_ties_and_nan(window):
    """The plan's folded relu equals relu after the checked op, forward and backward, on data
    full of ties, zeros and NaN (the 2×2 select loop must keep the scan-order rules)."""
    from declcnn.ops import activation as A

    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, (2, 3, 8, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    y, indices = P.max_pool2d(x, **window)
    plan = P.MaxPool2dPlan(x.shape[1:], **window)
    y2, indices2 = np.empty_like(y), np.empty_like(indices)
    plan.forward(x, y2, indices2)
    np.testing.assert_array_equal(indices2, indices)
    plan.forward(x, y2, indices2, relu=True)
    relu_y = A.relu(y)
    np.testing.assert_array_equal(y2, relu_y)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = np.full_like(x, np.nan)
    plan.backward(gy, indices2, gx, relu_output=y2)
    expected = P.max_pool2d_backward(A.relu_backward(gy, relu_y), indices, x.shape)
    np.testing.assert_array_equal(gx, expected)
