"""Keep the BLAS that the kernels call single-threaded.

The conv and linear kernels call scipy's ``sgemm`` from inside ``prange`` threads; a BLAS that
started threads of its own there would oversubscribe the cores.  Importing this module limits
scipy's OpenBLAS (the library ``scipy.linalg.cython_blas`` binds) to one thread.
"""

from __future__ import annotations

import scipy.linalg  # noqa: F401  (loads the OpenBLAS that cython_blas uses)
from threadpoolctl import ThreadpoolController

_controller = ThreadpoolController()
for _lib in _controller.select(user_api="blas").lib_controllers:
    if "scipy" in (_lib.filepath or "") and "numpy" not in (_lib.filepath or ""):
        _lib.set_num_threads(1)
