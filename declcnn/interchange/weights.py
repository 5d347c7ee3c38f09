"""State dicts in and out: safetensors (PyTorch's ``safetensors.torch.save_file``) or ``.npz``,
never a pickle.

``read_tensors(path)`` reads a ``.safetensors`` file or an ``.npz`` (``allow_pickle=False``; a
declcnn checkpoint's parameters and buffers, or plain name → array entries) and refuses
``.pt``/``.pth``/``.bin``/``.ckpt`` files, which are pickles that run code when loaded, with
the PyTorch lines that convert one.  ``import_weights`` maps a file's names onto a spec's
(``prefix``, ``rename``), drops batch norm's ``num_batches_tracked`` (declcnn keeps no such
count), checks strictly and writes a declcnn checkpoint.  ``export_safetensors`` writes the
network's state dict for PyTorch's ``load_state_dict`` on the twin module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DeclcnnError
from ..graph import Graph, build_graph
from ..spec import parse_spec
from .source import expected_tensors, fit_state, read_spec_text, resolve

INSTALL = 'pip install "declcnn[onnx]"'
PICKLES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
TRACKED = "num_batches_tracked"
"""Batch norm's count of training batches in PyTorch; declcnn's momentum never needs it."""


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise DeclcnnError(f"reading and writing .safetensors files needs the safetensors "
                           f"package, which is not installed; install it with: {INSTALL}, or "
                           f"use an .npz file.") from None
    return safetensors.numpy


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(".safetensors").name
    return (f"In PyTorch: import torch; from safetensors.torch import save_file; "
            f"state = torch.load('{path.name}', map_location='cpu', weights_only=True); "
            f"save_file({{k: v.contiguous() for k, v in state.items()}}, '{target}') (for a "
            f"whole saved model, save model.state_dict() instead), then import '{target}'.")


def read_tensors(path) -> dict[str, np.ndarray]:
    """Name → array from a ``.safetensors`` or ``.npz`` file, without unpickling anything."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLES:
        raise CheckpointError(
            f"{path}: a {suffix} file is a Python pickle, and loading one runs whatever code "
            f"it holds, so declcnn never opens one. Convert it to safetensors first. "
            f"{_convert_hint(path)}")
    if suffix not in (".safetensors", ".npz"):
        raise CheckpointError(f"{path}: cannot tell the format from the extension "
                              f"'{suffix or '(none)'}'; give a .safetensors file (PyTorch's "
                              f"safetensors.torch.save_file) or an .npz of name → array.")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path.")
    if suffix == ".npz":
        return _read_npz(path)
    module = _safetensors_numpy()
    try:
        return dict(module.load_file(str(path)))
    except Exception as err:  # safetensors' own error types, numpy's missing bfloat16
        raise CheckpointError(
            f"{path}: not a readable safetensors file of numpy-compatible tensors "
            f"({type(err).__name__}: {err}). If it holds bfloat16 tensors, save them as "
            f"float32 in PyTorch: save_file({{k: v.float() for k, v in state.items()}}, "
            f"'{path.name}').") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:  # zipfile, numpy's format checks, an object array refused
        raise CheckpointError(f"{path}: not a readable .npz of numeric arrays "
                              f"({type(err).__name__}: {err}).") from None
    if "format" in arrays:  # a declcnn checkpoint: its parameters and buffers
        return {key.partition("/")[2]: value for key, value in arrays.items()
                if key.startswith(("param/", "buffer/"))}
    return arrays


def parse_renames(rules: Iterable[str]) -> list[tuple[str, str]]:
    """``["OLD=NEW", ...]`` → pairs; OLD must not be empty."""
    pairs = []
    for rule in rules:
        old, sep, new = rule.partition("=")
        if not sep or not old:
            raise DeclcnnError(f"--rename {rule!r}: must be OLD=NEW, OLD not empty (e.g. "
                               f"--rename layer2.0.=layer2a.); every OLD in a name becomes NEW.")
        pairs.append((old, new))
    return pairs


def _renamed(name: str, renames) -> str:
    for old, new in renames:
        name = name.replace(old, new)
    return name


def map_names(tensors: Mapping[str, np.ndarray], renames=(), prefix: str | None = None,
              where: str = "") -> dict[str, np.ndarray]:
    """A file's names as declcnn's: only the names under ``prefix`` are kept, without it; then
    each ``(old, new)`` of ``renames``, in order, replaces every ``old`` in a name."""
    mapped: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        if prefix:
            if not name.startswith(prefix):
                continue
            name_in = name
            name = name[len(prefix):]
        else:
            name_in = name
        name = _renamed(name, renames)
        if name in mapped:
            raise CheckpointError(f"{where}: '{origin[name]}' and '{name_in}' both become "
                                  f"'{name}' after the renames; make the --rename rules "
                                  f"distinguish them.")
        mapped[name], origin[name] = value, name_in
    if prefix and not mapped:
        raise CheckpointError(f"{where}: no tensor name starts with the prefix '{prefix}' "
                              f"(the file's names begin "
                              f"{', '.join(repr(n) for n in list(tensors)[:3])}); check --prefix.")
    return mapped


