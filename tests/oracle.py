"""PyTorch as the oracle: run the same inputs through declcnn and torch, compare everything.

``torch_or_skip()`` returns the torch module or skips the test cleanly when torch is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

RTOL = 1e-4
ATOL = 1e-5


def torch_or_skip():
    return pytest.importorskip("torch")


def assert_close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL):
    """Compare within ``rtol`` relative to the reference's scale, ``atol`` for tiny values."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    tol = atol + rtol * np.maximum(np.abs(expected), scale * 1e-2)
    bad = err > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} values differ; worst {err.max():.3g} "
        f"at {np.unravel_index(err.argmax(), err.shape)}"
    )


def to_torch(torch, array, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(array).copy())
    t.requires_grad_(requires_grad)
    return t


def gradcheck(forward, inputs: list[np.ndarray], backward, seed: int = 0, eps: float = 1e-6,
              tol: float = 1e-6):
    """Finite-difference check in float64 along a random direction (Chainer's check_backward).

    ``forward(*inputs) -> y``; ``backward(grad_y, *inputs) -> list of grads`` (None to skip one).
    Compares ⟨grad, v⟩ with (f(x+εv) − f(x−εv))/2ε · g for a random output weighting g.
    """
    rng = np.random.default_rng(seed)
    y = forward(*inputs)
    g = rng.standard_normal(np.shape(y))
    grads = backward(g, *inputs)
    for i, (x, gx) in enumerate(zip(inputs, grads, strict=True)):
        if gx is None:
            continue
        v = rng.standard_normal(x.shape)
        plus = [a.copy() for a in inputs]
        minus = [a.copy() for a in inputs]
        plus[i] = x + eps * v
        minus[i] = x - eps * v
        numeric = float(np.sum((forward(*plus) - forward(*minus)) * g) / (2 * eps))
        analytic = float(np.sum(gx * v))
        assert abs(numeric - analytic) <= tol * max(1.0, abs(numeric)), (
            f"input {i}: finite difference {numeric!r} != analytic {analytic!r}"
        )
