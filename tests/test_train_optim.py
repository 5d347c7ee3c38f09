"""Optimisers and learning-rate schedules against torch.optim, step by step."""

import numpy as np
import pytest
from oracle import assert_close, torch_or_skip

from declcnn.spec.training import DEFAULTS
from declcnn.train.optimizers import SGD, Adam, AdamW, make_optimizer
from declcnn.train.schedules import learning_rate

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (5, 7)}


def _run_both(make_ours, make_theirs, steps=6, seed=0, lrs=None):
    """Apply the same random gradients through both optimisers; compare after every step."""
    torch = torch_or_skip()
    rng = np.random.default_rng(seed)
    ours = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    theirs = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in ours.items()}
    optimizer = make_ours(ours)
    reference = make_theirs(list(theirs.values()))
    for step in range(steps):
        lr = lrs[step] if lrs else 0.1
        grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        for k, p in theirs.items():
            p.grad = torch.from_numpy(grads[k].copy())
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        optimizer.step(grads, lr)
        for k in SHAPES:
            assert_close(ours[k], theirs[k].detach().numpy(), f"step {step + 1} {k}",
                         rtol=1e-5, atol=1e-6)
    return optimizer


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [
    (0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.9, False, 5e-3),
    (0.5, True, 1e-2), (0.0, False, 1e-2)])
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    torch = torch_or_skip()
    _run_both(lambda p: SGD(p, momentum, nesterov, weight_decay),
              lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum, nesterov=nesterov,
                                        weight_decay=weight_decay),
              lrs=[0.1, 0.05, 0.2, 0.1, 0.01, 0.1])


@pytest.mark.parametrize("cls,name,weight_decay,betas,eps", [
    (Adam, "Adam", 0.0, (0.9, 0.999), 1e-8), (Adam, "Adam", 1e-2, (0.8, 0.99), 1e-6),
    (AdamW, "AdamW", 0.0, (0.9, 0.999), 1e-8), (AdamW, "AdamW", 5e-2, (0.85, 0.995), 1e-7)])
def test_adam_family_matches_torch(cls, name, weight_decay, betas, eps):
    torch = torch_or_skip()
    _run_both(lambda p: cls(p, betas, eps, weight_decay),
              lambda p: getattr(torch.optim, name)(p, lr=0.01, betas=betas, eps=eps,
                                                   weight_decay=weight_decay),
              steps=8, lrs=[0.01, 0.02, 0.005, 0.01, 0.01, 0.003, 0.01, 0.02])


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_state_dict_round_trip_continues_identically(kind):
    rng = np.random.default_rng(1)
    settings = {**DEFAULTS, "optimizer": kind, "weight_decay": 0.01}
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(4)]
    straight = {k: v.copy() for k, v in start.items()}
    a = make_optimizer(straight, settings)
    for g in grads:
        a.step(g, 0.01)
    split = {k: v.copy() for k, v in start.items()}
    b = make_optimizer(split, settings)
    for g in grads[:2]:
        b.step(g, 0.01)
    c = make_optimizer(split, settings)
    c.load_state_dict({k: v.copy() for k, v in b.state_dict().items()})
    for g in grads[2:]:
        c.step(g, 0.01)
    for k in SHAPES:
        np.testing.assert_array_equal(straight[k], split[k])


def _flat_views(arrays: dict) -> dict:
    """Copies of ``arrays`` as consecutive views of one flat array, as a Network keeps them."""
    flat = np.concatenate([a.ravel() for a in arrays.values()])
    views, offset = {}, 0
    for name, a in arrays.items():
        views[name] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size
    return views


