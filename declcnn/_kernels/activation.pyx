"""Elementwise activations, softmax over one axis, and fused softmax cross-entropy.

Elementwise loops see their arrays flat (length n) and split them into one contiguous run per
thread.  Softmax and cross-entropy see the array as N × C × S (C the softmax axis, S the product
of the axes after it) and work on tasks of one sample × a block of at most ``BLOCK`` positions
along S, so every position's sums over C run in one thread, in order c = 0 … C−1: the results do
not depend on the thread count.  The ops validate and allocate; these loops trust them.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, exp, log, nearbyintf, tanh
from libc.stdint cimport int32_t, int64_t

from cython cimport floating

cdef enum:
    BLOCK = 256             # positions along S per softmax task (stack scratch per task)
    MIN_PARALLEL = 32768    # below this many elements one thread beats waking the others

# The activation codes declcnn/ops/activation.py passes.
cpdef enum Activation:
    RELU
    LEAKY_RELU
    SIGMOID
    TANH

SOFTMAX_BLOCK = BLOCK


cdef inline int _runs(int threads, Py_ssize_t n) noexcept nogil:
    """How many threads an elementwise loop over n values uses."""
    if n < MIN_PARALLEL:
        return 1
    return threads


cdef union _FloatBits:
    float f
    int32_t i


cdef inline float _expf(float x) noexcept nogil:
    """e^x in float32, branch-free so the compiler vectorises the loops that call it (libm's
    expf is a scalar call: sigmoid through it ran 8× slower).

    x = n·ln2 + r with n rounded to nearest and |r| ≤ ln2/2 (ln2 split in two for an exact
    product), e^r by a degree-7 polynomial (Cephes' coefficients), 2^n from the exponent bits,
    built as 2^(n−1)·2 so that n = 128, reached just below the overflow point, still fits.  Past
    the float range the result is inf or 0, and NaN stays NaN.  Within 2 ulp of e^x.
    """
    # Float-typed constants: a bare literal is a double and would drag the sums into double.
    cdef float lowest = -87.0, highest = 88.72283, log2e = 1.44269504
    cdef float ln2_high = 0.693359375, ln2_low = -2.12194440e-4, one = 1, two = 2
    cdef float c0 = 5.0000001201e-1, c1 = 1.6666665459e-1, c2 = 4.1665795894e-2
    cdef float c3 = 8.3334519073e-3, c4 = 1.3981999507e-3, c5 = 1.9875691500e-4
    # Ternaries, not fminf/floorf: those carry NaN and exception rules that keep GCC from
    # vectorising without -ffast-math.
    cdef float c = lowest if x < lowest else (highest if x > highest else x)
    cdef float n = nearbyintf(c * log2e)
    cdef float r = c - n * ln2_high - n * ln2_low
    cdef float p = ((((((c5 * r + c4) * r + c3) * r + c2) * r + c1) * r + c0) * r * r + r
                    + one)
    cdef _FloatBits scale
    scale.i = (<int32_t> n + 126) << 23
    p = p * scale.f * two
    if x > highest:
        p = INFINITY
    if x < lowest:
        p = 0       # e^x < 1.7e-38: below float32's normal range
    if x != x:
        p = x
    return p


cdef inline float _tanhf(float x) noexcept nogil:
    """tanh in float32 as an odd rational function p(x)/q(x) (degrees 13 and 6, Eigen's
    coefficients) on x clamped to ±7.9053, past which tanh rounds to ±1 in float32: one division
    and no exp, branch-free, so it vectorises (within 3e-7 relative of tanh, NaN stays NaN)."""
    cdef float edge = 7.90531110763549805
    cdef float a1 = 4.89352455891786e-03, a3 = 6.37261928875436e-04
    cdef float a5 = 1.48572235717979e-05, a7 = 5.12229709037114e-08
    cdef float a9 = -8.60467152213735e-11, a11 = 2.00018790482477e-13
    cdef float a13 = -2.76076847742355e-16
    cdef float b0 = 4.89352518554385e-03, b2 = 2.26843463243900e-03
    cdef float b4 = 1.18534705686654e-04, b6 = 1.19825839466702e-06
    cdef float c = -edge if x < -edge else (edge if x > edge else x)
    cdef float z = c * c
    cdef float p = c * ((((((a13 * z + a11) * z + a9) * z + a7) * z + a5) * z + a3) * z + a1)
    cdef float q = ((b6 * z + b4) * z + b2) * z + b0
    return p / q


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return _expf(v)
    else:
        return exp(v)


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # 1/(1 + e^{−v}) overflows e^{−v} to inf for very negative v and gives 0, as PyTorch's does.
    # A typed 1: Cython writes a bare 1 here as the double 1.0, which doubled the cost.
    cdef floating one = 1
    return one / (one + _exp(-v))


cdef void _forward_run(int code, floating slope, const floating *x, floating *y,
                       Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    if code == RELU:
        for i in range(n):
            v = x[i]
            # "v < 0" is false for NaN, so NaN passes through as in PyTorch.
            y[i] = 0 if v < 0 else v
    elif code == LEAKY_RELU:
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else v * slope
    elif code == SIGMOID:
        for i in range(n):
            y[i] = _sigmoid(x[i])
    else:
        for i in range(n):
            if floating is float:
                y[i] = _tanhf(x[i])
            else:
                y[i] = tanh(x[i])


cdef void _backward_run(int code, floating slope, const floating *gy, const floating *v,
                        floating *gx, Py_ssize_t n) noexcept nogil:
    """``v`` is the input x for relu and leaky relu, the output y for sigmoid and tanh."""
    cdef Py_ssize_t i
    cdef floating one = 1
    if code == RELU:
        # PyTorch's threshold_backward: zero where v ≤ 0, so a NaN input passes its gradient.
        for i in range(n):
            gx[i] = 0 if v[i] <= 0 else gy[i]
    elif code == LEAKY_RELU:
        for i in range(n):
            gx[i] = gy[i] if v[i] > 0 else gy[i] * slope
    elif code == SIGMOID:
        for i in range(n):
            gx[i] = gy[i] * v[i] * (one - v[i])
    else:
        for i in range(n):
            gx[i] = gy[i] * (one - v[i] * v[i])


def activation_forward(int code, const floating[::1] x not None, floating[::1] y not None,
                       double slope, int threads):
    """y = f(x) for the activation ``code``; ``slope`` is leaky relu's negative slope."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int runs = _runs(threads, n), t
    cdef Py_ssize_t step = (n + runs - 1) // runs, start
    cdef floating s = <floating> slope
    cdef const floating *xp = &x[0] if n else NULL
    cdef floating *yp = &y[0] if n else NULL
    with nogil:
        for t in prange(runs, schedule='static', num_threads=runs):
            start = t * step
            if start < n:
                _forward_run(code, s, xp + start, yp + start, min(step, n - start))


def activation_backward(int code, const floating[::1] gy not None, const floating[::1] v not None,
                        floating[::1] gx not None, double slope, int threads):
    """gx = gy · f′ expressed in ``v`` (x for relu/leaky relu, y for sigmoid/tanh)."""
    cdef Py_ssize_t n = gy.shape[0]
    cdef int runs = _runs(threads, n), t
    cdef Py_ssize_t step = (n + runs - 1) // runs, start
    cdef floating s = <floating> slope
    cdef const floating *gyp = &gy[0] if n else NULL
    cdef const floating *vp = &v[0] if n else NULL
    cdef floating *gxp = &gx[0] if n else NULL
    with nogil:
        for t in prange(runs, schedule='static', num_threads=runs):
            start = t * step
            if start < n:
                _backward_run(code, s, gyp + start, vp + start, gxp + start,
                              min(step, n - start))


cdef void _softmax_block(const floating *x, floating *y, Py_ssize_t C, Py_ssize_t S,
                         Py_ssize_t width, bint take_log) noexcept nogil:
    """Softmax (or log-softmax) over c of x[c·S + s] for s < width; x and y point at the block's
    first position of one sample."""
    cdef double peak[BLOCK]
    cdef double total[BLOCK]
    cdef Py_ssize_t c, s
    cdef double v
    for s in range(width):
        peak[s] = x[s]
        total[s] = 0
    for c in range(1, C):
        for s in range(width):
            v = x[c * S + s]
            # A NaN anywhere in the column makes the sum NaN, so every output is NaN as in
            # PyTorch, whatever the peak.
            if v > peak[s]:
                peak[s] = v
    for c in range(C):
        for s in range(width):
            v = _exp(<floating> (x[c * S + s] - peak[s]))
            total[s] += v
            if not take_log:
                y[c * S + s] = <floating> v
    for s in range(width):
        if take_log:
            total[s] = peak[s] + log(total[s])
        else:
            total[s] = 1 / total[s]
    for c in range(C):
        for s in range(width):
            if take_log:
                y[c * S + s] = <floating> (x[c * S + s] - total[s])
            else:
                y[c * S + s] = <floating> (y[c * S + s] * total[s])


cdef void _softmax_row(const floating *x, floating *y, Py_ssize_t C,
                       bint take_log) noexcept nogil:
    """``_softmax_block`` for S = 1, where a column is a contiguous row: the exponentials go
    through a loop of their own so that it vectorises; the max and the double sum run four
    interleaved chains (one chain of dependent adds was the bottleneck)."""
    cdef Py_ssize_t c, quads = C - C % 4
    cdef floating p0 = x[0], p1 = x[0], p2 = x[0], p3 = x[0], peak
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, total
    for c in range(0, quads, 4):
        p0 = x[c] if x[c] > p0 else p0
        p1 = x[c + 1] if x[c + 1] > p1 else p1
        p2 = x[c + 2] if x[c + 2] > p2 else p2
        p3 = x[c + 3] if x[c + 3] > p3 else p3
    for c in range(quads, C):
        p0 = x[c] if x[c] > p0 else p0
    p0 = p1 if p1 > p0 else p0
    p2 = p3 if p3 > p2 else p2
    peak = p2 if p2 > p0 else p0
    for c in range(C):
        y[c] = _exp(x[c] - peak)
    for c in range(0, quads, 4):
        s0 += y[c]
        s1 += y[c + 1]
        s2 += y[c + 2]
        s3 += y[c + 3]
    for c in range(quads, C):
        s0 += y[c]
    total = (s0 + s1) + (s2 + s3)
    if take_log:
        total = peak + log(total)
        for c in range(C):
            y[c] = <floating> (x[c] - total)
    else:
        total = 1 / total
        for c in range(C):
            y[c] = <floating> (y[c] * total)


cdef void _softmax_grad_block(const floating *gy, const floating *y, floating *gx,
                              Py_ssize_t C, Py_ssize_t S, Py_ssize_t width,
                              bint take_log) noexcept nogil:
    """softmax: gx = y·(gy − Σ_c gy·y); log-softmax: gx = gy − e^y·Σ_c gy."""
    cdef double dot[BLOCK]
    cdef Py_ssize_t c, s, i
    for s in range(width):
        dot[s] = 0
    for c in range(C):
        for s in range(width):
            i = c * S + s
            if take_log:
                dot[s] += gy[i]
            else:
                dot[s] += gy[i] * y[i]
    for c in range(C):
        for s in range(width):
            i = c * S + s
            if take_log:
                gx[i] = <floating> (gy[i] - _exp(y[i]) * dot[s])
            else:
                gx[i] = <floating> (y[i] * (gy[i] - dot[s]))


def softmax_forward(const floating[:, :, ::1] x not None, floating[:, :, ::1] y not None,
                    bint take_log, int threads):
    """y[n, :, s] = softmax (or log-softmax) of x[n, :, s], shifted by the max for stability."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t blocks = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef const floating *xp = &x[0, 0, 0] if x.size else NULL
    cdef floating *yp = &y[0, 0, 0] if y.size else NULL
    if not x.size:
        return
    with nogil:
        if S == 1:
            for n in prange(N, schedule='static', num_threads=threads):
                _softmax_row(xp + n * C, yp + n * C, C, take_log)
        else:
            for task in prange(N * blocks, schedule='static', num_threads=threads):
                n = task // blocks
                s0 = (task % blocks) * BLOCK
                _softmax_block(xp + n * C * S + s0, yp + n * C * S + s0, C, S,
                               min(<Py_ssize_t> BLOCK, S - s0), take_log)


def softmax_backward(const floating[:, :, ::1] gy not None, const floating[:, :, ::1] y not None,
                     floating[:, :, ::1] gx not None, bint take_log, int threads):
    """The input gradient of softmax (or log-softmax) from its output y."""
    cdef Py_ssize_t N = y.shape[0], C = y.shape[1], S = y.shape[2]
    cdef Py_ssize_t blocks = (S + BLOCK - 1) // BLOCK, task, n, s0, offset
    cdef const floating *gyp = &gy[0, 0, 0] if y.size else NULL
    cdef const floating *yp = &y[0, 0, 0] if y.size else NULL
    cdef floating *gxp = &gx[0, 0, 0] if y.size else NULL
    if not y.size:
        return
    with nogil:
        for task in prange(N * blocks, schedule='static', num_threads=threads):
            n = task // blocks
            s0 = (task % blocks) * BLOCK
            offset = n * C * S + s0
            _softmax_grad_block(gyp + offset, yp + offset, gxp + offset, C, S,
                                min(<Py_ssize_t> BLOCK, S - s0), take_log)


cdef double _cross_entropy_block(const floating *x, const int64_t *target, floating *g,
                                 Py_ssize_t C, Py_ssize_t S, Py_ssize_t width,
                                 int64_t ignore_index, double scale) noexcept nogil:
    """Σ over the block's counted positions of −log softmax(x)[target]; writes
    g = scale·(softmax(x) − onehot(target)), zero at ignored positions."""
    cdef double peak[BLOCK]
    cdef double total[BLOCK]
    cdef Py_ssize_t c, s
    cdef double v, loss = 0
    cdef int64_t t
    for s in range(width):
        peak[s] = x[s]
        total[s] = 0
    for c in range(1, C):
        for s in range(width):
            v = x[c * S + s]
            if v > peak[s]:
                peak[s] = v
    for c in range(C):
        for s in range(width):
            v = _exp(<floating> (x[c * S + s] - peak[s]))
            total[s] += v
            g[c * S + s] = <floating> v
    for s in range(width):
        t = target[s]
        if t == ignore_index:
            total[s] = 0
            continue
        loss += peak[s] + log(total[s]) - x[t * S + s]
        total[s] = scale / total[s]
    for c in range(C):
        for s in range(width):
            g[c * S + s] = <floating> (g[c * S + s] * total[s])
    for s in range(width):
        t = target[s]
        if t != ignore_index:
            g[t * S + s] = <floating> (g[t * S + s] - scale)
    return loss


def softmax_cross_entropy(const floating[:, :, ::1] logits not None,
                          const int64_t[:, ::1] target not None, floating[:, :, ::1] grad not None,
                          double[::1] task_loss not None, int64_t ignore_index, double scale,
                          int threads):
    """Per task (sample × block of positions), the summed loss into ``task_loss``; the gradient
    of ``scale`` × that sum into ``grad``.  ``task_loss`` has N · ceil(S / BLOCK) entries."""
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1], S = logits.shape[2]
    cdef Py_ssize_t blocks = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef const floating *xp = &logits[0, 0, 0] if logits.size else NULL
    cdef const int64_t *tp = &target[0, 0] if target.size else NULL
    cdef floating *gp = &grad[0, 0, 0] if grad.size else NULL
    cdef double *lp = &task_loss[0] if task_loss.shape[0] else NULL
    if not logits.size:
        return
    with nogil:
        for task in prange(N * blocks, schedule='static', num_threads=threads):
            n = task // blocks
            s0 = (task % blocks) * BLOCK
            lp[task] = _cross_entropy_block(xp + n * C * S + s0, tp + n * S + s0,
                                            gp + n * C * S + s0, C, S,
                                            min(<Py_ssize_t> BLOCK, S - s0), ignore_index, scale)


def counted_targets(const int64_t[::1] target not None, int64_t classes, int64_t ignore_index):
    """How many targets are counted (not ``ignore_index``); −1 when one of them lies outside
    ``[0, classes)``."""
    cdef Py_ssize_t i, counted = 0
    cdef int64_t t
    with nogil:
        for i in range(target.shape[0]):
            t = target[i]
            if t == ignore_index:
                continue
            if t < 0 or t >= classes:
                counted = -1
                break
            counted += 1
    return counted
