"""Linear layer GEMMs, dropout's masked scaling, and nearest-neighbour upsampling.

Linear (``y = x·Wᵀ + b``; x: N × fin, W: fout × fin, y: N × fout) runs scipy's single-threaded
BLAS on one block per thread inside ``prange``: the forward and the input gradient split the N rows;
the weight gradient ``gW = gyᵀ·x`` splits whichever of fout and fin is longer, so no two threads add
into one value and no reduction across threads is needed.  The bias gradient sums columns of gy
in a fixed order (n = 0 … N−1 for every column), whatever the thread count.  The ops validate
and allocate; these loops trust them.
"""

from cython.parallel cimport prange
from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from cython cimport floating

from declcnn._kernels._blas cimport gemm

cdef enum:
    COLUMNS = 64            # bias-gradient columns per task (stack accumulators)
    MIN_PARALLEL = 32768    # below this many elements one thread beats waking the others


cdef inline int _blocks(int threads, Py_ssize_t items) noexcept nogil:
    return <int> max(1, min(<Py_ssize_t> threads, items))


def linear_forward(const floating[:, ::1] x not None, const floating[:, ::1] weight not None,
                   const floating[::1] bias not None, floating[:, ::1] y not None, int threads,
                   bint relu=False):
    """y = x·Wᵀ (+ b when ``bias`` is not empty), then max(y, 0) with ``relu`` (NaN stays NaN,
    as relu); rows of x split across threads."""
    cdef int N = x.shape[0], fin = x.shape[1], fout = weight.shape[0]
    cdef int blocks = _blocks(threads, N), t, row, rows, start, o
    cdef int step = (N + blocks - 1) // blocks
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating beta = 1 if has_bias else 0
    cdef const floating *xp = &x[0, 0]
    cdef const floating *wp = &weight[0, 0]
    cdef const floating *bp = &bias[0] if has_bias else NULL
    cdef floating *yp = &y[0, 0]
    with nogil:
        for t in prange(blocks, schedule='static', num_threads=blocks):
            start = t * step
            rows = min(step, N - start)
            if rows <= 0:
                continue
            if has_bias:
                # Start each row at b and let the GEMM add onto it (beta = 1).
                for row in range(start, start + rows):
                    for o in range(fout):
                        yp[row * fout + o] = bp[o]
            gemm(c'N', c'T', rows, fout, fin, xp + start * fin, fin, wp, fin, beta,
                  yp + start * fout, fout)
            if relu:
                _relu_run(yp + start * fout, rows * fout)


