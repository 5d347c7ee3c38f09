"""``--data PATH``: the format detected (IDX, CIFAR-10 binary, image folder, .npz), each reader
checking sizes before it allocates, and messages that suggest a fix that fits the spec."""

import numpy as np
import pytest
from click.testing import CliRunner
from test_train_loop import TINY, write_tiny

from declcnn.cli import main
from declcnn.errors import DataError
from declcnn.train import Trainer, evaluate, load_checkpoint, predict
from declcnn.train.datasets import (
    CIFAR_CLASSES,
    DIGIT_CLASSES,
    EMBEDDED_DIR,
    FASHION_CLASSES,
    FASHION_FILES,
    detect_format,
    load_dataset,
    load_path,
    write_idx,
)
from declcnn.train.loop import input_fix


def write_cifar(folder, rng, counts=(6, 4), test=5):
    """A CIFAR-10 binary folder: records of a label byte then the R, G and B 32×32 planes."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in [*((f"data_batch_{i + 1}.bin", c) for i, c in enumerate(counts)),
                    ("test_batch.bin", test)]:
        labels = rng.integers(0, 10, n, np.uint8)
        pixels = rng.integers(0, 256, (n, 3, 32, 32), np.uint8)
        records = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        written[name] = (pixels, labels)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    return written


def test_cifar10_binary(tmp_path, rng):
    written = write_cifar(tmp_path / "cifar-10-batches-bin", rng)
    train, test, what = load_path(tmp_path, (3, 32, 32))
    assert what == (f"--data {tmp_path}: read as CIFAR-10 binary "
                    f"({tmp_path / 'cifar-10-batches-bin'})")
    assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(train.x[6:], written["data_batch_2.bin"][0])
    np.testing.assert_array_equal(test.y, written["test_batch.bin"][1])
    assert train.classes == CIFAR_CLASSES and train.x.dtype == np.uint8


def test_cifar10_errors(tmp_path, rng):
    write_cifar(tmp_path, rng)
    with (tmp_path / "data_batch_2.bin").open("ab") as handle:
        handle.write(b"\0" * 10)
    with pytest.raises(DataError, match=r"data_batch_2\.bin: 12302 bytes is not a whole number "
                                        r"of CIFAR-10 records \(3073 bytes each"):
        load_path(tmp_path, (3, 32, 32))
    with pytest.raises(DataError, match=r"the images are \(3, 32, 32\) but the network's input "
                                        r"is \(1, 28, 28\); set the spec's input to \[3, 32, "
                                        r"32\]\.$"):
        load_path(tmp_path, (1, 28, 28))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match=r"pickled Python version, which declcnn does not read"):
        detect_format(pickled)


def test_idx_folders_with_and_without_prefix(tmp_path, rng):
    train, test, what = load_path(EMBEDDED_DIR, (1, 28, 28))
    assert what.endswith(f"read as IDX folder ({EMBEDDED_DIR})")
    assert (len(train), len(test)) == (10000, 2000) and train.classes == FASHION_CLASSES
    digits = tmp_path / "mnist"
    digits.mkdir()
    for (images, labels), n in zip(FASHION_FILES.values(), (12, 5), strict=True):
        write_idx(digits / images, rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(digits / labels, (np.arange(n) % 10).astype(np.uint8))
    train, test, _ = load_path(tmp_path, (1, 28, 28))
    assert (len(train), len(test)) == (12, 5) and train.classes == DIGIT_CLASSES
    (digits / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"mnist: an IDX data set needs the files "
                                        r"t10k-labels-idx1-ubyte\[\.gz\] there too"):
        load_path(digits, (1, 28, 28))


def test_npz_and_image_folders_detected_and_unknown_listed(tmp_path):
    from PIL import Image

    np.savez(tmp_path / "d.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.arange(10) % 2)
    assert detect_format(tmp_path / "d.npz") == ("npz", tmp_path / "d.npz")
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pets" / name / "a.png")
    assert detect_format(tmp_path / "pets")[0] == "image-folder"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "absent"):
        with pytest.raises(DataError) as info:
            detect_format(path)
        message = str(info.value)
        assert message.startswith(f"--data {path}: ") and "an IDX folder" in message
        assert "a CIFAR-10 binary folder" in message and "an .npz archive" in message


def test_data_replaces_the_spec_dataset_and_says_so(tmp_path, capsys):
    spec = write_tiny(tmp_path, epochs=1)
    (tmp_path / "other").mkdir()
    write_tiny(tmp_path / "other")
    spec.write_text(spec.read_text().replace('dataset = "tiny.npz"', 'dataset = "shapes"'))
    Trainer(spec, out=tmp_path / "run", threads=1, data_dir=tmp_path / "other" / "tiny.npz").fit()
    out = capsys.readouterr().out
    assert f"note: --data {tmp_path / 'other' / 'tiny.npz'}: read as .npz archive" in out


def test_input_size_is_built_and_remembered(tmp_path, rng):
    spec = write_tiny(tmp_path, epochs=1)
    x = rng.integers(0, 60, (120, 12, 10)).astype(np.uint8)
    y = np.arange(120) % 3
    for c in range(3):
        x[y == c, 3 * c:3 * c + 4] += 150
    np.savez(tmp_path / "big.npz", x=x, y=y)
    result = CliRunner().invoke(main, ["train", str(spec), "--data", str(tmp_path / "big.npz"),
                                       "--input", "12x10", "--out", str(tmp_path / "run"),
                                       "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    best = tmp_path / "run" / "best.npz"
    assert load_checkpoint(best).meta["input_shape"] == [1, 12, 10]
    assert evaluate(spec, best, data_dir=tmp_path / "big.npz")["samples"] == 12
    np.save(tmp_path / "one.npy", x[0])
    assert len(predict(spec, best, [tmp_path / "one.npy"])[0]["top"]) == 3
    result = CliRunner().invoke(main, ["train", str(spec), "--input", "12by10"])
    assert result.exit_code == 2 and "must be HEIGHTxWIDTH, e.g. 32x32; got '12by10'" in \
        result.output


def test_input_mismatch_suggests_a_fix_that_fits_the_spec(tmp_path):
    assert input_fix("specs/lenet.toml", "lenet", (1, 28, 28), (3, 32, 32)) == (
        "set [network] input = [3, 32, 32] (it builds at that shape)")
    assert input_fix("specs/lenet.toml", "lenet", (1, 28, 28), (1, 32, 32)) == (
        "train with --input 32x32 (network 'lenet' runs at that size), or set [network] input "
        "= [1, 32, 32]")
    resnet = input_fix("specs/resnet18.toml", "resnet18", (3, 224, 224), (1, 28, 28))
    assert resnet.startswith('train it on a 3-channel data set at a size it allows, e.g. '
                             'dataset = "shape-classes" or --data a CIFAR-10 or image folder, '
                             'with --input 32x32')
    spec = tmp_path / "wide.toml"
    spec.write_text(TINY.format(epochs=1, classes=10, extra="").replace(
        'dataset = "tiny.npz"', 'dataset = "fashion-mnist"'))
    with pytest.raises(DataError, match=r"Fashion-MNIST images are \(1, 28, 28\) but the "
                                        r"network's input is \(1, 8, 8\); train with --input "
                                        r"28x28 \(network 'tiny' runs at that size\)"):
        Trainer(spec, out=tmp_path / "run", verbose=False).fit()


def test_shape_classes_at_any_size():
    train, test = load_dataset("shape-classes", (3, 32, 24), seed=1)
    assert train.x.shape == (1200, 3, 32, 24) and len(test) == 300
    assert train.classes == ("circle", "square", "triangle")
    assert np.bincount(train.y).min() > 300


POOLED = """
[network]
name = "pooled"
input = [1, 8, 8]

