"""Convolution loops: the three primitives that conv2d and conv_transpose2d share.

Everything is stated for a plain convolution ("conv view") with input ``x`` of shape
N × C × H × W, weight ``w`` of shape O × C/g × kh × kw and output ``y`` of shape N × O × OH × OW:

* ``conv_forward``:          y[n, o] = Σ_{c∈g(o), i, j} w[o, c, i, j] · x[n, c, oh·s + i·d − p, …]
* ``conv_backward_data``:    gx = the adjoint of ``conv_forward`` in x, applied to gy
* ``conv_backward_weight``:  gw[o, c, i, j] = Σ_{n, oh, ow} gy[n, o, oh, ow] · x[n, c, …]
* ``channel_sums``:          gb[o] = Σ_{n, oh, ow} gy[n, o, oh, ow]

A transposed convolution is the conv view with forward and backward-data swapped (Caffe's base
convolution), so ``declcnn/ops/conv.py`` calls the same loops for both ops.  Padding is given by
its top and left sides only: the bottom and right sides are implied by OH and OW, and every tap
that lands outside the input reads (or writes) nothing.

Most convs run direct loops on a *flat, polyphase* copy of the input of one sample × group
(``Phases``): the padded input is split into its sh·sw stride phases, so that every tap (c, i,
j) reads one phase plane at a fixed offset, and a plane is read flat, row after row, so that
output pixel (oh, ow) sits at q = oh·Wq + ow and tap k reads position ``off[k] + q``.  Forward
and weight gradient are then sums of products of rows that are contiguous in q, which
register-blocked micro-kernels (``_block``, ``_reduce_block``: fixed-size loops that GCC turns
into zmm FMAs on accumulators held in registers) run at close to the FMA units' rate with no
im2col matrix; the Wq − OW columns between output rows are computed and dropped.  The input
gradient is either the forward loops on gy with the kernel flipped (stride 1, when that does
fewer FMAs), or ``_scatter_block`` on gy (spread to the flat layout) for a block of taps, each
tap's row added back at its offset, and the phases merged back into the image.  With 16 or
more output channels a group, the weight gradient instead holds output channels in the vector
lanes (``_lanes_backward_weight``): gy is laid out channels-last, and each tap's value at an
output pixel is broadcast from the phase planes, so no lanes sum at the end and no position is
wasted.  Likewise a forward with one vector of output channels a group, on small planes where
the flat layout's dropped columns cost most (LeNet's conv2), holds the channels in the lanes
and blocks of output pixels in the registers (``_pixels_forward``).
When every output channel reads one input channel (C/g = 1: depthwise) the same flat phase
planes feed single-channel micro-kernels (``_depthwise_block``, ``_depthwise_reduce``), one
plane at a time; their input gradient is, for stride 1, their forward on gy with the kernel
flipped, otherwise scattered row by row over the taps.

These loops run on the phase planes; GEMM over the whole batch is ``conv_gemm.pyx``.  Which
algorithm runs for a pass is not decided here: every entry point takes the ``algorithm`` the
plan chose (``declcnn/ops/conv_plan.py``), which also holds the rules and the measurements
behind them.

The ops validate, size and allocate the outputs; these loops trust them.
"""

import numpy as np

from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from cython cimport floating

cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define DECLCNN_VECTOR_BYTES 64
    #define DECLCNN_VECTOR_REGISTERS 32
    #elif defined(__AVX__)
    #define DECLCNN_VECTOR_BYTES 32
    #define DECLCNN_VECTOR_REGISTERS 16
    #else
    #define DECLCNN_VECTOR_BYTES 16
    #define DECLCNN_VECTOR_REGISTERS 16
    #endif
    """
    int DECLCNN_VECTOR_BYTES
    int DECLCNN_VECTOR_REGISTERS


cdef struct Geometry:
    Py_ssize_t N, C, H, W          # conv-view input
    Py_ssize_t O, OH, OW           # conv-view output
    Py_ssize_t kh, kw, sh, sw, pt, pl, dh, dw
    Py_ssize_t groups, Cg, Og      # Cg = C / groups, Og = O / groups
    Py_ssize_t K, P                # taps a group Cg·kh·kw and output pixels OH·OW


cdef enum:
    # ``_block``: MR rows × NB = NV·VL flat positions, 24 zmm accumulators for float32 (MR = 8
    # rows suits the 6 and 16 output channels of LeNet as well as 64; NV = 3 vectors wastes
    # little past the end of a small image's L positions: 136 → 144 for LeNet's conv2)
    MR = 8
    NV = 3
    VL = 16
    NB = NV * VL
    # ``_depthwise_reduce``: taps per pass over a plane, one accumulator of VL positions each
    TB = 9
    # ``_reduce_block``: MO output channels × MK taps, 24 accumulators of VL positions each; its
    # body is written out for these sizes
    MO = 4
    MK = 6
    # floats of phase planes and spread gy per wave of samples in the weight gradient (32 MB)
    WAVE_FLOATS = 8388608
    # floats of gy rows per tile of output blocks in the weight gradient (256 KB: 1 MB measured
    # 5% slower on VGG, 10% on LeNet's conv2)
    REDUCE_TILE_FLOATS = 65536
    # vector steps of ``_reduce_block`` between adding its accumulators into double sums
    REDUCE_RUN = 512
    # a level-1 data cache, the smallest of current x86 cores (48 KB on the Xeon measured)
    L1_BYTES = 32768
    # ``_lanes_block``: the largest accumulator block (12 taps × 16 or 32 channels, 6 × 64), and
    # the most taps per block
    LANES_ACC = 384
    LANES_TAPS = 12
    # ``_pixels_block``: PR rows × PW columns of output pixels, PIX accumulators of VL channels
    # (its body is written for two rows)
    PR = 2
    PW = 5
    PIX = PR * PW
    # blocks a thread below which ``_lanes_backward_weight`` splits samples, not blocks
    LANES_SPLIT_BLOCKS = 8
    # floats of channels-last gy per chunk of ``_lanes_backward_weight`` (32 KB: 64 and 128 KB
    # measured no faster on VGG), and of phase planes and gy per wave of samples (4 MB: with
    # the 32 MB of WAVE_FLOATS, faulting in the fresh pages took 6% of VGG's weight gradient)
    LANES_CHUNK_FLOATS = 8192
    LANES_WAVE_FLOATS = 1048576


cdef Geometry _geometry(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                        int sh, int sw, int pt, int pl, int dh, int dw, int groups):
    cdef Geometry g
    g.N, g.C, g.H, g.W, g.O, g.OH, g.OW = N, C, H, W, O, OH, OW
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = kh, kw, sh, sw, pt, pl, dh, dw
    g.groups = groups
    g.Cg = C // groups
    g.Og = O // groups
    g.K = g.Cg * kh * kw
    g.P = OH * OW
    return g


cdef inline int _threads_for(int requested, Py_ssize_t items) noexcept:
    """No more threads than work items, so no scratch is allocated for idle threads."""
    return <int> max(1, min(<Py_ssize_t> requested, items))


cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                              Py_ssize_t out, Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """Outputs ``o`` in [lo, hi) whose tap ``o·stride + offset`` lies inside [0, size)."""
    lo[0] = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi[0] = 0 if size - 1 - offset < 0 else (size - 1 - offset) // stride + 1
    if hi[0] > out:
        hi[0] = out
    if lo[0] > out:
        lo[0] = out
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void _copy_row(const floating *src, floating *dst, Py_ssize_t lo, Py_ssize_t hi,
                           Py_ssize_t length, Py_ssize_t stride) noexcept nogil:
    """dst[s] = src[s·stride] for lo ≤ s < hi, 0 for the rest of dst[0:length]."""
    cdef Py_ssize_t s
    memset(dst, 0, lo * sizeof(floating))
    if stride == 1:  # rows are short: a loop the compiler vectorises beats memcpy
        for s in range(lo, hi):
            dst[s] = src[s]
    else:
        for s in range(lo, hi):
            dst[s] = src[s * stride]
    memset(dst + hi, 0, (length - hi) * sizeof(floating))


cdef inline void _fill_rows(floating *rows, const floating *values, Py_ssize_t count,
                            Py_ssize_t length, Py_ssize_t ld, bint has_values) noexcept nogil:
    """Set ``count`` rows of ``length``, ``ld`` apart, to values[row] (or to 0)."""
    cdef Py_ssize_t c, p
    cdef floating v
    for c in range(count):
        if not has_values:
            memset(rows + c * ld, 0, length * sizeof(floating))
            continue
        v = values[c]
        for p in range(length):
            rows[c * ld + p] = v


cdef inline double _plane_sum(const floating *a, Py_ssize_t size) noexcept nogil:
    """Σ a[0:size] in double, in eight independent chains (one vector of doubles: GCC turns
    the unrolled adds into one vector add per eight values)."""
    cdef double s[8]
    cdef Py_ssize_t p, k, whole = size - size % 8
    for k in range(8):
        s[k] = 0
    for p in range(0, whole, 8):
        s[0] += a[p]
        s[1] += a[p + 1]
        s[2] += a[p + 2]
        s[3] += a[p + 3]
        s[4] += a[p + 4]
        s[5] += a[p + 5]
        s[6] += a[p + 6]
        s[7] += a[p + 7]
    for p in range(whole, size):
        s[0] += a[p]
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


cdef void _depthwise_data_plane(const floating *gy, const floating *w, floating *gx,
                                const Geometry *g) noexcept nogil:
    """gx += the adjoint in x of one depthwise output plane (stride > 1): scatters gy back
    through the taps, row by row."""
    cdef Py_ssize_t i, j, oh, ow, hlo, hhi, wlo, whi
    cdef floating wv
    cdef const floating *src
    cdef floating *dst
    for i in range(g.kh):
        _valid_range(i * g.dh - g.pt, g.sh, g.H, g.OH, &hlo, &hhi)
        for j in range(g.kw):
            _valid_range(j * g.dw - g.pl, g.sw, g.W, g.OW, &wlo, &whi)
            wv = w[i * g.kw + j]
            for oh in range(hlo, hhi):
                dst = gx + (oh * g.sh + i * g.dh - g.pt) * g.W + j * g.dw - g.pl
                src = gy + oh * g.OW
                if g.sw == 1:
                    for ow in range(wlo, whi):
                        dst[ow] += wv * src[ow]
                else:
                    for ow in range(wlo, whi):
                        dst[ow * g.sw] += wv * src[ow]


cdef void _spread(const floating *y, floating *ext, Py_ssize_t OH, Py_ssize_t OW,
                  Py_ssize_t row, Py_ssize_t length) noexcept nogil:
    """ext[oh·row + ow] = y[oh, ow] for an OH × OW plane, 0 between its rows and on up to
    ``length``: an output plane in a flat layout (``Flat``, ``Phases``)."""
    cdef Py_ssize_t oh, ow
    memset(ext, 0, length * sizeof(floating))
    for oh in range(OH):
        for ow in range(OW):
            ext[oh * row + ow] = y[oh * OW + ow]


cdef struct Phases:
    # the flat, polyphase layout of one sample × group of a conv-view input: plane (c, a, b),
    # Hq × Wq, holds the padded input's pixels (r·sh + a, s·sw + b); tap (c, i, j) reads plane
    # (c, i·dh % sh, j·dw % sw) from row i·dh // sh, column j·dw // sw on
    Py_ssize_t Hq, Wq, plane
    Py_ssize_t L, Lpad          # flat outputs q = oh·Wq + ow < L; Lpad rounds L up to blocks
    Py_ssize_t size             # the planes plus the Lpad − L positions the last block reads


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


cdef Phases _phases(const Geometry *g) noexcept nogil:
    cdef Phases p
    p.Hq = g.OH + (g.kh - 1) * g.dh // g.sh
    p.Wq = g.OW + (g.kw - 1) * g.dw // g.sw
    p.plane = p.Hq * p.Wq
    p.L = (g.OH - 1) * p.Wq + g.OW
    p.Lpad = _round_up(p.L, NB)
    p.size = g.Cg * g.sh * g.sw * p.plane + p.Lpad - p.L
    return p


cdef inline bint _input_is_phases(const Geometry *g, const Phases *p) noexcept nogil:
    """Whether one sample × group of the input is its own phase layout (stride 1, no padding:
    LeNet's conv2), so the phase kernels can read it as it is; they read up to Lpad − L floats
    past its planes, so the last sample × group of a batch still needs its copy."""
    return g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0 and p.Hq == g.H and p.Wq == g.W


cdef void _tap_offsets(const Geometry *g, const Phases *p, Py_ssize_t *off,
                       Py_ssize_t count, bint interleaved) noexcept nogil:
    """off[k] for k = (c·kh + i)·kw + j: where tap k's row starts in the phase planes; 0 for the
    padding rows of blocks (their weights or products are 0 or dropped).  ``interleaved``: in
    slot k % B · MR + k // B instead of k, B = count / MR blocks, so that block b holds taps b,
    b + B, b + 2·B, … (see ``_phased_backward_data``)."""
    cdef Py_ssize_t c, i, j, k, row, blocks = count // MR
    for k in range(count):
        off[k] = 0
    k = 0
    # the divisions hoisted out of the loops: at batch 1 they took 7% of LeNet conv2's forward
    for c in range(g.Cg):
        for i in range(g.kh):
            row = (c * g.sh + i * g.dh % g.sh) * g.sw * p.plane + i * g.dh // g.sh * p.Wq
            for j in range(g.kw):
                off[k % blocks * MR + k // blocks if interleaved else k] = (
                    row + j * g.dw % g.sw * p.plane + j * g.dw // g.sw)
                k += 1


cdef void _split_phases(const floating *x, floating *xph, const Geometry *g,
                        const Phases *p) noexcept nogil:
    """xph[((c·sh + a)·sw + b)·plane + r·Wq + s] = x[c, r·sh + a − pt, s·sw + b − pl], 0 outside
    the input and in the slack after the planes."""
    cdef Py_ssize_t c, a, b, r, ih, lo, hi
    cdef floating *row
    for c in range(g.Cg):
        for a in range(g.sh):
            for b in range(g.sw):
                _valid_range(b - g.pl, g.sw, g.W, p.Wq, &lo, &hi)
                for r in range(p.Hq):
                    row = xph + ((c * g.sh + a) * g.sw + b) * p.plane + r * p.Wq
                    ih = r * g.sh + a - g.pt
                    if ih < 0 or ih >= g.H:
                        memset(row, 0, p.Wq * sizeof(floating))
                        continue
                    _copy_row(x + (c * g.H + ih) * g.W + b - g.pl, row, lo, hi, p.Wq, g.sw)
    memset(xph + g.Cg * g.sh * g.sw * p.plane, 0, (p.Lpad - p.L) * sizeof(floating))


cdef void _merge_phases(const floating *xph, floating *x, const Geometry *g,
                        const Phases *p) noexcept nogil:
    """The adjoint of ``_split_phases``: x[c, ih, iw] += the plane entry that holds that pixel."""
    cdef Py_ssize_t c, a, b, r, s, ih, lo, hi
    cdef const floating *row
    cdef floating *dst
    for c in range(g.Cg):
        for a in range(g.sh):
            for b in range(g.sw):
                _valid_range(b - g.pl, g.sw, g.W, p.Wq, &lo, &hi)
                for r in range(p.Hq):
                    ih = r * g.sh + a - g.pt
                    if ih < 0 or ih >= g.H:
                        continue
                    row = xph + ((c * g.sh + a) * g.sw + b) * p.plane + r * p.Wq
                    dst = x + (c * g.H + ih) * g.W + b - g.pl
                    if g.sw == 1:
                        for s in range(lo, hi):
                            dst[s] += row[s]
                    else:
                        for s in range(lo, hi):
                            dst[s * g.sw] += row[s]


cdef void _store_block(const floating *tile, Py_ssize_t rows, Py_ssize_t q0, floating *y,
                       const floating *bias, const Geometry *g, const Phases *p) noexcept nogil:
    """y[m, oh, ow] = tile[m, q − q0] (+ bias[m]) for m < rows and the flat positions
    q0 ≤ q = oh·Wq + ow < q0 + NB that are outputs (ow < OW, q < L)."""
    cdef Py_ssize_t m, q, oh, s0, s1, q1 = min(q0 + NB, p.L)
    cdef floating b
    cdef floating *dst
    oh = q0 // p.Wq
    while oh * p.Wq < q1:
        s0 = max(q0, oh * p.Wq)
        s1 = min(q1, oh * p.Wq + g.OW)
        for m in range(rows if s1 > s0 else 0):
            b = bias[m] if bias != NULL else 0
            dst = y + m * g.P + oh * (g.OW - p.Wq)
            for q in range(s0, s1):
                dst[q] = tile[m * NB + q - q0] + b
        oh += 1


cdef void _block(const floating *x, const Py_ssize_t *off, Py_ssize_t K, const floating *wp,
                 floating *out) noexcept nogil:
    """out[m·NB + e] = Σ_k wp[k·MR + m] · x[off[k] + e] for m < MR, e < NB (K ≥ 1).

    The micro-kernel of the forward.  Fixed trip counts let GCC keep the MR × NB block in zmm
    registers (24 for float32) and unroll the m loop into broadcast FMAs: per k, NV loads of
    x, MR broadcasts of w, MR·NV FMAs.  The k loop is written to run at least once, so the
    block is stored straight from the registers (see ``_scatter_block``).
    """
    cdef floating acc[MR * NB]
    cdef Py_ssize_t k = 0, m, e
    cdef const floating *src
    cdef floating wv
    for e in range(MR * NB):
        acc[e] = 0
    while True:
        src = x + off[k]
        for m in range(MR):
            wv = wp[k * MR + m]
            for e in range(NB):
                acc[m * NB + e] += wv * src[e]
        k += 1
        if k == K:
            break
    for m in range(MR):
        for e in range(VL):
            out[m * NB + e] = acc[m * NB + e]
            out[m * NB + VL + e] = acc[m * NB + VL + e]
            out[m * NB + 2 * VL + e] = acc[m * NB + 2 * VL + e]


cdef void _scatter_block(const floating *gy, const Py_ssize_t *rows, Py_ssize_t count,
                         const floating *wp, floating *out, const Py_ssize_t *off) noexcept nogil:
    """out[off[m] + e] += Σ_{o < count} wp[o·MR + m] · gy[rows[o] + e] for m < MR, e < NB
    (count ≥ 1).

    The micro-kernel of the input gradient: ``_block`` with the roles turned, reducing over
    the output channels and adding each tap's row at its offset.  The reduction is short (16
    steps for LeNet conv2), so the adds matter: GCC adds straight from the registers only when
    the loop is known to run at least once (written as ``while True`` … ``break``); as a
    ``for`` loop it stored the 24 accumulators to the stack, called memset to zero them and
    read them back (LeNet conv2's input gradient, 1 thread: 0.45 → 0.40 ms).  The rows come
    by offset, as in ``_block``: as gy + o·ld, GCC reloaded the float64 rows (which do not fit
    the registers) for every tap instead of once per step.
    """
    cdef floating acc[MR * NB]
    cdef Py_ssize_t o = 0, m, e
    cdef const floating *src
    cdef floating *dst
    cdef floating wv
    for e in range(MR * NB):
        acc[e] = 0
    while True:
        src = gy + rows[o]
        for m in range(MR):
            wv = wp[o * MR + m]
            for e in range(NB):
                acc[m * NB + e] += wv * src[e]
        o += 1
        if o == count:
            break
    for m in range(MR):
        dst = out + off[m]
        for e in range(NB):
            dst[e] += acc[m * NB + e]


cdef inline void _flush(const floating *acc, double *gw, Py_ssize_t ldw) noexcept nogil:
    """gw[a, b] += the VL lanes of accumulator (a, b), summed pairwise."""
    cdef floating half[8]  # VL / 2
    cdef Py_ssize_t a, b, e
    for a in range(MO):
        for b in range(MK):
            for e in range(8):
                half[e] = acc[(a * MK + b) * VL + e] + acc[(a * MK + b) * VL + 8 + e]
            for e in range(4):
                half[e] = half[e] + half[4 + e]
            gw[a * ldw + b] += (half[0] + half[2]) + (half[1] + half[3])


cdef void _reduce_block(const floating *gy, Py_ssize_t ldg, const floating *x,
                        const Py_ssize_t *off, Py_ssize_t count, Py_ssize_t samples,
                        Py_ssize_t stride, Py_ssize_t x_stride, double *gw,
                        Py_ssize_t ldw) noexcept nogil:
    """gw[a, b] += Σ_{s < samples} Σ_{q < count} gy[s·stride + a·ldg + q] · x[s·x_stride + off[b]
    + q] for a < MO, b < MK (count a multiple of VL).

    The weight-gradient micro-kernel: 24 accumulators of VL positions, held in registers across
    samples and added into gw (double) every ``REDUCE_RUN`` steps, so no float32 lane sums more
    than REDUCE_RUN products (a 256×256 image summed in one run missed PyTorch by 4e-2) while
    a small image's few steps per sample still share one lane sum.  The body is written out,
    one line per accumulator, because GCC keeps the accumulators in registers only when it sees
    them that way (as loops over a and b it left them in memory: three times slower).
    """
    cdef floating acc[MO * MK * VL]
    cdef const floating *g[MO]
    cdef const floating *xs[MK]
    cdef Py_ssize_t vectors = count // VL, n = 0, v = 0, v1, vv, pending, q, a, b, e
    # one flush site, after each run of REDUCE_RUN steps (or the last, shorter one), keeps GCC's
    # accumulators in registers (a flush inside the step loop sent them to memory); within a
    # sample the step loop only moves one index, the ten row pointers set once per segment
    while n < samples:
        for e in range(MO * MK * VL):
            acc[e] = 0
        pending = 0
        while pending < REDUCE_RUN and n < samples:
            v1 = min(vectors, v + REDUCE_RUN - pending)
            for a in range(MO):
                g[a] = gy + n * stride + a * ldg
            for b in range(MK):
                xs[b] = x + n * x_stride + off[b]
            for vv in range(v, v1):
                q = vv * VL
                for e in range(VL):
                    acc[0 * VL + e] += g[0][q + e] * xs[0][q + e]
                    acc[1 * VL + e] += g[0][q + e] * xs[1][q + e]
                    acc[2 * VL + e] += g[0][q + e] * xs[2][q + e]
                    acc[3 * VL + e] += g[0][q + e] * xs[3][q + e]
                    acc[4 * VL + e] += g[0][q + e] * xs[4][q + e]
                    acc[5 * VL + e] += g[0][q + e] * xs[5][q + e]
                    acc[6 * VL + e] += g[1][q + e] * xs[0][q + e]
                    acc[7 * VL + e] += g[1][q + e] * xs[1][q + e]
                    acc[8 * VL + e] += g[1][q + e] * xs[2][q + e]
                    acc[9 * VL + e] += g[1][q + e] * xs[3][q + e]
                    acc[10 * VL + e] += g[1][q + e] * xs[4][q + e]
                    acc[11 * VL + e] += g[1][q + e] * xs[5][q + e]
                    acc[12 * VL + e] += g[2][q + e] * xs[0][q + e]
                    acc[13 * VL + e] += g[2][q + e] * xs[1][q + e]
                    acc[14 * VL + e] += g[2][q + e] * xs[2][q + e]
                    acc[15 * VL + e] += g[2][q + e] * xs[3][q + e]
                    acc[16 * VL + e] += g[2][q + e] * xs[4][q + e]
                    acc[17 * VL + e] += g[2][q + e] * xs[5][q + e]
                    acc[18 * VL + e] += g[3][q + e] * xs[0][q + e]
                    acc[19 * VL + e] += g[3][q + e] * xs[1][q + e]
                    acc[20 * VL + e] += g[3][q + e] * xs[2][q + e]
                    acc[21 * VL + e] += g[3][q + e] * xs[3][q + e]
                    acc[22 * VL + e] += g[3][q + e] * xs[4][q + e]
                    acc[23 * VL + e] += g[3][q + e] * xs[5][q + e]
            pending += v1 - v
            v = v1
            if v == vectors:
                v = 0
                n += 1
        _flush(acc, gw, ldw)


cdef void _pack_blocks(const floating *w, floating *packed, Py_ssize_t groups, Py_ssize_t Og,
                       Py_ssize_t K, bint by_channel, bint interleaved) noexcept nogil:
    """Lay out each group's Og × K weight for ``_block``: ``by_channel`` (the forward) as
    [block of MR channels][tap][channel in block], else (the input gradient) as [block b of MR
    taps][channel][tap in block: b·MR + m, or b + m·blocks when ``interleaved``, as
    ``_tap_offsets`` orders them]; zero for the channels (taps) that pad blocks."""
    cdef Py_ssize_t grp, blk, o, k, m, tap, blocks = _round_up(Og if by_channel else K, MR) // MR
    cdef Py_ssize_t inner = K if by_channel else Og
    cdef const floating *src
    cdef floating *dst
    for grp in range(groups):
        src = w + grp * Og * K
        for blk in range(blocks):
            dst = packed + (grp * blocks + blk) * inner * MR
            memset(dst, 0, inner * MR * sizeof(floating))
            for m in range(MR):
                if by_channel:
                    if blk * MR + m < Og:
                        for k in range(K):
                            dst[k * MR + m] = src[(blk * MR + m) * K + k]
                    continue
                tap = m * blocks + blk if interleaved else blk * MR + m
                if tap < K:
                    for o in range(Og):
                        dst[o * MR + m] = src[o * K + tap]


cdef struct Lanes:
    # the weight gradient's blocks of MT taps × OV output channels, and gy of one sample × group
    # laid out channels-last, P × Ogp (output channel fastest)
    Py_ssize_t OV, MT, Ogp, Kpad, gsize


cdef Lanes _lanes(const Geometry *g) noexcept nogil:
    cdef Lanes lanes
    lanes.OV = 64 if g.Og > 32 else 32 if g.Og > 16 else 16
    lanes.MT = 6 if lanes.OV == 64 else 12
    lanes.Ogp = _round_up(g.Og, lanes.OV)
    lanes.Kpad = _round_up(g.K, lanes.MT)
    lanes.gsize = g.P * lanes.Ogp
    return lanes


cdef void _transpose(const floating *src, Py_ssize_t lds, floating *dst, Py_ssize_t ldd,
                     Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols.

    By tiles of VL × VL through a buffer, so that GCC reads and writes a vector at a time
    (element by element, the strided reads stalled: 1.4 ns an element on VGG's gy).
    """
    cdef floating tile[VL * VL]
    cdef Py_ssize_t rb, cb, r0, c0, r, c, rt = rows - rows % VL, ct = cols - cols % VL
    for cb in range(ct // VL):
        c0 = cb * VL
        for rb in range(rt // VL):
            r0 = rb * VL
            for r in range(VL):
                for c in range(VL):
                    tile[r * VL + c] = src[(r0 + r) * lds + c0 + c]
            for c in range(VL):
                for r in range(VL):
                    dst[(c0 + c) * ldd + r0 + r] = tile[r * VL + c]
        for c in range(c0, c0 + VL):
            for r in range(rt, rows):
                dst[c * ldd + r] = src[r * lds + c]
    for c in range(ct, cols):
        for r in range(rows):
            dst[c * ldd + r] = src[r * lds + c]


cdef inline void _lanes_wide(const floating *x, const Py_ssize_t *off, const floating *gt,
                             Py_ssize_t samples, Py_ssize_t rows, Py_ssize_t cols,
                             Py_ssize_t xs_n, Py_ssize_t xs_r, Py_ssize_t gs_n, Py_ssize_t ogp,
                             double *sums, const Py_ssize_t mt,
                             const Py_ssize_t ov) noexcept nogil:
    """sums[t·ogp + e] += Σ_{n, r, c} x[n·xs_n + r·xs_r + off[t] + c] · gt[n·gs_n + (r·cols +
    c)·ogp + e] for t < mt, e < ov: a block of mt taps × ov output channels of the weight
    gradient, over samples × output rows × output columns.

    Called with constant mt and ov (``_lanes``): GCC holds the block in zmm registers, ov/16
    vectors per tap, and the mt offsets in general registers; per position ov/16 loads of gt,
    mt broadcasts of x and mt·ov/16 FMAs.
    """
    cdef floating acc[LANES_ACC]
    cdef Py_ssize_t o[LANES_TAPS]
    cdef Py_ssize_t n, r, c, t, e
    cdef const floating *xr
    cdef const floating *gr
    cdef floating xv
    for t in range(mt):
        o[t] = off[t]
    for e in range(mt * ov):
        acc[e] = 0
    for n in range(samples):
        for r in range(rows):
            xr = x + n * xs_n + r * xs_r
            gr = gt + n * gs_n + r * cols * ogp
            for c in range(cols):
                for t in range(mt):
                    xv = xr[o[t] + c]
                    for e in range(ov):
                        acc[t * ov + e] += xv * gr[c * ogp + e]
    for t in range(mt):
        for e in range(ov):
            sums[t * ogp + e] += acc[t * ov + e]


cdef inline void _lanes_narrow(const floating *x, const Py_ssize_t *off, const floating *gt,
                               Py_ssize_t samples, Py_ssize_t rows, Py_ssize_t cols,
                               Py_ssize_t xs_n, Py_ssize_t xs_r, Py_ssize_t gs_n, Py_ssize_t ogp,
                               double *sums, const Py_ssize_t mt,
                               const Py_ssize_t ov) noexcept nogil:
    """``_lanes_wide`` for one vector of output channels, its loops the other way round: in
    that order GCC unrolls the one-vector channel loop before it vectorises and turns the
    block into a mesh of permutes.  A function of its own: one body choosing either order on
    a constant made GCC spill this block to the stack (LeNet conv2's weight gradient 0.32 →
    0.64 ms)."""
    cdef floating acc[LANES_ACC]
    cdef Py_ssize_t o[LANES_TAPS]
    cdef Py_ssize_t n, r, c, t, e
    cdef const floating *xr
    cdef const floating *gr
    cdef floating gv
    for t in range(mt):
        o[t] = off[t]
    for e in range(mt * ov):
        acc[e] = 0
    for n in range(samples):
        for r in range(rows):
            xr = x + n * xs_n + r * xs_r
            gr = gt + n * gs_n + r * cols * ogp
            for c in range(cols):
                for e in range(ov):
                    gv = gr[c * ogp + e]
                    for t in range(mt):
                        acc[t * ov + e] += xr[o[t] + c] * gv
    for t in range(mt):
        for e in range(ov):
            sums[t * ogp + e] += acc[t * ov + e]


cdef void _lanes_block(const floating *x, const Py_ssize_t *off, const floating *gt,
                       Py_ssize_t samples, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t xs_n,
                       Py_ssize_t xs_r, Py_ssize_t gs_n, Py_ssize_t ogp, double *sums,
                       Py_ssize_t ov) noexcept nogil:
    """The block kernel for ov output channels, its shape a constant (``_lanes``)."""
    if ov == 64:
        _lanes_wide(x, off, gt, samples, rows, cols, xs_n, xs_r, gs_n, ogp, sums, 6, 64)
    elif ov == 32:
        _lanes_wide(x, off, gt, samples, rows, cols, xs_n, xs_r, gs_n, ogp, sums, 12, 32)
    else:
        _lanes_narrow(x, off, gt, samples, rows, cols, xs_n, xs_r, gs_n, ogp, sums, 12, 16)


cdef _lanes_backward_weight(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                            floating[:, :, :, ::1] gw, Geometry g, int num_threads):
    """gw[o, k] = Σ_{n, oh, ow} gy[n, o, oh, ow] · xph[n, off[k] + oh·Wq + ow]: the phase planes
    of x (``Phases``; x itself when it is its own) against gy laid out channels-last.

    gw is cut into blocks of MT taps × OV output channels (``_lanes``), split evenly over the
    threads, each thread owning its blocks.  Every thread walks the same chunks of samples ×
    output rows, about LANES_CHUNK_FLOATS of gy each, so that a chunk stays in cache while
    the thread's blocks pass over it, and adds each block's sum over a chunk into double sums.
    With fewer than LANES_SPLIT_BLOCKS blocks a thread (LeNet's conv2: 13 for 2 threads, 7
    against 6) and at least as many samples a wave, the threads split each wave's samples
    instead, every thread all blocks into sums of its own, added up in thread order at the
    end.  Either way the bits depend only on the thread count.
    """
    cdef Phases p = _phases(&g)
    cdef Lanes lanes = _lanes(&g)
    cdef object dtype = np.float32 if floating is float else np.float64
    # the block kernel reads no flat position past the last output, so x as it is suffices
    cdef bint as_is = _input_is_phases(&g, &p)
    cdef Py_ssize_t xsize = 0 if as_is else _round_up(p.size, VL)
    cdef Py_ssize_t item = xsize + lanes.gsize, per_sample = g.groups * item
    cdef Py_ssize_t wave = max(1, min(g.N, LANES_WAVE_FLOATS // per_sample))
    cdef floating[::1] scratch = np.empty(wave * per_sample + VL, dtype=dtype)
    cdef Py_ssize_t[::1] off = np.zeros(lanes.Kpad, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], lanes.Kpad, False)
    cdef Py_ssize_t tb = lanes.Kpad // lanes.MT, obs = lanes.Ogp // lanes.OV
    cdef Py_ssize_t blocks = g.groups * tb * obs
    cdef int block_threads = _threads_for(num_threads, blocks)
    cdef bint by_samples = (blocks < LANES_SPLIT_BLOCKS * block_threads
                            and wave >= LANES_SPLIT_BLOCKS * block_threads)
    if by_samples:
        block_threads = _threads_for(num_threads, wave)
    cdef Py_ssize_t size = g.groups * lanes.Kpad * lanes.Ogp
    cdef double[:, ::1] sums = np.zeros((block_threads if by_samples else 1, size))
    # a chunk: whole samples when one sample's gy fits, else rows of one sample
    cdef Py_ssize_t chunk_samples = max(1, LANES_CHUNK_FLOATS // lanes.gsize)
    cdef Py_ssize_t chunk_rows = g.OH if lanes.gsize <= LANES_CHUNK_FLOATS else max(
        1, LANES_CHUNK_FLOATS // (g.OW * lanes.Ogp))
    cdef int layout_threads = _threads_for(num_threads, wave * g.groups)
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *gwp = &gw[0, 0, 0, 0]
    # rows of the laid-out gy start on cache lines: their loads never split one
    cdef floating *sp = &scratch[0] + (-(<size_t> &scratch[0]) // sizeof(floating)) % VL
    cdef double *sums_p = &sums[0, 0]
    cdef double *part
    cdef Py_ssize_t x_stride = g.C * g.H * g.W if as_is else per_sample
    cdef Py_ssize_t first, n0, count, it, n, grp, th, b0, b1, blk, tbk, ob, cn, cr, r0, ns, nr
    cdef Py_ssize_t s0, s1, o, k, t
    cdef double total
    cdef const floating *xs
    cdef floating *base
    with nogil:
        for first in range((g.N + wave - 1) // wave):
            n0 = first * wave
            count = min(wave, g.N - n0)
            for it in prange(count * g.groups, schedule='static', num_threads=layout_threads):
                n = n0 + it // g.groups
                grp = it % g.groups
                base = sp + it * item
                if not as_is:
                    _split_phases(xp + (n * g.C + grp * g.Cg) * g.H * g.W, base, &g, &p)
                if lanes.Ogp > g.Og:
                    memset(base + xsize, 0, lanes.gsize * sizeof(floating))
                # channels-last: gt[q·Ogp + o] = gy[o, q]
                _transpose(gyp + (n * g.O + grp * g.Og) * g.P, g.P, base + xsize, lanes.Ogp,
                           g.Og, g.P)
            for th in prange(block_threads, schedule='static', num_threads=block_threads):
                if by_samples:
                    b0, b1 = 0, blocks
                    s0 = th * count // block_threads
                    s1 = (th + 1) * count // block_threads
                    part = sums_p + th * size
                else:
                    b0 = th * blocks // block_threads
                    b1 = (th + 1) * blocks // block_threads
                    s0, s1 = 0, count
                    part = sums_p
                for cn in range((s1 - s0 + chunk_samples - 1) // chunk_samples):
                    n = s0 + cn * chunk_samples
                    ns = min(chunk_samples, s1 - n)
                    for cr in range((g.OH + chunk_rows - 1) // chunk_rows):
                        r0 = cr * chunk_rows
                        nr = min(chunk_rows, g.OH - r0)
                        for blk in range(b0, b1):
                            grp = blk // (tb * obs)
                            tbk = blk // obs % tb
                            ob = blk % obs
                            base = sp + (n * g.groups + grp) * item
                            xs = (xp + ((n0 + n) * g.C + grp * g.Cg) * g.H * g.W if as_is
                                  else base)
                            _lanes_block(xs + r0 * p.Wq, offp + tbk * lanes.MT,
                                         base + xsize + r0 * g.OW * lanes.Ogp + ob * lanes.OV,
                                         ns, nr, g.OW, x_stride, p.Wq, per_sample, lanes.Ogp,
                                         part + (grp * lanes.Kpad + tbk * lanes.MT)
                                         * lanes.Ogp + ob * lanes.OV, lanes.OV)
        for grp in range(g.groups):
            for o in range(g.Og):
                for k in range(g.K):
                    total = 0
                    for t in range(sums.shape[0]):
                        total = total + sums_p[t * size + (grp * lanes.Kpad + k) * lanes.Ogp + o]
                    gwp[(grp * g.Og + o) * g.K + k] = <floating> total


cdef void _pixels_block(const floating *x, const Py_ssize_t *off, Py_ssize_t K,
                        const floating *wt, const floating *start, Py_ssize_t ldx,
                        floating *out, Py_ssize_t ldo) noexcept nogil:
    """out[(r·ldo + c)·VL + e] = start[e] + Σ_k wt[k·VL + e] · x[off[k] + r·ldx + c] for r < PR,
    c < PW, e < VL: PR × PW output pixels × one vector of output channels, in the lanes.

    Each tap costs one load of its VL weights and PIX broadcasts of x, at constant offsets
    from two row pointers, and no pixel of the block is outside the output (the flat layout
    of ``_block`` also computes the Wq − OW columns between rows: 44 of LeNet conv2's 144).
    Loops as in ``_lanes_narrow``: for one vector of lanes, channels outside, pixels inside.
    """
    cdef floating acc[PIX * VL]
    cdef Py_ssize_t k, c, e
    cdef const floating *row0
    cdef const floating *row1
    cdef floating wv
    for c in range(PIX):
        for e in range(VL):
            acc[c * VL + e] = start[e]
    for k in range(K):
        row0 = x + off[k]
        row1 = row0 + ldx
        for e in range(VL):
            wv = wt[k * VL + e]
            for c in range(PW):
                acc[c * VL + e] += row0[c] * wv
                acc[(PW + c) * VL + e] += row1[c] * wv
    for c in range(PW):
        for e in range(VL):
            out[c * VL + e] = acc[c * VL + e]
            out[(ldo + c) * VL + e] = acc[(PW + c) * VL + e]


cdef _pixels_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                     const floating[::1] bias, floating[:, :, :, ::1] y, Geometry g,
                     int num_threads):
    """y = conv(x, w) + bias on the flat phase planes with the output channels in the lanes:
    per sample × group, blocks of PR rows × PW columns of output pixels (the last row and
    column blocks overlapping the ones before), into a pixels × channels tile that is then
    transposed into y."""
    cdef Phases p = _phases(&g)
    cdef object dtype = np.float32 if floating is float else np.float64
    num_threads = _threads_for(num_threads, g.N * g.groups)
    # a thread's phase planes (unless x is its own: its pixels never read past its planes)
    # and its pixels × channels tile
    cdef bint as_is = _input_is_phases(&g, &p)
    cdef Py_ssize_t planes_size = 0 if as_is else p.size
    cdef Py_ssize_t width = planes_size + g.P * VL
    # the weights as [group][tap][channel, zero-padded to VL], each group's start values (its
    # biases), then the threads' scratch (written before it is read: only the packing is zeroed)
    cdef Py_ssize_t packed = g.groups * (g.K + 1) * VL
    cdef floating[::1] scratch = np.empty(packed + num_threads * width, dtype=dtype)
    cdef Py_ssize_t[::1] off = np.empty(g.K, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], g.K, False)
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *wp = &w[0, 0, 0, 0]
    cdef floating *wtp = &scratch[0]
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating *sp = wtp + packed
    cdef Py_ssize_t it, n, grp, o, k, rb, cb, oh0, ow0
    cdef const floating *planes
    cdef floating *tile
    memset(wtp, 0, packed * sizeof(floating))
    for grp in range(g.groups):
        for o in range(g.Og):
            for k in range(g.K):
                wtp[(grp * (g.K + 1) + k) * VL + o] = wp[(grp * g.Og + o) * g.K + k]
            if bias.shape[0] > 0:
                wtp[(grp * (g.K + 1) + g.K) * VL + o] = bias[grp * g.Og + o]
    with nogil:
        for it in prange(g.N * g.groups, schedule='static', num_threads=num_threads):
            n = it // g.groups
            grp = it % g.groups
            tile = sp + threadid() * width + planes_size
            planes = xp + (n * g.C + grp * g.Cg) * g.H * g.W
            if not as_is:
                _split_phases(planes, tile - planes_size, &g, &p)
                planes = tile - planes_size
            for rb in range((g.OH + PR - 1) // PR):
                oh0 = min(rb * PR, g.OH - PR)
                for cb in range((g.OW + PW - 1) // PW):
                    ow0 = min(cb * PW, g.OW - PW)
                    _pixels_block(planes + oh0 * p.Wq + ow0, offp, g.K,
                                  wtp + grp * (g.K + 1) * VL, wtp + (grp * (g.K + 1) + g.K) * VL,
                                  p.Wq, tile + (oh0 * g.OW + ow0) * VL, g.OW)
            _transpose(tile, VL, yp + (n * g.O + grp * g.Og) * g.P, g.P, g.P, g.Og)


cdef _phased_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                     const floating[::1] bias, floating[:, :, :, ::1] y, Geometry g,
                     int num_threads):
    """y = conv(x, w) + bias on the flat phase planes: one sample × group per iteration, its
    output in blocks of NB flat positions × MR output channels."""
    cdef Phases p = _phases(&g)
    cdef Py_ssize_t nob = _round_up(g.Og, MR) // MR, packed = g.groups * nob * MR * g.K
    num_threads = _threads_for(num_threads, g.N * g.groups)
    cdef Py_ssize_t width = p.size + MR * NB
    # the packed weights, then each thread's phase planes and output tile: one allocation,
    # and the packing in C, because at batch 1 numpy's reshapes cost as much as the conv
    cdef floating[::1] scratch = np.empty(packed + num_threads * width,
                                          dtype=np.float32 if floating is float else np.float64)
    cdef Py_ssize_t[::1] off = np.empty(g.K, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], g.K, False)
    cdef bint has_bias = bias.shape[0] > 0
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *wfp = &scratch[0]
    cdef const floating *bp = &bias[0] if has_bias else NULL
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating *sp = wfp + packed
    cdef bint as_is = _input_is_phases(&g, &p)
    cdef Py_ssize_t it, n, grp, qb, ob, o
    cdef const floating *planes
    cdef floating *xph
    cdef floating *tile
    with nogil:
        _pack_blocks(&w[0, 0, 0, 0], wfp, g.groups, g.Og, g.K, True, False)
        for it in prange(g.N * g.groups, schedule='static', num_threads=num_threads):
            n = it // g.groups
            grp = it % g.groups
            xph = sp + threadid() * width
            tile = xph + p.size
            planes = xp + (n * g.C + grp * g.Cg) * g.H * g.W
            if not as_is or it == g.N * g.groups - 1:
                _split_phases(planes, xph, &g, &p)
                planes = xph
            for qb in range(p.Lpad // NB):
                for ob in range(nob):
                    o = grp * g.Og + ob * MR
                    _block(planes + qb * NB, offp, g.K, wfp + (grp * nob + ob) * g.K * MR, tile)
                    _store_block(tile, min(<Py_ssize_t> MR, g.Og - ob * MR), qb * NB,
                                 yp + (n * g.O + o) * g.P, bp + o if has_bias else NULL, &g, &p)


cdef void _place_rows(const floating *src, Py_ssize_t lds, floating *dst, Py_ssize_t ldd,
                      Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """``_copy_rows``, with rows of VL/2 to VL floats as two overlapping half vectors (LeNet
    conv2's gy rows of 10) instead of one float at a time."""
    cdef Py_ssize_t r, half = VL // 2
    if cols < half or cols >= VL:
        _copy_rows(src, lds, dst, ldd, rows, cols)
        return
    for r in range(rows):
        memcpy(dst + r * ldd, src + r * lds, half * sizeof(floating))
        memcpy(dst + r * ldd + cols - half, src + r * lds + cols - half, half * sizeof(floating))


cdef _phased_backward_data(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] w,
                           const floating[::1] initial, floating[:, :, :, ::1] gx, Geometry g,
                           int num_threads):
    """gx = initial + convᵀ(gy, w): per sample × group, gy is placed in the flat layout, each
    block of MR taps gets Σ_o w[o, tap]·gy_ext[o] from ``_scatter_block`` and adds it at the
    tap's offset into zeroed phase planes, which are merged into gx at the end.

    Each thread takes one run of (sample, group) items and zeroes its spread gy once: the
    Wq − OW columns between rows and the tail stay zero, and each item writes only its pixels.
    When gx is its own phase layout (stride 1, no padding: LeNet conv2) the blocks add into gx
    directly, with no planes to clear and merge; the last block of an item adds (zeros) up to
    Lpad − L floats past it, onto the next items, whose fills then overwrite them, so only the
    items that would reach past the end of their run go through the planes.

    When the phase planes fit in L1, block b holds taps b, b + nkb, b + 2·nkb, …: with
    neighbouring taps (rows one float apart) in one block, each row's read-add-write overlaps
    the store of the row before, which the CPU cannot forward to the load (LeNet conv2's input
    gradient 12% slower); larger planes keep neighbouring taps together, for their cache lines
    (transposed k4 s2: 7% faster).
    """
    cdef Phases p = _phases(&g)
    cdef Py_ssize_t nkb = _round_up(g.K, MR) // MR, packed = g.groups * nkb * MR * g.Og
    cdef Py_ssize_t items = g.N * g.groups
    cdef bint interleaved = p.size * sizeof(floating) <= L1_BYTES
    num_threads = _threads_for(num_threads, items)
    cdef Py_ssize_t width = g.Og * p.Lpad + p.size
    # the packed weights, then each thread's spread gy and phase planes (as in the forward)
    cdef floating[::1] scratch = np.empty(packed + num_threads * width,
                                          dtype=np.float32 if floating is float else np.float64)
    # the taps' offsets, then the output channels' rows of the spread gy
    cdef Py_ssize_t[::1] offsets = np.empty(nkb * MR + g.Og, dtype=np.intp)
    _tap_offsets(&g, &p, &offsets[0], nkb * MR, interleaved)
    cdef bint has_initial = initial.shape[0] > 0
    cdef bint as_is = _input_is_phases(&g, &p)
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef floating *wdp = &scratch[0]
    cdef const floating *ip = &initial[0] if has_initial else NULL
    cdef const Py_ssize_t *offp = &offsets[0]
    cdef Py_ssize_t *rowp = &offsets[nkb * MR]
    cdef floating *gxp = &gx[0, 0, 0, 0]
    cdef floating *sp = wdp + packed
    cdef Py_ssize_t t, it, end, n, grp, o, qb, kb, HW = g.H * g.W
    cdef bint direct
    cdef floating *gy_ext
    cdef floating *gxph
    cdef floating *gx_group
    cdef floating *target
    for o in range(g.Og):
        rowp[o] = o * p.Lpad
    with nogil:
        _pack_blocks(&w[0, 0, 0, 0], wdp, g.groups, g.Og, g.K, False, interleaved)
        for t in prange(num_threads, schedule='static', num_threads=num_threads):
            gy_ext = sp + t * width
            gxph = gy_ext + g.Og * p.Lpad
            memset(gy_ext, 0, g.Og * p.Lpad * sizeof(floating))
            end = items * (t + 1) // num_threads
            for it in range(items * t // num_threads, end):
                n = it // g.groups
                grp = it % g.groups
                for o in range(g.Og):
                    _place_rows(gyp + (n * g.O + grp * g.Og + o) * g.P, g.OW,
                                gy_ext + o * p.Lpad, p.Wq, g.OH, g.OW)
                gx_group = gxp + it * g.Cg * HW
                direct = as_is and (it + 1) * g.Cg * HW + p.Lpad - p.L <= end * g.Cg * HW
                if direct:
                    _fill_rows(gx_group, ip + grp * g.Cg if has_initial else NULL, g.Cg, HW, HW,
                               has_initial)
                    target = gx_group
                else:
                    memset(gxph, 0, p.size * sizeof(floating))
                    target = gxph
                for qb in range(p.Lpad // NB):
                    for kb in range(nkb):
                        _scatter_block(gy_ext + qb * NB, rowp, g.Og,
                                       wdp + (grp * nkb + kb) * g.Og * MR, target + qb * NB,
                                       offp + kb * MR)
                if not direct:
                    _fill_rows(gx_group, ip + grp * g.Cg if has_initial else NULL, g.Cg, HW,
                               HW, has_initial)
                    _merge_phases(gxph, gx_group, &g, &p)


cdef _phased_backward_weight(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                             floating[:, :, :, ::1] gw, Geometry g, int num_threads):
    """gw[o, k] = Σ_n Σ_q gy_ext[n, o, q] · xph[n, off[k] + q], with the sums of blocks of
    MO output channels × MK taps held across VL flat positions (few output channels a group;
    ``_lanes_backward_weight`` holds the channels in the lanes instead).

    Samples go in waves whose phase planes and spread gy fit ``WAVE_FLOATS``: the wave is laid
    out in parallel, then each MO × MK block of gw is one iteration that sums over every sample
    of the wave in registers (so the lane sums are rare), and adds onto the block.  No two
    threads write one entry and the order of the sums never depends on the thread count, so
    the result is the same bits for any thread count.
    """
    cdef Phases p = _phases(&g)
    cdef object dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t Opad = _round_up(g.Og, MO), Kpad = _round_up(g.K, MK)
    cdef Py_ssize_t nob = Opad // MO, nkb = Kpad // MK, blocks = g.groups * nob * nkb
    cdef Py_ssize_t[::1] off = np.zeros(Kpad, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], Kpad, False)
    # one (sample, group): its phase planes, then its gy spread to Opad rows of Lpad
    cdef Py_ssize_t item = p.size + Opad * p.Lpad, per_sample = g.groups * item
    cdef Py_ssize_t wave = max(1, min(g.N, WAVE_FLOATS // per_sample))
    # every float is written by the layout loop (np.zeros would clear 14 MB a call on VGG)
    cdef floating[::1] scratch = np.empty(wave * per_sample, dtype=dtype)
    # blocks go tile by tile of ``span`` output blocks, taps outermost within a tile: the gy rows
    # of a tile stay in L2 while each tap block's rows come in once for the whole tile (tap
    # blocks in the inner loop re-read all of x from L3 once per output block: 3× slower)
    cdef Py_ssize_t span = max(1, min(nob, REDUCE_TILE_FLOATS // (MO * wave * p.Lpad)))
    cdef Py_ssize_t width
    cdef double[:, :, ::1] sums = np.zeros((g.groups, Opad, Kpad))
    cdef int layout_threads = _threads_for(num_threads, wave * g.groups)
    cdef int block_threads = _threads_for(num_threads, blocks)
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *gwp = &gw[0, 0, 0, 0]
    cdef floating *sp = &scratch[0]
    cdef double *sums_p = &sums[0, 0, 0]
    # the input read as it is (``_input_is_phases``) for all samples but the batch's last
    cdef bint as_is = _input_is_phases(&g, &p)
    cdef Py_ssize_t first, n0, count, direct, it, n, grp, o, blk, ob, kb, k
    cdef floating *base
    with nogil:
        for first in range((g.N + wave - 1) // wave):
            n0 = first * wave
            count = min(wave, g.N - n0)
            for it in prange(count * g.groups, schedule='static', num_threads=layout_threads):
                n = n0 + it // g.groups
                grp = it % g.groups
                base = sp + it * item
                if not as_is or n == g.N - 1:
                    _split_phases(xp + (n * g.C + grp * g.Cg) * g.H * g.W, base, &g, &p)
                for o in range(g.Og):
                    _spread(gyp + (n * g.O + grp * g.Og + o) * g.P,
                            base + p.size + o * p.Lpad, g.OH, g.OW, p.Wq, p.Lpad)
                # the rows that pad the last block of MO output channels
                memset(base + p.size + g.Og * p.Lpad, 0,
                       (Opad - g.Og) * p.Lpad * sizeof(floating))
            for blk in prange(blocks, schedule='static', num_threads=block_threads):
                grp = blk // (nob * nkb)
                it = blk % (nob * nkb)  # the block within its group: tile, then tap, then ob
                ob = it // (span * nkb) * span
                width = min(span, nob - ob)
                kb = it % (span * nkb) // width
                ob = ob + it % (span * nkb) % width
                base = sp + grp * item
                direct = (count - (n0 + count == g.N)) if as_is else 0
                if direct:
                    _reduce_block(base + p.size + ob * MO * p.Lpad, p.Lpad,
                                  xp + (n0 * g.C + grp * g.Cg) * g.H * g.W, offp + kb * MK,
                                  p.Lpad, direct, per_sample, g.C * g.H * g.W,
                                  sums_p + (grp * Opad + ob * MO) * Kpad + kb * MK, Kpad)
                if count > direct:
                    base = base + direct * per_sample
                    _reduce_block(base + p.size + ob * MO * p.Lpad, p.Lpad, base,
                                  offp + kb * MK, p.Lpad, count - direct, per_sample, per_sample,
                                  sums_p + (grp * Opad + ob * MO) * Kpad + kb * MK, Kpad)
        for grp in range(g.groups):
            for o in range(g.Og):
                for k in range(g.K):
                    gwp[(grp * g.Og + o) * g.K + k] = <floating> sums_p[(grp * Opad + o) * Kpad
                                                                        + k]


cdef void _copy_rows(const floating *src, Py_ssize_t lds, floating *dst, Py_ssize_t ldd,
                     Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """dst[r·ldd + s] = src[r·lds + s] for r < rows, s < cols.

    A row of at least VL goes VL at a time, the last VL ending at the row's end (overlapping
    the one before: harmless for a copy), as whole-vector moves with no scalar tail.
    """
    cdef Py_ssize_t r, s, v
    for r in range(rows):
        if cols < VL:
            for s in range(cols):
                dst[r * ldd + s] = src[r * lds + s]
            continue
        for v in range((cols + VL - 1) // VL):
            s = min(v * VL, cols - VL)
            memcpy(dst + r * ldd + s, src + r * lds + s, VL * sizeof(floating))


cdef void _place_phases(const floating *x, floating *xph, const Geometry *g,
                        const Phases *p) noexcept nogil:
    """``_split_phases`` without its zeros: writes only the entries that hold an input pixel.

    The depthwise loops zero their scratch once per call and place plane after plane into it:
    the padding stays zero, and each plane costs a copy of its pixels only.
    """
    cdef Py_ssize_t c, a, b, r, s, rlo, rhi, lo, hi
    cdef const floating *src
    cdef floating *dst
    for c in range(g.Cg):
        for a in range(g.sh):
            _valid_range(a - g.pt, g.sh, g.H, p.Hq, &rlo, &rhi)
            for b in range(g.sw):
                _valid_range(b - g.pl, g.sw, g.W, p.Wq, &lo, &hi)
                src = x + (c * g.H + rlo * g.sh + a - g.pt) * g.W + lo * g.sw + b - g.pl
                dst = xph + ((c * g.sh + a) * g.sw + b) * p.plane + rlo * p.Wq + lo
                if g.sw == 1:
                    _copy_rows(src, g.sh * g.W, dst, p.Wq, rhi - rlo, hi - lo)
                    continue
                for r in range(rhi - rlo):
                    for s in range(hi - lo):
                        dst[r * p.Wq + s] = src[r * g.sh * g.W + s * g.sw]


cdef void _depthwise_block(const floating *x, const Py_ssize_t *off, Py_ssize_t K,
                           const floating *w, floating start, floating *out) noexcept nogil:
    """out[e] = start + Σ_k w[k] · x[off[k] + e] for e < NB: ``_block`` for a single output
    channel.

    Its NV accumulators stay in registers across the K taps, so each output is stored once
    (tap by tap over the plane, the output row was loaded and stored kh·kw times).  The body
    is written out for NV = 3: as one loop over NB, GCC unrolled it and vectorised the tap loop
    instead, with gathers (1.5 times slower than the tap-by-tap loops).
    """
    cdef floating acc[NB]
    cdef Py_ssize_t k, e
    cdef const floating *src
    cdef floating wv
    for e in range(NB):
        acc[e] = start
    for k in range(K):
        src = x + off[k]
        wv = w[k]
        for e in range(VL):
            acc[e] += wv * src[e]
            acc[VL + e] += wv * src[VL + e]
            acc[2 * VL + e] += wv * src[2 * VL + e]
    for e in range(VL):
        out[e] = acc[e]
        out[VL + e] = acc[VL + e]
        out[2 * VL + e] = acc[2 * VL + e]


cdef void _depthwise_reduce(const floating *gy_ext, const floating *xph, const Py_ssize_t *off,
                            Py_ssize_t K, Py_ssize_t length, double *sums) noexcept nogil:
    """sums[k] += Σ_{q < length} gy_ext[q] · xph[off[k] + q] for k < K (length a multiple of
    VL): the weight gradient of one output channel over one sample.

    Taps go TB at a time, each with one VL-lane accumulator held in registers over the whole
    plane, so gy and each tap's row are read once per block of taps; a block past K repeats
    the last tap and drops its sums.  The body is written out for TB = 9, one line per
    accumulator, as in ``_reduce_block`` (as a loop over taps GCC vectorised across the taps
    with gathers: 3.7 times slower).
    """
    cdef floating acc[TB * VL]
    cdef const floating *s[TB]
    cdef Py_ssize_t b, k0, t, v, q, e
    cdef double total
    for b in range((K + TB - 1) // TB):
        k0 = b * TB
        for t in range(TB):
            s[t] = xph + off[min(k0 + t, K - 1)]
        for e in range(TB * VL):
            acc[e] = 0
        for v in range(length // VL):
            q = v * VL
            for e in range(VL):
                acc[0 * VL + e] += gy_ext[q + e] * s[0][q + e]
                acc[1 * VL + e] += gy_ext[q + e] * s[1][q + e]
                acc[2 * VL + e] += gy_ext[q + e] * s[2][q + e]
                acc[3 * VL + e] += gy_ext[q + e] * s[3][q + e]
                acc[4 * VL + e] += gy_ext[q + e] * s[4][q + e]
                acc[5 * VL + e] += gy_ext[q + e] * s[5][q + e]
                acc[6 * VL + e] += gy_ext[q + e] * s[6][q + e]
                acc[7 * VL + e] += gy_ext[q + e] * s[7][q + e]
                acc[8 * VL + e] += gy_ext[q + e] * s[8][q + e]
        for t in range(min(<Py_ssize_t> TB, K - k0)):
            total = 0
            for e in range(VL):
                total += acc[t * VL + e]
            sums[k0 + t] += total


cdef _depthwise_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, floating[:, :, :, ::1] y, Geometry g,
                        int num_threads):
    """y = conv(x, w) + bias for convs with few input channels per group (depthwise, and the
    flipped adjoint of one): per sample × group, the Cg input planes are placed in phase planes,
    each output channel is computed into a flat plane in blocks of NB positions and its rows
    copied out to y."""
    cdef Phases p = _phases(&g)
    cdef Py_ssize_t[::1] off = np.zeros(g.K, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], g.K, False)
    num_threads = _threads_for(num_threads, g.N * g.groups)
    cdef Py_ssize_t width = p.size + p.Lpad
    cdef floating[:, ::1] scratch = np.zeros(
        (num_threads, width), dtype=np.float32 if floating is float else np.float64)
    cdef bint has_bias = bias.shape[0] > 0
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *wp = &w[0, 0, 0, 0]
    cdef const floating *bp = &bias[0] if has_bias else NULL
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating *sp = &scratch[0, 0]
    cdef Py_ssize_t it, n, grp, m, o, qb
    cdef floating *xph
    cdef floating *tile
    with nogil:
        for it in prange(g.N * g.groups, schedule='static', num_threads=num_threads):
            n = it // g.groups
            grp = it % g.groups
            xph = sp + threadid() * width
            tile = xph + p.size
            _place_phases(xp + (n * g.C + grp * g.Cg) * g.H * g.W, xph, &g, &p)
            for m in range(g.Og):
                o = grp * g.Og + m
                for qb in range(p.Lpad // NB):
                    _depthwise_block(xph + qb * NB, offp, g.K, wp + o * g.K,
                                     bp[o] if has_bias else 0, tile + qb * NB)
                _copy_rows(tile, p.Wq, yp + (n * g.O + o) * g.P, g.OW, g.OH, g.OW)


cdef _depthwise_backward_weight(const floating[:, :, :, ::1] gy,
                                const floating[:, :, :, ::1] x, floating[:, :, :, ::1] gw,
                                Geometry g, int num_threads):
    """gw[o, k] = Σ_n Σ_q gy_ext[n, o, q] · xph[n, off[k] + q] for depthwise convs (Cg = 1).

    One input channel and its Og output channels per iteration, over every sample: no two
    threads write one entry and the sums run in one order, so the bits do not depend on the
    thread count.
    """
    cdef Phases p = _phases(&g)
    cdef Py_ssize_t[::1] off = np.zeros(g.K, dtype=np.intp)
    _tap_offsets(&g, &p, &off[0], g.K, False)
    num_threads = _threads_for(num_threads, g.groups)
    cdef Py_ssize_t width = p.size + p.Lpad
    cdef floating[:, ::1] scratch = np.zeros(
        (num_threads, width), dtype=np.float32 if floating is float else np.float64)
    cdef double[:, ::1] sums = np.zeros((g.O, g.K))
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const Py_ssize_t *offp = &off[0]
    cdef floating *gwp = &gw[0, 0, 0, 0]
    cdef floating *sp = &scratch[0, 0]
    cdef double *sums_p = &sums[0, 0]
    cdef Py_ssize_t c, n, m, o, k
    cdef floating *xph
    cdef floating *gy_ext
    with nogil:
        for c in prange(g.groups, schedule='static', num_threads=num_threads):
            xph = sp + threadid() * width
            gy_ext = xph + p.size
            for n in range(g.N):
                _place_phases(xp + (n * g.C + c) * g.H * g.W, xph, &g, &p)
                for m in range(g.Og):
                    o = c * g.Og + m
                    # gy in the flat layout; the Wq − OW columns between its rows stay zero
                    _copy_rows(gyp + (n * g.O + o) * g.P, g.OW, gy_ext, p.Wq, g.OH, g.OW)
                    _depthwise_reduce(gy_ext, xph, offp, g.K, p.Lpad, sums_p + o * g.K)
            for o in range(c * g.Og, (c + 1) * g.Og):
                for k in range(g.K):
                    gwp[o * g.K + k] = <floating> sums_p[o * g.K + k]


# The algorithms each entry point runs, as the plan (``declcnn/ops/conv_plan.py``) names them.
FORWARD = {"phases": 0, "pixels": 1, "depthwise": 2}
BACKWARD_DATA = {"scatter": 0, "depthwise-scatter": 1}
BACKWARD_WEIGHT = {"reduce": 0, "lanes": 1, "depthwise": 2}


def blocking():
    """The micro-kernels' block sizes, and the vector registers of the target this module was
    compiled for (bytes each, and how many), for the plan's cost rules."""
    return {"MR": MR, "NV": NV, "VL": VL, "NB": NB, "PR": PR, "PW": PW,
            "vector_bytes": DECLCNN_VECTOR_BYTES, "vector_registers": DECLCNN_VECTOR_REGISTERS}


def conv_forward(const floating[:, :, :, ::1] x not None,
                 const floating[:, :, :, ::1] w not None,
                 const floating[::1] bias not None,
                 floating[:, :, :, ::1] y not None,
                 int sh, int sw, int pt, int pl, int dh, int dw, int groups, int num_threads,
                 int algorithm):
    """y = conv(x, w) + bias (``bias`` of length 0: no bias) by ``FORWARD[algorithm]``:
    ``phases`` (``_block``), ``pixels`` (``_pixels_block``: at most VL output channels a group,
    an output of at least PR × PW) or ``depthwise`` (``_depthwise_block``, one output channel
    at a time).  Writes every element of y."""
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1],
                                y.shape[2], y.shape[3], w.shape[2], w.shape[3],
                                sh, sw, pt, pl, dh, dw, groups)
    if algorithm == FORWARD["phases"]:
        _phased_forward(x, w, bias, y, g, num_threads)
    elif algorithm == FORWARD["pixels"]:
        if g.Og > VL or g.OH < PR or g.OW < PW:
            raise ValueError("the pixels forward needs ≤ VL output channels a group and an "
                             "output of at least PR × PW pixels")
        _pixels_forward(x, w, bias, y, g, num_threads)
    elif algorithm == FORWARD["depthwise"]:
        _depthwise_forward(x, w, bias, y, g, num_threads)
    else:
        raise ValueError(f"unknown forward algorithm {algorithm}")


def conv_backward_data(const floating[:, :, :, ::1] gy not None,
                       const floating[:, :, :, ::1] w not None,
                       const floating[::1] initial not None,
                       floating[:, :, :, ::1] gx not None,
                       int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                       int num_threads, int algorithm):
    """gx = initial + convᵀ(gy, w), the input gradient of ``conv_forward``, by
    ``BACKWARD_DATA[algorithm]``: ``scatter`` (``_scatter_block`` on the phase planes) or
    ``depthwise-scatter`` (one input channel a group: gy scattered through the taps row by
    row).  ``initial`` (one value per channel of gx, or length 0 for zeros) lets
    conv_transpose2d add its bias in the same pass.  (The plan's ``flipped:`` algorithms run
    ``conv_forward`` on gy instead.)"""
    cdef Geometry g = _geometry(gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3], gy.shape[1],
                                gy.shape[2], gy.shape[3], w.shape[2], w.shape[3],
                                sh, sw, pt, pl, dh, dw, groups)
    if algorithm == BACKWARD_DATA["scatter"]:
        _phased_backward_data(gy, w, initial, gx, g, num_threads)
        return
    if algorithm != BACKWARD_DATA["depthwise-scatter"]:
        raise ValueError(f"unknown input-gradient algorithm {algorithm}")
    if g.Cg != 1:
        raise ValueError("the depthwise scatter needs one input channel a group")
    num_threads = _threads_for(num_threads, g.N * g.C)
    cdef bint has_initial = initial.shape[0] > 0
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *wp = &w[0, 0, 0, 0]
    cdef const floating *ip = &initial[0] if has_initial else NULL
    cdef floating *gxp = &gx[0, 0, 0, 0]
    cdef Py_ssize_t it, n, c, m, HW = g.H * g.W
    with nogil:
        # input channel c collects from its Og output channels c·Og … c·Og + Og − 1
        for it in prange(g.N * g.C, schedule='static', num_threads=num_threads):
            n = it // g.C
            c = it % g.C
            _fill_rows(gxp + it * HW, ip + c if has_initial else NULL, 1, HW, HW, has_initial)
            for m in range(g.Og):
                _depthwise_data_plane(gyp + (n * g.O + c * g.Og + m) * g.P,
                                      wp + (c * g.Og + m) * g.kh * g.kw, gxp + it * HW, &g)


def conv_backward_weight(const floating[:, :, :, ::1] gy not None,
                         const floating[:, :, :, ::1] x not None,
                         floating[:, :, :, ::1] gw not None,
                         int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                         int num_threads, int algorithm):
    """gw[o, c, i, j] = Σ_{n, oh, ow} gy[n, o, oh, ow] · x[n, c, …], the weight gradient of
    ``conv_forward``, by ``BACKWARD_WEIGHT[algorithm]``: ``reduce`` (``_reduce_block``),
    ``lanes`` (output channels in the lanes) or ``depthwise`` (one input channel a group).
    Each block of gw is summed by one thread in one order: the bits depend at most on the
    thread count (``lanes`` splitting samples)."""
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], gy.shape[1],
                                gy.shape[2], gy.shape[3], gw.shape[2], gw.shape[3],
                                sh, sw, pt, pl, dh, dw, groups)
    if algorithm == BACKWARD_WEIGHT["reduce"]:
        _phased_backward_weight(gy, x, gw, g, num_threads)
    elif algorithm == BACKWARD_WEIGHT["lanes"]:
        _lanes_backward_weight(gy, x, gw, g, num_threads)
    elif algorithm == BACKWARD_WEIGHT["depthwise"]:
        if g.Cg != 1:
            raise ValueError("the depthwise weight gradient needs one input channel a group")
        _depthwise_backward_weight(gy, x, gw, g, num_threads)
    else:
        raise ValueError(f"unknown weight-gradient algorithm {algorithm}")


def channel_sums(const floating[:, :, :, ::1] gy not None, floating[::1] gb not None,
                 int num_threads):
    """gb[o] = Σ_{n, h, w} gy[n, o, h, w] (a bias gradient), in double, one channel per thread."""
    cdef Py_ssize_t batch = gy.shape[0], channels = gy.shape[1], P = gy.shape[2] * gy.shape[3]
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef floating *gbp = &gb[0]
    cdef Py_ssize_t o, n
    cdef double acc
    with nogil:
        for o in prange(channels, schedule='static', num_threads=num_threads):
            acc = 0
            for n in range(batch):
                acc = acc + _plane_sum(gyp + (n * channels + o) * P, P)
            gbp[o] = <floating> acc
