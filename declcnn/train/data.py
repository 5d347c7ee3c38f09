"""From a data set to batches: normalisation, a reproducible order, augmentation.

The order of an epoch and the augmentation of each batch are pure functions of
``(seed, epoch)`` and ``(seed, epoch, batch)``: a run resumed in the middle of an epoch skips
exactly the batches it had consumed and sees the same data afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .augment import augment
from .datasets import Dataset

# Streams of one run's randomness, mixed into the seed so they never coincide.
_ORDER_STREAM, _AUGMENT_STREAM, _VALIDATION_STREAM = 1, 2, 3


@dataclass(frozen=True)
class Normalizer:
    """Per-channel standardisation ``(x/255 − mean) / std`` for bytes, ``(x − mean) / std`` for
    floats.  ``mean`` and ``std`` are ``(C,)``; the identity when ``normalize = false``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: Dataset, enabled: bool = True) -> Normalizer:
        channels = data.x.shape[1]
        if not enabled:
            return cls(np.zeros(channels, np.float32), np.ones(channels, np.float32))
        scale = 1 / 255 if data.x.dtype == np.uint8 else 1.0
        axes = (0, 2, 3)
        mean = data.x.mean(axis=axes, dtype=np.float64) * scale
        mean_square = np.zeros(channels)
        for start in range(0, len(data.x), 4096):  # squares of a chunk, not of the whole set
            chunk = data.x[start:start + 4096].astype(np.float64) * scale
            mean_square += (chunk * chunk).sum(axis=axes)
        variance = mean_square / (data.x.size / channels) - mean * mean
        std = np.sqrt(np.maximum(variance, 0))
        return cls(mean.astype(np.float32), np.where(std > 1e-6, std, 1).astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)
        if x.dtype == np.uint8:
            out *= np.float32(1 / 255)
        out -= self.mean[:, None, None]
        out /= self.std[:, None, None]
        return out


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(train, validation)``: ``fraction`` of ``data`` held out, a pure function of ``seed``.

    Classification is stratified: ``round(fraction·n_c)`` samples of each class ``c`` (none of
    a class with a single sample), so the validation set has the training set's class balance.
    Segmentation draws ``round(fraction·N)`` images.  Both parts keep ``data``'s order.
    """
    rng = np.random.default_rng([seed, _VALIDATION_STREAM])
    if data.segmentation:
        groups = [np.arange(len(data))]
    else:
        groups = [np.flatnonzero(data.y == c) for c in np.unique(data.y)]
    held = [rng.permutation(members)[:int(round(len(members) * fraction))]
            for members in groups if len(members) > 1]
    keep = np.ones(len(data), bool)
    if held:
        keep[np.concatenate(held)] = False
    if keep.all() or not keep.any():
        raise DataError(f"data set '{data.name}': holding out {fraction:g} of its {len(data)} "
                        f"training samples for validation leaves "
                        f"{'none' if keep.all() else 'no training samples'}; set [training] "
                        f"validation to another fraction, or to 0 for none.")
    where = f"{fraction:.0%} of the training set{'' if data.segmentation else ', stratified'}"
    train = Dataset(data.x[keep], data.y[keep], data.classes, data.name,
                    f"{data.description} less {int((~keep).sum())} for validation",
                    data.notes, data.splits)
    validation = Dataset(data.x[~keep], data.y[~keep], data.classes, data.name,
                         f"validation: {int((~keep).sum())} samples ({where}, seed {seed})")
    return train, validation


def validation_split(data: Dataset, validation, seed: int) -> tuple[Dataset, Dataset | None]:
    """``(train, validation or None)`` for a ``[training] validation`` value: a fraction of
    ``data`` (0: none) or the name of a split the data set holds."""
    if isinstance(validation, str):
        if validation not in data.splits:
            held = ", ".join(f"'{name}'" for name in data.splits) or "none besides train and test"
            raise DataError(f"data set '{data.name}': [training] validation = '{validation}' "
                            f"names a split it does not hold (it holds {held}); set validation "
                            f"to a fraction of the training set such as 0.1.")
        return data, data.splits[validation]
    if validation == 0:
        return data, None
    return split_validation(data, validation, seed)


def crop_masks(y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks ``(N, H, W)`` cut to their centre ``size`` ``(h, w)`` (the floor of half the
    difference off the top and left): the pixels an unpadded network's output covers, as in the
    U-Net paper's overlap-tile strategy.  The masks themselves when they are that size."""
    height, width = y.shape[1:]
    if (height, width) == tuple(size):
        return y
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return np.ascontiguousarray(y[:, top:top + size[0], left:left + size[1]])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` samples used in ``epoch`` (from 0)."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in an epoch; the last one may be smaller: ``ceil(n / batch_size)``."""
    return -(-n // batch_size)


def training_batch(data: Dataset, order: np.ndarray, batch: int, batch_size: int,
                   normalizer: Normalizer, seed: int, epoch: int, augmentations=(),
                   ignore_index: int = -100) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``batch`` of an epoch whose sample order is ``order``: augmented, normalised."""
    index = order[batch * batch_size:(batch + 1) * batch_size]
    x, y = data.x[index], data.y[index]
    if augmentations:
        rng = np.random.default_rng([seed, _AUGMENT_STREAM, epoch, batch])
        x, y_aug = augment(x, y if data.segmentation else None, rng, augmentations, ignore_index)
        y = y_aug if data.segmentation else y
    return normalizer(x), y


def batches(data: Dataset, batch_size: int, normalizer: Normalizer):
    """The data set in its own order, normalised, without augmentation (for evaluation)."""
    for start in range(0, len(data), batch_size):
        yield normalizer(data.x[start:start + batch_size]), data.y[start:start + batch_size]
