"""Batch-norm loops over x seen as N × C × S (S = H·W).

Per-channel sums (``channel_stats``, ``channel_grad_sums``) give each thread whole channels and
add in double in a fixed order (planes n = 0 … N−1, four interleaved chains within a plane), so
the results are the same bits for any thread count.  The elementwise passes
(``channel_affine``, ``channel_grad_input``) split the N·C planes.  The ops validate, allocate
and turn the sums into per-channel coefficients; these loops trust them.
"""

from cython.parallel cimport prange

from cython cimport floating


cdef inline int _threads_for(int requested, Py_ssize_t items) noexcept nogil:
    return <int> max(1, min(<Py_ssize_t> requested, items))


cdef inline double _plane_sum(const floating *a, Py_ssize_t size, double centre) noexcept nogil:
    """Σ (a − centre) in double, four independent chains so the adds pipeline."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t p, quads = size - size % 4
    for p in range(0, quads, 4):
        s0 += a[p] - centre
        s1 += a[p + 1] - centre
        s2 += a[p + 2] - centre
        s3 += a[p + 3] - centre
    for p in range(quads, size):
        s0 += a[p] - centre
    return (s0 + s1) + (s2 + s3)


cdef inline double _plane_squares(const floating *a, Py_ssize_t size,
                                  double centre) noexcept nogil:
    """Σ (a − centre)² in double."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, d0, d1, d2, d3
    cdef Py_ssize_t p, quads = size - size % 4
    for p in range(0, quads, 4):
        d0 = a[p] - centre
        d1 = a[p + 1] - centre
        d2 = a[p + 2] - centre
        d3 = a[p + 3] - centre
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    for p in range(quads, size):
        d0 = a[p] - centre
        s0 += d0 * d0
    return (s0 + s1) + (s2 + s3)


cdef inline double _plane_dot(const floating *a, const floating *b, Py_ssize_t size,
                              double centre) noexcept nogil:
    """Σ a·(b − centre) in double."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t p, quads = size - size % 4
    for p in range(0, quads, 4):
        s0 += a[p] * (b[p] - centre)
        s1 += a[p + 1] * (b[p + 1] - centre)
        s2 += a[p + 2] * (b[p + 2] - centre)
        s3 += a[p + 3] * (b[p + 3] - centre)
    for p in range(quads, size):
        s0 += a[p] * (b[p] - centre)
    return (s0 + s1) + (s2 + s3)


def channel_stats(const floating[:, :, ::1] x not None, double[::1] mean not None,
                  double[::1] var not None, int threads):
    """mean[c] = Σ x[:, c] / M and the biased var[c] = Σ (x[:, c] − mean[c])² / M, M = N·S,
    in two passes (a one-pass Σx² − (Σx)²/M loses digits when the mean is large)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef double count = N * S, total
    cdef const floating *xp = &x[0, 0, 0]
    with nogil:
        for c in prange(C, schedule='static', num_threads=_threads_for(threads, C)):
            total = 0
            for n in range(N):
                total = total + _plane_sum(xp + (n * C + c) * S, S, 0)
            mean[c] = total / count
            total = 0
            for n in range(N):
                total = total + _plane_squares(xp + (n * C + c) * S, S, mean[c])
            var[c] = total / count


def channel_affine(const floating[:, :, ::1] x not None, floating[:, :, ::1] y not None,
                   const double[::1] centre not None, const double[::1] scale not None,
                   const double[::1] shift not None, int threads):
    """y[n, c] = (x[n, c] − centre[c])·scale[c] + shift[c], in double: x − centre in float32
    would lose the digits of a channel whose mean is large next to its spread."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], plane, p, c
    cdef const floating *src
    cdef floating *dst
    cdef double m, a, b
    with nogil:
        for plane in prange(N * C, schedule='static',
                            num_threads=_threads_for(threads, N * C)):
            c = plane % C
            m = centre[c]
            a = scale[c]
            b = shift[c]
            src = &x[0, 0, 0] + plane * S
            dst = &y[0, 0, 0] + plane * S
            for p in range(S):
                dst[p] = <floating> ((src[p] - m) * a + b)


def channel_grad_sums(const floating[:, :, ::1] grad_y not None,
                      const floating[:, :, ::1] x not None, const double[::1] centre not None,
                      double[::1] sum_grad not None, double[::1] sum_grad_centred not None,
                      int threads):
    """sum_grad[c] = Σ gy[:, c]; sum_grad_centred[c] = Σ gy[:, c]·(x[:, c] − centre[c])."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n, offset
    cdef double total, dot
    cdef const floating *gyp = &grad_y[0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0]
    with nogil:
        for c in prange(C, schedule='static', num_threads=_threads_for(threads, C)):
            total = 0
            dot = 0
            for n in range(N):
                offset = (n * C + c) * S
                total = total + _plane_sum(gyp + offset, S, 0)
                dot = dot + _plane_dot(gyp + offset, xp + offset, S, centre[c])
            sum_grad[c] = total
            sum_grad_centred[c] = dot


def channel_grad_input(const floating[:, :, ::1] grad_y not None,
                       const floating[:, :, ::1] x not None, floating[:, :, ::1] grad_x not None,
                       const double[::1] centre not None, const double[::1] a not None,
                       const double[::1] b not None, const double[::1] d not None, int threads):
    """gx[n, c] = gy[n, c]·a[c] + (x[n, c] − centre[c])·b[c] + d[c], in double as above."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], plane, p, c
    cdef const floating *gy
    cdef const floating *xs
    cdef floating *gx
    cdef double ac, bc, dc, mc
    with nogil:
        for plane in prange(N * C, schedule='static',
                            num_threads=_threads_for(threads, N * C)):
            c = plane % C
            ac = a[c]
            bc = b[c]
            dc = d[c]
            mc = centre[c]
            gy = &grad_y[0, 0, 0] + plane * S
            xs = &x[0, 0, 0] + plane * S
            gx = &grad_x[0, 0, 0] + plane * S
            for p in range(S):
                gx[p] = <floating> (gy[p] * ac + (xs[p] - mc) * bc + dc)
