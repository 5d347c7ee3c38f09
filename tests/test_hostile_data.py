"""Hostile data and inputs (issue 12): IDX and .npz files that would inflate to gigabytes,
empty or one-sample sets, non-finite values, .npz named .npy, string arrays, FIFOs, image bombs.
Each gives one DataError paragraph naming the file."""

from __future__ import annotations

import gzip
import os
import zipfile

import numpy as np
import pytest

from declcnn.errors import DataError
from declcnn.train import datasets
from declcnn.train.datasets import load_npz, read_idx, read_input, write_idx


def _refused(call, *args) -> str:
    with pytest.raises(DataError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_gzip_idx_declaring_more_than_its_stream_can_hold_is_refused(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + np.asarray([60000, 280, 280], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + b"\0" * 1000, mtime=0))
    assert _refused(read_idx, path) == (
        f"{path}: the header declares shape (60000, 280, 280) (4,704,000,016 bytes), more than "
        f"the 1,073,741,824 an IDX file may hold here; it is corrupt or crafted, download it "
        f"again.")
    header = bytes([0, 0, 8, 3]) + np.asarray([6000, 280, 280], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + b"\0" * 1000, mtime=0))
    size = path.stat().st_size
    assert _refused(read_idx, path) == (
        f"{path}: the header declares shape (6000, 280, 280) (470,400,016 bytes) but {size:,} "
        f"compressed bytes cannot hold that much; the file is corrupt or crafted, download it "
        f"again.")


def test_a_gzip_idx_holding_more_than_it_declares_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "long.gz"
    header = bytes([0, 0, 8, 1]) + np.asarray([4], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + b"\1" * 100_000, mtime=0))
    assert "the header promises shape (4,) (12 bytes in all) but the file holds 13 bytes or " \
           "more" in _refused(read_idx, path)


def test_a_raw_idx_of_the_declared_size_still_reads(tmp_path, rng):
    path = tmp_path / "raw-idx1-ubyte"
    write_idx(path, np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(path), np.arange(5))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_never_opened(tmp_path):
    for name in ("fifo-idx3-ubyte", "x.npy", "x.png", "d.npz"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        reader = {"fifo-idx3-ubyte": lambda p: read_idx(p), "x.npy": lambda p: read_input(
            p, (1, 4, 4)), "x.png": lambda p: read_input(p, (1, 4, 4)),
            "d.npz": lambda p: load_npz(p, (1, 4, 4))}[name]
        assert "is not a regular file (a FIFO, device or socket is not read)" in _refused(
            reader, fifo)


@pytest.mark.parametrize("count, expected", [
    (0, "array 'x' has 0 samples; training needs at least two samples (one is held out for "
        "testing). Add samples, or x_test and y_test."),
    (1, "array 'x' has 1 samples; training needs at least two samples (one is held out for "
        "testing). Add samples, or x_test and y_test."),
])
def test_an_empty_or_one_sample_npz_is_refused(tmp_path, count, expected):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((count, 1, 4, 4), np.uint8), y=np.zeros(count, np.int64))
    assert _refused(load_npz, path, (1, 4, 4)) == f"{path}: {expected}"


def test_an_npz_with_an_empty_test_split_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 1, 4, 4)), y=[0, 1, 0], x_test=np.zeros((0, 1, 4, 4)),
             y_test=np.zeros(0))
    assert "array 'x_test' has no samples" in _refused(load_npz, path, (1, 4, 4))


def test_bad_class_names_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 4, 4)), y=[0, 1, 0, 1], classes=np.asarray("a"))
    assert "array 'classes' must list the 2 class names as strings; it is <U1 of shape ()" in \
        _refused(load_npz, path, (1, 4, 4))


def test_an_npz_member_bigger_than_the_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_NPZ_BYTES", 4096)
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((64, 1, 4, 4)), y=np.zeros(64))
    assert "the arrays declare 8,320 bytes or more, more than the 4,096 bytes this file may " \
           "hold" in _refused(load_npz, path, (1, 4, 4))


def test_an_npz_named_npy_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"")
    assert _refused(read_input, path, (1, 4, 4)) == (
        f"{path}: is an .npz archive (a zip file) named .npy; rename it to .npz, or save one "
        f"array with numpy.save.")


@pytest.mark.parametrize("array, expected", [
    (np.full((4, 4), "a"), "the array is <U1, not real numbers"),
    (np.zeros((4, 4), complex), "the array is complex128, not real numbers"),
    (np.full((4, 4), np.nan), "the array holds 16 NaN or infinite value(s) (as float32)"),
    (np.full((4, 4), 1e39), "the array holds 16 NaN or infinite value(s) (as float32)"),
])
def test_npy_inputs_that_are_not_finite_numbers_are_refused(tmp_path, array, expected):
    path = tmp_path / "x.npy"
    np.save(path, array)
    assert expected in _refused(read_input, path, (1, 4, 4))


def test_an_npy_whose_header_promises_more_than_the_file_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-8])
    assert "the header declares shape (4, 4) of float32 (192 bytes with the header) but the " \
           "file holds 184 bytes; it is truncated or corrupt." in _refused(read_input, path,
                                                                          (1, 4, 4))


def test_an_image_bomb_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", 1000)
    assert _refused(read_input, path, (1, 4, 4)) == (
        f"{path}: the image is 64×64 pixels, more than the 1,000 an input may have; shrink it "
        f"first.")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own bomb check
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", 10**9)
    assert "not a readable image (Image size (4096 pixels) exceeds limit" in _refused(
        read_input, path, (1, 4, 4))
