"""Training on real data: data sets, losses, optimisers, schedules, checkpoints, the loop.

The entry points are :class:`Trainer` (or :func:`train`), :func:`evaluate` and :func:`predict`.
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .datasets import Dataset, load_dataset, make_shapes
from .loop import Trainer, TrainingInterrupted, evaluate, predict, train
from .optimizers import SGD, Adam, AdamW

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Checkpoint",
    "Dataset",
    "Trainer",
    "TrainingInterrupted",
    "evaluate",
    "load_checkpoint",
    "load_dataset",
    "make_shapes",
    "predict",
    "save_checkpoint",
    "train",
]
