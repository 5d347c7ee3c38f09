"""Reading ``.npz`` and ``.npy`` files whose sizes are checked before anything is inflated.

``numpy.load`` allocates an array of the shape an ``.npy`` header declares and a zip member
inflates to whatever size its stream holds, so a small hostile file can ask for gigabytes.  Here
every member's header is read first and must agree with the member's declared size, the declared
size with the compressed size (deflate cannot shrink data more than about 1032:1), and the total
with a budget; only then are the arrays read, with ``allow_pickle=False`` (no code runs).

Errors are raised as ``error(message)`` so that callers get their own kind
(:class:`~declcnn.errors.CheckpointError`, :class:`~declcnn.errors.DataError`).
"""

from __future__ import annotations

import math
import os
import stat
import zipfile

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_MEMBERS = 10_000
# Deflate's best case is 1032:1 (258-byte matches in 2-bit codes); a little more for headers.
MAX_DEFLATE_RATIO = 1032
_SLACK = 1 << 16


def _size(count: int) -> str:
    return f"{count:,} bytes"


def check_regular_file(path, error, what: str = "file") -> int:
    """The size of ``path``; refuse anything but a regular file (a FIFO would block the open,
    a device never end)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}.") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror}); check the path.") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise error(f"{path}: is {kind} (a FIFO, device or socket is not read); give a regular "
                    f"{what}.")
    return info.st_size


def _read_header(handle, name: str, path, error) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of the header) of the ``.npy`` stream at ``handle``'s start."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not read")
    except Exception as err:  # numpy raises ValueError, EOFError and SyntaxError here
        raise error(f"{path}: {name} is not a valid .npy array ({err}).") from None
    if dtype.hasobject:
        raise error(f"{path}: {name} holds Python objects ({dtype}), which are never loaded "
                    f"(they would run code); store numbers.")
    return tuple(int(d) for d in shape), dtype, handle.tell()


def _expected(shape, dtype: np.dtype, header: int) -> int:
    return header + math.prod(shape) * dtype.itemsize


def read_npz(path, budget: int, error, how: str,
             what: str = ".npz archive") -> dict[str, np.ndarray]:
    """Every ``.npy`` member of the archive at ``path`` as an array, keyed without ``.npy``.

    ``budget`` caps the bytes of all arrays together; ``how`` ends each message (what to do).
    """
    check_regular_file(path, error)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
            if len(members) > MAX_MEMBERS:
                raise error(f"{path}: the archive has {len(members):,} arrays, more than "
                            f"{MAX_MEMBERS:,}; {how}.")
            total = 0
            for info in members:
                name = f"array '{info.filename[:-4]}'"
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise error(f"{path}: {name} uses zip compression method "
                                f"{info.compress_type}; only stored and deflated members (as "
                                f"numpy.savez and savez_compressed write) are read. {how}.")
                ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
                if info.file_size > ratio * info.compress_size + _SLACK:
                    raise error(f"{path}: {name} declares {_size(info.file_size)} but its "
                                f"compressed data ({_size(info.compress_size)}) cannot hold "
                                f"that much; the archive is corrupt or crafted. {how}.")
                total += info.file_size
                if total > budget:
                    raise error(f"{path}: the arrays declare {_size(total)} or more, more than "
                                f"the {_size(budget)} this file may hold; {how}.")
                with archive.open(info) as handle:
                    shape, dtype, header = _read_header(handle, name, path, error)
                    if _expected(shape, dtype, header) != info.file_size:
                        raise error(f"{path}: {name}'s header declares shape {shape} of {dtype} "
                                    f"({_size(_expected(shape, dtype, header))} with the "
                                    f"header) but the member holds {_size(info.file_size)}; it "
                                    f"is corrupt or crafted. {how}.")
                    handle.seek(0)
                    arrays[info.filename[:-4]] = np.lib.format.read_array(
                        handle, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as err:
        raise error(f"{path}: not a readable {what}: the file is truncated, corrupt or not an "
                    f".npz archive ({type(err).__name__}: {err}). {how}.") from None
    return arrays


def read_npy(path, budget: int, error, how: str) -> np.ndarray:
    """The array of the ``.npy`` file at ``path``, its header checked against the file's size
    (and an ``.npz`` under an ``.npy`` name refused) before it is read."""
    size = check_regular_file(path, error)
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(NPY_MAGIC))
            if start[:4] == ZIP_MAGIC:
                raise error(f"{path}: is an .npz archive (a zip file) named .npy; rename it to "
                            f".npz, or save one array with numpy.save.")
            if start != NPY_MAGIC:
                raise error(f"{path}: not an .npy file (it does not start with numpy's magic "
                            f"bytes); save the array with numpy.save.")
            handle.seek(0)
            shape, dtype, header = _read_header(handle, "the file", path, error)
            expected = _expected(shape, dtype, header)
            if expected != size:
                raise error(f"{path}: the header declares shape {shape} of {dtype} "
                            f"({_size(expected)} with the header) but the file holds "
                            f"{_size(size)}; it is truncated or corrupt. {how}.")
            if expected > budget:
                raise error(f"{path}: the array holds {_size(expected)}, more than the "
                            f"{_size(budget)} an input may; {how}.")
            handle.seek(0)
            return np.lib.format.read_array(handle, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise error(f"{path}: not a readable .npy file ({type(err).__name__}: {err}). "
                    f"{how}.") from None