@pytest.mark.parametrize("settings", [
    {"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "sgd", "momentum": 0.0},
    {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"optimizer": "adam", "weight_decay": 0.01}, {"optimizer": "adamw", "weight_decay": 0.05}])
def test_flat_update_gives_the_per_array_bits(settings):
    """Parameters and gradients that are views of one flat array take the one-pass update; its
    results equal the per-array loop's bit for bit, across a state_dict round trip and a
    parameter replaced by a new array (back to the loop for that step)."""
    settings = {**DEFAULTS, **settings}
    rng = np.random.default_rng(4)
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(6)]
    separate = {k: v.copy() for k, v in start.items()}
    flat = _flat_views(start)
    a, b = make_optimizer(separate, settings), make_optimizer(flat, settings)
    for step, g in enumerate(grads):
        if step == 3:
            b = make_optimizer(flat, settings)
            b.load_state_dict(a.state_dict())
        if step == 4:
            flat["fc.weight"] = flat["fc.weight"].copy()
        a.step(g, 0.05)
        b.step(_flat_views(g), 0.05)
        assert (b._flat_arrays["params"][1] is None) == (step >= 4)
        for k in SHAPES:
            np.testing.assert_array_equal(separate[k], flat[k], f"step {step + 1} {k}")
        for key, value in a.state_dict().items():
            np.testing.assert_array_equal(value, b.state_dict()[key], f"{key}")
    assert b._flat_arrays["params"][1] is None  # fc.weight replaced: the loop ran


def test_foreign_optimizer_state_is_refused():
    from declcnn.errors import CheckpointError

    params = {"w": np.zeros((2, 3), np.float32)}
    sgd = SGD(params, momentum=0.9)
    sgd.step({"w": np.ones((2, 3), np.float32)}, 0.1)
    with pytest.raises(CheckpointError, match=r"has 'momentum_buffer/w', which this optimiser "
                                              r"\(exp_avg, exp_avg_sq\)"):
        Adam(params).load_state_dict(sgd.state_dict())
    wrong = {"steps": np.asarray(1), "momentum_buffer/w": np.zeros((3, 2), np.float32)}
    with pytest.raises(CheckpointError, match=r"shape \(3, 2\) but parameter 'w' has shape "
                                              r"\(2, 3\)"):
        SGD(params, momentum=0.9).load_state_dict(wrong)


def _torch_rates(torch, settings, per_epoch):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=settings["lr"])
    total = settings["epochs"] * per_epoch
    warmup = settings["warmup_epochs"] * per_epoch
    sched = torch.optim.lr_scheduler
    main = {"none": lambda o: sched.ConstantLR(o, factor=1.0, total_iters=0),
            "step": lambda o: sched.StepLR(o, settings["step_size"] * per_epoch,
                                           settings["gamma"]),
            "cosine": lambda o: sched.CosineAnnealingLR(o, total - warmup)}[settings["schedule"]]
    if warmup:
        scheduler = sched.SequentialLR(
            optimizer, [sched.LinearLR(optimizer, 1 / warmup, total_iters=warmup - 1),
                        main(optimizer)], milestones=[warmup])
    else:
        scheduler = main(optimizer)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule,warmup", [("none", 0), ("step", 0), ("cosine", 0),
                                             ("none", 2), ("step", 1), ("cosine", 2)])
def test_schedules_match_torch(schedule, warmup):
    torch = torch_or_skip()
    settings = {**DEFAULTS, "lr": 0.1, "schedule": schedule, "step_size": 2, "gamma": 0.5,
                "epochs": 7, "warmup_epochs": warmup}
    per_epoch = 5
    expected = _torch_rates(torch, settings, per_epoch)
    ours = [learning_rate(t, settings, per_epoch) for t in range(len(expected))]
    assert_close(np.array(ours), np.array(expected), f"{schedule} warm-up {warmup}",
                 rtol=1e-6, atol=1e-9)


def test_sgd_updates_a_strided_parameter_in_place():
    """A parameter the caller replaced by a strided view is still updated where it lives."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((7, 5)).astype(np.float32)
    strided, contiguous = {"w": base.copy().T}, {"w": base.T.copy()}
    a, b = SGD(strided, momentum=0.9, weight_decay=0.01), SGD(contiguous, 0.9, False, 0.01)
    for _ in range(3):
        grad = rng.standard_normal((5, 7)).astype(np.float32)
        a.step({"w": grad}, 0.1)
        b.step({"w": grad}, 0.1)
    assert not strided["w"].flags.c_contiguous
    np.testing.assert_array_equal(strided["w"], contiguous["w"])
