"""Hostile flags and folders for declcnn train / predict (issue 12): each is one paragraph on
stderr, exit 1, no traceback; a second trainer on one folder is refused; diverged epochs are
never best and never bare NaN in metrics.jsonl."""

from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner
from test_train_loop import write_tiny

from declcnn.cli import main
from declcnn.threads import available_cores, max_threads
from declcnn.train import loop
from declcnn.train.checkpoint import RunFolderLock


def _run(*args, cwd=None):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _error(*args) -> str:
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output[len("error: "):-1]


@pytest.mark.parametrize("flag, value, expected", [
    ("--epochs", 2_000_000, "--epochs: must be an integer ≥ 1 and ≤ 1000000; got 2000000. It "
                            "replaces [training] epochs, so the same rule applies."),
    ("--batch-size", 2**21, "--batch-size: must be an integer ≥ 1 and ≤ 1048576; got 2097152."),
    ("--lr", "inf", "--lr: must be a finite number > 0; got inf."),
    ("--seed", 2**63, "--seed: must be an integer ≥ 0; got 9223372036854775808."),
])
def test_overrides_obey_the_training_table_rules(tmp_path, flag, value, expected):
    spec = write_tiny(tmp_path)
    assert expected in _error("train", spec, "--out", tmp_path / "run", flag, value)
    assert not (tmp_path / "run").exists()


def test_threads_are_bounded(tmp_path):
    spec = write_tiny(tmp_path)
    limit = max_threads()
    assert limit == min(1024, max(4 * available_cores(), 64))
    assert _error("train", spec, "--threads", 100000) == (
        f"--threads: 100000 threads is more than the {limit} allowed here (4 × the "
        f"{available_cores()} cores available, at least 64, at most 1024): more threads than "
        f"cores only slow the kernels, and OpenMP fails beyond a few thousand. Use e.g. "
        f"{available_cores()}.")


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_run_folder_is_named(tmp_path, where):
    spec = write_tiny(tmp_path)
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        out = "/proc/declcnn-run"
    message = _error("train", spec, "--out", out)
    assert message.startswith(f"{out}: cannot write the run folder (")
    assert message.endswith("); choose another --out, or check its permissions and free space.")


def test_a_second_trainer_on_one_folder_is_refused(tmp_path):
    spec = write_tiny(tmp_path)
    with RunFolderLock(tmp_path / "run"):
        assert _error("train", spec, "--out", tmp_path / "run") == (
            f"{tmp_path / 'run'}: another trainer is writing into this run folder (pid "
            f"{os.getpid()}); wait for it to finish or stop it, or give this run another --out.")


def test_stale_temporary_files_are_removed_on_start(tmp_path):
    spec = write_tiny(tmp_path, epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.npz.k2j4.tmp").write_bytes(b"half a checkpoint")
    (run / "keep.tmp").write_text("not ours")
    result = _run("train", spec, "--out", run, "--threads", 1, "--batch-size", 512)
    assert result.exit_code == 0, result.output
    assert f"note: removed 1 temporary file(s) left in {run} by an interrupted write." in \
        result.output
    # 270 training samples less 27 held out for validation
    assert "note: batch_size 512 is larger than the 243 training samples; each epoch is one " \
           "batch of them." in result.output
    assert not (run / ".last.npz.k2j4.tmp").exists() and (run / "keep.tmp").exists()


def test_a_diverged_epoch_is_never_best_nor_bare_nan(tmp_path, monkeypatch):
    spec = write_tiny(tmp_path, epochs=1)

    def diverged(*args, **kwargs):
        return {"loss": math.nan, "accuracy": 0.5, "per_class_accuracy": {}}

    monkeypatch.setattr(loop, "evaluate_network", diverged)
    result = _run("train", spec, "--out", tmp_path / "run", "--threads", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert "no epoch gave a finite validation result, so no best.npz was written" in \
        result.output
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and json.loads(text)["val_loss"] is None
    assert not (tmp_path / "run" / "best.npz").exists()


def test_the_resume_command_keeps_the_thread_count(tmp_path, monkeypatch):
    spec = write_tiny(tmp_path, epochs=1)

    def interrupted(self, resume=None):
        raise loop.TrainingInterrupted(tmp_path / "run" / "last.npz", 3)

    monkeypatch.setattr(loop.Trainer, "fit", interrupted)
    result = _run("train", spec, "--out", tmp_path / "run", "--threads", 2)
    assert result.exit_code == 130
    assert "--threads 2" in result.output
