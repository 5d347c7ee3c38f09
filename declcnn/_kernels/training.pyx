"""The training loop's own passes: counting correct predictions and the SGD update.

The module is built with ``-ffp-contract=off``: the SGD update rounds after every multiply and
every add, as numpy's elementwise ops (the per-array reference) do; a fused multiply-add rounds
once and would change the weights' bits.  The callers validate; these loops trust them.
"""

from cython.parallel cimport prange
from libc.stdint cimport int64_t

from cython cimport floating


def correct_predictions(const floating[:, :, ::1] scores not None,
                        const int64_t[:, ::1] target not None, int64_t ignore_index):
    """``(correct, counted)``: of the targets not equal to ``ignore_index``, how many are the
    first maximum of their scores along axis 1 (a NaN counts as the maximum, as numpy's
    argmax)."""
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1], S = scores.shape[2]
    cdef Py_ssize_t n, c, s, best
    cdef Py_ssize_t correct = 0, counted = 0
    cdef floating top, v
    cdef int64_t t
    if C == 0:
        return 0, 0
    with nogil:
        for n in range(N):
            for s in range(S):
                t = target[n, s]
                if t == ignore_index:
                    continue
                counted += 1
                best, top = 0, scores[n, 0, s]
                for c in range(1, C):
                    if top != top:
                        break
                    v = scores[n, c, s]
                    if v > top or v != v:
                        best, top = c, v
                correct += best == t
    return correct, counted


def sgd_update(floating[::1] param not None, const floating[::1] grad not None,
               floating[::1] buffer not None, floating lr, floating momentum,
               floating weight_decay, bint nesterov, bint first, int threads):
    """One SGD step over flat arrays, as ``optimizers.SGD`` defines it: ``g = grad + λ·p``
    (λ ≠ 0); with momentum (``buffer`` not empty) ``b = g`` on the ``first`` step, else
    ``b = μ·b + g``, then ``g = g + μ·b`` (``nesterov``) or ``g = b``; ``p = p − lr·g``."""
    cdef Py_ssize_t i, n = param.shape[0]
    cdef bint decay = weight_decay != 0, has_momentum = buffer.shape[0] > 0
    cdef floating *pp
    cdef const floating *gp
    cdef floating *bp
    cdef floating g, b
    if n == 0:
        return
    pp, gp = &param[0], &grad[0]
    bp = &buffer[0] if has_momentum else NULL
    with nogil:
        for i in prange(n, schedule='static', num_threads=threads):
            g = gp[i]
            if decay:
                g = g + weight_decay * pp[i]
            if has_momentum:
                b = g if first else bp[i] * momentum + g
                bp[i] = b
                g = g + momentum * b if nesterov else b
            pp[i] = pp[i] - lr * g
