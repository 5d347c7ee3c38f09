"""The training loop's own passes: the SGD update.

The module is built with ``-ffp-contract=off``: the SGD update rounds after every multiply and
every add, as numpy's elementwise ops (the per-array reference) do; a fused multiply-add rounds
once and would change the weights' bits.  The callers validate; these loops trust them.
"""

from cython.parallel cimport prange
from cython cimport floating


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
