"""Learning-rate schedules, evaluated at every optimiser step.

With ``S`` steps per epoch, ``W = warmup_epochs·S`` warm-up steps and ``T = epochs·S − W``
steps after them, the rate at step ``t`` (from 0) is

* warm-up (``t < W``): ``lr·(t+1)/W`` — linear, reaching ``lr`` at the first step after it;
* then, with ``u = t − W``:  ``"none"``: ``lr``;  ``"step"``: ``lr·γ^⌊u/(step_size·S)⌋`` (decay
  every ``step_size`` epochs);  ``"cosine"``: ``lr·(1 + cos(π·u/T))/2``.

``"plateau"``: ``lr`` times ``γ`` for each reduction so far, a reduction coming after more than
``plateau_patience`` epochs in a row whose validation score did not beat the best before them
(the count then restarts), as PyTorch's ``ReduceLROnPlateau(mode="max", threshold=0)``;
:func:`plateau_scale` computes the factor from the run's history, so a resumed run gets the
same one.

These equal PyTorch's ``LinearLR(1/W, total_iters=W−1)`` followed (``SequentialLR``) by
``StepLR(step_size·S, γ)`` or ``CosineAnnealingLR(T)``, all stepped once per batch.
"""

from __future__ import annotations

import math


def plateau_scale(scores: list, patience: int, gamma: float) -> float:
    """The ``"plateau"`` schedule's factor after the epochs whose validation ``scores`` (None
    or non-finite: no improvement) are given."""
    best, bad, scale = None, 0, 1.0
    for score in scores:
        if score is not None and math.isfinite(score) and (best is None or score > best):
            best, bad = score, 0
        else:
            bad += 1
            if bad > patience:
                scale, bad = scale * gamma, 0
    return scale


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
