"""The Python side: a spec as a dict, fit on numpy arrays, predict on arrays normalised as in
training."""

import numpy as np
import pytest
import tomllib
from test_train_loop import TINY

import declcnn
from declcnn.errors import DataError, TrainingError
from declcnn.train import Trainer, predict


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
    for c in range(3):
        x[y == c, 2 * c:2 * c + 3] += 150
    return x, y


def _spec_dict():
    return tomllib.loads(TINY.format(epochs=2, classes=3, extra="").replace(
        'dataset = "tiny.npz"', 'dataset = "shapes"'))


def test_loads_takes_a_dict():
    network = declcnn.loads(_spec_dict())
    assert network.graph.name == "tiny" and network.graph.input_shape == (1, 8, 8)


def test_fit_and_predict_on_arrays(tmp_path):
    x, y = _arrays(240)
    x_val, y_val = _arrays(40, seed=1)
    x_test, y_test = _arrays(40, seed=2)
    trainer = Trainer(_spec_dict(), out=tmp_path / "run", threads=1, verbose=False)
    with pytest.raises(TrainingError, match=r"^predict: the network is not trained yet"):
        trainer.predict(x_test)
    result = trainer.fit(x, y, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                         classes=["top", "middle", "bottom"])
    assert result["test"]["samples"] == 40 and result["test"]["accuracy"] >= 0.9
    probabilities = trainer.predict(x_test)
    assert probabilities.shape == (40, 3)
    assert (probabilities.argmax(axis=1) == y_test).mean() == result["test"]["accuracy"]
    # The checkpoint's normaliser is applied to arrays as in training.
    out = predict(_spec_dict(), tmp_path / "run" / "best.npz", x_test[:5])
    assert [r["input"] for r in out] == [f"sample {i}" for i in range(5)]
    assert [r["top"][0]["class"] for r in out] == [
        ["top", "middle", "bottom"][int(c)] for c in probabilities[:5].argmax(axis=1)]


def test_fit_without_test_arrays_and_bad_arrays(tmp_path):
    x, y = _arrays(100)
    trainer = Trainer(_spec_dict(), out=tmp_path / "run", threads=1, epochs=1, verbose=False)
    assert trainer.fit(x, y)["test"] is None
    with pytest.raises(DataError, match=r"^fit\(x, y\): array 'y' has 99 entries for 100 "
                                        r"samples"):
        trainer.fit(x, y[:99])
