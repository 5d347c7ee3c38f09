"""declcnn train / eval / predict as a user runs them: exit codes, output, kill and resume."""

import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_train_loop import write_tiny

from declcnn.cli import main
from declcnn.train import Trainer, load_checkpoint

CLI = [sys.executable, "-c", "from declcnn.cli import main; main()"]
PROGRESS = re.compile(r"^epoch (\d+)/\d+ (\d+)/(\d+) ")


def _start_training(folder, spec, *extra):
    return subprocess.Popen(
        [*CLI, "train", str(spec), "--out", "run", "--threads", "1", "--checkpoint-every", "3",
         *extra], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop_at(process, target: int) -> int:
    """Read progress lines until step ``target`` is done; return the step last seen."""
    for line in process.stdout:
        match = PROGRESS.match(line)
        if match:
            epoch, batch, total = map(int, match.groups())
            step = (epoch - 1) * total + batch
            if step >= target:
                return step
    raise AssertionError(f"training ended before step {target}: {process.stderr.read()}")


def _assert_same_weights(expected_path, actual_path, what):
    expected, actual = load_checkpoint(expected_path), load_checkpoint(actual_path)
    assert actual.meta["step"] == expected.meta["step"], what
    for group in ("params", "buffers", "optimizer"):
        for key, value in getattr(expected, group).items():
            np.testing.assert_array_equal(getattr(actual, group)[key], value,
                                          err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    spec = write_tiny(folder, epochs=3)
    Trainer(spec, out=folder / "run", threads=1, verbose=False).fit()
    return folder / "run" / "last.npz"


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(tmp_path, uninterrupted):
    spec = write_tiny(tmp_path, epochs=3)
    target = random.Random().randint(4, 44)
    process = _start_training(tmp_path, spec)
    seen = _stop_at(process, target)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    saved = load_checkpoint(tmp_path / "run" / "last.npz").meta["step"]
    assert 0 < saved < 48, f"killed at step {seen}"
    resumed = subprocess.run([*CLI, "train", str(spec), "--out", "run", "--threads", "1",
                              "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run/last.npz at epoch {saved // 16 + 1}, step {saved}" in resumed.stdout
    _assert_same_weights(uninterrupted, tmp_path / "run" / "last.npz",
                         f"killed at step {seen}, resumed from step {saved}")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_ctrl_c_saves_and_exits_130(tmp_path, uninterrupted):
    spec = write_tiny(tmp_path, epochs=3)
    process = _start_training(tmp_path, spec, "--checkpoint-every", "1000")
    _stop_at(process, random.Random().randint(5, 40))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    step = load_checkpoint(tmp_path / "run" / "last.npz").meta["step"]
    assert stderr.strip() == (f"interrupted after step {step}; the run is saved in "
                              f"run/last.npz. Resume with: declcnn train {spec} --resume "
                              f"run/last.npz --out run --threads 1")
    resumed = subprocess.run([*CLI, "train", str(spec), "--out", "run", "--threads", "1",
                              "--resume", "run/last.npz"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(uninterrupted, tmp_path / "run" / "last.npz", f"Ctrl-C at {step}")


def test_eval_predict_and_exit_codes(tmp_path, uninterrupted):
    runner = CliRunner()
    spec = write_tiny(tmp_path, epochs=3)
    weights = str(uninterrupted)
    result = runner.invoke(main, ["eval", str(spec), "--weights", weights, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"accuracy", "per_class_accuracy", "confusion_matrix", "loss"} <= set(report)
    assert report["accuracy"] >= 0.9
    text = runner.invoke(main, ["eval", str(spec), "--weights", weights]).stdout
    assert text.splitlines()[1].startswith(f"accuracy {report['accuracy']:.4f} (30 samples)")
    assert "confusion matrix (rows: true class, columns: predicted):" in text
    np.save(tmp_path / "zero.npy", np.where(np.arange(8)[:, None] < 3, 200, 20)
            .repeat(8, 1).astype(np.uint8))
    result = runner.invoke(main, ["predict", str(spec), str(tmp_path / "zero.npy"),
                                  "--weights", weights, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    shown = re.escape(str(tmp_path / "zero.npy"))
    assert re.fullmatch(rf"{shown}: 0 [01]\.\d{{3}}, \d 0\.\d{{3}}\n", result.stdout)
    (tmp_path / "junk.npz").write_text("junk")
    result = runner.invoke(main, ["eval", str(spec), "--weights", str(tmp_path / "junk.npz")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'junk.npz'}: not a readable "
                                    f"checkpoint")
    (tmp_path / "nan").mkdir()
    nan_spec = write_tiny(tmp_path / "nan", epochs=1, nan_at=123, extra="normalize = false")
    result = runner.invoke(main, ["train", str(nan_spec), "--quiet", "--out",
                                  str(tmp_path / "nan" / "run")])
    assert result.exit_code == 1
    assert re.match(r"error: step \d+ \(epoch 1, batch \d+\): the loss is nan; the first layer "
                    r"whose output is not finite is 'conv' \(conv2d\)", result.stderr)
