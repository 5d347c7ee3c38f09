"""Learning-rate schedules, evaluated at every optimiser step.

With ``S`` steps per epoch, ``W = warmup_epochs·S`` warm-up steps and ``T = epochs·S − W``
steps after them, the rate at step ``t`` (from 0) is

* warm-up (``t < W``): ``lr·(t+1)/W`` — linear, reaching ``lr`` at the first step after it;
* then, with ``u = t − W``:  ``"none"``: ``lr``;  ``"step"``: ``lr·γ^⌊u/(step_size·S)⌋`` (decay
  every ``step_size`` epochs);  ``"cosine"``: ``lr·(1 + cos(π·u/T))/2``.

These equal PyTorch's ``LinearLR(1/W, total_iters=W−1)`` followed (``SequentialLR``) by
``StepLR(step_size·S, γ)`` or ``CosineAnnealingLR(T)``, all stepped once per batch.
"""

from __future__ import annotations

import math


def learning_rate(step: int, settings: dict, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (from 0) under a ``[training]`` table."""
    lr = float(settings["lr"])
    warmup = settings["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        return lr * (step + 1) / warmup
    after = step - warmup
    schedule = settings["schedule"]
    if schedule == "step":
        return lr * settings["gamma"] ** (after // (settings["step_size"] * steps_per_epoch))
    if schedule == "cosine":
        total = settings["epochs"] * steps_per_epoch - warmup
        return lr * (1 + math.cos(math.pi * min(after, total) / max(total, 1))) / 2
    return lr
