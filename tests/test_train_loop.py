"""The training loop, evaluation and prediction, in process, on tiny specs and data."""

import json

import numpy as np
import pytest

from declcnn.errors import CheckpointError, DataError, TrainingError
from declcnn.train import Trainer, evaluate, load_checkpoint, predict
from declcnn.train.data import epoch_order, split_validation
from declcnn.train.datasets import Dataset

TINY = """
[network]
name = "tiny"
input = [1, 8, 8]

[[layers]]
name = "conv"
type = "conv2d"
out_channels = 4
kernel = 3
padding = 1

[[layers]]
name = "relu"
type = "relu"

[[layers]]
name = "pool"
type = "maxpool2d"
kernel = 2

[[layers]]
name = "flat"
type = "flatten"

[[layers]]
name = "drop"
type = "dropout"
p = 0.2

[[layers]]
name = "fc"
type = "linear"
out_features = {classes}

[training]
dataset = "tiny.npz"
lr = 0.05
batch_size = 16
epochs = {epochs}
augment = ["flip", "shift"]
{extra}
"""

SEGMENTER = """
[network]
name = "seg"
input = [1, 16, 16]

[[layers]]
name = "conv"
type = "conv2d"
out_channels = 8
kernel = 3
padding = "same"

[[layers]]
name = "relu"
type = "relu"

[[layers]]
name = "classifier"
type = "conv2d"
out_channels = 4
kernel = 1

[training]
dataset = "shapes"
optimizer = "adam"
lr = 0.01
batch_size = 100
epochs = 1
augment = ["flip", "crop"]
"""


