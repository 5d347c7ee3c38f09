"""The layer registry: every layer type a spec may name, registered once.

A ``LayerType`` declares its keys (name, accepted values, default, range or choices), turns a
layer's keys into the normalised ``config`` of docs/ARCHITECTURE.md, infers the output shape from
the input shapes (with the formulas of ``declcnn/shapes.py``), declares its parameter and buffer
shapes and counts its multiply-adds.  Shapes are per sample: ``(C, H, W)`` or ``(F,)``.

Convenience types (``pointwise``, ``depthwise``, ``separable_conv2d``) expand into ``conv2d``
nodes; ``expand`` returns the parts a layer becomes.

>>> infer_shape("conv2d", (1, 28, 28), out_channels=6, kernel=5, padding=2)
(6, 28, 28)
>>> sorted(LAYER_TYPES)[:4]
['add', 'avgpool2d', 'batchnorm2d', 'concat']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import shapes
from ..errors import ShapeError
from ..spec._values import closest, is_int, is_number, kind, show, suggestion

Shape = tuple[int, ...]

INIT_CHOICES = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal",
                "xavier_uniform", "zeros")
"""Weight initialisers a layer with weights may name with ``init``; "default" is PyTorch's."""


class LayerProblem(Exception):
    """A layer's keys do not fit its inputs; ``key`` names the key to blame (None: the layer)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key


# -- key values ------------------------------------------------------------------------------

class Value:
    """What a key accepts: ``parse`` returns the normalised value or raises ``ValueError``."""

    description = ""
    expected_kinds: tuple[str, ...] = ()

    def parse(self, value):
        raise NotImplementedError

    def problem(self, value) -> str:
        """``must be …; got …`` — naming the value's TOML type when the type itself is wrong."""
        got = show(value)
        if kind(value) not in self.expected_kinds:
            article = "an" if kind(value)[0] in "aeiou" else "a"
            got += f" ({article} {kind(value)})"
        return f"must be {self.description}; got {got}."


class Integer(Value):
    expected_kinds = ("integer",)

    def __init__(self, minimum: int, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum
        self.description = f"an integer ≥ {minimum}" + (
            f" and ≤ {maximum}" if maximum is not None else "")

    def parse(self, value):
        if not is_int(value) or value < self.minimum or (
                self.maximum is not None and value > self.maximum):
            raise ValueError
        return value


class IntPair(Value):
    """An integer or a ``[h, w]`` pair of them; normalised to ``(h, w)``."""

    expected_kinds = ("integer", "array")

    def __init__(self, minimum: int):
        self.item = Integer(minimum)
        self.description = f"an integer ≥ {minimum} or a pair of them"

    def parse(self, value):
        if isinstance(value, list):
            if len(value) != 2:
                raise ValueError
            return tuple(self.item.parse(v) for v in value)
        value = self.item.parse(value)
        return value, value


class ConvPadding(Value):
    """Padding of a convolution: ``p``, ``[ph, pw]``, ``[[top, bottom], [left, right]]``,
    ``"same"`` or ``"valid"``; the words are resolved once the kernel is known."""

    expected_kinds = ("integer", "array", "string")
    description = ('an integer ≥ 0, a pair of them, a pair of [begin, end] pairs, "same" or '
                   '"valid"')

    def parse(self, value):
        if value in ("same", "valid"):
            return value
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list)
                                                               for v in value):
            return tuple(_PAIR0.parse(v) for v in value)
        ph, pw = _PAIR0.parse(value)
        return (ph, ph), (pw, pw)


class Number(Value):
    """A TOML integer or float in ``[low, high]`` (either end may be open or absent)."""

    expected_kinds = ("integer", "float")

    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        if low is None and high is None:
            self.description = "a number"
        else:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            self.description = f"a number in {left}{lo}, {hi}{right}"

    def parse(self, value):
        if not is_number(value) or math.isnan(value):
            raise ValueError
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError
        if self.high is not None and (value > self.high
                                      or (self.high_open and value == self.high)):
            raise ValueError
        return float(value)


class Boolean(Value):
    expected_kinds = ("boolean",)
    description = "true or false"

    def parse(self, value):
        if not isinstance(value, bool):
            raise ValueError
        return value


class Choice(Value):
    expected_kinds = ("string",)

    def __init__(self, choices: tuple[str, ...]):
        self.choices = choices
        self.description = "one of " + ", ".join(f'"{c}"' for c in choices)

    def parse(self, value):
        if value not in self.choices or not isinstance(value, str):
            raise ValueError
        return value

    def problem(self, value) -> str:
        message = super().problem(value)
        hint = closest(value, self.choices) if isinstance(value, str) else None
        return message + (f' Did you mean "{hint}"?' if hint else "")


