"""Data readers (IDX, embedded subset, shapes, .npz, image folders), augmentation, batching."""


import numpy as np
import pytest

from declcnn.errors import DataError
from declcnn.train import augment as aug
from declcnn.train.data import Normalizer, epoch_order, steps_per_epoch, training_batch
from declcnn.train.datasets import (
    EMBEDDED_DIR,
    FASHION_FILES,
    Dataset,
    find_fashion_mnist,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    make_shapes,
    read_idx,
    write_idx,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, rng, dtype, suffix):
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 1, 2], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 2])


def test_idx_corrupt_files_name_the_file(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((10, 28, 28), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.gz: the gzip stream is corrupt or truncated .*"
                                        r"download the file again"):
        read_idx(path)
    raw = tmp_path / "raw"
    write_idx(raw, np.zeros((10, 4), np.uint8))
    raw.write_bytes(raw.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"raw: the header promises shape \(10, 4\) \(52 bytes "
                                        r"in all\) but the file holds 49 bytes"):
        read_idx(raw)
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04hello")
    with pytest.raises(DataError, match=r"bad: not an IDX file \(the first bytes are 50 4b 03 "
                                        r"04"):
        read_idx(bad)
    with pytest.raises(DataError, match=r"missing: no such file"):
        read_idx(tmp_path / "missing")


def _tiny_fashion(folder, rng, n=(20, 10), gz=True):
    for (images, labels), count in zip(FASHION_FILES.values(), n, strict=True):
        suffix = ".gz" if gz else ""
        write_idx(folder / (images + suffix), rng.integers(0, 256, (count, 28, 28), np.uint8))
        write_idx(folder / (labels + suffix), (np.arange(count) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, rng, gz, monkeypatch):
    monkeypatch.delenv("DECLCNN_DATA", raising=False)
    _tiny_fashion(tmp_path, rng, gz=gz)
    train, test = load_fashion_mnist(tmp_path)
    assert train.x.shape == (20, 1, 28, 28) and test.x.shape == (10, 1, 28, 28)
    assert train.x.dtype == np.uint8 and list(test.y) == list(range(10))
    assert train.classes[9] == "Ankle boot" and not train.notes
    monkeypatch.setenv("DECLCNN_DATA", str(tmp_path))
    assert find_fashion_mnist() == (tmp_path, False)


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DECLCNN_DATA", raising=False)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError) as info:
        find_fashion_mnist(tmp_path)
    message = str(info.value)
    assert message.startswith(f"--data {tmp_path}: Fashion-MNIST needs the IDX files "
                              f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                              f"t10k-labels-idx1-ubyte[.gz] there;")
    assert "install the Debian package dataset-fashion-mnist" in message
    monkeypatch.setenv("DECLCNN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"DECLCNN_DATA .*nowhere: .*\(the folder does not "
                                        r"exist\)"):
        find_fashion_mnist()


def test_mismatched_label_file_is_refused(tmp_path, rng, monkeypatch):
    _tiny_fashion(tmp_path, rng)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"expected N×28×28 images and N labels; got shapes "
                                        r"\(10, 28, 28\) and \(3,\)"):
        load_fashion_mnist(tmp_path)


def test_embedded_subset_is_balanced_and_announced(monkeypatch):
    import declcnn.train.datasets as datasets

    monkeypatch.delenv("DECLCNN_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_DIR", "/nonexistent")
    train, test = load_fashion_mnist()
    assert find_fashion_mnist() == (EMBEDDED_DIR, True)
    assert train.x.shape == (10000, 1, 28, 28) and test.x.shape == (2000, 1, 28, 28)
    assert np.bincount(train.y).tolist() == [1000] * 10
    assert np.bincount(test.y).tolist() == [200] * 10
    assert "embedded Fashion-MNIST subset (10000 training, 2000 test images)" in train.notes[0]
    assert "dataset-fashion-mnist" in train.notes[0]


def test_shapes_are_deterministic_and_labelled():
    a, b = make_shapes(6, (32, 40), 3, seed=5), make_shapes(6, (32, 40), 3, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.shape == (6, 3, 32, 40) and a.y.shape == (6, 32, 40) and a.segmentation
    assert set(np.unique(a.y)) <= {0, 1, 2, 3} and (a.y > 0).any()
    # Shapes are brighter than the background: the mask marks the bright pixels.
    assert a.x[:, 0][a.y > 0].mean() > a.x[:, 0][a.y == 0].mean() + 60
    c = make_shapes(6, (32, 40), 3, seed=6)
    assert not np.array_equal(a.y, c.y)


def test_npz_reader(tmp_path, rng):
    path = tmp_path / "d.npz"
    x = rng.integers(0, 256, (50, 8, 8), np.uint8)
    np.savez(path, x=x, y=np.arange(50) % 3)
    train, test = load_npz(path, (1, 8, 8), seed=0)
    assert len(train) == 45 and len(test) == 5 and train.x.shape[1:] == (1, 8, 8)
    assert train.classes == ("0", "1", "2")
    both = np.concatenate([train.y, test.y])
    assert sorted(both.tolist()) == sorted((np.arange(50) % 3).tolist())
    np.savez(path, x=x.astype(np.float32), y=np.arange(50) % 3, x_test=x[:4], y_test=[0, 1, 2, 0])
    train, test = load_npz(path, (1, 8, 8))
    assert len(train) == 50 and len(test) == 4 and train.x.dtype == np.float32


def test_npz_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"d\.npz: the archive lacks 'x' and 'y' \(it has "
                                        r"\['images'\]\)"):
        load_npz(path, (1, 4, 4))
    np.savez(path, x=np.zeros((2, 4, 4)), y=[0, 1])
    with pytest.raises(DataError, match=r"array 'x' has samples of shape \(1, 4, 4\) but the "
                                        r"network's input is \(1, 8, 8\)"):
        load_npz(path, (1, 8, 8))
    np.savez(path, x=np.zeros((2, 4, 4)), y=[0, 1, 1])
    with pytest.raises(DataError, match=r"array 'y' has 3 entries for 2 samples"):
        load_npz(path, (1, 4, 4))
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"d\.npz: not a readable \.npz archive: the file is "
                                        r"truncated"):
        load_npz(path, (1, 4, 4))


def test_image_folder(tmp_path, rng):
    from PIL import Image

    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (10, 12, 3), np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    train, test = load_image_folder(tmp_path, (1, 6, 6))
    assert train.x.shape == (6, 1, 6, 6) and test.x.shape == (4, 1, 6, 6)
    assert train.classes == ("cat", "dog") and train.y.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image .*replace or "
                                        r"remove it"):
        load_image_folder(tmp_path, (3, 6, 6))
    with pytest.raises(DataError, match=r"is a folder|no such file or folder"):
        load_dataset(str(tmp_path / "nothing"), (1, 6, 6))


