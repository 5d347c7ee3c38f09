"""Hostile checkpoints (issue 12): wrong types and shapes in any field, non-finite weights, a bad
normaliser, settings that would override the spec, sizes that would inflate to gigabytes.  Each
gives one CheckpointError paragraph naming the file and the field."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest

from declcnn.errors import CheckpointError, DeclcnnWarning
from declcnn.graph import load_graph
from declcnn.runtime import Network
from declcnn.train.checkpoint import (
    Checkpoint,
    checkpoint_budget,
    load_checkpoint,
    save_checkpoint,
    stored_settings,
)

SPEC = """[network]
name = "tiny"
input = [1, 4, 4]

[[layers]]
type = "flatten"

[[layers]]
name = "fc"
type = "linear"
out_features = 2
"""


def _checkpoint(rng, **meta) -> Checkpoint:
    return Checkpoint(
        params={"fc.weight": rng.standard_normal((2, 16)).astype(np.float32),
                "fc.bias": np.zeros(2, np.float32)},
        buffers={}, optimizer={"steps": np.asarray(3)}, spec=SPEC,
        meta={"epoch": 1, "step": 3, "dropout_rng": np.random.default_rng(1).bit_generator.state,
              "history": [], "classes": ["a", "b"], "spec_name": "tiny", "threads": 1,
              "running": {"loss": 0.0, "correct": 0, "counted": 0, "images": 0}, "best": 0.5,
              "settings": {"lr": 0.1, "epochs": 2}, **meta},
        mean=np.array([0.5], np.float32), std=np.array([0.25], np.float32))


def _write(tmp_path, arrays: dict) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


def _refused(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


CORRUPT = "it is corrupt or was not written by declcnn train"


@pytest.mark.parametrize("key, value, expected", [
    ("version", np.arange(3), "the checkpoint's format version must be one integer; it is int64 "
                              "of shape (3,), so " + CORRUPT),
    ("version", np.asarray("1"), "the checkpoint's format version must be one integer; it is <U1"),
    ("format", np.arange(2), "not a declcnn checkpoint (it has no format tag"),
    ("meta", np.asarray("[1, 2]"), "the checkpoint's meta data must be a JSON object; it is a "
                                   "list, so " + CORRUPT),
    ("meta", np.asarray("[" * 100_000 + "]" * 100_000), "meta data is not valid JSON (nested "
                                                         "too deep)"),
    ("meta", np.arange(3.0), "the checkpoint's spec and meta must be text"),
    ("spec", np.asarray(3), "the checkpoint's spec and meta must be text"),
    ("optimizer/steps", np.arange(3), "the optimiser's step count must be one whole number ≥ 0; "
                                      "it is int64 of shape (3,)"),
    ("optimizer/steps", np.asarray("x"), "optimizer 'steps' is stored as <U1, not numbers"),
    ("param/fc.bias", np.array(["a", "b"]), "param 'fc.bias' is stored as <U1, not numbers"),
    ("param/fc.weight", np.full((2, 16), np.nan, np.float32),
     "param 'fc.weight' holds 32 NaN or infinite value(s) of 32; the run diverged"),
    ("data/mean", np.array([[0.5]], np.float32), "the normaliser's data/mean must be a finite "
                                                  "float vector with one value per channel"),
    ("data/std", np.array([0.0], np.float32), "the normaliser's data/std must be > 0 for every "
                                               "channel"),
    ("data/std", np.array([np.nan], np.float32), "the normaliser's data/std must be a finite"),
    ("data/std", None, "the normaliser has only one of data/mean and data/std"),
])
def test_a_field_of_the_wrong_type_or_shape_is_refused(tmp_path, rng, key, value, expected):
    arrays = _checkpoint(rng).arrays()
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    assert expected in _refused(_write(tmp_path, arrays))


@pytest.mark.parametrize("key, value, rule", [
    ("epoch", "one", "a whole number ≥ 0"),
    ("step", -1, "a whole number ≥ 0"),
    ("threads", 0, "a whole number ≥ 1"),
    ("settings", [1], "an object"),
    ("history", [1, 2], "a list of objects"),
    ("running", {"loss": 1.0}, "an object of loss, correct, counted and images"),
    ("best", "NaN", "a finite number or null"),
    ("dropout_rng", {"bit_generator": "PCG64", "state": 3}, "a numpy bit generator state"),
    ("dropout_rng", [], "a numpy bit generator state"),
    ("classes", [1, 2], "a list of strings"),
    ("spec_name", 7, "a string"),
    ("segmentation", "yes", "true or false"),
])
def test_meta_values_of_the_wrong_type_are_refused(tmp_path, rng, key, value, rule):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint(rng, **{key: value}))
    shown = json.dumps(value)
    assert _refused(path) == (f"{path}: the checkpoint's meta data key '{key}' must be {rule}; "
                              f"it is {shown}, so {CORRUPT}. Use another checkpoint (best.npz or "
                              f"last.npz of the run) or train again.")


def test_a_weights_only_checkpoint_cannot_be_resumed(tmp_path, rng):
    path = tmp_path / "w.npz"
    checkpoint = _checkpoint(rng)
    del checkpoint.meta["running"]
    save_checkpoint(path, checkpoint)
    with pytest.raises(CheckpointError, match=r"holds no training state to resume \(running "
                                              r"missing\); use it with --weights"):
        load_checkpoint(path).check_resumable()


def test_stored_settings_are_validated_like_a_training_table(tmp_path, rng):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint(rng, settings={"lr": -1, "loss": "cross_entropy"}))
    with pytest.raises(CheckpointError) as info:
        stored_settings(load_checkpoint(path), {"lr": 0.05}, {})
    assert str(info.value) == (
        f"{path}: the stored training setting 'lr' is invalid: must be a finite number > 0; got "
        f"-1. The checkpoint is corrupt or crafted; use another checkpoint or train again.")


def test_the_spec_wins_over_stored_settings_and_a_note_says_so(tmp_path, rng):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint(rng, overrides=["epochs"], settings={
        "dataset": "/etc/passwd", "lr": 0.1, "epochs": 7, "optimizer": "adam"}))
    checkpoint = load_checkpoint(path)
    spec = {"dataset": "shapes", "lr": 0.05, "epochs": 2, "optimizer": "sgd"}
    settings, notes = stored_settings(checkpoint, spec, {})
    # epochs came from the command line when it was trained; the rest from the spec.
    assert settings == {"dataset": "shapes", "lr": 0.05, "epochs": 7, "optimizer": "sgd"}
    assert notes == [f'{path} was saved with dataset = "/etc/passwd", lr = 0.1, optimizer = '
                     f'"adam"; the spec\'s (or the command line\'s) values are used.']
    assert stored_settings(checkpoint, spec, {"epochs": 3})[0]["epochs"] == 3


def _zip_member(path, name: str, npy: bytes, compress=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compress) as archive:
        archive.writestr(name, npy)


def test_a_header_declaring_more_than_the_member_holds_is_refused_before_reading(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**9,)})
    path = tmp_path / "huge.npz"
    _zip_member(path, "param/w.npy", header.getvalue() + b"\0" * 16)
    assert "array 'param/w''s header declares shape (1000000000,) of float32 (4,000,000,128 " \
           "bytes with the header) but the member holds 144 bytes" in _refused(path)


def test_a_member_larger_than_deflate_can_make_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    _zip_member(path, "param/w.npy", b"\0" * 1000, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    # Patch the declared uncompressed size in the central directory to 4 GB - 1.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    message = _refused(path)
    assert f"array 'param/w' declares 4,294,967,295 bytes but its compressed data " \
           f"({info.compress_size:,} bytes) cannot hold that much" in message


def test_arrays_beyond_the_budget_are_refused_before_inflating(tmp_path, rng):
    path = tmp_path / "zeros.npz"
    arrays = _checkpoint(rng).arrays()
    arrays["param/fc.weight"] = np.zeros((8192, 2048), np.float32)  # 64 MiB of zeros
    np.savez_compressed(path, **arrays)
    assert path.stat().st_size < 1 << 20
    message = _refused(path, budget=1 << 20)
    assert "the arrays declare" in message and "more than the 17,825,792 bytes" in message


def test_the_budget_follows_the_network(rng):
    graph = load_graph(SPEC)
    assert checkpoint_budget(graph) == 4 * 8 * (2 * 16 + 2) + (1 << 20)


def test_a_checkpoint_of_another_spec_that_fits_warns(tmp_path, rng):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint(rng))
    network = Network(load_graph(SPEC.replace('"tiny"', '"other"')))
    with pytest.warns(DeclcnnWarning, match=r"last.npz: the checkpoint was saved from spec 'tiny', "
                                            r"not 'other'; the weights fit"):
        load_checkpoint(path).restore(network)
    changed = SPEC + "\n[training]\nlr = 0.2\n"
    with pytest.warns(DeclcnnWarning, match=r"differs from the one given in \[training\]"):
        load_checkpoint(path).restore(Network(load_graph(changed)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path).restore(Network(load_graph(SPEC)))


def test_a_normaliser_for_other_channels_is_refused(tmp_path, rng):
    path = tmp_path / "last.npz"
    checkpoint = _checkpoint(rng)
    checkpoint.mean, checkpoint.std = np.zeros(3, np.float32), np.ones(3, np.float32)
    save_checkpoint(path, checkpoint)
    with pytest.raises(CheckpointError, match=r"the normaliser's data/mean has shape \(3,\) but "
                                              r"the network's input has 1 channel\(s\)"):
        load_checkpoint(path).restore(Network(load_graph(SPEC)))


def test_a_stale_best_is_rewritten_from_an_improving_last(tmp_path, rng):
    from declcnn.train.checkpoint import repair_best

    def state(epoch, best, images=0):
        return _checkpoint(rng, epoch=epoch, best=best, history=[
            {"epoch": e, "val_accuracy": (4 + e) / 10} for e in range(1, epoch + 1)],
            running={"loss": 0.0, "correct": 0, "counted": 0, "images": images})

    save_checkpoint(tmp_path / "best.npz", state(1, 0.5))
    save_checkpoint(tmp_path / "last.npz", state(2, 0.6))  # killed before best.npz was written
    note = repair_best(tmp_path)
    assert note == (f"{tmp_path / 'best.npz'} was older than the best epoch (2) recorded in "
                    f"{tmp_path / 'last.npz'} (a write was interrupted); it is rewritten from "
                    f"last.npz.")
    assert load_checkpoint(tmp_path / "best.npz").meta["epoch"] == 2
    assert repair_best(tmp_path) is None
    # Mid-epoch, last.npz is no longer the best state: nothing is touched.
    save_checkpoint(tmp_path / "best.npz", state(1, 0.5))
    save_checkpoint(tmp_path / "last.npz", state(2, 0.6, images=32))
    assert repair_best(tmp_path) is None
    assert load_checkpoint(tmp_path / "best.npz").meta["epoch"] == 1
