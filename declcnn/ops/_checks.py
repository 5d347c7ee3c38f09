"""The argument checks every op shares, so that each op words the same mistake the same way:
arrays of a float dtype and a rank, matching dtypes and gradients, ``out=`` buffers, and
``(height, width)`` pairs."""

from __future__ import annotations

import functools
import numbers

import numpy as np

from ..errors import ShapeError

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
IMAGE = "N, C, H, W"


def describe(value) -> str:
    """How an argument reads in a message: dtype, shape and layout for arrays, repr otherwise.

    >>> describe(np.zeros((2, 3), np.float32).T), describe(2.0)
    ('a float32 array of shape [3, 2], not C-contiguous', '2.0 (float)')
    """
    if isinstance(value, np.ndarray):
        layout = "" if value.flags.c_contiguous else ", not C-contiguous"
        return f"a {value.dtype} array of shape {list(value.shape)}{layout}"
    return f"{value!r} ({type(value).__name__})"


def is_int(value) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value, name: str, op: str, minimum: int) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair of ints, each ≥ ``minimum``.

    >>> pair(3, "kernel", "max_pool2d", 1), pair([1, 2], "stride", "conv2d", 1)
    ((3, 3), (1, 2))
    """
    if type(value) is int and value >= minimum:  # the common case, without the generic checks
        return value, value
    items = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(items) != 2 or not all(is_int(v) and v >= minimum for v in items):
        raise ShapeError(
            f"{op}: {name} must be an integer ≥ {minimum} or a pair of them (height, width); "
            f"got {value!r}. Use e.g. {name}={minimum + 1} or {name}=({minimum + 1}, "
            f"{minimum + 2})."
        )
    return int(items[0]), int(items[1])


def float_array(value, name: str, op: str, ndim: int | None = None,
                layout: str = IMAGE) -> np.ndarray:
    """``value`` as a C-contiguous float32/float64 array (a copy only when it is not
    contiguous), with ``ndim`` axes in ``layout`` when given."""
    if not isinstance(value, np.ndarray) or value.dtype not in FLOATS:
        raise ShapeError(
            f"{op}: {name} must be a float32 numpy array (float64 for gradient checks); got "
            f"{describe(value)}. Convert it with np.asarray({name}, dtype=np.float32)."
        )
    if ndim is not None and value.ndim != ndim:
        hint = (f" Add a batch axis with {name}[None] for a single image."
                if layout == IMAGE and value.ndim == 3 else "")
        raise ShapeError(
            f"{op}: {name} must be {ndim}-D ({layout}); got {value.ndim}-D {name} of shape "
            f"{list(value.shape)}.{hint}"
        )
    return np.ascontiguousarray(value)


def same_dtype(array: np.ndarray, name: str, dtype: np.dtype, op: str) -> None:
    if array.dtype != dtype:
        raise ShapeError(
            f"{op}: {name} has dtype {array.dtype} but the input has {dtype}; all arrays of one "
            f"call must share a dtype. Convert with {name}.astype(np.{dtype})."
        )


def matching_gradient(grad_y, shape, dtype: np.dtype, name: str, op: str) -> np.ndarray:
    """``grad_y`` checked to have the shape and dtype of the forward array ``name``."""
    gy = float_array(grad_y, "grad_y", op)
    if gy.shape != tuple(shape):
        raise ShapeError(
            f"{op}: grad_y must have the shape of {name}, {list(shape)}; got "
            f"{list(gy.shape)}. Pass the gradient of the output the forward call produced."
        )
    same_dtype(gy, "grad_y", dtype, op)
    return gy


def output_buffer(out, shape, dtype, op: str, name: str = "out") -> np.ndarray:
    """``out`` when it fits (writeable, C-contiguous, right shape and dtype), else a new array
    when it is None."""
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if (not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ShapeError(
            f"{op}: {name} must be a writeable C-contiguous {dtype} array of shape "
            f"{list(shape)}; got {describe(out)}. Pass None to let {op} allocate it."
        )
    return out


def sample_shape(sample, op: str) -> tuple[int, int, int, int]:
    """``(1, C, H, W)``: a plan's per-sample shape ``(C, H, W)`` as a one-sample batch, for the
    op's own checks."""
    shape = tuple(sample)
    if len(shape) != 3 or not all(is_int(n) and n >= 1 for n in shape):
        raise ShapeError(f"{op}: expected a per-sample shape (C, H, W) with C, H and W ≥ 1; got "
                         f"{list(shape)}.")
    return (1, *(int(n) for n in shape))


@functools.cache
def no_values(dtype: np.dtype) -> np.ndarray:
    """An empty vector of ``dtype``: the kernels' "no bias" / "no indices" argument, made once
    per dtype (plans pass it on every call)."""
    return np.empty(0, dtype)
