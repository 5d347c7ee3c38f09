"""The conv plan: which algorithm runs each primitive of a conv or transposed conv, and why.

Every conv and transposed conv runs three primitives on its *conv view* (:class:`ConvView`,
the plain convolution the op reduces to): ``forward``, ``input_grad`` (backward-data) and
``weight_grad``.  :func:`choose` picks one algorithm for each from the view's shape, the batch
and the machine's block sizes, in this one function; :func:`eligible` lists every algorithm
that computes a primitive correctly for a view, so tests can force each of them, and
``declcnn bench`` prints the choice with its reason.

The algorithms (kernels in ``declcnn/_kernels/conv.pyx`` and ``conv_gemm.pyx``):

========================  =====================================================================
``gemm``                  im2col of the live taps + BLAS GEMM over the whole batch (any view)
``phases``                register-blocked direct loops on flat polyphase planes (any view)
``pixels``                channels in the lanes × 2×5 output pixels (≤ one vector of channels)
``depthwise``             single-output-channel loops on the phase planes (forward: any view;
                          weight gradient: one input channel a group)
``scatter``               input gradient: taps scattered back onto the phase planes (any view)
``depthwise-scatter``     input gradient of a depthwise conv, row by row
``flipped:<forward>``     input gradient as the forward of gy with the kernel flipped (stride 1)
``reduce`` / ``lanes``    weight gradient on the phase planes, channels across / in the lanes
========================  =====================================================================

The rules, and the measurements behind them, are in :func:`choose`; they compare counts of
multiply-adds that each algorithm really performs (padding included), so they hold for any
vector width the kernels are built with, not for one machine's timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .._kernels import conv as _direct
from .._kernels import conv_gemm as _gemm

PRIMITIVES = ("forward", "input_grad", "weight_grad")
_FORWARD_DIRECT = tuple(_direct.FORWARD)
ALGORITHMS = {
    "forward": ("gemm", *_FORWARD_DIRECT),
    "input_grad": ("gemm", *_direct.BACKWARD_DATA, *(f"flipped:{a}" for a in _FORWARD_DIRECT)),
    "weight_grad": ("gemm", *_direct.BACKWARD_WEIGHT),
}
_BLOCKING = _direct.blocking()

# A GEMM through BLAS with its im2col copy runs at about 1/GEMM_COST_FACTOR of the rate the
# phase micro-kernels reach on the multiply-adds they do (measured on ResNet-18's 3×3 convs at
# batch 32, 1 thread, AMD EPYC Zen 5: the two break even where the phase planes waste a third
# of their positions); so the phase kernels run only where they waste less than that.
GEMM_COST_FACTOR = 1.5
# im2col copies each input pixel kh·kw / (sh·sw) times; below three copies the copy is cheap
# and BLAS's GEMM beats the phase kernels (ResNet 3×3 s2: 29 vs 38 ms; U-Net k2 s2: 16 vs 20 ms)
PHASES_MIN_COPIES = 3
# depthwise convs with fewer outputs per input channel cannot fill the MR-row blocks of the
# phase kernels (LeNet's first conv, 1 → 6, fills them)
PHASES_MIN_DEPTHWISE_OUTPUTS = 4
# the weight gradient holds output channels in the vector lanes from this many channels a
# group; fewer leave most lanes empty (LeNet's conv1, 6 channels: 0.46 vs 0.83 ms; grouped
# g32, 8 a group: 5.3 vs 6.3 ms)
LANES_MIN_CHANNELS = 16
# the scatter input gradient's stores and adds cost about this many more reduction steps per
# output channel than the flipped forward's gathers (VGG 17.2 vs 19.4 ms, grouped g32 3.2 vs
# 6.6 ms, LeNet conv2 0.96 vs 0.71 ms)
SCATTER_EXTRA_STEPS = 6


# floats of an im2col tile a thread fills before its GEMM reads it: half the level-2 cache, so
# the tile and the GEMM's packed panels stay there (1 MB tiles measured as fast as untiled
# ones on a 2 MB-L2 Xeon, and faster than 256 KB: narrow GEMMs)
TILE_CACHE_SHARE = 0.5
# on a build whose vector registers cannot hold the phase micro-kernels' accumulators (AVX2:
# 16 × 8 floats, against ``_block``'s 8 × 48) the accumulators spill to the stack: measured on
# an AMD EPYC Zen 3 (AVX2), 1 thread, the phase forward ran 1.3–2.0× slower than GEMM on full
# convs (VGG 3×3 at 56×56: 122 vs 60 ms; dilated: 117 vs 89; ResNet 3×3 s2: 50 vs 25), while
# one vector of output channels stays faster direct (LeNet's conv2 on ``pixels``: 1.2 vs
# 7.2 ms; grouped g32, 8 channels a group, on the single-channel loops: 6.4 vs 28 ms)
_SPARE_REGISTERS = 4


@dataclass(frozen=True)
class Machine:
    """What the plan reads of the machine: the vector registers of the target the kernels were
    compiled for, and the level-2 cache of the CPU it runs on."""

    vector_bytes: int
    vector_registers: int
    l2_bytes: int

    @property
    def tile_floats(self) -> int:
        return max(4096, int(self.l2_bytes * TILE_CACHE_SHARE) // 4)

    def holds(self, floats: int) -> bool:
        """Whether ``floats`` float32 accumulators fit the vector registers, leaving a few for
        the operands."""
        return floats * 4 <= (self.vector_registers - _SPARE_REGISTERS) * self.vector_bytes


def _cache_bytes(level: int, default: int) -> int:
    """The size of the CPU's level-``level`` data or unified cache (sysfs), or ``default``."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) != level or \
                    (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    return default