cdef inline void _relu_run(floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating zero = 0
    for i in range(n):
        y[i] = zero if y[i] < zero else y[i]


def linear_backward_input(const floating[:, ::1] grad_y not None,
                          const floating[:, ::1] weight not None,
                          floating[:, ::1] grad_x not None, int threads):
    """gx = gy·W; rows split across threads."""
    cdef int N = grad_y.shape[0], fout = grad_y.shape[1], fin = weight.shape[1]
    cdef int blocks = _blocks(threads, N), t, rows, start
    cdef int step = (N + blocks - 1) // blocks
    cdef floating zero = 0
    cdef const floating *gyp = &grad_y[0, 0]
    cdef const floating *wp = &weight[0, 0]
    cdef floating *gxp = &grad_x[0, 0]
    with nogil:
        for t in prange(blocks, schedule='static', num_threads=blocks):
            start = t * step
            rows = min(step, N - start)
            if rows > 0:
                gemm(c'N', c'N', rows, fin, fout, gyp + start * fout, fout, wp, fin, zero,
                      gxp + start * fin, fin)


def linear_backward_weight(const floating[:, ::1] grad_y not None,
                           const floating[:, ::1] x not None, floating[:, ::1] grad_weight not None,
                           int threads, bint accumulate=False):
    """gW = gyᵀ·x (fout × fin), or gW += gyᵀ·x with ``accumulate`` (the GEMM's beta = 1: the
    network adds into its gradients without a temporary), each thread writing its own block of
    rows or columns of gW."""
    cdef int N = grad_y.shape[0], fout = grad_y.shape[1], fin = x.shape[1]
    cdef bint by_rows = fout >= fin
    cdef int blocks = _blocks(threads, fout if by_rows else fin), t, width, start
    cdef int step = ((fout if by_rows else fin) + blocks - 1) // blocks
    cdef floating beta = 1 if accumulate else 0
    cdef const floating *gyp = &grad_y[0, 0]
    cdef const floating *xp = &x[0, 0]
    cdef floating *gwp = &grad_weight[0, 0]
    with nogil:
        for t in prange(blocks, schedule='static', num_threads=blocks):
            start = t * step
            width = min(step, (fout if by_rows else fin) - start)
            if width <= 0:
                continue
            if by_rows:
                gemm(c'T', c'N', width, fin, N, gyp + start, fout, xp, fin, beta,
                     gwp + start * fin, fin)
            else:
                gemm(c'T', c'N', fout, width, N, gyp, fout, xp + start, fin, beta, gwp + start,
                     fin)


def column_sums(const floating[:, ::1] a not None, floating[::1] sums not None, int threads,
                bint accumulate=False):
    """sums[j] = Σ_i a[i, j] (sums[j] += with ``accumulate``), in double, rows in order; tasks
    of ``COLUMNS`` columns."""
    cdef Py_ssize_t R = a.shape[0], K = a.shape[1]
    cdef Py_ssize_t tasks = (K + COLUMNS - 1) // COLUMNS, task
    cdef const floating *ap = &a[0, 0] if a.size else NULL
    cdef floating *sp = &sums[0] if K else NULL
    if not K:
        return
    with nogil:
        for task in prange(tasks, schedule='static', num_threads=_blocks(threads, tasks)):
            _column_block(ap, sp, R, K, task * COLUMNS, min(<Py_ssize_t> COLUMNS,
                                                            K - task * COLUMNS), accumulate)


cdef void _column_block(const floating *a, floating *sums, Py_ssize_t R, Py_ssize_t K,
                        Py_ssize_t start, Py_ssize_t width, bint accumulate) noexcept nogil:
    cdef double acc[COLUMNS]
    cdef Py_ssize_t i, j
    for j in range(width):
        acc[j] = 0
    for i in range(R):
        for j in range(width):
            acc[j] += a[i * K + start + j]
    for j in range(width):
        # Rounded to floating before adding, as adding a separately returned sum would be.
        if accumulate:
            sums[start + j] = sums[start + j] + <floating> acc[j]
        else:
            sums[start + j] = <floating> acc[j]


def masked_scale(const floating[::1] x not None, const uint8_t[::1] mask not None,
                 floating[::1] y not None, double scale, int threads):
    """y = x · (scale where mask else 0): inverted dropout and its gradient.  A multiply, not a
    select, so a NaN that is dropped stays NaN as in PyTorch."""
    cdef Py_ssize_t n = x.shape[0], step, start, i, end
    cdef int runs = 1 if n < MIN_PARALLEL else threads, t
    cdef floating keep = <floating> scale
    cdef const floating *xp = &x[0] if n else NULL
    cdef const uint8_t *mp = &mask[0] if n else NULL
    cdef floating *yp = &y[0] if n else NULL
    step = (n + runs - 1) // runs
    with nogil:
        for t in prange(runs, schedule='static', num_threads=runs):
            start = t * step
            end = min(start + step, n)
            for i in range(start, end):
                yp[i] = xp[i] * (keep if mp[i] else 0)


def upsample_nearest_forward(const floating[:, :, ::1] x not None,
                             floating[:, :, ::1] y not None, int sh, int sw, int threads):
    """y[p, oh, ow] = x[p, oh // sh, ow // sw] for every plane p (N·C planes)."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OW = W * sw, p
    cdef const floating *xp = &x[0, 0, 0] if x.size else NULL
    cdef floating *yp = &y[0, 0, 0] if y.size else NULL
    if not x.size:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=_blocks(threads, P)):
            _upsample_plane(xp + p * H * W, yp + p * H * sh * OW, H, W, sh, sw)


cdef void _upsample_plane(const floating *x, floating *y, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t sh, Py_ssize_t sw) noexcept nogil:
    cdef Py_ssize_t h, w, j, r, OW = W * sw
    cdef floating *row
    for h in range(H):
        row = y + h * sh * OW
        for w in range(W):
            for j in range(sw):
                row[w * sw + j] = x[h * W + w]
        # The other sh − 1 output rows of this input row are copies of the first.
        for r in range(1, sh):
            memcpy(row + r * OW, row, OW * sizeof(floating))


def upsample_nearest_backward(const floating[:, :, ::1] grad_y not None,
                              floating[:, :, ::1] grad_x not None, int sh, int sw, int threads):
    """gx[p, h, w] = Σ_{i<sh, j<sw} gy[p, h·sh + i, w·sw + j]: the sum over each block."""
    cdef Py_ssize_t P = grad_x.shape[0], H = grad_x.shape[1], W = grad_x.shape[2]
    cdef Py_ssize_t p
    cdef const floating *gyp = &grad_y[0, 0, 0] if grad_y.size else NULL
    cdef floating *gxp = &grad_x[0, 0, 0] if grad_x.size else NULL
    if not grad_x.size:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=_blocks(threads, P)):
            _block_sums(gyp + p * H * sh * W * sw, gxp + p * H * W, H, W, sh, sw)


cdef void _block_sums(const floating *gy, floating *gx, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t sh, Py_ssize_t sw) noexcept nogil:
    cdef Py_ssize_t h, w, i, j, OW = W * sw
    cdef floating total
    cdef const floating *row
    for h in range(H):
        for w in range(W):
            total = 0
            for i in range(sh):
                row = gy + (h * sh + i) * OW + w * sw
                for j in range(sw):
                    total = total + row[j]
            gx[h * W + w] = total