class IntList(Value):
    expected_kinds = ("array",)

    def __init__(self, minimum: int):
        self.item = Integer(minimum)
        self.description = f"a non-empty array of integers ≥ {minimum}"

    def parse(self, value):
        if not isinstance(value, list) or not value:
            raise ValueError
        return [self.item.parse(v) for v in value]


_PAIR0 = IntPair(0)
_PAIR1 = IntPair(1)
_COUNT = Integer(1)

REQUIRED = object()
"""The default of a key the layer cannot do without."""


@dataclass(frozen=True)
class Key:
    """One key a layer type accepts: its values, its default (or ``REQUIRED``), an example."""

    name: str
    value: Value
    default: Any = REQUIRED
    example: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def default_value(self):
        """The default, normalised as a written value would be (None stays None)."""
        return None if self.default is None else self.value.parse(self.default)


def _weights_keys() -> tuple[Key, ...]:
    return (Key("bias", Boolean(), True), Key("init", Choice(INIT_CHOICES), "default"))


# -- shapes and messages ---------------------------------------------------------------------

def format_shape(shape: Shape) -> str:
    """``(16, 5, 5)`` → ``16×5×5``; a flat ``(400,)`` → ``400``.

    >>> format_shape((16, 5, 5))
    '16×5×5'
    """
    return "×".join(str(d) for d in shape)


def _written(pair: tuple[int, int]) -> str:
    """A normalised pair as the user would write it: ``2`` for ``(2, 2)``, else ``[2, 3]``."""
    return str(pair[0]) if pair[0] == pair[1] else show(list(pair))


def _describe(shape: Shape) -> str:
    if len(shape) == 1:
        return f"a flat input of {shape[0]} features"
    return f"the input {format_shape(shape)}"


def _image(type_name: str, shape: Shape, hint: str = "") -> Shape:
    """The ``(C, H, W)`` of an input that must be an image."""
    if len(shape) != 3:
        raise LayerProblem(f"{type_name} needs a C×H×W input; got {_describe(shape)}. "
                           f"{hint or 'Place it before the flatten layer.'}")
    return shape


def _fit(type_name: str, shape: Shape, out_hw: tuple[int, int],
         arithmetic: tuple[str, str], fix: str) -> None:
    """Refuse an output of ≤ 0 pixels, showing the incoming shape and each axis's sum."""
    if min(out_hw) > 0:
        return
    axes = [f"{axis} = {sums}" for axis, sums, size in
            zip(("height", "width"), arithmetic, out_hw, strict=True) if size <= 0]
    raise LayerProblem(
        f"the output would be {out_hw[0]}×{out_hw[1]} pixels: {_describe(shape)} is too small "
        f"for this {type_name} ({'; '.join(axes)}). {fix}")


def _divisors(*numbers: int) -> list[int]:
    g = math.gcd(*numbers)
    return [d for d in range(1, g + 1) if g % d == 0]


def _check_groups(groups: int, in_channels: int, out_channels: int) -> None:
    if in_channels % groups or out_channels % groups:
        choices = ", ".join(map(str, _divisors(in_channels, out_channels)[:8]))
        raise LayerProblem(
            f"groups = {groups} must divide both the input's {in_channels} channels and "
            f"out_channels = {out_channels}; use one of {choices}.", "groups")


@dataclass
class Part:
    """One node a layer becomes: name suffix (None: the layer's own name), type, config."""

    suffix: str | None
    type: str
    config: dict[str, Any]


# -- the registry ----------------------------------------------------------------------------

LAYER_TYPES: dict[str, LayerType] = {}


def register(cls):
    """Class decorator: one instance of each layer type, under its ``name``."""
    LAYER_TYPES[cls.name] = cls()
    return cls


