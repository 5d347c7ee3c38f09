"""Build facts the Python side cannot see: was OpenMP compiled in, with which flags."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int declcnn_openmp(void) { return 1; }
    static int declcnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int declcnn_openmp(void) { return 0; }
    static int declcnn_omp_max_threads(void) { return 1; }
    #endif
    #ifndef DECLCNN_CFLAGS
    #define DECLCNN_CFLAGS ""
    #endif
    static const char *declcnn_cflags(void) { return DECLCNN_CFLAGS; }
    """
    int declcnn_openmp()
    int declcnn_omp_max_threads()
    const char *declcnn_cflags()


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(declcnn_openmp())


def openmp_max_threads():
    return declcnn_omp_max_threads()


def compile_flags():
    return declcnn_cflags().decode()
