"""``declcnn.show_config()``: the facts a bug report needs."""

from __future__ import annotations

import platform

from .threads import available_cores, get_num_threads


def config() -> dict:
    from threadpoolctl import threadpool_info

    import declcnn

    from ._kernels import _config
    from .ops import _blas  # noqa: F401  (loads the BLAS the kernels call)

    blas = [
        f"{p.get('internal_api')} {p.get('version')} "
        f"({p.get('prefix')}, {p.get('num_threads')} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return {
        "version": declcnn.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "openmp": _config.openmp_enabled(),
        "threads": get_num_threads(),
        "cores": available_cores(),
        "blas": blas,
        "compile_flags": _config.compile_flags(),
    }


def show_config() -> None:
    cfg = config()
    print(f"declcnn {cfg['version']} (Python {cfg['python']}, {cfg['machine']})")
    omp = "on" if cfg["openmp"] else "OFF: kernels run serially (compiler had no OpenMP)"
    print(f"  OpenMP:        {omp}")
    print(f"  threads:       {cfg['threads']} of {cfg['cores']} cores (DECLCNN_NUM_THREADS)")
    for b in cfg["blas"] or ["none found"]:
        print(f"  BLAS:          {b}")
    print(f"  compile flags: {cfg['compile_flags']}")
