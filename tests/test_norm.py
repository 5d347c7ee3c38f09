"""Batch norm (training and evaluation) and dropout: PyTorch parity over seeded sweeps (outputs,
every gradient, running statistics), numpy twins, float64 gradient checks, thread
reproducibility and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_close, gradcheck, to_torch, torch_or_skip

from declcnn import ShapeError, set_num_threads
from declcnn._kernels import naive_dense as naive
from declcnn.ops import norm as Nm

SWEEP = 60



def norm_case(rng, index, dtype=np.float32):
    """Training in even cases; batch 0 and 1 first (batch 1 still has H·W > 1 values per
    channel); an offset mean; random momentum, eps."""
    batch = index if index < 2 else int(rng.integers(1, 5))
    shape = (batch, int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.integers(2, 7)))
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-5, 5)).astype(dtype)
    C = shape[1]
    params = [rng.standard_normal(C).astype(dtype) for _ in range(2)]
    running = [rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)]
    return dict(x=x, weight=params[0], bias=params[1], running_mean=running[0],
                running_var=running[1], training=index % 2 == 0,
                momentum=float(rng.choice([0.1, 0.5, 1.0, 0.0])),
                eps=float(rng.choice([1e-5, 1e-3])))


def torch_batch_norm(torch, case, grad_y):
    x, w, b = (to_torch(torch, case[k], True) for k in ("x", "weight", "bias"))
    rm, rv = to_torch(torch, case["running_mean"]), to_torch(torch, case["running_var"])
    y = torch.nn.functional.batch_norm(x, rm, rv, w, b, case["training"], case["momentum"],
                                       case["eps"])
    y.backward(to_torch(torch, grad_y))
    return y.detach().numpy(), rm.numpy(), rv.numpy(), x.grad.numpy(), w.grad.numpy(), \
        b.grad.numpy()


def run_ours(case):
    """Our forward on copies of the running statistics; (y, saved, new mean, new var)."""
    rm, rv = case["running_mean"].copy(), case["running_var"].copy()
    y, saved = Nm.batch_norm2d(case["x"], case["weight"], case["bias"], rm, rv, case["training"],
                               case["momentum"], case["eps"])
    return y, saved, rm, rv


def test_batch_norm_matches_torch_and_numpy_twin(restore_threads):
    torch = torch_or_skip()
    rng = np.random.default_rng(30)
    for i in range(SWEEP):
        set_num_threads(1 + i % 2)
        case = norm_case(rng, i)
        gy = rng.standard_normal(case["x"].shape).astype(np.float32)
        mode = "train" if case["training"] else "eval"
        what = f"batch_norm2d {mode} {list(case['x'].shape)} momentum={case['momentum']}"
        y, saved, rm, rv = run_ours(case)
        ty, trm, trv, tgx, tgw, tgb = torch_batch_norm(torch, case, gy)
        assert_close(y, ty, what)
        assert_close(rm, trm, what + " running_mean")
        assert_close(rv, trv, what + " running_var")
        gx, gw, gb = Nm.batch_norm2d_backward(gy, saved)
        assert_close(gx, tgx, what + " grad input")
        assert_close(gw, tgw, what + " grad weight")
        assert_close(gb, tgb, what + " grad bias")
        if case["x"].shape[0] == 0:
            continue
        args = [case[k].astype(np.float64) for k in ("x", "weight", "bias", "running_mean",
                                                      "running_var")]
        twin_y, twin_rm, twin_rv = naive.batch_norm2d(*args, case["training"], case["momentum"],
                                                      case["eps"])
        assert_close(y, twin_y, what + " vs twin")
        assert_close(rm, twin_rm, what + " running_mean vs twin")
        assert_close(rv, twin_rv, what + " running_var vs twin")
        twin = naive.batch_norm2d_backward(gy, args[0], args[1], args[3], args[4],
                                           case["training"], case["eps"])
        for name, ours, theirs in zip(("input", "weight", "bias"), (gx, gw, gb), twin,
                                      strict=True):
            assert_close(ours, theirs, f"{what} grad {name} vs twin")


def test_large_mean_loses_no_digits():
    """Statistics in double, two passes: a mean 10⁴ times the spread still normalises to the
    float64 twin's digits (PyTorch's float32 sums lose some here, so the twin is the oracle)."""
    rng = np.random.default_rng(36)
    x = (rng.standard_normal((4, 3, 5, 5)) + 1e4).astype(np.float32)
    w, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y, saved = Nm.batch_norm2d(x, w, b, rm, rv, True)
    args = [a.astype(np.float64) for a in (x, w, b)]
    twin_y, twin_rm, twin_rv = naive.batch_norm2d(*args, np.zeros(3), np.ones(3), True)
    assert_close(y, twin_y, "y")
    assert_close(rv, twin_rv, "running_var")
    twin = naive.batch_norm2d_backward(gy, args[0], args[1], None, None, True)
    for ours, theirs, name in zip(Nm.batch_norm2d_backward(gy, saved), twin, "xwb", strict=True):
        assert_close(ours, theirs, f"grad {name}")


def test_running_statistics_follow_torch_over_many_steps():
    """Ten training steps then evaluation: the running mean and (unbiased) variance must track
    PyTorch's, and evaluation must use them."""
    torch = torch_or_skip()
    rng = np.random.default_rng(31)
    module = torch.nn.BatchNorm2d(3, momentum=0.3)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    for _ in range(10):
        x = (rng.standard_normal((4, 3, 5, 5)) * 2 + 3).astype(np.float32)
        Nm.batch_norm2d(x, w, b, rm, rv, True, momentum=0.3)
        module(torch.from_numpy(x))
    assert_close(rm, module.running_mean.numpy(), "running_mean")
    assert_close(rv, module.running_var.numpy(), "running_var")
    module.eval()
    y, _ = Nm.batch_norm2d(x, w, b, rm, rv, False)
    assert_close(y, module(torch.from_numpy(x)).detach().numpy(), "evaluation output")


