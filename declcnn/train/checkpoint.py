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
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DeclcnnWarning
from ..spec.training import check_training
from .archives import read_npz

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

FORMAT = "declcnn-checkpoint"
VERSION = 1
_HOW = "point --weights/--resume at a last.npz or best.npz that declcnn train wrote"
_CORRUPT = "it is corrupt or was not written by declcnn train. Use another checkpoint (best.npz " \
    "or last.npz of the run) or train again"
# A checkpoint holds the parameters, buffers, up to two optimiser slots per parameter, the spec
# and the history; without a network to size it, this caps what one file may inflate to.
DEFAULT_BUDGET = 1 << 31
_META_BUDGET = 16 << 20  # the spec and meta text (UTF-32 in an .npz)
# Settings a run takes from its command line (--epochs...): on resume they come from the
# checkpoint unless given again; every other setting comes from the spec.
RUN_SETTINGS = ("epochs", "batch_size", "lr", "seed")
RESUME_KEYS = ("epoch", "step", "settings", "history", "running", "best", "threads",
               "dropout_rng")


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
        """Load the parameters and buffers into ``network``; refuse any that do not fit, and
        warn (:class:`~declcnn.errors.DeclcnnWarning`) when it was saved from another spec."""
        saved_from = self.meta.get("spec_name")
        origin = f" (saved from spec '{saved_from}')" if saved_from else ""
        try:
            network.load_state_dict({**self.params, **self.buffers})
        except CheckpointError as err:
            raise CheckpointError(f"{self.path}{origin}: {err}") from None
        self._check_normaliser(network.graph.input_shape)
        difference = self.spec_difference(network.graph)
        if difference:
            warnings.warn(DeclcnnWarning(f"{self.path}: {difference}; the weights fit, but check "
                                         f"that this is the spec they were trained with."),
                          stacklevel=2)

    def spec_difference(self, graph) -> str | None:
        """What differs between the spec stored here and ``graph``'s (name, then the TOML)."""
        saved_from = self.meta.get("spec_name")
        if saved_from is not None and saved_from != graph.name:
            return (f"the checkpoint was saved from spec '{saved_from}', not '{graph.name}'")
        if not self.spec or not graph.spec:
            return None
        try:
            stored = tomllib.loads(self.spec)
        except (tomllib.TOMLDecodeError, RecursionError):
            return "the spec stored in the checkpoint is not valid TOML"
        if stored != graph.spec:
            keys = sorted(k for k in set(stored) | set(graph.spec)
                          if stored.get(k) != graph.spec.get(k))
            tables = ", ".join(f"[{k}]" for k in keys)
            return (f"the spec stored in the checkpoint differs from the one given in "
                    f"{tables}")
        return None

    def _check_normaliser(self, input_shape) -> None:
        if self.mean is None:
            return
        channels = input_shape[0]
        for name, values in (("data/mean", self.mean), ("data/std", self.std)):
            if values.shape != (channels,):
                raise CheckpointError(
                    f"{self.path}: the normaliser's {name} has shape {values.shape} but the "
                    f"network's input has {channels} channel(s), so it must be ({channels},); "
                    f"{_CORRUPT}.")

    def check_resumable(self) -> None:
        """Refuse to resume from a checkpoint that lacks the training state (weights only)."""
        missing = [k for k in RESUME_KEYS if k not in self.meta]
        if missing or not self.optimizer:
            lacks = ", ".join(missing) or "the optimiser state"
            raise CheckpointError(f"{self.path}: the checkpoint holds no training state to "
                                  f"resume ({lacks} missing); use it with --weights, or resume "
                                  f"from the run's last.npz.")


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


class RunFolderLock:
    """An exclusive lock on a run folder for one trainer (``with RunFolderLock(folder):``).

    Two trainers writing into one folder interleave ``metrics.jsonl`` and overwrite each other's
    checkpoints; the second one is refused, naming the process that holds the lock.  The lock
    is ``flock`` on ``.lock`` in the folder, so it goes when its process dies (kill -9 too).
    While it is held, temporary files left by interrupted writes are removed.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.handle = None
        self.removed: list[str] = []

    def __enter__(self) -> RunFolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(f"{self.folder}: another trainer is writing into this run "
                                  f"folder ({holder}); wait for it to finish or stop it, or "
                                  f"give this run another --out.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self.handle = handle
        self.removed = remove_temporaries(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the flock


LOCK_NAME = ".lock"


def remove_temporaries(folder) -> list[str]:
    """Delete what :func:`write_atomic` leaves when it is killed mid-write (``.NAME.*.tmp``);
    only safe while no other writer uses ``folder`` (under :class:`RunFolderLock`)."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def repair_best(folder) -> str | None:
    """Rewrite a stale ``best.npz`` from ``last.npz``; return a note when one was repaired.

    An improving epoch writes the same state to ``last.npz`` and then ``best.npz``; a kill
    between the two leaves a best.npz of an earlier epoch.  While ``last.npz`` is still that
    epoch's end (no step after it), it is the best state and is copied over.
    """
    folder = Path(folder)
    last_path, best_path = folder / "last.npz", folder / "best.npz"
    if not last_path.is_file():
        return None
    last = load_checkpoint(last_path)
    meta = last.meta
    score = meta.get("best")
    at_epoch_end = (meta.get("running", {}).get("images") == 0 and meta.get("history")
                    and meta["history"][-1].get("epoch") == meta.get("epoch"))
    if score is None or not at_epoch_end:
        return None
    record = meta["history"][-1]
    if record.get("val_mean_iou", record.get("val_accuracy")) != score:
        return None  # the last epoch did not improve: best.npz is an older epoch, rightly
    if best_path.is_file():
        try:
            if load_checkpoint(best_path).meta.get("epoch") == meta["epoch"]:
                return None
        except CheckpointError:
            pass  # a corrupt best.npz is replaced too
    write_atomic(best_path, last.arrays())
    return (f"{best_path} was older than the best epoch ({meta['epoch']}) recorded in "
            f"{last_path} (a write was interrupted); it is rewritten from {last_path.name}.")


