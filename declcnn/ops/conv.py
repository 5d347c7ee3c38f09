"""conv2d and conv_transpose2d, forward and backward: validation, sizes, allocation.

Both ops run the three loops of ``declcnn/_kernels/conv.pyx`` (forward, backward-data,
backward-weight) on a *conv view*: a plain convolution from an input of C channels to an output
of O channels.  For conv2d the view is the op itself; for conv_transpose2d it is the conv whose
input gradient the transposed conv computes, so forward and backward-data swap (Caffe's base
convolution) and the weight, in PyTorch's ``in × out/groups × kh × kw`` layout, is that conv's
``O × C/groups × kh × kw`` weight as it stands.

Arrays are NCHW, float32 (float64 also runs, for gradient checks); inputs are made C-contiguous
(a copy only when they are not).  Bad arguments raise ``ShapeError`` naming the argument and
the rule, in PyTorch's wording where PyTorch has one.
"""

from __future__ import annotations

import numpy as np

from .._kernels import conv as _direct
from .._kernels import conv_gemm as _gemm
from ..errors import ShapeError
from ..shapes import conv_output_size, conv_transpose_output_size, dilated_extent, same_padding
from ..threads import threads_for
from . import _blas  # noqa: F401  (scipy's BLAS single-threaded before any kernel calls it)
from ._checks import (
    float_array,
    is_int,
    matching_gradient,
    no_values,
    output_buffer,
    pair,
    same_dtype,
    sample_shape,
)
from .conv_plan import PRIMITIVES, ConvAlgorithms, ConvView, eligible, machine, plan

# Calls with fewer multiply-adds than this run on one thread (``threads_for``).
_PARALLEL_MIN_MACS = 1 << 18


def _groups(groups, op: str) -> int:
    if not is_int(groups) or groups < 1:
        raise ShapeError(
            f"{op}: groups must be an integer ≥ 1; got {groups!r}. Use groups=1 for a full "
            f"convolution, or a number that divides both channel counts."
        )
    return int(groups)


def _bias(bias, out_channels: int, dtype: np.dtype, op: str) -> np.ndarray:
    """The bias as a contiguous vector, or an empty one (the kernels' "no bias")."""
    if bias is None:
        return no_values(np.dtype(dtype))
    b = float_array(bias, "bias", op, 1, f"one value per output channel, ({out_channels},)")
    if b.shape != (out_channels,):
        raise ShapeError(
            f"{op}: bias must have shape ({out_channels},), one value per output channel; got "
            f"shape {tuple(b.shape)}."
        )
    same_dtype(b, "bias", dtype, op)
    return b


def _weight(weight, x: np.ndarray, op: str, layout: str) -> np.ndarray:
    w = float_array(weight, "weight", op, 4, layout)
    same_dtype(w, "weight", x.dtype, op)
    if w.size == 0:
        raise ShapeError(f"{op}: weight of size {list(w.shape)} has no elements; every axis "
                         f"must be ≥ 1.")
    return w


def _conv2d_padding(padding, kernel, stride, dilation, op: str) -> tuple[tuple[int, int], ...]:
    """``((top, bottom), (left, right))`` from any accepted form of conv2d's ``padding``."""
    sides = None
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ShapeError(
                    f"{op}: padding='same' needs stride 1 (as in PyTorch); got stride={stride}. "
                    f"Give the padding as numbers, or padding='valid', for a stride > 1."
                )
            return same_padding(kernel[0], dilation[0]), same_padding(kernel[1], dilation[1])
    elif is_int(padding):
        sides = ((int(padding),) * 2,) * 2
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(map(is_int, padding)):
            sides = tuple((int(p), int(p)) for p in padding)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2 and all(map(is_int, p))
                 for p in padding):
            sides = tuple((int(a), int(b)) for a, b in padding)
    if sides is not None and min(min(s) for s in sides) >= 0:
        return sides
    raise ShapeError(
        f"{op}: padding must be an integer ≥ 0, a pair (height, width), a pair of pairs "
        f"((top, bottom), (left, right)) with every side ≥ 0, 'same' or 'valid'; got {padding!r}."
    )


def _too_small(op: str, sizes: tuple[int, int], formulas: tuple[str, str]) -> ShapeError:
    axis = 0 if sizes[0] < 1 else 1
    return ShapeError(
        f"{op}: the output would be {sizes[0]}×{sizes[1]} pixels, less than 1: "
        f"{('height', 'width')[axis]} {formulas[axis]} = {sizes[axis]}. Use a larger input, more "
        f"padding, or a smaller kernel, stride or dilation."
    )