def test_batch_norm_gradcheck_float64():
    rng = np.random.default_rng(32)
    for i in range(8):
        case = norm_case(rng, i + 2, np.float64)
        case["x"] = case["x"] - case["x"].mean()  # finite differences want moderate values

        def forward(x, w, b, c=case):
            return Nm.batch_norm2d(x, w, b, c["running_mean"].copy(), c["running_var"].copy(),
                                   c["training"], c["momentum"], c["eps"])[0]

        def backward(g, x, w, b, c=case):
            _, saved = Nm.batch_norm2d(x, w, b, c["running_mean"].copy(),
                                       c["running_var"].copy(), c["training"], c["momentum"],
                                       c["eps"])
            return Nm.batch_norm2d_backward(g, saved)

        gradcheck(forward, [case["x"], case["weight"], case["bias"]], backward, seed=i)


def test_batch_norm_bits_do_not_depend_on_threads(restore_threads):
    """Per-channel sums run whole in one thread, so even 1 vs 2 threads give the same bits."""
    rng = np.random.default_rng(33)
    case = norm_case(rng, 2)
    case["x"] = rng.standard_normal((8, 6, 20, 20)).astype(np.float32)
    case.update(weight=np.ones(6, np.float32), bias=np.zeros(6, np.float32),
                running_mean=np.zeros(6, np.float32), running_var=np.ones(6, np.float32))
    gy = rng.standard_normal(case["x"].shape).astype(np.float32)
    results = []
    for threads in (1, 2, 2):
        set_num_threads(threads)
        y, saved, rm, rv = run_ours(case)
        results.append((y, rm, rv, *Nm.batch_norm2d_backward(gy, saved)))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.array_equal(a, b)


def test_batch_norm_error_messages():
    x = np.zeros((2, 3, 4, 4), np.float32)
    vec = np.zeros(3, np.float32)
    with pytest.raises(ShapeError, match=(
            r"^batch_norm2d: weight must have shape \(3,\), one value per channel of the input; "
            r"got shape \(4,\)\.$")):
        Nm.batch_norm2d(x, np.zeros(4, np.float32), vec, vec.copy(), vec.copy(), True)
    with pytest.raises(ShapeError, match=(
            r"^batch_norm2d: expected more than 1 value per channel when training, got input of "
            r"shape \[1, 3, 1, 1\]; a batch statistic needs at least 2 values\. Use a batch of 2 "
            r"or more, or evaluation mode\.$")):
        Nm.batch_norm2d(x[:1, :, :1, :1], vec, vec, vec.copy(), vec.copy(), True)
    strided = np.zeros(6, np.float32)[::2]
    with pytest.raises(ShapeError, match=(
            r"^batch_norm2d: running_mean is updated in place in training, so it must be a "
            r"writeable C-contiguous array; got a float32 array of shape \[3\], not "
            r"C-contiguous\.")):
        Nm.batch_norm2d(x, vec, vec, strided, vec.copy(), True)
    with pytest.raises(ShapeError, match=r"^batch_norm2d: momentum must be a number in \[0, 1\] "
                       r"\(PyTorch's default is 0\.1\); got 1\.5\.$"):
        Nm.batch_norm2d(x, vec, vec, vec.copy(), vec.copy(), True, momentum=1.5)
    with pytest.raises(ShapeError, match=r"^batch_norm2d: eps must be a positive number"):
        Nm.batch_norm2d(x, vec, vec, vec.copy(), vec.copy(), True, eps=0)
    with pytest.raises(ShapeError, match=r"^batch_norm2d: input must be 4-D \(N, C, H, W\); got "
                       r"2-D input of shape \[2, 3\]\.$"):
        Nm.batch_norm2d(x[:, :, 0, 0], vec, vec, vec.copy(), vec.copy(), False)
    with pytest.raises(ShapeError, match=r"^batch_norm2d: running_var has dtype float64 but the "
                       r"input has float32"):
        Nm.batch_norm2d(x, vec, vec, vec.copy(), np.ones(3), False)
    _, saved = Nm.batch_norm2d(x, vec, vec, vec.copy(), vec.copy() + 1, True)
    with pytest.raises(ShapeError, match=(
            r"^batch_norm2d_backward: grad_y must have the shape of the forward input "
            r"\(N, C, H, W\), \[2, 3, 4, 4\]; got \[2, 3, 4\]\.")):
        Nm.batch_norm2d_backward(np.zeros((2, 3, 4), np.float32), saved)


