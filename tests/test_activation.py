"""Activations and softmax: PyTorch parity over seeded sweeps (forward and gradient), numpy twins,
float64 gradient checks, NaN/inf handling, thread reproducibility and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_close, gradcheck, to_torch, torch_or_skip

from declcnn import ShapeError, set_num_threads
from declcnn._kernels import naive_dense as naive
from declcnn.ops import activation as A

SWEEP = 60
SLOPES = (0.01, 0.2, -0.5, 1.5)



def random_shape(rng, index, min_ndim=1):
    """Shapes of 1–4 axes, small; the first two of the sweep have batch 0 and 1."""
    ndim = int(rng.integers(min_ndim, 5))
    shape = [int(v) for v in rng.integers(1, 7, ndim)]
    if index < 2:
        shape[0] = index
    return tuple(shape)


def torch_activation(torch, name, slope):
    F = torch.nn.functional
    return {"relu": torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, slope),
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]


def ours(name, slope):
    """(forward, backward, does backward take the output?) for an activation."""
    if name == "leaky_relu":
        return (lambda x: A.leaky_relu(x, slope),
                lambda gy, v: A.leaky_relu_backward(gy, v, slope), False)
    forward, backward = getattr(A, name), getattr(A, name + "_backward")
    return forward, backward, name in ("sigmoid", "tanh")


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation_matches_torch_and_numpy_twin(name):
    torch = torch_or_skip()
    rng = np.random.default_rng(1)
    for i in range(SWEEP):
        slope = SLOPES[i % len(SLOPES)]
        shape = random_shape(rng, i)
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        gy = rng.standard_normal(shape).astype(np.float32)
        forward, backward, by_output = ours(name, slope)
        xt = to_torch(torch, x, requires_grad=True)
        yt = torch_activation(torch, name, slope)(xt)
        yt.backward(to_torch(torch, gy))
        y = forward(x)
        what = f"{name} {shape} slope={slope}"
        assert_close(y, yt.detach().numpy(), what)
        assert_close(backward(gy, y if by_output else x), xt.grad.numpy(), what + " grad")
        twin = getattr(naive, name)
        args = (slope,) if name == "leaky_relu" else ()
        assert_close(y, twin(x, *args), what + " vs twin")
        twin_grad = getattr(naive, name + "_backward")(gy, y if by_output else x, *args)
        assert_close(backward(gy, y if by_output else x), twin_grad, what + " grad vs twin")


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_follow_torch(name, dtype):
    """NaN passes through (relu(NaN) = NaN), infinities saturate, large inputs do not overflow,
    and the vectorised float exp holds across its whole range (a dense grid past ±88)."""
    torch = torch_or_skip()
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-7, -1e-7, 20.0, -20.0, 88.7, -88.7,
                89.0, -104.0, 1e30, -1e30]
    x = np.concatenate([specials, np.linspace(-120, 120, 40001)]).astype(dtype)
    gy = np.linspace(-1, 1, x.size).astype(dtype)
    forward, backward, by_output = ours(name, 0.1)
    xt = to_torch(torch, x, requires_grad=True)
    yt = torch_activation(torch, name, 0.1)(xt)
    yt.backward(to_torch(torch, gy))
    y = forward(x)
    expected = yt.detach().numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected), err_msg=f"{name} NaNs")
    finite = np.isfinite(expected)
    assert np.array_equal(y[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    assert_close(y[finite], expected[finite], name, rtol=2e-6 if dtype == np.float32 else 1e-12,
                 atol=1e-37)
    g = backward(gy, y if by_output else x)
    expected_grad = xt.grad.numpy()
    np.testing.assert_array_equal(np.isnan(g), np.isnan(expected_grad), err_msg=f"{name} grad")
    ok = ~np.isnan(expected_grad)
    assert_close(g[ok], expected_grad[ok], name + " grad", rtol=1e-5)


def test_relu_of_nan_is_nan_and_passes_its_gradient():
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    assert np.isnan(A.relu(x)[0])
    np.testing.assert_array_equal(A.relu_backward(np.ones(3, np.float32), x), [1, 0, 1])


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation_gradcheck_float64(name):
    rng = np.random.default_rng(2)
    forward, backward, by_output = ours(name, 0.3)
    for i in range(10):
        shape = random_shape(rng, i + 2)
        x = rng.standard_normal(shape) * 3
        x += np.sign(x) * 0.1  # keep away from relu's kink at 0
        gradcheck(forward, [x],
                  lambda g, x_: [backward(g, forward(x_) if by_output else x_)], seed=i)


def test_large_arrays_run_in_parallel_with_identical_bits(restore_threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 50_000)).astype(np.float32)
    for name in ("relu", "leaky_relu", "sigmoid", "tanh"):
        forward, _, _ = ours(name, 0.1)
        set_num_threads(1)
        one = forward(x)
        set_num_threads(2)
        two = forward(x)
        assert np.array_equal(one, two), name
        assert np.array_equal(forward(x), two), name + " run to run"


def test_out_buffer_is_written_and_returned():
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    out = np.empty_like(x)
    assert A.sigmoid(x, out=out) is out
    assert_close(out, naive.sigmoid(x), "sigmoid into out")
    assert A.softmax(x, out=out) is out
    assert_close(out, naive.softmax(x.astype(np.float64)), "softmax into out")


# -- softmax ---------------------------------------------------------------------------------

def softmax_case(rng, index):
    """A shape of 2–4 axes and an axis; some columns long enough to span several blocks."""
    shape = list(random_shape(rng, index, min_ndim=2))
    if index % 7 == 3:
        shape = [int(rng.integers(1, 3)), int(rng.integers(1, 5)), 17, 19]  # S = 323 > 256
    ndim = len(shape)
    axis = 1 if index % 3 else int(rng.integers(-ndim, ndim))
    return tuple(shape), axis


@pytest.mark.parametrize("take_log", [False, True])
def test_softmax_matches_torch_and_numpy_twin(take_log):
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    forward = A.log_softmax if take_log else A.softmax
    backward = A.log_softmax_backward if take_log else A.softmax_backward
    twin = naive.log_softmax if take_log else naive.softmax
    twin_backward = naive.log_softmax_backward if take_log else naive.softmax_backward
    for i in range(SWEEP):
        shape, axis = softmax_case(rng, i)
        x = (rng.standard_normal(shape) * 5).astype(np.float32)
        gy = rng.standard_normal(shape).astype(np.float32)
        xt = to_torch(torch, x, requires_grad=True)
        yt = (torch.log_softmax if take_log else torch.softmax)(xt, axis)
        yt.backward(to_torch(torch, gy))
        y = forward(x, axis=axis)
        what = f"{forward.__name__} {shape} axis={axis}"
        assert_close(y, yt.detach().numpy(), what)
        assert_close(backward(gy, y, axis=axis), xt.grad.numpy(), what + " grad")
        if x.size <= 2000:
            assert_close(y, twin(x, axis), what + " vs twin")
            assert_close(backward(gy, y, axis=axis), twin_backward(gy, y, axis),
                         what + " grad vs twin")


@pytest.mark.parametrize("take_log", [False, True])
def test_softmax_is_stable_and_propagates_nan_and_inf_as_torch(take_log):
    torch = torch_or_skip()
    x = np.array([[1e4, 1e4 - 1, -1e4, 0], [-np.inf, 0, 1, 2], [np.nan, 0, 1, 2],
                  [-80, -90, -100, -110]], np.float32)
    y = (A.log_softmax if take_log else A.softmax)(x)
    expected = (torch.log_softmax if take_log else torch.softmax)(torch.from_numpy(x), 1).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    ok = np.isfinite(expected)
    assert_close(y[ok], expected[ok], "extreme logits")


@pytest.mark.parametrize("take_log", [False, True])
def test_softmax_gradcheck_float64(take_log):
    rng = np.random.default_rng(5)
    forward = A.log_softmax if take_log else A.softmax
    backward = A.log_softmax_backward if take_log else A.softmax_backward
    for i in range(10):
        shape, axis = softmax_case(rng, i + 2)
        x = rng.standard_normal(shape) * 2
        gradcheck(lambda v, a=axis: forward(v, axis=a), [x],
                  lambda g, v, a=axis: [backward(g, forward(v, axis=a), axis=a)], seed=i)


def test_softmax_bits_do_not_depend_on_threads(restore_threads):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 10, 30, 30)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2, 2):
        set_num_threads(threads)
        y = A.softmax(x)
        results.append((y, A.softmax_backward(gy, y), A.log_softmax(x)))
    for a, b in zip(results[0], results[1], strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(results[1], results[2], strict=True):
        assert np.array_equal(a, b)


# -- errors ----------------------------------------------------------------------------------

def test_error_messages():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match=r"^relu: x must be a float32 numpy array \(float64 for "
                       r"gradient checks\); got a int64 array of shape \[2\]\. Convert it with "
                       r"np\.asarray\(x, dtype=np\.float32\)\.$"):
        A.relu(np.array([1, 2]))
    with pytest.raises(ShapeError, match=r"^sigmoid: out must be a writeable C-contiguous "
                       r"float32 array of shape \[2, 3\]; got a float32 array of shape "
                       r"\[3, 2\]\. Pass None to let sigmoid allocate it\.$"):
        A.sigmoid(x, out=np.zeros((3, 2), np.float32))
    with pytest.raises(ShapeError, match=r"not C-contiguous"):
        A.tanh(x, out=np.zeros((3, 2), np.float32).T)
    with pytest.raises(ShapeError, match=r"^tanh_backward: grad_y must have the shape of y, "
                       r"\[2, 3\]; got \[3\]\. Pass the gradient"):
        A.tanh_backward(np.zeros(3, np.float32), x)
    with pytest.raises(ShapeError, match=r"^relu_backward: grad_y has dtype float64 but the "
                       r"input has float32"):
        A.relu_backward(np.zeros((2, 3)), x)
    with pytest.raises(ShapeError, match=r"^leaky_relu: negative_slope must be a finite number; "
                       r"got 'a'\. PyTorch's default is 0\.01\.$"):
        A.leaky_relu(x, "a")
    with pytest.raises(ShapeError, match=r"^softmax: axis 2 does not fit x of shape \[2, 3\]; "
                       r"softmax needs an array with at least 2 axes \(N, C, \.\.\.\) and an axis "
                       r"in \[-2, 1\]\."):
        A.softmax(x, axis=2)
    with pytest.raises(ShapeError, match=r"^log_softmax: axis 1 does not fit x of shape \[3\].*"
                       r"Add a batch axis with x\[None\] for a single sample\.$"):
        A.log_softmax(np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match=r"^softmax_backward: grad_y must have the shape of y"):
        A.softmax_backward(np.zeros((2, 4), np.float32), x)