class LayerType:
    """Base of every layer type.  Subclasses set ``name``, ``keys`` and the methods they need."""

    name = ""
    keys: tuple[Key, ...] = ()
    min_inputs = 1
    max_inputs = 1

    def read_keys(self, raw: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Check a layer's keys; return the values (defaults filled in) and (key, message)s."""
        values: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        names = [k.name for k in self.keys]
        misspelt = set()
        for name in raw:
            if name not in names:
                if names:
                    valid = suggestion(name, names, "keys")
                    misspelt.add(closest(name, names))
                    hint = valid[0].upper() + valid[1:]
                else:
                    hint = "It takes no keys; remove it."
                problems.append((name, f"{self.name} has no key '{name}'. {hint}"))
        for k in self.keys:
            if k.name not in raw:
                if k.required and k.name not in misspelt:  # not "kernal" and "needs kernel"
                    problems.append((k.name, f"{self.name} needs '{k.name}' "
                                             f"({k.value.description}); add e.g. {k.example}."))
                elif not k.required:
                    values[k.name] = k.default_value()
                continue
            try:
                values[k.name] = k.value.parse(raw[k.name])
            except ValueError:
                problems.append((k.name, k.value.problem(raw[k.name])))
        return values, problems

    def expand(self, values: dict[str, Any], shapes_in: list[Shape],
               names_in: list[str]) -> list[Part]:
        """The nodes this layer becomes; by default one node of its own type."""
        return [Part(None, self.name, self.configure(values, shapes_in, names_in))]

    def configure(self, values: dict[str, Any], shapes_in: list[Shape],
                  names_in: list[str]) -> dict[str, Any]:
        """The normalised config; raises ``LayerProblem`` when the keys do not fit the input."""
        return dict(values)

    def output_shape(self, config: dict[str, Any], shapes_in: list[Shape]) -> Shape:
        return shapes_in[0]

    def params(self, config: dict[str, Any]) -> dict[str, Shape]:
        return {}

    def buffers(self, config: dict[str, Any]) -> dict[str, Shape]:
        return {}

    def macs(self, config: dict[str, Any], shapes_in: list[Shape], shape_out: Shape) -> int:
        """Multiply-adds with weights per sample (0 for layers without weights)."""
        return 0

    def kept_values(self, config: dict[str, Any], shape_out: Shape) -> int:
        """Values per sample the layer keeps beyond its output (states for its backward)."""
        return 0


def infer_shape(type_name: str, *shapes_in: Shape, **keys) -> Shape:
    """Output shape of one layer of ``type_name`` on ``shapes_in`` (the last part's, for a
    layer that expands); raises ``ShapeError`` with the layer's message when the keys are wrong.
    """
    layer = LAYER_TYPES[type_name]
    values, problems = layer.read_keys(keys)
    if problems:
        raise ShapeError(f"key '{problems[0][0]}': {problems[0][1]}")
    shapes_in = list(shapes_in)
    names = [f"input{i}" for i in range(len(shapes_in))]
    try:
        for part in layer.expand(values, shapes_in, names):
            shapes_in = [LAYER_TYPES[part.type].output_shape(part.config, shapes_in)]
    except LayerProblem as err:
        raise ShapeError(err.message) from None
    return shapes_in[0]


# -- convolutions ----------------------------------------------------------------------------

def _conv_sum(size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int,
              out: int) -> str:
    return (f"({size} + {pad[0]} + {pad[1]} − {dilation}·({kernel} − 1) − 1) // {stride} + 1 "
            f"= {out}")


@register
class Conv2d(LayerType):
    r"""2-D convolution (cross-correlation), PyTorch's ``nn.Conv2d``.

    ``y[n, o] = b[o] + Σ_{c in o's group} Σ_{i,j} w[o, c, i, j] · x[n, c, s·h + d·i − p, s·w +
    d·j − p]``; ``padding = "same"`` (stride 1 only) pads ``d·(k−1)`` per axis, the odd pixel at
    the end.

    Shape: ``(C, H, W) → (out_channels, H', W')`` with
    ``H' = floor((H + p_top + p_bottom − d·(k−1) − 1) / s) + 1``.

    >>> infer_shape("conv2d", (3, 32, 32), out_channels=8, kernel=3, stride=2, padding=1)
    (8, 16, 16)
    >>> infer_shape("conv2d", (3, 31, 31), out_channels=8, kernel=4, padding="same")
    (8, 31, 31)
    """

    name = "conv2d"
    keys = (Key("out_channels", _COUNT, example="out_channels = 16"),
            Key("kernel", _PAIR1, example="kernel = 3"),
            Key("stride", _PAIR1, 1), Key("padding", ConvPadding(), 0),
            Key("dilation", _PAIR1, 1), Key("groups", _COUNT, 1)) + _weights_keys()

    def configure(self, values, shapes_in, names_in):
        channels, _, _ = _image(self.name, shapes_in[0])
        _check_groups(values["groups"], channels, values["out_channels"])
        padding = values["padding"]
        if padding == "same":
            if values["stride"] != (1, 1):
                raise LayerProblem(
                    f'padding = "same" needs stride 1 (as in PyTorch); got stride = '
                    f'{_written(values["stride"])}. Give the padding as numbers instead, e.g. '
                    f'padding = {values["kernel"][0] // 2} for kernel {values["kernel"][0]}.',
                    "padding")
            padding = tuple(shapes.same_padding(k, d)
                            for k, d in zip(values["kernel"], values["dilation"], strict=True))
        elif padding == "valid":
            padding = ((0, 0), (0, 0))
        return {"in_channels": channels, **values, "padding": padding}

    def output_shape(self, config, shapes_in):
        shape = shapes_in[0]
        axes = list(zip(shape[1:], config["kernel"], config["stride"], config["padding"],
                        config["dilation"], strict=True))
        out = tuple(shapes.conv_output_size(n, k, s, p[0], p[1], d) for n, k, s, p, d in axes)
        _fit(self.name, shape, out,
             tuple(_conv_sum(n, k, s, p, d, o) for (n, k, s, p, d), o in zip(axes, out,
                                                                             strict=True)),
             "Use a smaller kernel, stride or dilation, more padding, or a larger input.")
        return (config["out_channels"],) + out

    def params(self, config):
        weight = (config["out_channels"], config["in_channels"] // config["groups"],
                  *config["kernel"])
        return {"weight": weight, "bias": (config["out_channels"],)} if config["bias"] else {
            "weight": weight}

    def macs(self, config, shapes_in, shape_out):
        per_output = config["in_channels"] // config["groups"] * math.prod(config["kernel"])
        return shapes.flat_size(shape_out) * per_output


def _conv_values(values: dict[str, Any], **overrides) -> dict[str, Any]:
    """A conv2d's keys from a convenience layer's keys (their defaults where it has none)."""
    conv = {k.name: k.default_value() for k in Conv2d.keys if not k.required}
    conv.update({k: v for k, v in values.items() if k in conv or k in ("kernel", "out_channels")})
    conv.update(overrides)
    return conv


@register
class Pointwise(LayerType):
    """1×1 convolution: a per-pixel linear map of the channels; becomes a ``conv2d`` k1.

    Shape: ``(C, H, W) → (out_channels, ⌊(H − 1)/s⌋ + 1, ⌊(W − 1)/s⌋ + 1)``.

    >>> infer_shape("pointwise", (32, 14, 14), out_channels=64)
    (64, 14, 14)
    """

    name = "pointwise"
    keys = (Key("out_channels", _COUNT, example="out_channels = 64"),
            Key("stride", _PAIR1, 1), Key("groups", _COUNT, 1)) + _weights_keys()

    def expand(self, values, shapes_in, names_in):
        conv = _conv_values(values, kernel=(1, 1), padding=((0, 0), (0, 0)))
        return [Part(None, "conv2d", LAYER_TYPES["conv2d"].configure(conv, shapes_in, names_in))]


@register
class Depthwise(LayerType):
    """Depthwise convolution: each channel convolved on its own (``groups`` = channels), with
    ``multiplier`` filters per channel; becomes a ``conv2d``.

    Shape: ``(C, H, W) → (multiplier·C, H', W')``, ``H'`` as for conv2d.

    >>> infer_shape("depthwise", (32, 14, 14), kernel=3, padding=1, multiplier=2)
    (64, 14, 14)
    """

    name = "depthwise"
    keys = (Key("kernel", _PAIR1, example="kernel = 3"), Key("stride", _PAIR1, 1),
            Key("padding", ConvPadding(), 0), Key("dilation", _PAIR1, 1),
            Key("multiplier", _COUNT, 1)) + _weights_keys()

    def expand(self, values, shapes_in, names_in):
        channels = _image(self.name, shapes_in[0])[0]
        conv = _conv_values(values, out_channels=values["multiplier"] * channels,
                            groups=channels)
        return [Part(None, "conv2d", LAYER_TYPES["conv2d"].configure(conv, shapes_in, names_in))]


@register
class SeparableConv2d(LayerType):
    """Depthwise-separable convolution (MobileNet): a depthwise ``kernel`` convolution then a
    1×1 one; becomes the nodes ``NAME.depthwise`` and ``NAME.pointwise`` (``NAME`` is the
    second).

    Shape: ``(C, H, W) → (out_channels, H', W')``, ``H'`` as for conv2d.

    >>> infer_shape("separable_conv2d", (32, 28, 28), out_channels=64, kernel=3, stride=2,
    ...             padding=1)
    (64, 14, 14)
    """

    name = "separable_conv2d"
    keys = (Key("out_channels", _COUNT, example="out_channels = 64"),
            Key("kernel", _PAIR1, example="kernel = 3"), Key("stride", _PAIR1, 1),
            Key("padding", ConvPadding(), 0), Key("dilation", _PAIR1, 1),
            Key("multiplier", _COUNT, 1)) + _weights_keys()

    def expand(self, values, shapes_in, names_in):
        conv = LAYER_TYPES["conv2d"]
        channels = _image(self.name, shapes_in[0])[0]
        depth = conv.configure(
            _conv_values(values, out_channels=values["multiplier"] * channels, groups=channels),
            shapes_in, names_in)
        middle = conv.output_shape(depth, shapes_in)
        point = conv.configure(
            _conv_values(values, kernel=(1, 1), stride=(1, 1), padding=((0, 0), (0, 0)),
                         dilation=(1, 1)), [middle], names_in)
        return [Part("depthwise", "conv2d", depth), Part("pointwise", "conv2d", point)]


@register
class ConvTranspose2d(LayerType):
    """Transposed convolution (the gradient of conv2d with respect to its input),
    PyTorch's ``nn.ConvTranspose2d``; weight ``in × out/groups × kh × kw``.

    Shape: ``(C, H, W) → (out_channels, H', W')`` with
    ``H' = (H − 1)·s − 2p + d·(k − 1) + output_padding + 1``.

    >>> infer_shape("conv_transpose2d", (1024, 28, 28), out_channels=512, kernel=2, stride=2)
    (512, 56, 56)
    """

    name = "conv_transpose2d"
    keys = (Key("out_channels", _COUNT, example="out_channels = 16"),
            Key("kernel", _PAIR1, example="kernel = 2"),
            Key("stride", _PAIR1, 1), Key("padding", _PAIR0, 0),
            Key("output_padding", _PAIR0, 0), Key("dilation", _PAIR1, 1),
            Key("groups", _COUNT, 1)) + _weights_keys()

    def configure(self, values, shapes_in, names_in):
        channels = _image(self.name, shapes_in[0])[0]
        _check_groups(values["groups"], channels, values["out_channels"])
        for op, s, d in zip(values["output_padding"], values["stride"], values["dilation"],
                            strict=True):
            if op >= s and op >= d:
                raise LayerProblem(
                    f"output_padding must be smaller than the stride or the dilation (as in "
                    f"PyTorch); got output_padding = {_written(values['output_padding'])} with "
                    f"stride = {_written(values['stride'])} and dilation = "
                    f"{_written(values['dilation'])}. Use output_padding < stride.",
                    "output_padding")
        return {"in_channels": channels, **values}

    def output_shape(self, config, shapes_in):
        shape = shapes_in[0]
        axes = list(zip(shape[1:], config["kernel"], config["stride"], config["padding"],
                        config["dilation"], config["output_padding"], strict=True))
        out = tuple(shapes.conv_transpose_output_size(n, k, s, p, d, op)
                    for n, k, s, p, d, op in axes)
        sums = tuple(f"({n} − 1)·{s} − 2·{p} + {d}·({k} − 1) + {op} + 1 = {o}"
                     for (n, k, s, p, d, op), o in zip(axes, out, strict=True))
        _fit(self.name, shape, out, sums, "Use less padding or a larger input.")
        return (config["out_channels"],) + out

    def params(self, config):
        weight = (config["in_channels"], config["out_channels"] // config["groups"],
                  *config["kernel"])
        return {"weight": weight, "bias": (config["out_channels"],)} if config["bias"] else {
            "weight": weight}

    def macs(self, config, shapes_in, shape_out):
        per_input = config["out_channels"] // config["groups"] * math.prod(config["kernel"])
        return shapes.flat_size(shapes_in[0]) * per_input


MAX_RCL_STEPS = 1000
"""Unrolled steps of an ``rcl`` (Liang & Hu use 3); each keeps a state for the backward."""


@register
class RCL(LayerType):
    """Recurrent convolutional layer (Liang & Hu 2015): ``s_0 = relu(ff(u))``,
    ``s_t = relu(ff(u) + rec(s_{t−1}))`` for ``t = 1..steps``, output ``s_steps``; ``ff`` and
    ``rec`` are stride-1 "same" convolutions with ``out_channels`` outputs (``rec`` without bias).

    Shape: ``(C, H, W) → (out_channels, H, W)``.

    >>> infer_shape("rcl", (96, 16, 16), out_channels=96, kernel=3, steps=3)
    (96, 16, 16)
    """

    name = "rcl"
    keys = (Key("out_channels", _COUNT, example="out_channels = 96"),
            Key("kernel", _PAIR1, example="kernel = 3"),
            Key("steps", Integer(1, MAX_RCL_STEPS), 3)) + _weights_keys()

    def configure(self, values, shapes_in, names_in):
        return {"in_channels": _image(self.name, shapes_in[0])[0], **values}

    def output_shape(self, config, shapes_in):
        _, *size = shapes_in[0]
        out = tuple(shapes.conv_output_size(n, k, 1, *shapes.same_padding(k, 1))
                    for n, k in zip(size, config["kernel"], strict=True))
        return (config["out_channels"],) + out

    def params(self, config):
        o, i, k = config["out_channels"], config["in_channels"], config["kernel"]
        params = {"feedforward.weight": (o, i, *k)}
        if config["bias"]:
            params["feedforward.bias"] = (o,)
        params["recurrent.weight"] = (o, o, *k)
        return params

    def macs(self, config, shapes_in, shape_out):
        o, i = config["out_channels"], config["in_channels"]
        taps = math.prod(config["kernel"])
        return shapes.flat_size(shape_out) * taps * (i + config["steps"] * o)

    def kept_values(self, config, shape_out):
        # The unrolled forward keeps every state s_0..s_steps and the feed-forward sum.
        return (config["steps"] + 1) * shapes.flat_size(shape_out)


# -- pooling ---------------------------------------------------------------------------------

class _Pool(LayerType):
    """Shared by max and average pooling: PyTorch's window rules and ``pool_output_size``."""

    def configure(self, values, shapes_in, names_in):
        _image(self.name, shapes_in[0])
        config = dict(values)
        config["stride"] = values["stride"] or values["kernel"]
        for p, k in zip(values["padding"], values["kernel"], strict=True):
            if p > k // 2:
                raise LayerProblem(
                    f"padding must be at most half the kernel (as in PyTorch); got padding = "
                    f"{_written(values['padding'])} with kernel = {_written(values['kernel'])}. "
                    f"Use padding ≤ {k // 2}.", "padding")
        return config

    def output_shape(self, config, shapes_in):
        shape = shapes_in[0]
        dilation = config.get("dilation", (1, 1))
        axes = list(zip(shape[1:], config["kernel"], config["stride"], config["padding"],
                        dilation, strict=True))
        out = tuple(shapes.pool_output_size(n, k, s, p, d, config["ceil_mode"])
                    for n, k, s, p, d in axes)
        rounding = "ceil" if config["ceil_mode"] else "floor"
        sums = tuple(f"{rounding}(({n} + 2·{p} − {d}·({k} − 1) − 1) / {s}) + 1 = {o}"
                     for (n, k, s, p, d), o in zip(axes, out, strict=True))
        _fit(self.name, shape, out, sums, "Use a smaller kernel or a larger input, or remove "
                                          "this pooling layer.")
        return (shape[0],) + out


_POOL_KEYS = (Key("kernel", _PAIR1, example="kernel = 2"),
              Key("stride", _PAIR1, None), Key("padding", _PAIR0, 0))


@register
class MaxPool2d(_Pool):
    """Max pooling, PyTorch's ``nn.MaxPool2d``; ``stride`` defaults to ``kernel``.

    Shape: ``(C, H, W) → (C, H', W')``, ``H' = floor((H + 2p − d·(k−1) − 1) / s) + 1`` (ceil
    with ``ceil_mode``, the last window starting inside the input).

    >>> infer_shape("maxpool2d", (64, 568, 568), kernel=2)
    (64, 284, 284)
    >>> infer_shape("maxpool2d", (8, 5, 5), kernel=2, ceil_mode=True)
    (8, 3, 3)
    """

    name = "maxpool2d"
    keys = _POOL_KEYS + (Key("dilation", _PAIR1, 1), Key("ceil_mode", Boolean(), False))


@register
class AvgPool2d(_Pool):
    """Average pooling, PyTorch's ``nn.AvgPool2d``; with ``count_include_pad`` the padding
    zeros count in the divisor.

    Shape: ``(C, H, W) → (C, H', W')``, ``H' = floor((H + 2p − k) / s) + 1`` (ceil with
    ``ceil_mode``).

    >>> infer_shape("avgpool2d", (16, 10, 10), kernel=3, stride=2, padding=1)
    (16, 5, 5)
    """

    name = "avgpool2d"
    keys = _POOL_KEYS + (Key("ceil_mode", Boolean(), False),
                         Key("count_include_pad", Boolean(), True))


@register
class GlobalAvgPool(LayerType):
    """Mean over each channel's plane.  Shape: ``(C, H, W) → (C, 1, 1)``.

    >>> infer_shape("global_avgpool", (512, 7, 7))
    (512, 1, 1)
    """

    name = "global_avgpool"

    def configure(self, values, shapes_in, names_in):
        _image(self.name, shapes_in[0])
        return {}

    def output_shape(self, config, shapes_in):
        return (shapes_in[0][0], 1, 1)


@register
class GlobalMaxPool(GlobalAvgPool):
    """Maximum over each channel's plane.  Shape: ``(C, H, W) → (C, 1, 1)``."""

    name = "global_maxpool"


@register
class SPP(LayerType):
    """Spatial pyramid pooling (He et al. 2014): adaptive pooling of each channel to ``l × l``
    bins for each level ``l``, flattened and concatenated (level by level, channel-major), so
    any input size gives the same length.

    Shape: ``(C, H, W) → (C · Σ l²,)``.

    >>> infer_shape("spp", (256, 13, 13), levels=[1, 2, 4])
    (5376,)
    """

    name = "spp"
    keys = (Key("levels", IntList(1), [1, 2, 4]), Key("pool", Choice(("max", "avg")), "max"))

    def configure(self, values, shapes_in, names_in):
        _image(self.name, shapes_in[0])
        return dict(values)

    def output_shape(self, config, shapes_in):
        return (shapes_in[0][0] * sum(level * level for level in config["levels"]),)


# -- shape changes ---------------------------------------------------------------------------

@register
class Flatten(LayerType):
    """Flattens each sample, channel-major.  Shape: ``(C, H, W) → (C·H·W,)``.

    >>> infer_shape("flatten", (16, 5, 5))
    (400,)
    """

    name = "flatten"

    def output_shape(self, config, shapes_in):
        return (shapes.flat_size(shapes_in[0]),)


@register
class Linear(LayerType):
    """Fully connected layer, ``y = x·Wᵀ + b`` with ``W`` of shape ``out × in``.

    Shape: ``(in_features,) → (out_features,)``.

    >>> infer_shape("linear", (400,), out_features=120)
    (120,)
    """

    name = "linear"
    keys = (Key("out_features", _COUNT, example="out_features = 10"),) + _weights_keys()

    def configure(self, values, shapes_in, names_in):
        shape = shapes_in[0]
        if len(shape) != 1:
            raise LayerProblem(
                f"linear needs a flat input; got the input {format_shape(shape)} from "
                f"'{names_in[0]}'. Add a layer with type = \"flatten\" before it (it would give "
                f"{shapes.flat_size(shape)} features), or a global_avgpool then a flatten.")
        return {"in_features": shape[0], **values}

    def output_shape(self, config, shapes_in):
        return (config["out_features"],)

    def params(self, config):
        weight = (config["out_features"], config["in_features"])
        return {"weight": weight, "bias": (config["out_features"],)} if config["bias"] else {
            "weight": weight}

    def macs(self, config, shapes_in, shape_out):
        return config["in_features"] * config["out_features"]


@register
class Crop(LayerType):
    """Centre crop to ``size``: rows ``⌊(H − size_h)/2⌋`` onwards (an odd margin's extra row
    is dropped at the end), columns likewise.  Shape: ``(C, H, W) → (C, size_h, size_w)``.

    >>> infer_shape("crop", (64, 568, 568), size=392)
    (64, 392, 392)
    """

    name = "crop"
    keys = (Key("size", _PAIR1, example="size = 32"),)

    def configure(self, values, shapes_in, names_in):
        shape = _image(self.name, shapes_in[0])
        if any(s > n for s, n in zip(values["size"], shape[1:], strict=True)):
            raise LayerProblem(
                f"size = {_written(values['size'])} is larger than the input "
                f"{format_shape(shape)} from '{names_in[0]}'; a crop can only shrink. Use a "
                f"size of at most {shape[1]}×{shape[2]}.", "size")
        return dict(values)

    def output_shape(self, config, shapes_in):
        return (shapes_in[0][0],) + config["size"]


@register
class Upsample(LayerType):
    """Nearest-neighbour upsampling by integer factors.

    Shape: ``(C, H, W) → (C, H·scale_h, W·scale_w)``.

    >>> infer_shape("upsample", (64, 14, 14), scale=2)
    (64, 28, 28)
    """

    name = "upsample"
    keys = (Key("scale", _PAIR1, 2),)

    def configure(self, values, shapes_in, names_in):
        _image(self.name, shapes_in[0])
        return dict(values)

    def output_shape(self, config, shapes_in):
        c, h, w = shapes_in[0]
        sh, sw = config["scale"]
        return c, shapes.upsample_output_size(h, sh), shapes.upsample_output_size(w, sw)


class _Merge(LayerType):
    """Layers that read two or more inputs."""

    min_inputs = 2
    max_inputs = None

    @staticmethod
    def listing(shapes_in: list[Shape], names_in: list[str]) -> str:
        return ", ".join(f"{format_shape(s)} ('{n}')"
                         for s, n in zip(shapes_in, names_in, strict=True))


@register
class Concat(_Merge):
    """Concatenation along the channels, in the order of ``inputs``; with ``crop = true`` the
    larger inputs are first centre-cropped to the smallest height and width as ``crop`` does
    (U-Net's crop-and-concat).

    Shape: ``(C_i, H, W) → (Σ C_i, H, W)`` (``H = min H_i`` with crop).

    >>> infer_shape("concat", (512, 64, 64), (512, 56, 56), crop=True)
    (1024, 56, 56)
    """

    name = "concat"
    keys = (Key("crop", Boolean(), False),)

    def configure(self, values, shapes_in, names_in):
        for s in shapes_in:
            _image(self.name, s, "Concatenate images before flattening them.")
        sizes = {s[1:] for s in shapes_in}
        if len(sizes) > 1 and not values["crop"]:
            raise LayerProblem(
                f"concat needs inputs of one height and width; got "
                f"{self.listing(shapes_in, names_in)}. Set crop = true to centre-crop them to "
                f"the smallest, or change the layers so the sizes agree.")
        return dict(values)

    def output_shape(self, config, shapes_in):
        return (sum(s[0] for s in shapes_in), min(s[1] for s in shapes_in),
                min(s[2] for s in shapes_in))


@register
class Add(_Merge):
    """Element-wise sum (a residual connection).  Shape: all inputs and the output alike.

    >>> infer_shape("add", (64, 56, 56), (64, 56, 56))
    (64, 56, 56)
    """

    name = "add"

    def configure(self, values, shapes_in, names_in):
        if len(set(shapes_in)) > 1:
            raise LayerProblem(
                f"add needs inputs of one shape; got {self.listing(shapes_in, names_in)}. "
                f"Make the shapes agree, e.g. with a 1×1 conv2d (stride 2 to halve the size) "
                f"on the shortcut.")
        return {}


# -- element-wise ----------------------------------------------------------------------------

@register
class ReLU(LayerType):
    """``max(x, 0)``.  Shape: unchanged."""

    name = "relu"


@register
class Sigmoid(LayerType):
    """``1 / (1 + e^−x)``.  Shape: unchanged."""

    name = "sigmoid"


@register
class Tanh(LayerType):
    """``tanh x``.  Shape: unchanged."""

    name = "tanh"


@register
class Softmax(LayerType):
    """``e^{x_c} / Σ_c' e^{x_c'}`` over the channels (axis 1 of N×C or N×C×H×W).

    Shape: unchanged."""

    name = "softmax"


@register
class LeakyReLU(LayerType):
    """``x`` for ``x > 0``, else ``negative_slope · x``.  Shape: unchanged."""

    name = "leaky_relu"
    keys = (Key("negative_slope", Number(), 0.01),)


@register
class Dropout(LayerType):
    """In training, zero each value with probability ``p`` and scale the rest by
    ``1/(1 − p)``; identity in evaluation.  Shape: unchanged."""

    name = "dropout"
    keys = (Key("p", Number(0, 1, high_open=True), 0.5),)


@register
class BatchNorm2d(LayerType):
    """Batch normalisation per channel: ``y = (x − mean) / sqrt(var + eps) · γ + β``, batch
    statistics in training (running ones updated with ``momentum``), running ones in
    evaluation.  Shape: ``(C, H, W)`` unchanged.

    >>> infer_shape("batchnorm2d", (64, 56, 56))
    (64, 56, 56)
    """

    name = "batchnorm2d"
    keys = (Key("eps", Number(0, low_open=True), 1e-5), Key("momentum", Number(0, 1), 0.1))

    def configure(self, values, shapes_in, names_in):
        return {"num_features": _image(self.name, shapes_in[0])[0], **values}

    def params(self, config):
        return {"weight": (config["num_features"],), "bias": (config["num_features"],)}

    def buffers(self, config):
        return {"running_mean": (config["num_features"],),
                "running_var": (config["num_features"],)}
