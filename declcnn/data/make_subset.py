"""Make the compact Fashion-MNIST subset shipped in this folder from the full IDX files.

    python -m declcnn.data.make_subset [/usr/share/datasets/fashion-mnist]

Takes 1000 training and 200 test images of each of the 10 classes: per class, the first ones in
a permutation drawn from seed 0, kept in their original order.  The output (gzip IDX without time
stamps) is the same bytes on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from declcnn.train.datasets import FASHION_FILES, SYSTEM_FASHION_DIR, read_idx, write_idx

PER_CLASS = {"train": 1000, "test": 200}
HERE = Path(__file__).resolve().parent


def balanced_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` indices of each label, chosen by a seeded permutation, in ascending order."""
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = [order[labels[order] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def main(source: str = SYSTEM_FASHION_DIR) -> None:
    for split, (images_stem, labels_stem) in FASHION_FILES.items():
        images = read_idx(Path(source) / f"{images_stem}.gz")
        labels = read_idx(Path(source) / f"{labels_stem}.gz")
        keep = balanced_indices(labels, PER_CLASS[split])
        write_idx(HERE / f"fashion-mnist-subset-{images_stem}.gz", images[keep])
        write_idx(HERE / f"fashion-mnist-subset-{labels_stem}.gz", labels[keep])
        print(f"{split}: {len(keep)} of {len(labels)} images")


if __name__ == "__main__":
    main(*sys.argv[1:])
