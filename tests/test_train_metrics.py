"""Counting correct predictions against numpy's argmax."""

import numpy as np
import pytest

from declcnn.train.metrics import correct_predictions


@pytest.mark.parametrize("shape", [(64, 10), (5, 3, 4, 6), (0, 10), (7, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_correct_predictions_match_argmax(shape, dtype, ignore_index):
    """Ties go to the first maximum and a NaN counts as the maximum, as numpy's argmax."""
    rng = np.random.default_rng(len(shape) + shape[0])
    scores = rng.integers(0, 4, shape).astype(dtype)  # small integers: many ties
    scores[rng.random(shape) < 0.1] = np.nan
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    counted = target != ignore_index
    expected = (int(((scores.argmax(axis=1) == target) & counted).sum()), int(counted.sum()))
    assert correct_predictions(scores, target, ignore_index) == expected
