"""Checkpoints: one ``.npz`` read with ``allow_pickle=False``, so loading one runs no code.

Keys: ``format`` (``"declcnn-checkpoint"``) and ``version``; ``param/<name>`` and
``buffer/<name>`` (the network's state dict); ``optimizer/<key>`` (the optimiser's state dict);
``spec`` (the spec's text); ``meta``, a JSON object: ``epoch`` (epochs completed), ``step``
(optimiser steps taken), ``settings`` (the run's ``[training]`` values), ``history`` (the
per-epoch metrics), ``dropout_rng`` (the numpy bit generator's state), ``classes``,
``best``, ``best_epoch``, ``input_shape`` (the size the network was built at),
``cycle_start``; ``data/mean`` and ``data/std`` (the input normalisation).

Writes are atomic: a temporary file in the same folder, fsync, rename over the target, fsync
of the folder — a crash leaves the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

FORMAT = "declcnn-checkpoint"
VERSION = 1
_HOW = "point --weights/--resume at a last.npz or best.npz that declcnn train wrote"


@dataclass
class Checkpoint:
    """What a checkpoint holds, as arrays and plain values."""

    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    spec: str = ""
    meta: dict = field(default_factory=dict)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    path: str | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"format": np.asarray(FORMAT), "version": np.asarray(VERSION),
                  "spec": np.asarray(self.spec), "meta": np.asarray(json.dumps(self.meta))}
        arrays.update((f"param/{k}", v) for k, v in self.params.items())
        arrays.update((f"buffer/{k}", v) for k, v in self.buffers.items())
        arrays.update((f"optimizer/{k}", v) for k, v in self.optimizer.items())
        if self.mean is not None:
            arrays["data/mean"], arrays["data/std"] = self.mean, self.std
        return arrays

    def restore(self, network) -> None:
        """Load the parameters and buffers into ``network``; refuse any that do not fit."""
        try:
            network.load_state_dict({**self.params, **self.buffers})
        except CheckpointError as err:
            saved_from = self.meta.get("spec_name")
            origin = f" (saved from spec '{saved_from}')" if saved_from else ""
            raise CheckpointError(f"{self.path}{origin}: {err}") from None


def write_atomic(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` so that a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename is durable only once the folder's entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(path, checkpoint: Checkpoint) -> None:
    write_atomic(path, checkpoint.arrays())


def load_checkpoint(path) -> Checkpoint:
    """Read and check a checkpoint; a missing, truncated, corrupt or foreign file raises
    :class:`~declcnn.errors.CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {_HOW}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:  # zipfile, zlib, numpy's format checks: each its own kind
        raise CheckpointError(
            f"{path}: not a readable checkpoint: the file is truncated, corrupt or not an .npz "
            f"archive ({type(err).__name__}: {err}). Use another checkpoint (best.npz or "
            f"last.npz of the run) or train again.") from None
    tag = str(arrays["format"]) if "format" in arrays else None
    if tag != FORMAT:
        found = f"its format tag is '{tag}'" if tag else "it has no format tag"
        raise CheckpointError(f"{path}: not a declcnn checkpoint ({found}, expected '{FORMAT}'); "
                              f"{_HOW}.")
    version = int(arrays["version"]) if "version" in arrays else None
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, but this declcnn "
                              f"reads version {VERSION}; use the declcnn that wrote it.")
    missing = [k for k in ("spec", "meta") if k not in arrays]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}; it is "
                              f"incomplete. Use another checkpoint or train again.")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the checkpoint's meta data is not valid JSON ({err}); "
                              f"it is corrupt. Use another checkpoint or train again.") from None

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Checkpoint(group("param/"), group("buffer/"), group("optimizer/"),
                      str(arrays["spec"]), meta, arrays.get("data/mean"), arrays.get("data/std"),
                      str(path))
