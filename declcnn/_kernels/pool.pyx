"""Pooling loops: max, average and adaptive, forward and backward, NCHW C-contiguous.

Every N·C plane is independent, so forwards split the N·C·OH output rows over threads and
backwards split the N·C input planes (a plane's gradient is written by one thread only, which
needs no reduction and gives the same bits for any thread count).  The ops in
``declcnn/ops/pool.py`` validate, compute output sizes and bins, and allocate; these loops trust
them.  Window rules follow PyTorch's CPU kernels: max takes the first maximum in scan order and a
NaN always wins (so the last NaN is kept); average divides by the window clipped to the padded
input (``count_include_pad``) or to the input.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

from cython cimport floating


cdef enum:
    # windows per step of the 2×2 max pool's vector loop
    VL = 16


cdef struct Span:
    Py_ssize_t start    # first input index the window reads
    Py_ssize_t end      # one past the last
    Py_ssize_t padded   # average pooling: the window's length clipped to the padded input


cdef inline Span _dilated_span(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t kernel,
                               Py_ssize_t dilation, Py_ssize_t size) noexcept nogil:
    """Taps ``start, start+d, … < end`` of output ``o``'s window that fall inside the input."""
    cdef Span span
    cdef Py_ssize_t first = o * stride - pad
    span.end = min(first + (kernel - 1) * dilation + 1, size)
    if first < 0:
        # skip the taps that land in the padding, staying on the dilation grid
        first += ((-first + dilation - 1) // dilation) * dilation
    span.start = first
    span.padded = 0
    return span


cdef inline Span _avg_span(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t kernel,
                           Py_ssize_t size) noexcept nogil:
    """Output ``o``'s window clipped to the input; ``padded`` is its length clipped to the padded
    input (a ceil_mode window hanging past the padding does not count its overhang)."""
    cdef Span span
    cdef Py_ssize_t first = o * stride - pad
    cdef Py_ssize_t last = min(first + kernel, size + pad)
    span.start = max(first, 0)
    span.end = min(last, size)
    span.padded = last - first
    return span


cdef inline Py_ssize_t _divisor(Span h, Span w, bint count_include_pad) noexcept nogil:
    if count_include_pad:
        return h.padded * w.padded
    return (h.end - h.start) * (w.end - w.start)


cdef inline floating _window_max(const floating *plane, Py_ssize_t W,
                                 Py_ssize_t hs, Py_ssize_t he, Py_ssize_t dh,
                                 Py_ssize_t ws, Py_ssize_t we, Py_ssize_t dw,
                                 int64_t *where) noexcept nogil:
    cdef floating best = -INFINITY
    cdef floating v
    cdef Py_ssize_t h, w
    where[0] = hs * W + ws
    h = hs
    while h < he:
        w = ws
        while w < we:
            v = plane[h * W + w]
            if v > best or v != v:
                best = v
                where[0] = h * W + w
            w += dw
        h += dh
    return best


cdef inline floating _run_sum(const floating *run, Py_ssize_t n) noexcept nogil:
    """Sum of ``n`` contiguous values.  Long runs use eight interleaved partial sums: independent
    chains the compiler vectorises (one chain would wait on every add); short runs (n < 8) add
    left to right, as PyTorch does."""
    cdef floating part[8]
    cdef floating total
    cdef Py_ssize_t i = 0, j
    for j in range(8):
        part[j] = 0
    while i + 8 <= n:
        for j in range(8):
            part[j] += run[i + j]
        i += 8
    total = (((part[0] + part[1]) + (part[2] + part[3]))
             + ((part[4] + part[5]) + (part[6] + part[7])))
    while i < n:
        total = total + run[i]
        i += 1
    return total


cdef inline floating _window_sum(const floating *plane, Py_ssize_t W, Py_ssize_t hs,
                                 Py_ssize_t he, Py_ssize_t ws, Py_ssize_t we) noexcept nogil:
    cdef floating total = 0
    cdef Py_ssize_t h
    if ws == 0 and we == W:  # whole rows are one contiguous run (global pooling)
        return _run_sum(plane + hs * W, (he - hs) * W)
    for h in range(hs, he):
        total = total + _run_sum(plane + h * W + ws, we - ws)
    return total


cdef inline void _window_add(floating *plane, Py_ssize_t W, Py_ssize_t hs, Py_ssize_t he,
                             Py_ssize_t ws, Py_ssize_t we, floating g) noexcept nogil:
    cdef Py_ssize_t h, w
    for h in range(hs, he):
        for w in range(ws, we):
            plane[h * W + w] += g


cdef inline void _pick(floating v, int64_t at, floating *best, int64_t *where) noexcept nogil:
    if v > best[0] or v != v:
        best[0] = v
        where[0] = at


cdef inline Py_ssize_t _inside_end(Py_ssize_t size, Py_ssize_t stride, Py_ssize_t pad,
                                   Py_ssize_t extent, Py_ssize_t out) noexcept nogil:
    """One past the last output whose window ends inside the input (0 when none does)."""
    if size + pad < extent:
        return 0
    return min((size + pad - extent) // stride + 1, out)


cdef inline void _max_row_general(const floating *plane, Py_ssize_t W, Span hspan, Py_ssize_t dh,
                                  Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                  Py_ssize_t pw, Py_ssize_t kw, Py_ssize_t dw,
                                  floating *y_row, int64_t *i_row) noexcept nogil:
    cdef Py_ssize_t ow
    cdef Span wspan
    for ow in range(first, last):
        wspan = _dilated_span(ow, sw, pw, kw, dw, W)
        y_row[ow] = _window_max(plane, W, hspan.start, hspan.end, dh, wspan.start, wspan.end,
                                dw, i_row + ow)


cdef inline void _max_row_inside(const floating *plane, Py_ssize_t W, Span hspan, Py_ssize_t dh,
                                 Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                 Py_ssize_t pw, Py_ssize_t kw, Py_ssize_t dw,
                                 floating *y_row, int64_t *i_row) noexcept nogil:
    """Outputs ``first..last`` of a row, whose windows lie inside the input's width: one tap at
    a time across the row, branch-free, so the compiler vectorises over outputs (random data
    mispredicts a per-window branch).  Each output still sees its taps in scan order."""
    cdef Py_ssize_t ow, h, b, at
    cdef floating v
    cdef bint take
    for ow in range(first, last):
        y_row[ow] = -INFINITY
        i_row[ow] = hspan.start * W + ow * sw - pw
    h = hspan.start
    while h < hspan.end:
        for b in range(kw):
            at = h * W + b * dw - pw
            for ow in range(first, last):
                v = plane[at + ow * sw]
                take = (v > y_row[ow]) | (v != v)
                y_row[ow] = v if take else y_row[ow]
                i_row[ow] = at + ow * sw if take else i_row[ow]
        h += dh


cdef inline void _avg_row_general(const floating *plane, Py_ssize_t W, Span hspan,
                                  Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                  Py_ssize_t pw, Py_ssize_t kw, bint count_include_pad,
                                  floating *y_row) noexcept nogil:
    cdef Py_ssize_t ow
    cdef Span wspan
    for ow in range(first, last):
        wspan = _avg_span(ow, sw, pw, kw, W)
        y_row[ow] = (_window_sum(plane, W, hspan.start, hspan.end, wspan.start, wspan.end)
                     / _divisor(hspan, wspan, count_include_pad))


cdef inline void _avg_row_inside(const floating *plane, Py_ssize_t W, Span hspan,
                                 Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                 Py_ssize_t pw, Py_ssize_t kw, bint count_include_pad,
                                 floating *y_row) noexcept nogil:
    """As :func:`_max_row_inside`, for sums: each output adds its taps in scan order."""
    cdef Py_ssize_t ow, h, b, at
    cdef Span wspan
    wspan.start, wspan.end, wspan.padded = 0, kw, kw
    cdef floating divisor = _divisor(hspan, wspan, count_include_pad)
    for ow in range(first, last):
        y_row[ow] = 0
    for h in range(hspan.start, hspan.end):
        for b in range(kw):
            at = h * W + b - pw
            for ow in range(first, last):
                y_row[ow] += plane[at + ow * sw]
    for ow in range(first, last):
        y_row[ow] /= divisor


cdef inline void _avg_scatter_general(floating *plane, Py_ssize_t W, Span hspan,
                                      Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                      Py_ssize_t pw, Py_ssize_t kw, bint count_include_pad,
                                      const floating *g_row) noexcept nogil:
    cdef Py_ssize_t ow
    cdef Span wspan
    for ow in range(first, last):
        wspan = _avg_span(ow, sw, pw, kw, W)
        _window_add(plane, W, hspan.start, hspan.end, wspan.start, wspan.end,
                    g_row[ow] / _divisor(hspan, wspan, count_include_pad))


cdef inline void _avg_scatter_inside(floating *plane, Py_ssize_t W, Span hspan,
                                     Py_ssize_t first, Py_ssize_t last, Py_ssize_t sw,
                                     Py_ssize_t pw, Py_ssize_t kw, bint count_include_pad,
                                     const floating *g_row) noexcept nogil:
    """Backward of :func:`_avg_row_inside`: one tap at a time across the row (vectorised).
    Multiplying by ``1/divisor`` (within an ulp of dividing) keeps kh·kw divisions per output
    out of the inner loop."""
    cdef Py_ssize_t ow, h, b, at
    cdef Span wspan
    wspan.start, wspan.end, wspan.padded = 0, kw, kw
    cdef floating scale = (<floating>1) / _divisor(hspan, wspan, count_include_pad)
    for h in range(hspan.start, hspan.end):
        for b in range(kw):
            at = h * W + b - pw
            for ow in range(first, last):
                plane[at + ow * sw] += g_row[ow] * scale


cdef inline void _max_row_pairs(const floating *row0, Py_ssize_t W, Py_ssize_t base,
                                floating *y_row, int64_t *i_row,
                                Py_ssize_t full) noexcept nogil:
    """k2 s2 p0 d1: the ``full`` complete windows over input rows ``base/W`` and the next one.

    Starting from the first tap equals PyTorch's start from −inf (a −inf or NaN first tap keeps
    its index either way)."""
    cdef const floating *row1 = row0 + W
    cdef Py_ssize_t ow, c
    cdef floating best
    cdef int64_t where
    for ow in range(full):
        c = 2 * ow
        best = row0[c]
        where = base + c
        _pick(row0[c + 1], base + c + 1, &best, &where)
        _pick(row1[c], base + W + c, &best, &where)
        _pick(row1[c + 1], base + W + c + 1, &best, &where)
        y_row[ow] = best
        i_row[ow] = where


cdef inline void _avg_row_pairs(const floating *row0, Py_ssize_t W, floating *y_row,
                                Py_ssize_t full) noexcept nogil:
    cdef const floating *row1 = row0 + W
    cdef Py_ssize_t ow, c
    for ow in range(full):
        c = 2 * ow
        # PyTorch's order: row by row, left to right; /4 is exact as ·0.25
        y_row[ow] = (((row0[c] + row0[c + 1]) + row1[c]) + row1[c + 1]) * <floating>0.25


def max_pool2d_forward(const floating[:, :, :, ::1] x not None,
                       floating[:, :, :, ::1] y not None,
                       int64_t[:, :, :, ::1] indices not None,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                       int num_threads):
    """``y[n,c,i,j] = max over a<kh, b<kw of x[n,c, i·sh−ph+a·dh, j·sw−pw+b·dw]`` (taps in the
    padding skipped) and ``indices`` the flat ``h·W+w`` of that tap.  Every window must hold at
    least one input tap (the op checks)."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t rows = x.shape[0] * x.shape[1] * OH
    if rows == 0 or OW == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef int64_t *ip = &indices[0, 0, 0, 0]
    cdef bint pairs = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 \
        and dh == 1 and dw == 1
    # with ceil_mode an odd side adds a last, clipped window: the general loop takes it
    cdef Py_ssize_t full = min(OW, W // 2) if pairs else 0
    # outputs first..last have windows wholly inside the width; the rest touch the padding
    cdef Py_ssize_t first = min((pw + sw - 1) // sw, OW)
    cdef Py_ssize_t last = max(_inside_end(W, sw, pw, (kw - 1) * dw + 1, OW), first)
    cdef Py_ssize_t r, oh
    cdef Span hspan
    cdef const floating *plane
    with nogil:
        for r in prange(rows, schedule='static', num_threads=num_threads):
            plane = xp + (r // OH) * H * W
            oh = r % OH
            hspan = _dilated_span(oh, sh, ph, kh, dh, H)
            if pairs and 2 * oh + 1 < H:
                _max_row_pairs(plane + 2 * oh * W, W, 2 * oh * W, yp + r * OW, ip + r * OW, full)
                _max_row_general(plane, W, hspan, dh, full, OW, sw, pw, kw, dw,
                                 yp + r * OW, ip + r * OW)
            else:
                _max_row_general(plane, W, hspan, dh, 0, first, sw, pw, kw, dw,
                                 yp + r * OW, ip + r * OW)
                _max_row_inside(plane, W, hspan, dh, first, last, sw, pw, kw, dw,
                                yp + r * OW, ip + r * OW)
                _max_row_general(plane, W, hspan, dh, last, OW, sw, pw, kw, dw,
                                 yp + r * OW, ip + r * OW)


def max_pool2d_forward_2x2(const floating[:, :, :, ::1] x not None,
                           floating[:, :, :, ::1] y not None,
                           int64_t[:, :, :, ::1] indices not None, bint relu, int num_threads):
    """``max_pool2d_forward`` for kernel 2, stride 2, no padding or dilation, floor mode (each
    window whole inside the input), with ``relu`` applied to the maxima when asked; an empty
    ``indices`` (shape (0, 0, 0, 0)) skips them (inference needs none).

    Per window the taps are taken in scan order as :func:`_pick` takes them (a later tap wins
    when greater or NaN), written as selects so that the loop over a row's windows has no
    branch.  ``relu`` keeps NaN (``v < 0`` is false for it), as relu does."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    if planes == 0 or OH == 0 or OW == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef bint values_only = indices.shape[0] == 0
    cdef int64_t *ip = NULL if values_only else &indices[0, 0, 0, 0]
    cdef Py_ssize_t p
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            _max_plane_2x2(xp + p * H * W, yp + p * OH * OW,
                           NULL if values_only else ip + p * OH * OW, H, W, OH, OW, relu,
                           p == planes - 1)


cdef inline void _max_windows_2x2(const floating *row0, Py_ssize_t W, int64_t base,
                                  floating *best, int64_t *at, bint relu) noexcept nogil:
    """best[j], at[j] for the VL windows whose top-left taps are row0[2j] (j < VL), ``at``
    counted from ``base`` (NULL: no indices): a fixed trip count, which GCC vectorises
    (even/odd lanes), where a row's 5 or 14 windows ran as scalar selects.  Without indices a
    loop of its own does none of their work (inference keeps none)."""
    cdef const floating *row1 = row0 + W
    cdef Py_ssize_t j
    cdef floating v
    cdef bint take
    if at == NULL:
        for j in range(VL):
            best[j] = row0[2 * j]
            v = row0[2 * j + 1]
            best[j] = v if (v > best[j]) | (v != v) else best[j]
            v = row1[2 * j]
            best[j] = v if (v > best[j]) | (v != v) else best[j]
            v = row1[2 * j + 1]
            best[j] = v if (v > best[j]) | (v != v) else best[j]
            if relu:
                best[j] = 0 if best[j] < 0 else best[j]
        return
    for j in range(VL):
        best[j] = row0[2 * j]
        at[j] = base + 2 * j
        v = row0[2 * j + 1]
        take = (v > best[j]) | (v != v)
        best[j] = v if take else best[j]
        at[j] = base + 2 * j + 1 if take else at[j]
        v = row1[2 * j]
        take = (v > best[j]) | (v != v)
        best[j] = v if take else best[j]
        at[j] = base + W + 2 * j if take else at[j]
        v = row1[2 * j + 1]
        take = (v > best[j]) | (v != v)
        best[j] = v if take else best[j]
        at[j] = base + W + 2 * j + 1 if take else at[j]
        if relu:
            best[j] = 0 if best[j] < 0 else best[j]


cdef void _max_plane_2x2(const floating *x, floating *y, int64_t *where, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, bint relu,
                         bint last) noexcept nogil:
    """A plane's windows VL at a time (``_max_windows_2x2``; ``where`` NULL: no indices), the
    last VL of a row overlapping the ones before; a row narrower than VL reads on into the
    rows after it, which the rows at the end of the batch's ``last`` plane cannot: those go
    one window at a time."""
    cdef Py_ssize_t oh, ow0, v, j, rows = OH, chunks = (OW + VL - 1) // VL
    cdef floating best[VL]
    cdef int64_t at[VL]
    if last:
        while rows > 0 and 2 * (rows - 1) * W + W + 2 * max(OW, <Py_ssize_t> VL) > H * W:
            rows -= 1
    for oh in range(rows):
        if OW < VL:
            _max_windows_2x2(x + 2 * oh * W, W, 2 * oh * W, best,
                             NULL if where == NULL else at, relu)
            for j in range(OW):
                y[oh * OW + j] = best[j]
                if where != NULL:
                    where[oh * OW + j] = at[j]
            continue
        for v in range(chunks):
            ow0 = min(v * VL, OW - VL)
            _max_windows_2x2(x + 2 * oh * W + 2 * ow0, W, 2 * oh * W + 2 * ow0,
                             y + oh * OW + ow0,
                             NULL if where == NULL else where + oh * OW + ow0, relu)
    _max_rows_2x2(x, y, where, W, rows, OH, OW, relu)


cdef void _max_rows_2x2(const floating *x, floating *y, int64_t *where, Py_ssize_t W,
                        Py_ssize_t oh0, Py_ssize_t OH, Py_ssize_t OW, bint relu) noexcept nogil:
    """The windows of rows oh0 … OH − 1 one at a time (``where`` NULL: no indices)."""
    cdef Py_ssize_t oh, ow, c
    cdef const floating *row0
    cdef const floating *row1
    cdef floating best, v
    cdef int64_t at, base
    cdef bint take
    for oh in range(oh0, OH):
        row0 = x + 2 * oh * W
        row1 = row0 + W
        base = 2 * oh * W
        for ow in range(OW):
            c = 2 * ow
            best = row0[c]
            at = base + c
            v = row0[c + 1]
            take = (v > best) | (v != v)
            best = v if take else best
            at = base + c + 1 if take else at
            v = row1[c]
            take = (v > best) | (v != v)
            best = v if take else best
            at = base + W + c if take else at
            v = row1[c + 1]
            take = (v > best) | (v != v)
            best = v if take else best
            at = base + W + c + 1 if take else at
            if relu:
                best = 0 if best < 0 else best
            y[oh * OW + ow] = best
            if where != NULL:
                where[oh * OW + ow] = at


def adaptive_max_pool2d_forward(const floating[:, :, :, ::1] x not None,
                                floating[:, :, :, ::1] y not None,
                                int64_t[:, :, :, ::1] indices not None,
                                const int64_t[::1] row_start not None,
                                const int64_t[::1] row_end not None,
                                const int64_t[::1] col_start not None,
                                const int64_t[::1] col_end not None,
                                int num_threads):
    """``y[n,c,i,j] = max of x[n,c, row_start[i]:row_end[i], col_start[j]:col_end[j]]``."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t rows = x.shape[0] * x.shape[1] * OH
    if rows == 0 or OW == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef int64_t *ip = &indices[0, 0, 0, 0]
    cdef const int64_t *hs = &row_start[0]
    cdef const int64_t *he = &row_end[0]
    cdef const int64_t *ws = &col_start[0]
    cdef const int64_t *we = &col_end[0]
    cdef Py_ssize_t r, oh, ow
    with nogil:
        for r in prange(rows, schedule='static', num_threads=num_threads):
            oh = r % OH
            for ow in range(OW):
                yp[r * OW + ow] = _window_max(xp + (r // OH) * H * W, W, hs[oh], he[oh], 1,
                                              ws[ow], we[ow], 1, ip + r * OW + ow)


def max_pool2d_backward(const floating[:, :, :, ::1] grad_y not None,
                        const int64_t[:, :, :, ::1] indices not None,
                        floating[:, :, :, ::1] grad_x not None,
                        int num_threads, const floating[:, :, :, ::1] relu_output=None):
    """``grad_x[n,c].flat[indices[n,c,i,j]] += grad_y[n,c,i,j]`` in output scan order (max and
    adaptive max alike).  Returns how many indices fall outside the ``H·W`` plane (skipped).

    With ``relu_output`` (the pool's output after a relu the network folded into it) a gradient
    counts only where that output is > 0 or NaN, as relu's backward: 0 is added instead."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t HW = grad_x.shape[2] * grad_x.shape[3]
    cdef Py_ssize_t OHW = grad_y.shape[2] * grad_y.shape[3]
    cdef Py_ssize_t p, j
    cdef int64_t at
    cdef Py_ssize_t outside = 0
    cdef bint masked = relu_output is not None and relu_output.size > 0
    cdef floating g
    if planes == 0:
        return 0
    cdef const floating *gyp = &grad_y[0, 0, 0, 0] if grad_y.size else NULL
    cdef const int64_t *ip = &indices[0, 0, 0, 0] if indices.size else NULL
    cdef const floating *yp = &relu_output[0, 0, 0, 0] if masked else NULL
    cdef floating *gxp = &grad_x[0, 0, 0, 0]
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            memset(gxp + p * HW, 0, HW * sizeof(floating))
            for j in range(OHW):
                at = ip[p * OHW + j]
                g = gyp[p * OHW + j]
                if masked:
                    g = 0 if yp[p * OHW + j] <= 0 else g
                if 0 <= at < HW:
                    gxp[p * HW + at] += g
                else:
                    outside += 1
    return outside


def avg_pool2d_forward(const floating[:, :, :, ::1] x not None,
                       floating[:, :, :, ::1] y not None,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                       int num_threads):
    """``y[n,c,i,j] = Σ x[n,c, window] / divisor``, the window ``kh×kw`` at ``(i·sh−ph,
    j·sw−pw)`` clipped to the input; the divisor is its size clipped to the padded input when
    ``count_include_pad``, else the number of input pixels it covers."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t rows = x.shape[0] * x.shape[1] * OH
    if rows == 0 or OW == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef bint pairs = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    cdef Py_ssize_t full = min(OW, W // 2) if pairs else 0
    cdef Py_ssize_t first = min((pw + sw - 1) // sw, OW)
    cdef Py_ssize_t last = max(_inside_end(W, sw, pw, kw, OW), first)
    cdef Py_ssize_t r, oh
    cdef Span hspan
    cdef const floating *plane
    with nogil:
        for r in prange(rows, schedule='static', num_threads=num_threads):
            plane = xp + (r // OH) * H * W
            oh = r % OH
            hspan = _avg_span(oh, sh, ph, kh, H)
            if pairs and 2 * oh + 1 < H:
                _avg_row_pairs(plane + 2 * oh * W, W, yp + r * OW, full)
                _avg_row_general(plane, W, hspan, full, OW, sw, pw, kw, count_include_pad,
                                 yp + r * OW)
            else:
                _avg_row_general(plane, W, hspan, 0, first, sw, pw, kw, count_include_pad,
                                 yp + r * OW)
                _avg_row_inside(plane, W, hspan, first, last, sw, pw, kw, count_include_pad,
                                yp + r * OW)
                _avg_row_general(plane, W, hspan, last, OW, sw, pw, kw, count_include_pad,
                                 yp + r * OW)


def avg_pool2d_backward(const floating[:, :, :, ::1] grad_y not None,
                        floating[:, :, :, ::1] grad_x not None,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                        int num_threads):
    """Each ``grad_y[n,c,i,j] / divisor`` is added to every input pixel of its window (the
    forward's window and divisor), outputs in scan order."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t H = grad_x.shape[2], W = grad_x.shape[3]
    cdef Py_ssize_t OH = grad_y.shape[2], OW = grad_y.shape[3]
    if planes == 0:
        return
    cdef const floating *gyp = &grad_y[0, 0, 0, 0]
    cdef floating *gxp = &grad_x[0, 0, 0, 0]
    cdef bint pairs = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    cdef Py_ssize_t first = min((pw + sw - 1) // sw, OW)
    cdef Py_ssize_t last = max(_inside_end(W, sw, pw, kw, OW), first)
    cdef Py_ssize_t p, oh, ow, h, c
    cdef Span hspan
    cdef Py_ssize_t full_h = H // 2 if pairs else 0
    cdef Py_ssize_t full_w = W // 2 if pairs else 0
    cdef floating *plane
    cdef const floating *g
    cdef floating share
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            plane = gxp + p * H * W
            g = gyp + p * OH * OW
            if pairs:
                # complete 2×2 windows tile the top-left 2·full_h × 2·full_w block without
                # overlap, so they assign; an odd last row or column is zeroed, then takes
                # what a clipped ceil_mode window sends it
                for oh in range(full_h):
                    for c in range(2):
                        h = (2 * oh + c) * W
                        for ow in range(full_w):
                            share = g[oh * OW + ow] * <floating>0.25
                            plane[h + 2 * ow] = share
                            plane[h + 2 * ow + 1] = share
                        if W % 2:
                            plane[h + W - 1] = 0
                if H % 2:
                    memset(plane + (H - 1) * W, 0, W * sizeof(floating))
            else:
                memset(plane, 0, H * W * sizeof(floating))
            for oh in range(OH):
                hspan = _avg_span(oh, sh, ph, kh, H)
                if pairs:
                    _avg_scatter_general(plane, W, hspan, full_w if oh < full_h else 0, OW, sw,
                                         pw, kw, count_include_pad, g + oh * OW)
                else:
                    _avg_scatter_general(plane, W, hspan, 0, first, sw, pw, kw,
                                         count_include_pad, g + oh * OW)
                    _avg_scatter_inside(plane, W, hspan, first, last, sw, pw, kw,
                                        count_include_pad, g + oh * OW)
                    _avg_scatter_general(plane, W, hspan, last, OW, sw, pw, kw,
                                         count_include_pad, g + oh * OW)


def adaptive_avg_pool2d_forward(const floating[:, :, :, ::1] x not None,
                                floating[:, :, :, ::1] y not None,
                                const int64_t[::1] row_start not None,
                                const int64_t[::1] row_end not None,
                                const int64_t[::1] col_start not None,
                                const int64_t[::1] col_end not None,
                                int num_threads):
    """``y[n,c,i,j] = Σ x[n,c, bin i, bin j] / rows / cols`` (PyTorch divides twice)."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t rows = x.shape[0] * x.shape[1] * OH
    if rows == 0 or OW == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef const int64_t *hs = &row_start[0]
    cdef const int64_t *he = &row_end[0]
    cdef const int64_t *ws = &col_start[0]
    cdef const int64_t *we = &col_end[0]
    cdef Py_ssize_t r, oh, ow
    with nogil:
        for r in prange(rows, schedule='static', num_threads=num_threads):
            oh = r % OH
            for ow in range(OW):
                yp[r * OW + ow] = (
                    _window_sum(xp + (r // OH) * H * W, W, hs[oh], he[oh], ws[ow], we[ow])
                    / <floating>(he[oh] - hs[oh]) / <floating>(we[ow] - ws[ow])
                )


def adaptive_avg_pool2d_backward(const floating[:, :, :, ::1] grad_y not None,
                                 floating[:, :, :, ::1] grad_x not None,
                                 const int64_t[::1] row_start not None,
                                 const int64_t[::1] row_end not None,
                                 const int64_t[::1] col_start not None,
                                 const int64_t[::1] col_end not None,
                                 int num_threads):
    """Each ``grad_y[n,c,i,j] / rows / cols`` is added to every pixel of its bin."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t H = grad_x.shape[2], W = grad_x.shape[3]
    cdef Py_ssize_t OH = grad_y.shape[2], OW = grad_y.shape[3]
    if planes == 0:
        return
    cdef const floating *gyp = &grad_y[0, 0, 0, 0]
    cdef floating *gxp = &grad_x[0, 0, 0, 0]
    cdef const int64_t *hs = &row_start[0]
    cdef const int64_t *he = &row_end[0]
    cdef const int64_t *ws = &col_start[0]
    cdef const int64_t *we = &col_end[0]
    cdef Py_ssize_t p, oh, ow
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            memset(gxp + p * H * W, 0, H * W * sizeof(floating))
            for oh in range(OH):
                for ow in range(OW):
                    _window_add(gxp + p * H * W, W, hs[oh], he[oh], ws[ow], we[ow],
                                gyp[(p * OH + oh) * OW + ow]
                                / <floating>(he[oh] - hs[oh]) / <floating>(we[ow] - ws[ow]))
