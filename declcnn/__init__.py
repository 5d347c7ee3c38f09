"""declcnn: declarative convolutional neural networks on the CPU."""

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

__all__ = [
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
