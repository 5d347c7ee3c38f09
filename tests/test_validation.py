"""The validation split: held out of the training set, used to choose best.npz; the test split
is scored once, at the end, and by ``evaluate``."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_train_loop import write_tiny

from declcnn.cli import main
from declcnn.errors import DataError, SpecError
from declcnn.graph import load_graph
from declcnn.train import Trainer, evaluate, load_checkpoint
from declcnn.train import loop as loop_module
from declcnn.train.data import split_validation, validation_split
from declcnn.train.datasets import Dataset


def _labelled(counts):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return Dataset(np.arange(len(y)), y, tuple(map(str, range(len(counts)))), "counted")


def test_split_is_stratified_seeded_and_disjoint():
    data = _labelled([100, 50, 10, 1])
    train, validation = split_validation(data, 0.1, seed=3)
    assert np.bincount(validation.y, minlength=4).tolist() == [10, 5, 1, 0]
    assert sorted(np.concatenate([train.x, validation.x]).tolist()) == list(range(161))
    again, _ = split_validation(data, 0.1, seed=3)
    other, _ = split_validation(data, 0.1, seed=4)
    assert np.array_equal(train.x, again.x) and not np.array_equal(train.x, other.x)
    assert validation.description == ("validation: 16 samples (10% of the training set, "
                                      "stratified, seed 3)")


def test_split_that_leaves_nothing_is_refused():
    with pytest.raises(DataError, match=r"^data set 'counted': holding out 0.01 of its 3 training "
                                        r"samples for validation leaves none; set \[training\] "
                                        r"validation to another fraction, or to 0 for none\.$"):
        split_validation(_labelled([2, 1]), 0.01, seed=0)


def test_no_validation_and_unknown_named_split():
    data = _labelled([5, 5])
    assert validation_split(data, 0, 0) == (data, None)
    with pytest.raises(DataError, match=r"validation = 'val' names a split it does not hold \(it "
                                        r"holds none besides train and test\)"):
        validation_split(data, "val", 0)


@pytest.mark.parametrize("value, message", [
    (1, "must be a fraction ≥ 0 and < 1 of the training set"),
    ("test", 'must name a split the data set holds (e.g. "val"'),
])
def test_validation_key_is_checked(tmp_path, value, message):
    spec = write_tiny(tmp_path, extra=f"validation = {json.dumps(value)}")
    with pytest.raises(SpecError) as info:
        load_graph(str(spec))
    assert "validation" in str(info.value) and message in str(info.value)


def test_best_is_chosen_on_validation_and_test_scored_once(tmp_path, monkeypatch):
    spec = write_tiny(tmp_path, epochs=3)
    scored = []
    original = loop_module.evaluate_network

    def spy(network, data, *rest, **options):
        result = original(network, data, *rest, **options)
        scored.append(data.description)
        if len(scored) == 2:  # epoch 2's validation overflowed: never the best
            result.update(loss=float("nan"), accuracy=1.0)
        return result

    monkeypatch.setattr(loop_module, "evaluate_network", spy)
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    assert [d.startswith("validation: 27 samples") for d in scored] == [True] * 3 + [False]
    assert scored[-1].endswith("30 held-out samples")
    history = result["history"]
    # a non-finite value is stored as None (JSON has no NaN)
    finite = [r["val_accuracy"] for r in history if r["val_loss"] is not None]
    assert result["best"] == max(finite) and result["best_epoch"] != 2
    best = load_checkpoint(tmp_path / "run" / "best.npz")
    assert best.meta["epoch"] == result["best_epoch"]
    test = json.loads((tmp_path / "run" / "test.json").read_text())
    assert test["split"] == "test" and test["samples"] == 30 and test == result["test"]
    assert test["weights"] == str(tmp_path / "run" / "best.npz")


def test_evaluate_names_the_split(tmp_path):
    spec = write_tiny(tmp_path, epochs=1, extra="validation = 0.2")
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    weights = tmp_path / "run" / "best.npz"
    sizes = {split: evaluate(spec, weights, split=split)["samples"]
             for split in ("test", "validation", "train")}
    assert sizes == {"test": 30, "validation": 54, "train": 216}
    assert evaluate(spec, weights)["accuracy"] == result["test"]["accuracy"]
    text = CliRunner().invoke(main, ["eval", str(spec), "--weights", str(weights), "--split",
                                     "validation"]).stdout
    assert text.startswith("validation split: validation: 54 samples (20% of the training "
                           "set, stratified, seed 0)\n")


def test_named_split_and_none(tmp_path):
    spec = write_tiny(tmp_path, epochs=1, extra='validation = "val"')
    with np.load(tmp_path / "tiny.npz") as archive:
        x, y = archive["x"], archive["y"]
    np.savez(tmp_path / "tiny.npz", x=x[:200], y=y[:200], x_val=x[200:250], y_val=y[200:250],
             x_test=x[250:], y_test=y[250:])
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    assert evaluate(spec, tmp_path / "run" / "best.npz", split="validation")["samples"] == 50
    assert result["test"]["samples"] == 50 and load_checkpoint(
        tmp_path / "run" / "last.npz").meta["step"] == 13
    spec = write_tiny(tmp_path / "run", epochs=2, extra="validation = 0")
    result = Trainer(spec, out=tmp_path / "none", threads=1, verbose=False).fit()
    assert "val_loss" not in result["history"][0] and result["best_epoch"] == 2
    out = CliRunner().invoke(main, ["train", str(spec), "--quiet", "--out",
                                    str(tmp_path / "none2"), "--threads", "1"])
    assert out.exit_code == 0, out.output
    assert "; no validation split; test accuracy " in out.stdout
