"""declcnn: declarative convolutional neural networks on the CPU.

``declcnn.load("specs/lenet.toml")`` gives a runnable ``Network``; ``declcnn.Trainer``
(``declcnn.train.train`` as one call), ``evaluate`` and ``predict`` are the CLI's jobs from
Python; ``declcnn.receptive_field`` answers ``declcnn rf``; ``declcnn.export_onnx``,
``export_safetensors`` and ``import_weights`` are ``declcnn export`` and ``import-weights``;
``declcnn.functional`` holds every op.  The parts that need the compiled
kernels are imported on first use, so ``import declcnn`` and checking a spec stay light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from ._build_info import show_config
from .errors import (
    CheckpointError,
    DataError,
    DeclcnnError,
    Problem,
    ShapeError,
    SpecError,
    TrainingError,
)
from .threads import get_num_threads, set_num_threads

try:
    __version__ = version("declcnn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# name → module that defines it, imported on first access (PEP 562)
_LAZY = {
    "Network": "runtime", "load": "runtime", "loads": "runtime",
    "Trainer": "train", "TrainingInterrupted": "train", "evaluate": "train", "predict": "train",
    "receptive_field": "graph.receptive_field",
    "export_onnx": "interchange", "export_safetensors": "interchange",
    "import_weights": "interchange",
}


def __getattr__(name: str):
    if name in ("functional", "train"):  # submodules, as if imported
        return import_module(f".{name}", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'declcnn' has no attribute '{name}'")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    *_LAZY,
    "functional",
    "CheckpointError",
    "DataError",
    "DeclcnnError",
    "Problem",
    "ShapeError",
    "SpecError",
    "TrainingError",
    "get_num_threads",
    "set_num_threads",
    "show_config",
]