# -- dropout ---------------------------------------------------------------------------------

def test_dropout_matches_torch_given_the_mask_and_keeps_1_minus_p(restore_threads):
    """PyTorch draws its own mask, so its arithmetic is checked on ours: y = x·mask/(1 − p)."""
    torch = torch_or_skip()
    rng = np.random.default_rng(34)
    for i in range(SWEEP):
        set_num_threads(1 + i % 2)
        batch = i if i < 2 else int(rng.integers(1, 5))
        shape = (batch, *(int(v) for v in rng.integers(1, 40, int(rng.integers(1, 4)))))
        p = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0, rng.uniform()]))
        x = rng.standard_normal(shape).astype(np.float32)
        gy = rng.standard_normal(shape).astype(np.float32)
        y, mask = Nm.dropout(x, p, np.random.default_rng(i))
        what = f"dropout {shape} p={p}"
        xt = to_torch(torch, x, True)
        scale = 1 / (1 - p) if p < 1 else 0.0
        yt = xt * torch.from_numpy(mask) * scale
        yt.backward(to_torch(torch, gy))
        assert_close(y, yt.detach().numpy(), what)
        assert_close(y, naive.dropout(x, mask, p), what + " vs twin")
        assert_close(Nm.dropout_backward(gy, mask, p), xt.grad.numpy(), what + " grad")
        if p == 0:
            assert mask.all() and np.array_equal(y, x), "p = 0 is the identity"
        if p == 1:
            assert not mask.any() and not y.any(), "p = 1 zeros everything"


def test_dropout_keeps_each_value_with_probability_1_minus_p():
    x = np.ones((200, 500), np.float32)
    for p in (0.1, 0.5, 0.8):
        y, mask = Nm.dropout(x, p, np.random.default_rng(0))
        assert abs(mask.mean() - (1 - p)) < 0.01
        assert_close(y.mean(), 1.0, f"E[y] = x at p={p}", rtol=0, atol=0.02)


def test_dropout_mask_is_reproducible_from_a_seed_and_fresh_per_call():
    x = np.ones((4, 1000), np.float32)
    a = Nm.dropout(x, 0.3, np.random.default_rng(7))[1]
    b = Nm.dropout(x, 0.3, np.random.default_rng(7))[1]
    assert np.array_equal(a, b)
    rng = np.random.default_rng(7)
    assert not np.array_equal(Nm.dropout(x, 0.3, rng)[1], Nm.dropout(x, 0.3, rng)[1])
    assert np.array_equal(Nm.dropout(x.astype(np.float64), 0.3, np.random.default_rng(7))[1], a)


def test_dropout_gradcheck_float64():
    rng = np.random.default_rng(35)
    for i in range(10):
        shape = tuple(int(v) for v in rng.integers(1, 6, 3))
        p = float(rng.uniform(0, 0.9))

        def forward(x, p=p, seed=i):
            return Nm.dropout(x, p, np.random.default_rng(seed))[0]

        def backward(g, x, p=p, seed=i):
            return [Nm.dropout_backward(g, Nm.dropout(x, p, np.random.default_rng(seed))[1], p)]

        gradcheck(forward, [rng.standard_normal(shape)], backward, seed=i)


def test_dropout_error_messages():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match=r"^dropout: p must be a probability in \[0, 1\] \(the "
                       r"chance to zero a value\); got 1\.2\.$"):
        Nm.dropout(x, 1.2, np.random.default_rng(0))
    with pytest.raises(ShapeError, match=r"^dropout: rng must be a numpy\.random\.Generator; got "
                       r"0 \(int\)\. Use np\.random\.default_rng\(seed\)\.$"):
        Nm.dropout(x, 0.5, 0)
    with pytest.raises(ShapeError, match=r"^dropout_backward: mask must be the bool array dropout "
                       r"returned, of grad_y's shape \[2, 3\]; got a float32 array of shape "
                       r"\[2, 3\]\.$"):
        Nm.dropout_backward(x, x, 0.5)
