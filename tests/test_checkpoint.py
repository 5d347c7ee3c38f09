"""Checkpoints: exact round trip, atomic writes, and refusal of what is not one of ours."""

import json
import os

import numpy as np
import pytest

from declcnn.errors import CheckpointError
from declcnn.train import checkpoint as ckpt
from declcnn.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _sample(rng) -> Checkpoint:
    return Checkpoint(
        params={"conv.weight": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
                "fc.bias": rng.standard_normal(4).astype(np.float32)},
        buffers={"bn.running_mean": rng.standard_normal(2).astype(np.float32)},
        optimizer={"steps": np.asarray(7), "momentum_buffer/fc.bias": np.ones(4, np.float32)},
        spec="[network]\nname = 'x'\n",
        meta={"epoch": 1, "step": 7, "dropout_rng": np.random.default_rng(3).bit_generator.state,
              "history": [{"epoch": 1, "val_accuracy": 0.5}]},
        mean=np.array([0.25], np.float32), std=np.array([0.5], np.float32))


def test_round_trip_is_exact(tmp_path, rng):
    original = _sample(rng)
    path = tmp_path / "run" / "last.npz"
    save_checkpoint(path, original)
    back = load_checkpoint(path)
    for group in ("params", "buffers", "optimizer"):
        stored, loaded = getattr(original, group), getattr(back, group)
        assert stored.keys() == loaded.keys()
        for key in stored:
            assert loaded[key].dtype == stored[key].dtype
            np.testing.assert_array_equal(loaded[key], stored[key])
    assert back.spec == original.spec and back.meta == json.loads(json.dumps(original.meta))
    generator = np.random.default_rng(0)
    generator.bit_generator.state = back.meta["dropout_rng"]
    assert generator.random() == np.random.default_rng(3).random()
    np.testing.assert_array_equal(back.std, original.std)
    assert os.listdir(path.parent) == ["last.npz"]


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, rng, monkeypatch):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _sample(rng))
    before = path.read_bytes()

    def crash(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _sample(rng))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.npz"]  # the temporary file is gone


def test_truncated_checkpoint_is_refused(tmp_path, rng):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _sample(rng))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable checkpoint: the file is "
                                      f"truncated, corrupt or not an .npz archive (")
    assert str(info.value).endswith("Use another checkpoint (best.npz or last.npz of the run) "
                                    "or train again.")


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.npz: not a readable checkpoint: the file "
                                              r"is truncated, corrupt or not an \.npz archive"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(foreign)
    assert str(info.value) == (
        f"{foreign}: not a declcnn checkpoint (it has no format tag, expected "
        f"'declcnn-checkpoint'); point --weights/--resume at a last.npz or best.npz that "
        f"declcnn train wrote.")
    np.savez(foreign, format=np.asarray("keras"), version=np.asarray(1))
    with pytest.raises(CheckpointError, match=r"its format tag is 'keras', expected "
                                              r"'declcnn-checkpoint'"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match=r"missing\.npz: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.npz")


def test_pickled_objects_are_never_loaded(tmp_path, rng):
    path = tmp_path / "evil.npz"
    arrays = _sample(rng).arrays()
    arrays["meta"] = np.array([{"code": "runs on load"}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"array .meta. holds Python objects \(object\), "
                                              r"which are never loaded"):
        load_checkpoint(path)


def test_newer_version_is_refused(tmp_path, rng):
    path = tmp_path / "v2.npz"
    arrays = _sample(rng).arrays()
    arrays["version"] = np.asarray(2)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"checkpoint format version 2, but this declcnn "
                                              r"reads version 1"):
        load_checkpoint(path)