def drop_batch_counts(graph: Graph, tensors: dict[str, np.ndarray]) -> list[str]:
    """Remove every ``BN.num_batches_tracked`` of a batch-norm node of ``graph``; return their
    names.  One whose layer is not a batch norm stays, to be reported as unexpected."""
    norms = {n.name for n in graph.nodes if n.type == "batchnorm2d"}
    dropped = [name for name in tensors if name.endswith("." + TRACKED)
               and name[:-len(TRACKED) - 1] in norms]
    for name in dropped:
        del tensors[name]
    return dropped


_FIX = ("Map the file's names onto the spec's with --rename OLD=NEW (repeatable) and --prefix "
        "P (keep only names starting with P, without it), or use the spec the weights were "
        "trained with; --no-strict loads only the tensors that fit.")


def import_weights(spec, file, out=None, *, rename: Iterable = (), prefix: str | None = None,
                   strict: bool = True, seed: int = 0):
    """Read a state dict from ``file`` (``.safetensors`` or ``.npz``) for the network of
    ``spec`` (a path or a spec's text) and, with ``out``, write it as a declcnn checkpoint.

    ``rename``: ``(old, new)`` pairs or ``"OLD=NEW"`` strings, applied in order to each name
    after ``prefix`` (only the file's names starting with it are read, without it).  Strict:
    every missing, unexpected or mis-shaped tensor is reported in one ``CheckpointError``.
    With ``strict=False`` the tensors that fit are loaded and the rest keep their initial
    values from ``seed``.  Returns ``(checkpoint, report)``: ``report["dropped"]`` lists the
    ``num_batches_tracked`` entries left out; when not strict, ``report["skipped"]`` the file's
    tensors that did not fit and ``report["initial"]`` the network's that kept their initial
    values.
    """
    from ..train.checkpoint import Checkpoint, save_checkpoint

    renames = [r if isinstance(r, tuple) else parse_renames([r])[0] for r in rename]
    text, spec_file = read_spec_text(spec)
    graph = build_graph(parse_spec(text, spec_file))
    where = str(file)
    tensors = map_names(read_tensors(file), renames, prefix, where)
    report: dict[str, list[str]] = {"dropped": drop_batch_counts(graph, tensors)}
    if strict:
        state = fit_state(graph, tensors, where, _FIX)
    else:
        from ..runtime import Network

        expected = expected_tensors(graph)
        state = Network(graph, seed=seed).state_dict()
        fits = {n for n, v in tensors.items() if expected.get(n) == tuple(np.shape(v))}
        state.update((n, np.ascontiguousarray(tensors[n], dtype=np.float32)) for n in fits)
        report["skipped"] = [n for n in tensors if n not in fits]
        report["initial"] = [n for n in expected if n not in fits]
    buffers = {f"{n.name}.{k}" for n in graph.nodes for k in n.buffers}
    channels = graph.input_shape[0] if len(graph.input_shape) == 3 else None
    # No normalisation: the identity per channel, which eval and predict apply as they would
    # a trained one (bytes scaled to [0, 1]).
    mean, std = ((None, None) if channels is None else
                 (np.zeros(channels, np.float32), np.ones(channels, np.float32)))
    checkpoint = Checkpoint(
        {k: v for k, v in state.items() if k not in buffers},
        {k: v for k, v in state.items() if k in buffers}, {}, text,
        {"spec_name": graph.name, "imported_from": str(file)}, mean, std)
    if out is not None:
        save_checkpoint(out, checkpoint)
        checkpoint.path = str(out)
    return checkpoint, report


def export_safetensors(model, path, *, weights=None, rename: Iterable = (),
                       prefix: str | None = None, seed: int = 0) -> Path:
    """Write the state dict of ``model`` (as in :func:`~declcnn.interchange.export_onnx`) as a
    ``.safetensors`` file; returns the path.

    Names are the state dict's, with each ``(old, new)`` of ``rename`` applied and ``prefix``
    put in front, so that ``module.load_state_dict(safetensors.torch.load_file(path))`` takes
    it for the module whose names those are.  Batch norm's ``num_batches_tracked`` is not
    written: PyTorch fills in 0 for a state dict without it.
    """
    module = _safetensors_numpy()
    renames = [r if isinstance(r, tuple) else parse_renames([r])[0] for r in rename]
    source = resolve(model, weights, None, seed)
    tensors = {}
    for name, value in source.state.items():
        new = (prefix or "") + _renamed(name, renames)
        if new in tensors:
            raise DeclcnnError(f"{path}: two tensors would both be named '{new}' after the "
                               f"renames; make the --rename rules distinguish them.")
        tensors[new] = value
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        module.save_file(tensors, str(path), metadata={
            "format": "pt", "declcnn.spec_name": source.graph.name,
            "declcnn.spec": source.spec_text})
    except OSError as err:
        raise DeclcnnError(f"{path}: cannot write the tensors ({err.strerror}); check the "
                           f"path.") from None
    return path
