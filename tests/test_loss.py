"""Fused softmax cross-entropy: PyTorch parity (loss and gradient) over a seeded sweep of
classification and per-pixel cases with ignored targets, the numpy twin, float64 gradient
checks, all-ignored batches, thread reproducibility and error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from oracle import assert_close, gradcheck, to_torch, torch_or_skip

from declcnn import ShapeError, set_num_threads
from declcnn._kernels import naive_dense as naive
from declcnn.ops.loss import softmax_cross_entropy

SWEEP = 60



def loss_case(rng, index, dtype=np.float32):
    """N × C (even index) or N × C × H × W logits, one target in five ignored; batch 0 and 1
    first; a custom ignore_index (255) in a third of the cases; some planes over 256 pixels."""
    batch = index if index < 2 else int(rng.integers(1, 5))
    classes = int(rng.integers(1, 12))
    spatial = () if index % 2 == 0 else tuple(int(v) for v in rng.integers(1, 9, 2))
    if index % 10 == 5:
        spatial = (16, 20)
    ignore = 255 if index % 3 == 0 else -100
    logits = (rng.standard_normal((batch, classes, *spatial)) * 3).astype(dtype)
    target = rng.integers(0, classes, (batch, *spatial))
    target[rng.random(target.shape) < 0.2] = ignore
    return logits, target, ignore


def torch_loss(torch, logits, target, ignore):
    xt = to_torch(torch, logits, True)
    loss = torch.nn.functional.cross_entropy(xt, torch.from_numpy(target), ignore_index=ignore)
    loss.backward()
    return loss.item(), xt.grad.numpy()


def test_cross_entropy_matches_torch_and_numpy_twin(restore_threads):
    torch = torch_or_skip()
    rng = np.random.default_rng(20)
    for i in range(SWEEP):
        set_num_threads(1 + i % 2)
        logits, target, ignore = loss_case(rng, i)
        what = f"cross-entropy logits {list(logits.shape)} ignore_index={ignore}"
        loss, grad = softmax_cross_entropy(logits, target, ignore_index=ignore)
        expected_loss, expected_grad = torch_loss(torch, logits, target, ignore)
        twin_loss, twin_grad = naive.softmax_cross_entropy(logits, target, ignore)
        if math.isnan(expected_loss):  # batch 0 or every target ignored
            assert math.isnan(loss) and math.isnan(twin_loss), what
        else:
            assert_close(loss, expected_loss, what + " loss")
            assert_close(loss, twin_loss, what + " loss vs twin")
        assert_close(grad, expected_grad, what + " grad")
        assert_close(grad, twin_grad, what + " grad vs twin")


def test_ignored_pixels_get_no_gradient_and_do_not_count():
    torch = torch_or_skip()
    rng = np.random.default_rng(21)
    logits = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    target = rng.integers(0, 3, (2, 4, 5))
    target[0, :2] = 7
    target[1, 3, 4] = 7
    loss, grad = softmax_cross_entropy(logits, target, ignore_index=7)
    assert not grad[0, :, :2].any() and not grad[1, :, 3, 4].any()
    expected_loss, expected_grad = torch_loss(torch, logits, target, 7)
    assert_close(loss, expected_loss, "loss")
    assert_close(grad, expected_grad, "grad")
    counted = target != 7
    log_p = np.log(naive.softmax(logits.astype(np.float64)))
    picked = np.take_along_axis(log_p, np.where(counted, target, 0)[:, None], 1)[:, 0]
    assert_close(loss, -picked[counted].sum() / counted.sum(), "mean over counted pixels only")


def test_all_targets_ignored_gives_nan_loss_and_zero_gradient_as_torch():
    torch = torch_or_skip()
    logits = np.ones((3, 4), np.float32)
    target = np.full(3, -100)
    loss, grad = softmax_cross_entropy(logits, target)
    expected_loss, expected_grad = torch_loss(torch, logits, target, -100)
    assert math.isnan(loss) and math.isnan(expected_loss)
    assert not grad.any() and not expected_grad.any()


def test_cross_entropy_gradcheck_float64():
    rng = np.random.default_rng(22)
    for i in range(10):
        logits, target, ignore = loss_case(rng, i + 2, np.float64)
        if not (target != ignore).any():
            continue

        def forward(x, t=target, ig=ignore):
            return np.array(softmax_cross_entropy(x, t, ig)[0])

        gradcheck(forward, [logits],
                  lambda g, x, t=target, ig=ignore: [g * softmax_cross_entropy(x, t, ig)[1]],
                  seed=i)


def test_stable_for_huge_logits():
    loss, grad = softmax_cross_entropy(np.array([[1e4, 0.0], [0.0, 1e4]], np.float32),
                                       np.array([0, 0]))
    assert_close(loss, 5e3, "one right at margin 1e4, one wrong at 1e4: (0 + 1e4) / 2")
    assert_close(grad, np.array([[0.0, 0.0], [-0.5, 0.5]]), "(softmax − onehot) / 2")


def test_same_bits_for_one_and_two_threads(restore_threads):
    rng = np.random.default_rng(23)
    logits = rng.standard_normal((4, 10, 32, 32)).astype(np.float32)
    target = rng.integers(0, 10, (4, 32, 32))
    results = []
    for threads in (1, 2, 2):
        set_num_threads(threads)
        results.append(softmax_cross_entropy(logits, target))
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        assert np.array_equal(grad, results[0][1])


def test_error_messages():
    logits = np.zeros((2, 4, 3, 3), np.float32)
    target = np.zeros((2, 3, 3), np.int64)
    target[1, 2, 0] = 4
    with pytest.raises(ShapeError, match=(
            r"^softmax_cross_entropy: target 4 at sample 1 pixel \(2, 0\) is out of range for 4 "
            r"classes; class indices must lie in \[0, 3\], or equal ignore_index=-100 to be "
            r"skipped \(1 target\(s\) out of range in all\)\.$")):
        softmax_cross_entropy(logits, target)
    with pytest.raises(ShapeError, match=r"^softmax_cross_entropy: target -1 at sample 0 is out "
                       r"of range for 4 classes"):
        softmax_cross_entropy(np.zeros((2, 4), np.float32), np.array([-1, 2]))
    with pytest.raises(ShapeError, match=(
            r"^softmax_cross_entropy: expected target of shape \[2, 3, 3\] \(the logits' shape "
            r"\[2, 4, 3, 3\] without the class axis 1: one class index per sample and pixel\); "
            r"got target of shape \[2\]\.$")):
        softmax_cross_entropy(logits, np.zeros(2, np.int64))
    with pytest.raises(ShapeError, match=(
            r"^softmax_cross_entropy: target must be an integer numpy array of class indices; "
            r"got a float32 array of shape \[2\]\. Convert it with "
            r"target\.astype\(np\.int64\)\.$")):
        softmax_cross_entropy(np.zeros((2, 4), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ShapeError, match=r"^softmax_cross_entropy: ignore_index must be an "
                       r"integer; got 0\.5\."):
        softmax_cross_entropy(np.zeros((2, 4), np.float32), np.zeros(2, np.int64), 0.5)
    with pytest.raises(ShapeError, match=r"^softmax_cross_entropy: axis 1 does not fit logits of "
                       r"shape \[4\]"):
        softmax_cross_entropy(np.zeros(4, np.float32), np.zeros((), np.int64))