def test_data_dir_replaces_any_dataset(tmp_path, rng):
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (20, 16, 16), np.uint8),
             y=np.arange(20) % 2)
    train, _ = load_dataset("shapes", (1, 16, 16), data_dir=tmp_path / "d.npz")
    assert not train.segmentation and train.notes[0].startswith(f"--data {tmp_path / 'd.npz'}")


def _naive_translate(x, offset_y, offset_x, margin, mode):
    out = np.empty_like(x)
    for i in range(len(x)):
        padded = np.pad(x[i], ((0, 0), (margin, margin), (margin, margin)), mode=mode)
        out[i] = padded[:, offset_y[i]:offset_y[i] + x.shape[2],
                        offset_x[i]:offset_x[i] + x.shape[3]]
    return out


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_translate_matches_per_sample_crops(rng, mode):
    x = rng.integers(0, 256, (7, 2, 9, 11), np.uint8)
    y = rng.integers(0, 4, (7, 9, 11))
    got_x, got_y = aug.translate(x, y, np.random.default_rng(3), 2, mode, -100)
    draw = np.random.default_rng(3)
    offset_y, offset_x = draw.integers(0, 5, 7), draw.integers(0, 5, 7)
    np.testing.assert_array_equal(got_x, _naive_translate(x, offset_y, offset_x, 2, mode))
    y_mode = {"constant_values": -100} if mode == "constant" else {}
    expected_y = np.stack([np.pad(y[i], 2, mode=mode, **y_mode)[
        offset_y[i]:offset_y[i] + 9, offset_x[i]:offset_x[i] + 11] for i in range(7)])
    np.testing.assert_array_equal(got_y, expected_y)


def test_flip_mirrors_chosen_samples(rng):
    x = rng.integers(0, 256, (16, 1, 4, 5), np.uint8)
    y = rng.integers(0, 3, (16, 4, 5))
    got_x, got_y = aug.flip(x, y, np.random.default_rng(1))
    chosen = np.random.default_rng(1).random(16) < 0.5
    for i in range(16):
        expected = x[i, ..., ::-1] if chosen[i] else x[i]
        np.testing.assert_array_equal(got_x[i], expected)
        np.testing.assert_array_equal(got_y[i], y[i, :, ::-1] if chosen[i] else y[i])
    assert 0 < chosen.sum() < 16


def test_normalizer_and_batches(rng):
    x = rng.integers(0, 256, (30, 2, 5, 5), np.uint8)
    data = Dataset(x, np.arange(30) % 3, ("a", "b", "c"), "t")
    norm = Normalizer.fit(data)
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(norm.std, scaled.std(axis=(0, 2, 3)), rtol=1e-5)
    out = norm(x[:4])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (scaled[:4] - norm.mean[:, None, None])
                               / norm.std[:, None, None], rtol=1e-5, atol=1e-6)
    off = Normalizer.fit(data, enabled=False)
    np.testing.assert_allclose(off(x[:2]), scaled[:2], rtol=1e-6)
    assert steps_per_epoch(30, 8) == 4
    order = epoch_order(30, seed=4, epoch=2)
    np.testing.assert_array_equal(order, epoch_order(30, seed=4, epoch=2))
    assert not np.array_equal(order, epoch_order(30, seed=4, epoch=3))
    bx, by = training_batch(data, order, 3, 8, norm, 4, 2, ("flip", "shift"))
    assert bx.shape == (6, 2, 5, 5) and by.tolist() == data.y[order[24:]].tolist()
    again, _ = training_batch(data, order, 3, 8, norm, 4, 2, ("flip", "shift"))
    np.testing.assert_array_equal(bx, again)
