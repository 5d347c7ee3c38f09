"""Convolution as GEMM over the whole batch, on the taps that reach the input: the "gemm"
algorithm of the conv plan (``declcnn/ops/conv_plan.py``), for all three primitives.

The conv view is the one of ``conv.pyx``: input x (N, C, H, W), weight w (O, C/g, kh, kw),
output y (N, O, OH, OW).  Per group, the im2col matrix has one row per (input channel, *live*
tap) and one column per (sample, output pixel) of the whole batch, so a small map at batch N is
one GEMM of N·OH·OW columns rather than N matrix–vector products that each re-read the weight.
A tap is live when at least one output pixel reads it inside the input: a 3×3 pad-1 conv on a
1×1 map has one live tap and runs as the 1×1 conv it is; dead taps are neither copied nor
multiplied, and their weight gradient is 0.  Live taps are a product of live kernel rows and
live kernel columns, because a tap's reach factors by axis.

Columns are cut into tiles that bound the scratch (``tile_floats`` of im2col per thread, which
the plan sizes to the machine's level-2 cache):
a run of whole samples when a sample's columns fit, otherwise a run of output rows of one
sample.  The forward and weight gradient split tiles over the threads; the input gradient
splits *owners* (a run of whole samples, or one sample with all its row tiles) so that no two
threads add into the same input pixels.  The weight gradient sums one partial per thread in
thread order, so the bits depend only on the thread count.

A 1×1 stride-1 unpadded conv with a tile inside one sample reads x (and writes gx) as its own
column matrix.  Row-tile outputs go straight into y with the bias as the GEMM's start value;
multi-sample tiles go through a scratch that is scattered into y with the bias added.
"""

import numpy as np

from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from cython cimport floating

from declcnn._kernels._blas cimport gemm


cdef struct Gemm:
    Py_ssize_t N, C, H, W, O, OH, OW, P
    Py_ssize_t kh, kw, sh, sw, pt, pl, dh, dw
    Py_ssize_t groups, Cg, Og
    Py_ssize_t taps, K, ldw       # live taps, im2col rows Cg · taps, max(1, K)
    Py_ssize_t samples            # samples per tile (row tiles: 1)
    Py_ssize_t rows, row_tiles    # output rows per tile and tiles per sample (whole: OH, 1)
    Py_ssize_t tiles              # tiles per group
    bint pointwise                # 1×1, stride 1, unpadded: x is its own column matrix


