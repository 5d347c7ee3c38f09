"""Label smoothing, gradient clipping, early stopping, the plateau schedule and extending a
finished run."""

import numpy as np
import pytest
import torch
from test_train_loop import write_tiny

from declcnn.errors import SpecError
from declcnn.graph import load_graph
from declcnn.train import Trainer, load_checkpoint
from declcnn.train import loop as loop_module
from declcnn.train.loop import clip_gradients
from declcnn.train.losses import compute_loss
from declcnn.train.schedules import plateau_scale


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 3)])
def test_label_smoothing_matches_pytorch(rng, shape):
    logits = rng.normal(size=shape).astype(np.float32)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    target.flat[1] = -100
    loss, grad = compute_loss("cross_entropy", logits, target, -100, 0.1)
    z = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(z, torch.tensor(target))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_gradients_matches_pytorch(rng):
    grads = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=5).astype(np.float32)}
    tensors = [torch.tensor(g.copy(), requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values(), strict=True):
        t.grad = torch.tensor(g.copy())
    expected = torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    assert clip_gradients(grads, 1.5) == pytest.approx(expected.item(), rel=1e-5)
    for t, g in zip(tensors, grads.values(), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5)


def test_plateau_scale_counts_epochs_without_improvement():
    assert plateau_scale([0.5, 0.6, 0.6, 0.6], 1, 0.1) == pytest.approx(0.1)
    assert plateau_scale([0.5, 0.4, 0.6, 0.5], 1, 0.1) == 1.0
    assert plateau_scale([0.5, None, float("nan"), 0.4, 0.4], 1, 0.5) == 0.25


def test_early_stopping_and_plateau_need_validation(tmp_path):
    spec = write_tiny(tmp_path, extra="validation = 0\nearly_stopping = 2")
    with pytest.raises(SpecError, match=r"key 'early_stopping': early_stopping = 2 watches the "
                                        r"validation score, but validation = 0 holds none out"):
        load_graph(str(spec))


def test_early_stopping_stops_after_patience(tmp_path, monkeypatch):
    spec = write_tiny(tmp_path, epochs=6, extra='early_stopping = 2\nschedule = "plateau"\n'
                                               'plateau_patience = 0\ngamma = 0.5')
    original = loop_module.evaluate_network
    accuracies = iter([0.5, 0.7, 0.6, 0.6, 0.9, 0.9, 0.9])

    def fixed(network, data, *rest, **options):
        result = original(network, data, *rest, **options)
        if data.description.startswith("validation"):
            result["accuracy"] = next(accuracies)
        return result

    monkeypatch.setattr(loop_module, "evaluate_network", fixed)
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4]
    assert result["best_epoch"] == 2
    # plateau_patience 0: each epoch without a better score halves the next epoch's rate.
    assert [r["lr"] for r in result["history"]] == pytest.approx([0.05, 0.05, 0.05, 0.025])


def test_extending_a_finished_cosine_run_restarts_the_schedule(tmp_path, capsys):
    spec = write_tiny(tmp_path, epochs=2, extra='schedule = "cosine"\nclip_grad_norm = 1.0\n'
                                               'label_smoothing = 0.05')
    Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    first = load_checkpoint(tmp_path / "run" / "last.npz").meta["history"]
    assert first[-1]["lr"] < 1e-3
    result = Trainer(spec, out=tmp_path / "run", threads=1, epochs=4).fit(resume=True)
    assert "the run had finished its 2 epochs; the 'cosine' schedule restarts from lr = 0.05 " \
           "for epochs 3-4" in capsys.readouterr().out
    lrs = [r["lr"] for r in result["history"]]
    # Epoch 3 ends half-way through the new two-epoch cycle: lr·(1 + cos(π/2))/2, nearly.
    assert lrs[2] == pytest.approx(0.05 * (1 + np.cos(np.pi * 15 / 32)) / 2)
    assert lrs[3] < 1e-3 and load_checkpoint(tmp_path / "run" / "last.npz").meta[
        "cycle_start"] == 2