@lru_cache(maxsize=1)
def machine() -> Machine:
    return Machine(_BLOCKING["vector_bytes"], _BLOCKING["vector_registers"],
                   _cache_bytes(2, 1 << 20))


@dataclass(frozen=True)
class ConvView:
    """The plain convolution a call runs: input (N, C, H, W) → output (N, O, OH, OW)."""

    input_shape: tuple[int, int, int, int]
    output_shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad_top_left: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def kernel_args(self) -> tuple[int, ...]:
        return (*self.stride, *self.pad_top_left, *self.dilation, self.groups)

    def with_batch(self, batch: int) -> ConvView:
        return ConvView((batch, *self.input_shape[1:]), (batch, *self.output_shape[1:]),
                        self.kernel, self.stride, self.pad_top_left, self.dilation, self.groups)

    def flipped(self) -> ConvView | None:
        """The conv whose forward on gy is this view's input gradient (stride 1, the kernel
        flipped, in and out channels swapped), or None where there is none."""
        (kh, kw), (dh, dw), (pt, pl) = self.kernel, self.dilation, self.pad_top_left
        pads = (dh * (kh - 1) - pt, dw * (kw - 1) - pl)
        if self.stride != (1, 1) or min(pads) < 0:
            return None
        return ConvView(self.output_shape, self.input_shape, self.kernel, (1, 1), pads,
                        self.dilation, self.groups)

    # sizes the rules compare
    @property
    def in_per_group(self) -> int:
        return self.input_shape[1] // self.groups

    @property
    def out_per_group(self) -> int:
        return self.output_shape[1] // self.groups

    @property
    def pixels(self) -> int:
        return self.output_shape[2] * self.output_shape[3]

    @property
    def live_taps(self) -> int:
        return len(live_taps(self))

    def flat_positions(self) -> int:
        """Positions a phase kernel computes per channel: the flat output rows of width Wq,
        rounded up to whole blocks of NB."""
        _, _, OH, OW = self.output_shape
        kw, dw, sw = self.kernel[1], self.dilation[1], self.stride[1]
        Wq = OW + (kw - 1) * dw // sw
        length = (OH - 1) * Wq + OW
        nb = _BLOCKING["NB"]
        return -(-length // nb) * nb


def live_taps(view: ConvView) -> list[int]:
    """The taps i·kw + j that read the input for some output pixel (the others read only
    padding, and ``gemm`` skips them)."""
    (kh, kw), (sh, sw), (pt, pl), (dh, dw) = (view.kernel, view.stride, view.pad_top_left,
                                              view.dilation)
    _, _, H, W = view.input_shape
    _, _, OH, OW = view.output_shape
    return _gemm.live_taps(kh, kw, sh, sw, pt, pl, dh, dw, H, W, OH, OW)


@dataclass(frozen=True)
class Choice:
    algorithm: str
    why: str


@dataclass(frozen=True)
class ConvAlgorithms:
    """The algorithm of each primitive of one conv view at one batch size."""

    forward: Choice
    input_grad: Choice
    weight_grad: Choice

    def __getitem__(self, primitive: str) -> Choice:
        return getattr(self, primitive)

    def __iter__(self):
        return iter((self.forward, self.input_grad, self.weight_grad))


def eligible(view: ConvView, primitive: str) -> list[str]:
    """Every algorithm that computes ``primitive`` correctly for ``view``."""
    depthwise = view.in_per_group == 1
    if primitive == "forward":
        _, _, OH, OW = view.output_shape
        out = ["gemm", "phases", "depthwise"]
        if (view.out_per_group <= _BLOCKING["VL"] and OH >= _BLOCKING["PR"]
                and OW >= _BLOCKING["PW"]):
            out.append("pixels")
        return out
    if primitive == "input_grad":
        out = ["gemm", "scatter"] + (["depthwise-scatter"] if depthwise else [])
        flipped = view.flipped()
        if flipped is not None:
            out += [f"flipped:{a}" for a in eligible(flipped, "forward") if a != "gemm"]
        return out
    if primitive == "weight_grad":
        return ["gemm", "reduce", "lanes"] + (["depthwise"] if depthwise else [])
    raise ValueError(f"unknown primitive {primitive!r}; one of {PRIMITIVES}")


def _phases_or_gemm(view: ConvView) -> Choice:
    """The family a view runs in: the phase kernels ('phases'), GEMM ('gemm') or the depthwise
    loops ('depthwise')."""
    (kh, kw), (sh, sw) = view.kernel, view.stride
    Cg, Og = view.in_per_group, view.out_per_group
    if kh == kw == 1 and (sh, sw) == (1, 1):
        return Choice("gemm", "a 1×1 conv is a GEMM over the batch (the phase kernels measured "
                              "slower in all three passes)")
    depthwise = Choice("depthwise", f"one input channel a group ({Og} output(s) each): the "
                                    f"depthwise loops")
    if Cg == 1 and Og < PHASES_MIN_DEPTHWISE_OUTPUTS:
        return depthwise
    copies = kh * kw / (sh * sw)
    if copies < PHASES_MIN_COPIES:
        return depthwise if Cg == 1 else Choice(
            "gemm", f"im2col copies each pixel {copies:g} times (< {PHASES_MIN_COPIES}): cheap, "
                    f"and BLAS's GEMM is faster")
    mr = _BLOCKING["MR"]
    phase_work = kh * kw * view.flat_positions() * (-(-Og // mr) * mr)
    gemm_work = view.live_taps * view.pixels * Og
    if not gemm_work:
        return Choice("gemm", "every tap reads only padding: the output is the bias")
    ratio = phase_work / gemm_work
    if ratio > GEMM_COST_FACTOR:
        return depthwise if Cg == 1 else Choice(
            "gemm", f"the phase planes would do {ratio:.2f}× the multiply-adds of a GEMM on "
                    f"the {view.live_taps} live tap(s) (> {GEMM_COST_FACTOR}): a small map")
    return Choice("phases", f"the phase planes do {ratio:.2f}× a GEMM's multiply-adds "
                            f"(≤ {GEMM_COST_FACTOR}) and save im2col's {copies:g} copies")


def _direct_forward(view: ConvView, family: Choice) -> Choice:
    """Within the phase family: ``pixels`` where its loads take fewer cycles than ``_block``'s
    multiply-adds (LeNet's conv2: 0.31 → 0.25 ms; 16 channels on 32 × 32, where the flat layout
    wastes little, measured 2.6 → 3.2 ms and stay on ``_block``)."""
    b = _BLOCKING
    _, _, OH, OW = view.output_shape
    Og = view.out_per_group
    pix = b["PR"] * b["PW"]
    if "pixels" in eligible(view, "forward") and b["VL"] // 2 < Og:
        loads = -(-OH // b["PR"]) * -(-OW // b["PW"]) * (pix + 1)
        fmas = view.flat_positions() // b["NB"] * -(-Og // b["MR"]) * b["MR"] * b["NV"]
        if loads < fmas:
            return Choice("pixels", f"{Og} channels fill one vector and the pixel blocks' "
                                    f"loads ({loads}) undercut the flat blocks' FMAs ({fmas})")
    return family


def choose(view: ConvView, on: Machine | None = None) -> ConvAlgorithms:
    """The algorithm of each primitive for ``view`` (its batch included) on machine ``on``
    (this one by default)."""
    on = on or machine()
    family = _phases_or_gemm(view)
    forward = family
    if family.algorithm == "phases":
        forward = _direct_forward(view, family)
        b = _BLOCKING
        if forward.algorithm == "phases" and not on.holds(b["MR"] * b["NB"]):
            if view.out_per_group <= b["MR"]:
                forward = Choice("depthwise", f"the phase blocks' {b['MR'] * b['NB']} "
                                              f"accumulators spill on this build's vector "
                                              f"registers; {view.out_per_group} channels a "
                                              f"group run one at a time, unspilled")
            else:
                family = forward = Choice(
                    "gemm", f"the phase blocks' {b['MR'] * b['NB']} accumulators spill on this "
                            f"build's {on.vector_registers} × {on.vector_bytes}-byte vector "
                            f"registers: GEMM")
    weight = family
    if family.algorithm == "phases":
        weight = (Choice("lanes", f"{view.out_per_group} ≥ {LANES_MIN_CHANNELS} output "
                                  f"channels a group fill the lanes")
                  if view.out_per_group >= LANES_MIN_CHANNELS else
                  Choice("reduce", f"{view.out_per_group} < {LANES_MIN_CHANNELS} output "
                                   f"channels a group: taps across the lanes"))
    return ConvAlgorithms(forward, _input_grad(view, family), weight)


def _input_grad(view: ConvView, family: Choice) -> Choice:
    if family.algorithm == "gemm":
        return family
    flipped = view.flipped()
    if flipped is not None:
        if family.algorithm == "depthwise":
            return Choice("flipped:depthwise", "stride 1: the depthwise forward of gy with the "
                                               "kernel flipped gathers instead of scattering")
        mr = _BLOCKING["MR"]
        (kh, kw), Cg, Og = view.kernel, view.in_per_group, view.out_per_group
        gather = -(-Cg // mr) * mr * flipped.flat_positions() * Og * kh * kw
        scatter = -(-Cg * kh * kw // mr) * mr * view.flat_positions() * (Og + SCATTER_EXTRA_STEPS)
        if gather < scatter:
            inner = _direct_forward(flipped, Choice("phases", ""))
            return Choice(f"flipped:{inner.algorithm}",
                          f"stride 1: the flipped forward's block FMAs ({gather}) undercut the "
                          f"scatter's ({scatter})")
    if family.algorithm == "depthwise":
        return Choice("depthwise-scatter", "a strided depthwise conv: gy scattered row by row")
    return Choice("scatter", "taps scattered back onto the phase planes"
                  + ("" if flipped is None else " (fewer block FMAs than the flipped forward)"))


@lru_cache(maxsize=4096)
def plan(view: ConvView) -> ConvAlgorithms:
    """:func:`choose` on this machine, cached per view (shapes and batch)."""
    return choose(view)