cdef struct Tile:
    Py_ssize_t n0, n1, oh0, oh1, cols, per_sample


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _live(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t out,
                       Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """Outputs ``o`` in [lo, hi) whose read ``o·stride + offset`` lies inside [0, size)."""
    lo[0] = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi[0] = 0 if size - 1 - offset < 0 else (size - 1 - offset) // stride + 1
    if hi[0] > out:
        hi[0] = out
    if lo[0] > out:
        lo[0] = out
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef Py_ssize_t _live_taps(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t *tap) noexcept nogil:
    """Write the live taps i·kw + j in order into ``tap``; return how many."""
    cdef Py_ssize_t i, j, lo, hi, count = 0
    cdef bint row_live
    for i in range(kh):
        _live(i * dh - pt, sh, H, OH, &lo, &hi)
        row_live = hi > lo
        for j in range(kw):
            _live(j * dw - pl, sw, W, OW, &lo, &hi)
            if row_live and hi > lo:
                tap[count] = i * kw + j
                count += 1
    return count


def live_taps(int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int H, int W,
              int OH, int OW):
    """The live taps (i·kw + j) of a conv view, as a list: what the plan reports."""
    cdef Py_ssize_t[::1] tap = np.empty(max(1, kh * kw), dtype=np.intp)
    cdef Py_ssize_t count = _live_taps(kh, kw, sh, sw, pt, pl, dh, dw, H, W, OH, OW, &tap[0])
    return [int(tap[t]) for t in range(count)]


cdef Gemm _geometry(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                    Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, int sh, int sw,
                    int pt, int pl, int dh, int dw, int groups, Py_ssize_t taps,
                    int num_threads, Py_ssize_t tile_floats) noexcept:
    cdef Gemm g
    g.N, g.C, g.H, g.W, g.O, g.OH, g.OW, g.P = N, C, H, W, O, OH, OW, OH * OW
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = kh, kw, sh, sw, pt, pl, dh, dw
    g.groups, g.Cg, g.Og = groups, C // groups, O // groups
    g.taps = taps
    g.K = g.Cg * taps
    # BLAS wants leading dimensions ≥ 1 even of empty matrices (no live taps: the bias alone)
    g.ldw = max(1, g.K)
    g.pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 \
        and OH == H and OW == W
    # work items wanted per group so that every thread has one
    cdef Py_ssize_t wanted = _cdiv(num_threads, groups)
    cdef Py_ssize_t fit = tile_floats // max(1, g.K * g.P)
    if fit >= 1 and N >= wanted:
        g.samples = max(1, min(fit, _cdiv(N, wanted)))
        g.rows, g.row_tiles = OH, 1
        g.tiles = _cdiv(N, g.samples)
    else:
        g.samples = 1
        g.rows = max(1, min(OH, tile_floats // max(1, g.K * OW)))
        if N < wanted:  # a small batch: rows of one sample for the idle threads
            g.rows = max(1, min(g.rows, _cdiv(OH, _cdiv(wanted, N))))
        g.row_tiles = _cdiv(OH, g.rows)
        g.tiles = N * g.row_tiles
    return g


cdef inline Tile _tile(Py_ssize_t t, const Gemm *g) noexcept nogil:
    cdef Tile tile
    if g.row_tiles == 1:
        tile.n0 = t * g.samples
        tile.n1 = min(tile.n0 + g.samples, g.N)
        tile.oh0, tile.oh1 = 0, g.OH
    else:
        tile.n0 = t // g.row_tiles
        tile.n1 = tile.n0 + 1
        tile.oh0 = t % g.row_tiles * g.rows
        tile.oh1 = min(tile.oh0 + g.rows, g.OH)
    tile.per_sample = (tile.oh1 - tile.oh0) * g.OW
    tile.cols = (tile.n1 - tile.n0) * tile.per_sample
    return tile


cdef inline bint _reads_in_place(const Gemm *g, const Tile *t) noexcept nogil:
    return g.pointwise and t.n1 - t.n0 == 1


cdef void _im2col(const floating *x, floating *col, const Gemm *g, const Py_ssize_t *tap,
                  const Tile *t, Py_ssize_t grp) noexcept nogil:
    """col[c·taps + k, (n − n0)·per_sample + (oh − oh0)·OW + ow] = x[n, grp·Cg + c, oh·sh +
    i·dh − pt, ow·sw + j·dw − pl] for live tap k = (i, j), or 0 outside the input."""
    cdef Py_ssize_t c, k, i, j, n, oh, ih, lo, hi, off, s
    cdef const floating *src
    cdef floating *dst
    for c in range(g.Cg):
        for k in range(g.taps):
            i = tap[k] // g.kw
            j = tap[k] % g.kw
            off = j * g.dw - g.pl
            _live(off, g.sw, g.W, g.OW, &lo, &hi)
            for n in range(t.n0, t.n1):
                for oh in range(t.oh0, t.oh1):
                    dst = col + (c * g.taps + k) * t.cols + (n - t.n0) * t.per_sample \
                        + (oh - t.oh0) * g.OW
                    ih = oh * g.sh + i * g.dh - g.pt
                    if ih < 0 or ih >= g.H:
                        memset(dst, 0, g.OW * sizeof(floating))
                        continue
                    src = x + ((n * g.C + grp * g.Cg + c) * g.H + ih) * g.W + off
                    memset(dst, 0, lo * sizeof(floating))
                    if g.sw == 1:
                        for s in range(lo, hi):
                            dst[s] = src[s]
                    else:
                        for s in range(lo, hi):
                            dst[s] = src[s * g.sw]
                    memset(dst + hi, 0, (g.OW - hi) * sizeof(floating))


cdef void _col2im(const floating *col, floating *gx, const Gemm *g, const Py_ssize_t *tap,
                  const Tile *t, Py_ssize_t grp) noexcept nogil:
    """The adjoint of ``_im2col``: adds every column entry onto the pixel it was read from."""
    cdef Py_ssize_t c, k, i, j, n, oh, ih, lo, hi, off, s
    cdef const floating *src
    cdef floating *dst
    for c in range(g.Cg):
        for k in range(g.taps):
            i = tap[k] // g.kw
            j = tap[k] % g.kw
            off = j * g.dw - g.pl
            _live(off, g.sw, g.W, g.OW, &lo, &hi)
            for n in range(t.n0, t.n1):
                for oh in range(t.oh0, t.oh1):
                    ih = oh * g.sh + i * g.dh - g.pt
                    if ih < 0 or ih >= g.H:
                        continue
                    src = col + (c * g.taps + k) * t.cols + (n - t.n0) * t.per_sample \
                        + (oh - t.oh0) * g.OW
                    dst = gx + ((n * g.C + grp * g.Cg + c) * g.H + ih) * g.W + off
                    if g.sw == 1:
                        for s in range(lo, hi):
                            dst[s] += src[s]
                    else:
                        for s in range(lo, hi):
                            dst[s * g.sw] += src[s]


cdef void _gather_rows(const floating *y, floating *out, const Gemm *g, const Tile *t,
                       Py_ssize_t grp) noexcept nogil:
    """out[o, (n − n0)·P + p] = y[n, grp·Og + o, p]: a multi-sample tile's output gradient as
    one Og × cols matrix."""
    cdef Py_ssize_t o, n
    for o in range(g.Og):
        for n in range(t.n0, t.n1):
            memcpy(out + o * t.cols + (n - t.n0) * g.P, y + (n * g.O + grp * g.Og + o) * g.P,
                   g.P * sizeof(floating))


cdef void _scatter_rows(const floating *out, floating *y, const floating *bias,
                        const Gemm *g, const Tile *t, Py_ssize_t grp) noexcept nogil:
    """y[n, grp·Og + o, p] = out[o, (n − n0)·P + p] + bias[grp·Og + o] (no bias: NULL)."""
    cdef Py_ssize_t o, n, p
    cdef floating b
    cdef const floating *src
    cdef floating *dst
    for o in range(g.Og):
        b = bias[grp * g.Og + o] if bias != NULL else 0
        for n in range(t.n0, t.n1):
            src = out + o * t.cols + (n - t.n0) * g.P
            dst = y + (n * g.O + grp * g.Og + o) * g.P
            for p in range(g.P):
                dst[p] = src[p] + b


cdef void _fill(floating *rows, const floating *values, Py_ssize_t count, Py_ssize_t length,
                Py_ssize_t ld) noexcept nogil:
    """Set ``count`` rows of ``length``, ``ld`` apart, to values[row] (values NULL: to 0)."""
    cdef Py_ssize_t c, p
    cdef floating v
    for c in range(count):
        if values == NULL:
            memset(rows + c * ld, 0, length * sizeof(floating))
            continue
        v = values[c]
        for p in range(length):
            rows[c * ld + p] = v


cdef void _pack(const floating *w, floating *packed, const Gemm *g,
                const Py_ssize_t *tap) noexcept nogil:
    """packed[o, c·taps + k] = w[o, c, tap k]: the weight on the live taps only."""
    cdef Py_ssize_t o, c, k, T = g.kh * g.kw
    for o in range(g.O):
        for c in range(g.Cg):
            for k in range(g.taps):
                packed[(o * g.Cg + c) * g.taps + k] = w[(o * g.Cg + c) * T + tap[k]]


cdef class _Setup:
    """Live taps, geometry and the packed weight of one call (Python-side allocations)."""
    cdef Gemm g
    cdef Py_ssize_t[::1] tap
    cdef bint packed


cdef _Setup _setup(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                   Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, int sh, int sw,
                   int pt, int pl, int dh, int dw, int groups, int num_threads,
                   Py_ssize_t tile_floats):
    cdef _Setup s = _Setup()
    s.tap = np.empty(max(1, kh * kw), dtype=np.intp)
    cdef Py_ssize_t taps = _live_taps(kh, kw, sh, sw, pt, pl, dh, dw, H, W, OH, OW, &s.tap[0])
    s.g = _geometry(N, C, H, W, O, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw, groups, taps,
                    num_threads, tile_floats)
    s.packed = taps < kh * kw
    return s


cdef inline int _threads(int requested, Py_ssize_t items) noexcept:
    return <int> max(1, min(<Py_ssize_t> requested, items))


def gemm_forward(const floating[:, :, :, ::1] x not None,
                 const floating[:, :, :, ::1] w not None,
                 const floating[::1] bias not None,
                 floating[:, :, :, ::1] y not None,
                 int sh, int sw, int pt, int pl, int dh, int dw, int groups, int num_threads,
                 Py_ssize_t tile_floats):
    """y = conv(x, w) + bias (``bias`` of length 0: none).  Writes every element of y."""
    cdef _Setup s = _setup(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1],
                           y.shape[2], y.shape[3], w.shape[2], w.shape[3], sh, sw, pt, pl, dh,
                           dw, groups, num_threads, tile_floats)
    cdef Gemm g = s.g
    cdef object dtype = np.float32 if floating is float else np.float64
    num_threads = _threads(num_threads, g.groups * g.tiles)
    cdef Py_ssize_t cols_max = g.samples * g.rows * g.OW
    cdef Py_ssize_t col_size = g.K * cols_max, out_size = g.Og * cols_max if g.samples > 1 else 0
    cdef floating[::1] scratch = np.empty(
        (g.O * g.K if s.packed else 0) + num_threads * (col_size + out_size) + 1, dtype=dtype)
    cdef floating *packedp = &scratch[0]
    cdef floating *threadp = packedp + (g.O * g.K if s.packed else 0)
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *wp = &w[0, 0, 0, 0]
    cdef const floating *bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef const Py_ssize_t *tapp = &s.tap[0]
    cdef Py_ssize_t it, grp
    cdef Tile t
    cdef const floating *b_mat
    cdef floating *col
    cdef floating *out
    cdef floating *y_tile
    cdef floating zero = 0, one = 1
    with nogil:
        if s.packed:
            _pack(wp, packedp, &g, tapp)
            wp = packedp
        for it in prange(g.groups * g.tiles, schedule='static', num_threads=num_threads):
            grp = it // g.tiles
            t = _tile(it % g.tiles, &g)
            col = threadp + threadid() * (col_size + out_size)
            out = col + col_size
            if _reads_in_place(&g, &t):
                b_mat = xp + (t.n0 * g.C + grp * g.Cg) * g.P + t.oh0 * g.OW
            else:
                _im2col(xp, col, &g, tapp, &t, grp)
                b_mat = col
            if t.n1 - t.n0 == 1:
                y_tile = yp + (t.n0 * g.O + grp * g.Og) * g.P + t.oh0 * g.OW
                _fill(y_tile, bp + grp * g.Og if bp != NULL else NULL, g.Og, t.cols, g.P)
                gemm(c'N', c'N', g.Og, t.cols, g.K, wp + grp * g.Og * g.K, g.ldw, b_mat,
                     g.P if _reads_in_place(&g, &t) else t.cols, one, y_tile, g.P)
            else:
                gemm(c'N', c'N', g.Og, t.cols, g.K, wp + grp * g.Og * g.K, g.ldw, b_mat,
                     t.cols, zero, out, t.cols)
                _scatter_rows(out, yp, bp, &g, &t, grp)


def gemm_backward_data(const floating[:, :, :, ::1] gy not None,
                       const floating[:, :, :, ::1] w not None,
                       const floating[::1] initial not None,
                       floating[:, :, :, ::1] gx not None,
                       int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                       int num_threads, Py_ssize_t tile_floats):
    """gx = initial + convᵀ(gy, w) (``initial``: one value per channel of gx, or length 0 for
    zeros).  Each thread owns whole samples of a group, so no two add into one pixel."""
    cdef _Setup s = _setup(gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3], gy.shape[1],
                           gy.shape[2], gy.shape[3], w.shape[2], w.shape[3], sh, sw, pt, pl, dh,
                           dw, groups, num_threads, tile_floats)
    cdef Gemm g = s.g
    cdef object dtype = np.float32 if floating is float else np.float64
    # owners: a whole-sample tile, or one sample with its row tiles
    cdef Py_ssize_t owners = g.tiles if g.row_tiles == 1 else g.N
    num_threads = _threads(num_threads, g.groups * owners)
    cdef Py_ssize_t cols_max = g.samples * g.rows * g.OW
    cdef Py_ssize_t col_size = g.K * cols_max, in_size = g.Og * cols_max if g.samples > 1 else 0
    cdef floating[::1] scratch = np.empty(
        (g.O * g.K if s.packed else 0) + num_threads * (col_size + in_size) + 1, dtype=dtype)
    cdef floating *packedp = &scratch[0]
    cdef floating *threadp = packedp + (g.O * g.K if s.packed else 0)
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *wp = &w[0, 0, 0, 0]
    cdef const floating *ip = &initial[0] if initial.shape[0] > 0 else NULL
    cdef floating *gxp = &gx[0, 0, 0, 0]
    cdef const Py_ssize_t *tapp = &s.tap[0]
    cdef Py_ssize_t it, grp, owner, r, n, HW = g.H * g.W
    cdef Tile t
    cdef const floating *a_mat
    cdef floating *col
    cdef floating *gy_cols
    cdef floating zero = 0, one = 1
    with nogil:
        if s.packed:
            _pack(wp, packedp, &g, tapp)
            wp = packedp
        for it in prange(g.groups * owners, schedule='static', num_threads=num_threads):
            grp = it // owners
            owner = it % owners
            col = threadp + threadid() * (col_size + in_size)
            gy_cols = col + col_size
            t = _tile(owner if g.row_tiles == 1 else owner * g.row_tiles, &g)
            for n in range(t.n0, t.n1):
                _fill(gxp + (n * g.C + grp * g.Cg) * HW, ip + grp * g.Cg if ip != NULL else NULL,
                      g.Cg, HW, HW)
            for r in range(g.row_tiles):
                if r > 0:
                    t = _tile(owner * g.row_tiles + r, &g)
                if t.n1 - t.n0 == 1:
                    a_mat = gyp + (t.n0 * g.O + grp * g.Og) * g.P + t.oh0 * g.OW
                else:
                    _gather_rows(gyp, gy_cols, &g, &t, grp)
                    a_mat = gy_cols
                if _reads_in_place(&g, &t):  # gx's rows are the GEMM's: add in place
                    gemm(c'T', c'N', g.K, t.cols, g.Og, wp + grp * g.Og * g.K, g.ldw, a_mat, g.P,
                         one, gxp + (t.n0 * g.C + grp * g.Cg) * HW + t.oh0 * g.OW, HW)
                    continue
                gemm(c'T', c'N', g.K, t.cols, g.Og, wp + grp * g.Og * g.K, g.ldw, a_mat,
                     g.P if t.n1 - t.n0 == 1 else t.cols, zero, col, t.cols)
                _col2im(col, gxp, &g, tapp, &t, grp)


def gemm_backward_weight(const floating[:, :, :, ::1] gy not None,
                         const floating[:, :, :, ::1] x not None,
                         floating[:, :, :, ::1] gw not None,
                         int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                         int num_threads, Py_ssize_t tile_floats):
    """gw = Σ_tiles gy_tile · im2col(x_tile)ᵀ per group, one partial per thread summed in
    thread order; dead taps get 0."""
    cdef _Setup s = _setup(x.shape[0], x.shape[1], x.shape[2], x.shape[3], gy.shape[1],
                           gy.shape[2], gy.shape[3], gw.shape[2], gw.shape[3], sh, sw, pt, pl,
                           dh, dw, groups, num_threads, tile_floats)
    cdef Gemm g = s.g
    cdef object dtype = np.float32 if floating is float else np.float64
    num_threads = _threads(num_threads, g.groups * g.tiles)
    cdef Py_ssize_t cols_max = g.samples * g.rows * g.OW, size = g.O * g.K
    cdef Py_ssize_t col_size = g.K * cols_max, in_size = g.Og * cols_max if g.samples > 1 else 0
    cdef floating[::1] scratch = np.empty(num_threads * (col_size + in_size) + 1, dtype=dtype)
    cdef floating[:, ::1] partials = np.zeros((num_threads, size + 1), dtype=dtype)
    cdef const floating *gyp = &gy[0, 0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *gwp = &gw[0, 0, 0, 0]
    cdef floating *partp = &partials[0, 0]
    cdef floating *threadp = &scratch[0]
    cdef const Py_ssize_t *tapp = &s.tap[0]
    cdef Py_ssize_t it, grp, e, th, o, c, k, T = g.kh * g.kw
    cdef Tile t
    cdef const floating *a_mat
    cdef const floating *b_mat
    cdef floating *col
    cdef floating *gy_cols
    cdef floating one = 1
    cdef double acc
    with nogil:
        for it in prange(g.groups * g.tiles, schedule='static', num_threads=num_threads):
            grp = it // g.tiles
            t = _tile(it % g.tiles, &g)
            col = threadp + threadid() * (col_size + in_size)
            gy_cols = col + col_size
            if t.n1 - t.n0 == 1:
                a_mat = gyp + (t.n0 * g.O + grp * g.Og) * g.P + t.oh0 * g.OW
            else:
                _gather_rows(gyp, gy_cols, &g, &t, grp)
                a_mat = gy_cols
            if _reads_in_place(&g, &t):
                b_mat = xp + (t.n0 * g.C + grp * g.Cg) * g.P + t.oh0 * g.OW
            else:
                _im2col(xp, col, &g, tapp, &t, grp)
                b_mat = col
            gemm(c'N', c'T', g.Og, g.K, t.cols, a_mat, g.P if t.n1 - t.n0 == 1 else t.cols,
                 b_mat, g.P if _reads_in_place(&g, &t) else t.cols, one,
                 partp + threadid() * (size + 1) + grp * g.Og * g.K, g.ldw)
        if s.packed:
            memset(gwp, 0, g.O * g.Cg * T * sizeof(floating))
        for e in prange(size, schedule='static', num_threads=num_threads):
            acc = 0
            for th in range(num_threads):
                acc = acc + partp[th * (size + 1) + e]
            if s.packed:
                o = e // g.K
                c = e % g.K // g.taps
                k = e % g.taps
                gwp[(o * g.Cg + c) * T + tapp[k]] = <floating> acc
            else:
                gwp[e] = <floating> acc
