"""The one place the kernels' thread count comes from.

Order: ``set_num_threads(n)``, else ``DECLCNN_NUM_THREADS``, else the cores this process may use.
Every kernel call receives the number explicitly; nothing reads OpenMP's global state.
"""

from __future__ import annotations

import os

from .errors import DeclcnnError

_num_threads: int | None = None
THREAD_CAP = 1024


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _parse(value, origin: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise DeclcnnError(
            f"{origin}: the thread count must be a whole number ≥ 1; got {value!r}. "
            f"Use e.g. 1 or {available_cores()} (the cores available here)."
        )
    if n > max_threads():
        raise DeclcnnError(
            f"{origin}: {n} threads is more than the {max_threads()} allowed here (4 × the "
            f"{available_cores()} cores available, at least 64, at most {THREAD_CAP}): more "
            f"threads than cores only slow the kernels, and OpenMP fails beyond a few thousand. "
            f"Use e.g. {available_cores()}."
        )
    return n


def check_thread_count(value, origin: str) -> int:
    """``value`` as a thread count, or a DeclcnnError naming ``origin`` (``--threads``...)."""
    return _parse(value, origin)


def max_threads() -> int:
    """The most threads a kernel may be given: 4 × the cores, at least 64, at most 1024."""
    return min(THREAD_CAP, max(4 * available_cores(), 64))


def set_num_threads(n: int | None) -> None:
    """Fix the kernels' thread count; None returns to the environment's or the default."""
    global _num_threads
    _num_threads = None if n is None else _parse(n, "set_num_threads")


def get_num_threads() -> int:
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("DECLCNN_NUM_THREADS")
    if env:
        return _parse(env, "DECLCNN_NUM_THREADS")
    return available_cores()


def threads_for(work: int, minimum: int) -> int:
    """The thread count for a call of ``work`` units (elements, multiply-adds): 1 below
    ``minimum``, where waking a second thread costs more than it saves (tens of microseconds,
    and far more when another process holds the other core)."""
    return 1 if work < minimum else get_num_threads()