def _conv2d_view(op, x, weight, stride, padding, dilation, groups):
    """Check conv2d's arguments; return the view and the contiguous input and weight."""
    x = float_array(x, "input", op, 4)
    w = _weight(weight, x, op, "out_channels, in_channels/groups, kh, kw")
    stride = pair(stride, "stride", op, 1)
    dilation = pair(dilation, "dilation", op, 1)
    groups = _groups(groups, op)
    O, Cg, kh, kw = w.shape
    if O % groups:
        raise ShapeError(
            f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at "
            f"dimension 0 (out_channels), but got weight of size {list(w.shape)} instead."
        )
    N, C, H, W = x.shape
    if C != Cg * groups:
        raise ShapeError(
            f"{op}: Given groups={groups}, weight of size {list(w.shape)}, expected "
            f"input{list(x.shape)} to have {Cg * groups} channels, but got {C} channels instead. "
            f"The input's channels must equal weight.shape[1] × groups."
        )
    (pt, pb), (pl, pr) = _conv2d_padding(padding, (kh, kw), stride, dilation, op)
    OH = conv_output_size(H, kh, stride[0], pt, pb, dilation[0])
    OW = conv_output_size(W, kw, stride[1], pl, pr, dilation[1])
    if OH < 1 or OW < 1:
        raise _too_small(op, (OH, OW), tuple(
            f"(input {size} + padding {b}+{e} − dilated kernel {dilated_extent(k, d)}) "
            f"// stride {s} + 1"
            for size, b, e, k, d, s in ((H, pt, pb, kh, dilation[0], stride[0]),
                                        (W, pl, pr, kw, dilation[1], stride[1]))))
    view = ConvView((N, C, H, W), (N, O, OH, OW), (kh, kw), stride, (pt, pl), dilation,
                    groups)
    return view, x, w


def _transpose_view(op, x, weight, stride, padding, output_padding, groups, dilation):
    """Check conv_transpose2d's arguments; return the conv view (input: the transposed conv's
    output; output: its input) and the contiguous input and weight."""
    x = float_array(x, "input", op, 4)
    w = _weight(weight, x, op, "in_channels, out_channels/groups, kh, kw")
    stride = pair(stride, "stride", op, 1)
    padding = pair(padding, "padding", op, 0)
    output_padding = pair(output_padding, "output_padding", op, 0)
    dilation = pair(dilation, "dilation", op, 1)
    groups = _groups(groups, op)
    Cin, Og, kh, kw = w.shape
    if Cin % groups:
        raise ShapeError(
            f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at "
            f"dimension 0 (in_channels), but got weight of size {list(w.shape)} instead."
        )
    N, C, H, W = x.shape
    if C != Cin:
        raise ShapeError(
            f"{op}: Given transposed=1, weight of size {list(w.shape)}, expected "
            f"input{list(x.shape)} to have {Cin} channels, but got {C} channels instead. "
            f"The input's channels must equal weight.shape[0]."
        )
    if any(op_ >= max(s, d) for op_, s, d in zip(output_padding, stride, dilation, strict=True)):
        raise ShapeError(
            f"{op}: output_padding must be smaller than either stride or dilation; got "
            f"output_padding={output_padding}, stride={stride}, dilation={dilation}. Use "
            f"output_padding < max(stride, dilation) on each axis."
        )
    OH = conv_transpose_output_size(H, kh, stride[0], padding[0], dilation[0], output_padding[0])
    OW = conv_transpose_output_size(W, kw, stride[1], padding[1], dilation[1], output_padding[1])
    if OH < 1 or OW < 1:
        raise _too_small(op, (OH, OW), tuple(
            f"(input {size} − 1)·stride {s} − 2·padding {p} + dilation {d}·(kernel {k} − 1) "
            f"+ output_padding {o} + 1"
            for size, s, p, d, k, o in ((H, stride[0], padding[0], dilation[0], kh,
                                         output_padding[0]),
                                        (W, stride[1], padding[1], dilation[1], kw,
                                         output_padding[1]))))
    view = ConvView((N, Og * groups, OH, OW), (N, Cin, H, W), (kh, kw), stride, padding,
                    dilation, groups)
    return view, x, w