def save_checkpoint(path, checkpoint: Checkpoint) -> None:
    write_atomic(path, checkpoint.arrays())


def load_checkpoint(path, budget: int = DEFAULT_BUDGET) -> Checkpoint:
    """Read and check a checkpoint; a missing, truncated, corrupt, oversized or foreign file,
    or one whose contents have the wrong types, raises :class:`~declcnn.errors.CheckpointError`.

    ``budget`` caps the bytes the arrays may inflate to (see :func:`checkpoint_budget`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {_HOW}.")
    arrays = read_npz(path, budget + _META_BUDGET, CheckpointError,
                      "Use another checkpoint (best.npz or last.npz of the run) or train again",
                      "checkpoint")
    tag = _text(arrays.get("format"))
    if tag != FORMAT:
        found = f"its format tag is '{tag[:40]}'" if tag else "it has no format tag"
        raise CheckpointError(f"{path}: not a declcnn checkpoint ({found}, expected '{FORMAT}'); "
                              f"{_HOW}.")
    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        shown = "missing" if version is None else f"{version.dtype} of shape {version.shape}"
        raise CheckpointError(f"{path}: the checkpoint's format version must be one integer; it "
                              f"is {shown}, so {_CORRUPT}.")
    if int(version) != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {int(version)}, but this "
                              f"declcnn reads version {VERSION}; use the declcnn that wrote it.")
    missing = [k for k in ("spec", "meta") if k not in arrays]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}; it is "
                              f"incomplete. Use another checkpoint or train again.")
    spec, meta_text = _text(arrays["spec"]), _text(arrays["meta"])
    if spec is None or meta_text is None:
        raise CheckpointError(f"{path}: the checkpoint's spec and meta must be text; {_CORRUPT}.")
    try:
        meta = json.loads(meta_text)
    except (json.JSONDecodeError, RecursionError) as err:
        why = err if isinstance(err, json.JSONDecodeError) else "nested too deep"
        raise CheckpointError(f"{path}: the checkpoint's meta data is not valid JSON ({why}); "
                              f"it is corrupt. Use another checkpoint or train again.") from None
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: the checkpoint's meta data {problem}, so {_CORRUPT}.")

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    checkpoint = Checkpoint(group("param/"), group("buffer/"), group("optimizer/"), spec, meta,
                            arrays.get("data/mean"), arrays.get("data/std"), str(path))
    _check_arrays(checkpoint)
    return checkpoint


def checkpoint_budget(graph) -> int:
    """Bytes a checkpoint of ``graph``'s network may hold: parameters and buffers with up to
    three optimiser copies (Adam's two slots and a spare), in float64 at worst."""
    values = sum(math.prod(shape) for node in graph.nodes
                 for shape in [*node.params.values(), *node.buffers.values()])
    return 4 * 8 * values + (1 << 20)


def _text(array) -> str | None:
    """The string in a 0-d unicode array, or None for anything else."""
    if isinstance(array, np.ndarray) and array.shape == () and array.dtype.kind == "U":
        return str(array)
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


_META_TYPES = {
    "epoch": ("a whole number ≥ 0", lambda v: _is_int(v) and v >= 0),
    "step": ("a whole number ≥ 0", lambda v: _is_int(v) and v >= 0),
    "threads": ("a whole number ≥ 1", lambda v: _is_int(v) and v >= 1),
    "settings": ("an object", lambda v: isinstance(v, dict)),
    "history": ("a list of objects", lambda v: isinstance(v, list)
                and all(isinstance(r, dict) for r in v)),
    "running": ("an object of loss, correct, counted and images",
                lambda v: isinstance(v, dict) and _is_number(v.get("loss"))
                and all(_is_int(v.get(k)) and v[k] >= 0 for k in ("correct", "counted",
                                                                    "images"))),
    "best": ("a finite number or null", lambda v: v is None or _is_number(v)),
    "dropout_rng": ("a numpy bit generator state", lambda v: _rng_state_ok(v)),
    "classes": ("a list of strings", lambda v: isinstance(v, list)
                and all(isinstance(c, str) for c in v)),
    "spec_name": ("a string", lambda v: isinstance(v, str)),
    "segmentation": ("true or false", lambda v: isinstance(v, bool)),
    "overrides": ("a list of setting names", lambda v: isinstance(v, list)
                  and all(isinstance(k, str) for k in v)),
}


def _rng_state_ok(state) -> bool:
    if not isinstance(state, dict):
        return False
    generator = np.random.default_rng(0).bit_generator
    try:
        generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return f"must be a JSON object; it is a {type(meta).__name__}"
    for key, (rule, valid) in _META_TYPES.items():
        if key in meta and not valid(meta[key]):
            shown = json.dumps(meta[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"key '{key}' must be {rule}; it is {shown}"
    return None


def _check_arrays(checkpoint: Checkpoint) -> None:
    """Numbers everywhere, finite weights, a usable normaliser and optimiser state."""
    path = checkpoint.path
    for group, arrays in (("param", checkpoint.params), ("buffer", checkpoint.buffers),
                          ("optimizer", checkpoint.optimizer)):
        for name, value in arrays.items():
            if value.dtype.kind not in "fiu":
                raise CheckpointError(f"{path}: {group} '{name}' is stored as {value.dtype}, not "
                                      f"numbers; {_CORRUPT}.")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(value.size - np.isfinite(value).sum())
                raise CheckpointError(
                    f"{path}: {group} '{name}' holds {bad} NaN or infinite value(s) of "
                    f"{value.size}; the run diverged before it was saved (lower lr, add warm-up) "
                    f"or the file is corrupt. Use an earlier checkpoint or train again.")
    steps = checkpoint.optimizer.get("steps")
    if steps is not None and (steps.shape != () or steps.dtype.kind not in "iu" or steps < 0):
        raise CheckpointError(f"{path}: the optimiser's step count must be one whole number ≥ 0; "
                              f"it is {steps.dtype} of shape {steps.shape}, so {_CORRUPT}.")
    mean, std = checkpoint.mean, checkpoint.std
    if (mean is None) != (std is None):
        raise CheckpointError(f"{path}: the normaliser has only one of data/mean and data/std; "
                              f"{_CORRUPT}.")
    if mean is None:
        return
    for name, values in (("data/mean", mean), ("data/std", std)):
        if values.ndim != 1 or values.dtype.kind != "f" or not np.isfinite(values).all():
            raise CheckpointError(f"{path}: the normaliser's {name} must be a finite float "
                                  f"vector with one value per channel; it is {values.dtype} of "
                                  f"shape {values.shape}, so {_CORRUPT}.")
    if mean.shape != std.shape or not (std > 0).all():
        raise CheckpointError(f"{path}: the normaliser's data/std must be > 0 for every channel "
                              f"and as long as data/mean; got std {std.tolist()[:8]} for mean of "
                              f"shape {mean.shape}, so {_CORRUPT}.")


def stored_settings(checkpoint: Checkpoint, spec_settings: dict,
                    overrides: dict) -> tuple[dict, list[str]]:
    """The settings to resume or evaluate with, and notes on what differs.

    The checkpoint's settings pass the same checks as a spec's ``[training]`` table.  The spec
    given wins for every key but the run's own (``RUN_SETTINGS``: from the command line when
    it was trained), which come from the checkpoint unless ``overrides`` gives them again.
    """
    stored = dict(checkpoint.meta.get("settings", {}))
    dataset = stored.pop("dataset", None)  # resolved when it was trained: the spec's is used
    problems = [] if dataset is None or isinstance(dataset, str) else [
        ("dataset", f"must be a string; got {json.dumps(dataset)[:40]}.")]
    check_training(stored, None, lambda message, key: problems.append((key, message)))
    if problems:
        key, message = problems[0]
        raise CheckpointError(f"{checkpoint.path}: the stored training setting '{key}' is "
                              f"invalid: {message} The checkpoint is corrupt or crafted; use "
                              f"another checkpoint or train again.")
    settings = dict(spec_settings)
    notes = [f"dataset = {json.dumps(dataset)}"] if dataset not in (None,
                                                                    settings.get("dataset")) else []
    # Older checkpoints do not say which settings came from the command line: all run ones may.
    from_command_line = checkpoint.meta.get("overrides", RUN_SETTINGS)
    for key, value in stored.items():
        if key in RUN_SETTINGS and key in from_command_line and key not in overrides:
            settings[key] = value
        elif settings.get(key) != value:
            notes.append(f"{key} = {json.dumps(value)}")
    settings.update(overrides)
    if notes:
        notes = [f"{checkpoint.path} was saved with {', '.join(notes)}; the spec's (or the "
                 f"command line's) values are used."]
    return settings, notes