[[layers]]
name = "conv"
type = "conv2d"
out_channels = 6
kernel = 3
padding = 1

[[layers]]
name = "relu"
type = "relu"

[[layers]]
name = "pool"
type = "global_maxpool"

[[layers]]
name = "flat"
type = "flatten"

[[layers]]
name = "fc"
type = "linear"
out_features = 3

[training]
dataset = "tiny.npz"
optimizer = "adam"
lr = 0.02
batch_size = 16
epochs = 2
"""


def test_predict_runs_at_the_sizes_the_network_allows(tmp_path):
    write_tiny(tmp_path)
    spec = tmp_path / "pooled.toml"
    spec.write_text(POOLED)
    Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    np.save(tmp_path / "wide.npy", np.full((12, 10), 30, np.uint8))
    out = predict(spec, tmp_path / "run" / "best.npz", [tmp_path / "wide.npy"])
    assert abs(sum(t["probability"] for t in out[0]["top"]) - 1) < 1e-6
    flat = write_tiny(tmp_path, epochs=1)
    Trainer(flat, out=tmp_path / "flat", threads=1, verbose=False).fit()
    with pytest.raises(DataError, match=r"wide\.npy: the array has shape \(12, 10\) but the "
                                        r"network takes \(1, 8, 8\); at 12×10 parameter "
                                        r"'fc\.weight' would be \(3, 120\), but it was trained "
                                        r"as \(3, 64\)"):
        predict(flat, tmp_path / "flat" / "best.npz", [tmp_path / "wide.npy"])


def test_generated_sets_keep_their_pixel_budget_at_large_sizes():
    from declcnn.train.datasets import load_shape_classes, load_shapes

    train, test = load_shape_classes((3, 160, 160), n_train=None)
    assert (len(train), len(test)) == (200, 50)
    train, test = load_shapes((1, 256, 256))
    assert (len(train), len(test)) == (125, 25)
