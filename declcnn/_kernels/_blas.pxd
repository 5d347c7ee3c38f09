"""Row-major GEMM on scipy's BLAS, shared by the conv and dense kernels (cimport it)."""

from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating


cdef inline void gemm(char ta, char tb, int m, int n, int k, const floating *a, int lda,
                      const floating *b, int ldb, floating beta, floating *c,
                      int ldc) noexcept nogil:
    """Row-major ``C = op(A)·op(B) + beta·C`` (m × n) through column-major BLAS, which sees
    every row-major matrix transposed: it computes ``Cᵀ = op(B)ᵀ·op(A)ᵀ``.  Call it only with
    the BLAS limited to one thread (``declcnn/ops/_blas.py``) when inside ``prange``."""
    cdef floating one = 1
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &one, <float *> b, &ldb, <float *> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &one, <double *> b, &ldb, <double *> a, &lda, &beta, c,
              &ldc)