def write_tiny(folder, epochs=2, classes=3, extra="", nan_at=None):
    """A 3-class problem a tiny CNN learns at once: class c brightens rows 2c..2c+2."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.integers(0, 60, (300, 8, 8)).astype(np.float32)
    for c in range(3):
        x[y == c, 2 * c:2 * c + 3, :] += 150
    if nan_at is not None:
        x /= 255
        x[nan_at, 3, 3] = np.nan
    np.savez(folder / "tiny.npz", x=x if nan_at is not None else x.astype(np.uint8), y=y)
    spec = folder / "tiny.toml"
    spec.write_text(TINY.format(epochs=epochs, classes=classes, extra=extra))
    return spec


def test_training_learns_and_writes_the_run_folder(tmp_path):
    spec = write_tiny(tmp_path, epochs=2)
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.npz", "curves.png", "last.npz",
                                                     "metrics.jsonl", "test.json"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records == result["history"]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
            "seconds"} <= records[0].keys()
    assert records[-1]["val_accuracy"] >= 0.9
    last = load_checkpoint(run / "last.npz")
    # 270 training samples less 27 (10%, stratified) for validation: 16 batches an epoch.
    assert last.meta["epoch"] == 2 and last.meta["step"] == 2 * 16
    assert last.spec == spec.read_text() and last.meta["settings"]["lr"] == 0.05
    assert set(last.params) == {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}
    assert set(last.optimizer) == {"steps"} | {f"momentum_buffer/{k}" for k in last.params}


def test_same_seed_and_threads_give_the_same_weights(tmp_path):
    spec = write_tiny(tmp_path, epochs=1)
    for name in ("a", "b"):
        Trainer(spec, out=tmp_path / name, threads=1, verbose=False).fit()
    Trainer(spec, out=tmp_path / "c", threads=1, seed=1, verbose=False).fit()
    a, b, c = (load_checkpoint(tmp_path / n / "last.npz").params for n in "abc")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["fc.weight"], c["fc.weight"])


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path):
    spec = write_tiny(tmp_path, epochs=2, extra='optimizer = "adamw"\nweight_decay = 0.01')
    whole = Trainer(spec, out=tmp_path / "whole", threads=1, verbose=False).fit()
    # Stop after step 23 (epoch 2, batch 6) by writing only that checkpoint, then resume.
    part = Trainer(spec, out=tmp_path / "part", threads=1, epochs=2, checkpoint_every=23,
                   verbose=False)
    part.fit()
    first = load_checkpoint(tmp_path / "part" / "last.npz")
    assert first.meta["step"] == 32
    stopped = Trainer(spec, out=tmp_path / "stop", threads=1, checkpoint_every=23, verbose=False)
    stopped.settings["epochs"] = 2

    class Stop(Exception):
        pass

    original = stopped._step

    def step_until(x, y, step, *rest):
        if step == 23:
            raise Stop
        return original(x, y, step, *rest)

    stopped._step = step_until
    with pytest.raises(Stop):
        stopped.fit()
    assert load_checkpoint(tmp_path / "stop" / "last.npz").meta["step"] == 23
    resumed = Trainer(spec, out=tmp_path / "stop", threads=1, verbose=False).fit(resume=True)
    assert resumed["history"] == [{**r, "seconds": s["seconds"]} for r, s in
                                  zip(whole["history"], resumed["history"], strict=True)]
    a = load_checkpoint(tmp_path / "whole" / "last.npz")
    b = load_checkpoint(tmp_path / "stop" / "last.npz")
    for group in ("params", "optimizer"):
        for key, value in getattr(a, group).items():
            np.testing.assert_array_equal(getattr(b, group)[key], value, err_msg=key)
    assert a.meta["dropout_rng"] == b.meta["dropout_rng"]


def test_nan_loss_stops_and_names_the_layer(tmp_path):
    spec = write_tiny(tmp_path, epochs=1, nan_at=123, extra="normalize = false")
    trainer = Trainer(spec, out=tmp_path / "run", threads=1, checkpoint_every=1, verbose=False)
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    # The sample's place in epoch 1 among the 243 training samples (10% are held out for the
    # test, 10% of the rest for validation).
    held_order = np.random.default_rng(0).permutation(300)
    numbered = Dataset(held_order[30:], np.load(tmp_path / "tiny.npz")["y"][held_order[30:]],
                       ("0", "1", "2"), "tiny")
    train, _ = split_validation(numbered, 0.1, 0)
    train_index = int(np.flatnonzero(train.x == 123)[0])
    batch = int(np.flatnonzero(epoch_order(243, 0, 0) == train_index)[0]) // 16 + 1
    assert str(info.value) == (
        f"step {batch} (epoch 1, batch {batch}): the loss is nan; the first layer whose output "
        f"is not finite is 'conv' (conv2d). Training stopped; "
        + (f"the last good checkpoint is {tmp_path / 'run' / 'last.npz'}" if batch > 1
           else "no checkpoint was written yet")
        + ". Lower the learning rate (lr = 0.05 at this step), add warm-up (warmup_epochs) or "
          "check the data for non-finite values.")
    if batch > 1:
        assert load_checkpoint(tmp_path / "run" / "last.npz").meta["step"] == batch - 1


def test_diverging_run_stops_with_the_learning_rate(tmp_path):
    spec = write_tiny(tmp_path, epochs=3, extra="momentum = 0.99")
    with pytest.raises(TrainingError, match=r"^step \d+ \(epoch \d, batch \d+\): the loss is "
                                            r"(nan|inf); .*Lower the learning rate \(lr = "
                                            r"1e\+09 at this step\)"):
        Trainer(spec, out=tmp_path / "run", lr=1e9, threads=1, verbose=False).fit()


def test_evaluate_and_predict_classification(tmp_path):
    from PIL import Image

    spec = write_tiny(tmp_path, epochs=2)
    Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    result = evaluate(spec, tmp_path / "run" / "best.npz")
    assert {"accuracy", "per_class_accuracy", "confusion_matrix", "loss"} <= result.keys()
    assert "mean_iou" not in result and result["samples"] == 30
    assert sum(map(sum, result["confusion_matrix"])) == 30 and result["accuracy"] >= 0.9
    image = np.full((16, 16), 20, np.uint8)
    image[8:14] = 220  # rows 4..6 of 8 after resizing: class 2
    Image.fromarray(image).save(tmp_path / "two.png")
    np.save(tmp_path / "zero.npy", np.where(np.arange(8)[:, None] < 3, 200, 20)
            .repeat(8, 1).astype(np.uint8))
    out = predict(spec, tmp_path / "run" / "best.npz", [tmp_path / "two.png",
                                                        tmp_path / "zero.npy"], top_k=2)
    assert [r["top"][0]["index"] for r in out] == [2, 0]
    assert len(out[0]["top"]) == 2 and out[0]["top"][0]["probability"] > 0.5
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    with pytest.raises(DataError, match=r"bad\.npy: the array has shape \(3, 5\) but the "
                                        r"network takes \(1, 8, 8\)"):
        predict(spec, tmp_path / "run" / "best.npz", [tmp_path / "bad.npy"])


def test_checkpoint_of_another_spec_is_refused(tmp_path):
    spec = write_tiny(tmp_path, epochs=1)
    Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    other = tmp_path / "other.toml"
    other.write_text(TINY.format(epochs=1, classes=5, extra=""))
    with pytest.raises(CheckpointError) as info:
        evaluate(other, tmp_path / "run" / "last.npz")
    assert str(info.value) == (
        f"{tmp_path / 'run' / 'last.npz'} (saved from spec 'tiny'): network 'tiny' ({other}): "
        f"parameter 'fc.weight' is stored with shape (3, 64) but the network expects (5, 64). "
        f"The checkpoint was saved from a spec whose layer differs; use that spec, or retrain "
        f"with this one.")


def test_labels_beyond_the_output_are_refused(tmp_path):
    spec = write_tiny(tmp_path, classes=2)
    with pytest.raises(DataError, match=r"network 'tiny': the data set 'tiny.npz' has 3 classes "
                                        r"\(labels 0..2\) but the output gives 2 scores; set "
                                        r"the last layer's outputs to 3"):
        Trainer(spec, out=tmp_path / "run", verbose=False).fit()


def test_segmentation_trains_evaluates_and_writes_masks(tmp_path):
    spec = tmp_path / "seg.toml"
    spec.write_text(SEGMENTER)
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    assert "val_mean_iou" in result["history"][0]
    metrics = evaluate(spec, tmp_path / "run" / "best.npz")
    assert {"accuracy", "pixel_accuracy", "mean_iou", "per_class_iou"} <= metrics.keys()
    assert metrics["samples"] == 400 * 16 * 16 and 0 <= metrics["mean_iou"] <= 1
    np.save(tmp_path / "img.npy", np.zeros((16, 16), np.uint8))
    out = predict(spec, tmp_path / "run" / "best.npz", [tmp_path / "img.npy"],
                  out=tmp_path / "masks")
    from PIL import Image

    mask = np.asarray(Image.open(out[0]["mask"]))
    assert out[0]["mask"] == str(tmp_path / "masks" / "img_mask.png") and mask.shape == (16, 16)
    assert abs(sum(out[0]["classes"].values()) - 1) < 1e-9