# The passes of each op and the primitive of its conv view that runs each: a transposed conv's
# forward is its view's input gradient and the other way round (Caffe's base convolution).
_PASSES = {False: dict(zip(PRIMITIVES, PRIMITIVES, strict=True)),
           True: {"forward": "input_grad", "input_grad": "forward",
                  "weight_grad": "weight_grad"}}


class ConvPlan:
    """The three conv primitives for one checked :class:`ConvView`, run on trusted arguments.

    The ops below build one per call; a network builds one per layer when its graph is built
    (:meth:`conv2d` / :meth:`conv_transpose2d` check the layer's per-sample input shape then)
    and calls it without checks: at batch 1 the checks cost as much as LeNet's convolutions.
    As for :class:`~declcnn.ops.linear.LinearPlan`, calls trust their arguments: C-contiguous
    arrays of one float dtype, the planned per-sample shapes and any batch size.

    Which algorithm runs each pass is :func:`declcnn.ops.conv_plan.choose`'s decision for the
    batch of the call (:meth:`algorithms` shows it); ``force`` maps a pass (``forward``,
    ``input_grad``, ``weight_grad``, named as the op's passes) to an algorithm that
    :meth:`eligible` lists, for tests and benchmarks.

    >>> plan = ConvPlan.conv2d((1, 28, 28), (6, 1, 5, 5), padding=2)
    >>> plan.output_shape
    (6, 28, 28)
    >>> ConvPlan.conv2d((512, 1, 1), (512, 512, 3, 3), padding=1).chosen(32)["forward"][0]
    'gemm'
    """

    def __init__(self, view: ConvView, weight_size: int, transposed: bool, force=None):
        self.transposed = transposed
        self.view = view
        self._args = view.kernel_args()
        _, *conv_output = view.output_shape
        self._macs_per_sample = conv_output[1] * conv_output[2] * weight_size
        self.output_shape = tuple(view.input_shape[1:] if transposed else conv_output)
        self._force = {}
        for name, algorithm in (force or {}).items():
            options = self.eligible(name)
            if algorithm not in options:
                raise ShapeError(
                    f"conv plan: the {name} pass cannot run {algorithm!r} for this layer; "
                    f"the algorithms that can are {', '.join(options)}."
                )
            self._force[_PASSES[transposed][name]] = algorithm
        self._by_batch: dict[int, dict[str, str]] = {}

    @classmethod
    def conv2d(cls, sample, weight_shape, stride=1, padding=0, dilation=1, groups=1, force=None):
        """:func:`conv2d`'s checks for inputs of per-sample shape ``sample`` (C, H, W)."""
        view, _, w = _conv2d_view("conv2d", np.empty(sample_shape(sample, "conv2d"), np.float32),
                                  np.empty(weight_shape, np.float32), stride, padding, dilation,
                                  groups)
        return cls(view, w.size, transposed=False, force=force)

    @classmethod
    def conv_transpose2d(cls, sample, weight_shape, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1, force=None):
        """:func:`conv_transpose2d`'s checks for inputs of per-sample shape ``sample``
        (C, H, W)."""
        op = "conv_transpose2d"
        view, _, w = _transpose_view(op, np.empty(sample_shape(sample, op), np.float32),
                                     np.empty(weight_shape, np.float32), stride, padding,
                                     output_padding, groups, dilation)
        return cls(view, w.size, transposed=True, force=force)

    def eligible(self, name: str) -> list[str]:
        """The algorithms that can run the op's pass ``name``."""
        if name not in _PASSES[self.transposed]:
            raise ShapeError(f"conv plan: no pass {name!r}; the passes are "
                             f"{', '.join(PRIMITIVES)}.")
        return eligible(self.view, _PASSES[self.transposed][name])

    def algorithms(self, batch: int) -> ConvAlgorithms:
        """The plan's choice for each primitive of the view at ``batch``, before forcing."""
        return plan(self.view.with_batch(batch))

    def chosen(self, batch: int) -> dict[str, tuple[str, str]]:
        """Per pass of the op: (algorithm that runs, why), forced ones included."""
        choice = self.algorithms(batch)
        out = {}
        for name, primitive in _PASSES[self.transposed].items():
            if primitive in self._force:
                out[name] = (self._force[primitive], "forced")
            else:
                out[name] = (choice[primitive].algorithm, choice[primitive].why)
        return out

    def _chosen(self, batch: int) -> dict[str, str]:
        """Per primitive of the view: the algorithm to run (cached per batch)."""
        known = self._by_batch.get(batch)
        if known is None:
            choice = self.algorithms(batch)
            known = {p: self._force.get(p, choice[p].algorithm) for p in PRIMITIVES}
            self._by_batch[batch] = known
        return known

    def _threads(self, batch: int) -> int:
        return threads_for(batch * self._macs_per_sample, _PARALLEL_MIN_MACS)

    def forward(self, x, weight, bias, y) -> None:
        """``y = conv(x, weight) + bias`` (``bias`` None: none); every element of y written."""
        if not x.shape[0]:
            return
        batch = x.shape[0]
        chosen = self._chosen(batch)
        b = no_values(x.dtype) if bias is None else bias
        if self.transposed:
            self._input_grad(chosen["input_grad"], x, weight, b, y, self._threads(batch))
        else:
            self._forward(chosen["forward"], self._args, x, weight, b, y, self._threads(batch))

    def backward(self, grad_y, x, weight, grad_x, grad_weight, grad_bias) -> None:
        """Overwrite ``grad_x`` (skipped when None), ``grad_weight`` and ``grad_bias`` (skipped
        when None) with the gradients for ``grad_y``.  A transposed conv's gy and x are its
        view's input and output gradient, so the roles of the primitives swap."""
        if not x.shape[0]:  # an empty batch: no input gradient to fill, nothing to sum
            grad_weight.fill(0)
            if grad_bias is not None:
                grad_bias.fill(0)
            return
        threads = self._threads(x.shape[0])
        chosen = self._chosen(x.shape[0])
        view_input, view_grad = (grad_y, x) if self.transposed else (x, grad_y)
        if grad_x is not None:
            none = no_values(x.dtype)
            if self.transposed:
                self._forward(chosen["forward"], self._args, grad_y, weight, none, grad_x,
                              threads)
            else:
                self._input_grad(chosen["input_grad"], grad_y, weight, none, grad_x, threads)
        algorithm = chosen["weight_grad"]
        if algorithm == "gemm":
            _gemm.gemm_backward_weight(view_grad, view_input, grad_weight, *self._args, threads,
                                       machine().tile_floats)
        else:
            _direct.conv_backward_weight(view_grad, view_input, grad_weight, *self._args,
                                         threads, _direct.BACKWARD_WEIGHT[algorithm])
        if grad_bias is not None:
            _direct.channel_sums(grad_y, grad_bias, threads)

    @staticmethod
    def _forward(algorithm, args, x, weight, bias, y, threads) -> None:
        if algorithm == "gemm":
            _gemm.gemm_forward(x, weight, bias, y, *args, threads, machine().tile_floats)
        else:
            _direct.conv_forward(x, weight, bias, y, *args, threads, _direct.FORWARD[algorithm])

    def _input_grad(self, algorithm, gy, weight, initial, gx, threads) -> None:
        """gx = initial + the view's adjoint of gy."""
        if algorithm == "gemm":
            _gemm.gemm_backward_data(gy, weight, initial, gx, *self._args, threads,
                                     machine().tile_floats)
        elif algorithm.startswith("flipped:"):
            flipped = self.view.flipped()
            groups = self.view.groups
            O, Cg, kh, kw = weight.shape
            w = np.ascontiguousarray(
                weight.reshape(groups, O // groups, Cg, kh, kw)[:, :, :, ::-1, ::-1]
                .transpose(0, 2, 1, 3, 4).reshape(Cg * groups, O // groups, kh, kw))
            self._forward(algorithm.removeprefix("flipped:"), flipped.kernel_args(), gy, w,
                          initial, gx, threads)
        else:
            _direct.conv_backward_data(gy, weight, initial, gx, *self._args, threads,
                                       _direct.BACKWARD_DATA[algorithm])


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, out=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    ``y[n, o] = b[o] + Σ_{c, i, j} w[o, c, i, j] · x[n, g·C/groups + c, oh·s + i·d − p_top,
    ow·s + j·d − p_left]`` with g = o // (O/groups), zeros outside the input.

    ``padding``: int | (ph, pw) | ((top, bottom), (left, right)) | "same" | "valid"; "same"
    (stride 1 only) pads d·(k−1) in total with the odd pixel at the end, as PyTorch does.

    Shape:
        input (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) → (N, O, OH, OW) with
        ``OH = (H + p_top + p_bottom − d·(kh−1) − 1) // s + 1`` (likewise OW).

    >>> import numpy as np
    >>> conv2d(np.ones((1, 1, 5, 5), np.float32), np.ones((2, 1, 3, 3), np.float32),
    ...        stride=2).shape
    (1, 2, 2, 2)
    """
    view, x, w = _conv2d_view("conv2d", x, weight, stride, padding, dilation, groups)
    b = _bias(bias, view.output_shape[1], x.dtype, "conv2d")
    y = output_buffer(out, view.output_shape, x.dtype, "conv2d")
    if y.size:
        ConvPlan(view, w.size, transposed=False).forward(x, w, b, y)
    return y


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    needs_input_grad=True, has_bias=True):
    """Gradients of ``conv2d`` for the output gradient ``grad_y``: ``(gx | None, gw, gb | None)``.

    ``gx`` is the adjoint conv of gy (skipped when ``needs_input_grad`` is false);
    ``gw[o, c, i, j] = Σ_{n, oh, ow} gy[n, o, oh, ow] · x[n, …, oh·s + i·d − p, …]``;
    ``gb[o] = Σ_{n, oh, ow} gy[n, o, oh, ow]`` (skipped when ``has_bias`` is false).

    Shape:
        grad_y (N, O, OH, OW) as conv2d's output → gx (N, C, H, W), gw (O, C/groups, kh, kw),
        gb (O,).
    """
    op = "conv2d_backward"
    view, x, w = _conv2d_view(op, x, weight, stride, padding, dilation, groups)
    gy = matching_gradient(grad_y, view.output_shape, x.dtype, "the forward output", op)
    return _backward(gy, x, w, view, needs_input_grad, has_bias, transposed=False)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, out=None):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``: the input
    gradient of a conv2d whose weight is ``weight``.

    ``y[n, o, ih·s + i·d − p, iw·s + j·d − p] += x[n, c, ih, iw] · w[c, o − g·O/groups, i, j]``
    over every input pixel, for c in group g; plus ``b[o]``.

    Shape:
        input (N, C, H, W), weight (C, O/groups, kh, kw), bias (O,) → (N, O, OH, OW) with
        ``OH = (H − 1)·s − 2·p + d·(kh − 1) + output_padding + 1`` (likewise OW);
        ``output_padding < max(stride, dilation)``.

    >>> import numpy as np
    >>> conv_transpose2d(np.ones((1, 4, 3, 3), np.float32), np.ones((4, 2, 2, 2), np.float32),
    ...                  stride=2).shape
    (1, 2, 6, 6)
    """
    op = "conv_transpose2d"
    view, x, w = _transpose_view(op, x, weight, stride, padding, output_padding, groups, dilation)
    b = _bias(bias, view.input_shape[1], x.dtype, op)
    y = output_buffer(out, view.input_shape, x.dtype, op)
    if y.size:
        ConvPlan(view, w.size, transposed=True).forward(x, w, b, y)
    return y


def conv_transpose2d_backward(grad_y, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, needs_input_grad=True, has_bias=True):
    """Gradients of ``conv_transpose2d``: ``(gx | None, gw, gb | None)``.

    ``gx`` is conv2d of gy with the same weight and arguments; ``gw[c, o, i, j] = Σ x[n, c, ih,
    iw] · gy[n, o, ih·s + i·d − p, iw·s + j·d − p]``; ``gb[o] = Σ_{n, h, w} gy[n, o, h, w]``.

    Shape:
        grad_y (N, O, OH, OW) as conv_transpose2d's output → gx (N, C, H, W),
        gw (C, O/groups, kh, kw), gb (O,).
    """
    op = "conv_transpose2d_backward"
    view, x, w = _transpose_view(op, x, weight, stride, padding, output_padding, groups, dilation)
    gy = matching_gradient(grad_y, view.input_shape, x.dtype, "the forward output", op)
    return _backward(gy, x, w, view, needs_input_grad, has_bias, transposed=True)


def _backward(gy, x, w, view: ConvView, needs_input_grad: bool, has_bias: bool,
              transposed: bool):
    """The three gradients, in new arrays."""
    gx = np.empty(x.shape, dtype=x.dtype) if needs_input_grad else None
    gw = np.empty(w.shape, dtype=w.dtype)
    gb = np.empty(gy.shape[1], dtype=gy.dtype) if has_bias else None
    ConvPlan(view, w.size, transposed).backward(gy, x, w, gx, gw, gb)
    return gx, gw, gb
