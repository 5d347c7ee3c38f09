"""SGD, Adam and AdamW with PyTorch's exact update rules, updating parameters in place.

An optimiser holds ``params`` (name → float32 array, updated in place) and per-parameter state;
``step(grads, lr)`` applies one update with the learning rate of this step (the schedule's
business).  ``state_dict()`` / ``load_state_dict()`` give the state as name → array, so a
checkpoint can store it in an ``.npz``.
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError


class Optimizer:
    """Base: ``slots`` name the per-parameter state arrays (``momentum_buffer``, ``exp_avg``…)."""

    slots: tuple[str, ...] = ()

    def __init__(self, params: dict[str, np.ndarray], weight_decay: float = 0.0):
        self.params = params
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.state = {slot: {} for slot in self.slots}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        self.steps += 1
        for name, param in self.params.items():
            self._update(name, param, grads[name], np.float32(lr))

    def _update(self, name, param, grad, lr) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """``"steps"`` and ``"<slot>/<param>"`` → copies of the state arrays."""
        state = {"steps": np.asarray(self.steps, np.int64)}
        for slot, arrays in self.state.items():
            state.update((f"{slot}/{name}", value.copy()) for name, value in arrays.items())
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict`'s form; a slot array must fit its parameter."""
        if "steps" not in state:
            raise CheckpointError(f"{type(self).__name__}: the optimiser state lacks its step "
                                  f"count; it is not this optimiser's state. Start afresh "
                                  f"without --resume, or resume with the optimiser it was "
                                  f"saved with.")
        slots: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        for key, value in state.items():
            if key == "steps":
                continue
            slot, _, name = key.partition("/")
            if slot not in slots or name not in self.params:
                raise CheckpointError(
                    f"{type(self).__name__}: the stored optimiser state has '{key}', which this "
                    f"optimiser ({', '.join(self.slots) or 'no state'}) over this network does "
                    f"not have; the checkpoint was saved with another optimiser or spec. Resume "
                    f"with the same [training] optimizer and spec, or start afresh.")
            if value.shape != self.params[name].shape:
                raise CheckpointError(
                    f"{type(self).__name__}: state '{key}' is stored with shape {value.shape} "
                    f"but parameter '{name}' has shape {self.params[name].shape}; the "
                    f"checkpoint belongs to another spec.")
            slots[slot][name] = np.array(value, dtype=np.float32)
        self.steps = int(state["steps"])
        self.state = slots


class SGD(Optimizer):
    """PyTorch's SGD (dampening 0): ``g = ∇ + λ·p``; with momentum μ, ``b = g`` on the first step,
    then ``b = μ·b + g``, and ``g = g + μ·b`` (Nesterov) or ``g = b``; ``p ← p − lr·g``."""

    slots = ("momentum_buffer",)

    def __init__(self, params, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, weight_decay)
        self.momentum = np.float32(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, param, grad, lr):
        if self.weight_decay:
            grad = grad + np.float32(self.weight_decay) * param
        if self.momentum:
            buffers = self.state["momentum_buffer"]
            if name not in buffers:
                buffers[name] = np.array(grad, dtype=np.float32)
            else:
                buffer = buffers[name]
                buffer *= self.momentum
                buffer += grad
            grad = grad + self.momentum * buffers[name] if self.nesterov else buffers[name]
        param -= lr * grad


class Adam(Optimizer):
    """PyTorch's Adam: ``g = ∇ + λ·p`` (L2 decay); ``m = β₁m + (1−β₁)g``, ``v = β₂v + (1−β₂)g²``;
    ``p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)``."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = np.float32(eps)

    def _update(self, name, param, grad, lr):
        if self.weight_decay:
            if self.decoupled:
                param *= np.float32(1 - lr * self.weight_decay)
            else:
                grad = grad + np.float32(self.weight_decay) * param
        exp_avg = self.state["exp_avg"].setdefault(name, np.zeros_like(param))
        exp_avg_sq = self.state["exp_avg_sq"].setdefault(name, np.zeros_like(param))
        exp_avg *= np.float32(self.beta1)
        exp_avg += np.float32(1 - self.beta1) * grad
        exp_avg_sq *= np.float32(self.beta2)
        exp_avg_sq += np.float32(1 - self.beta2) * grad * grad
        correction1 = 1 - self.beta1 ** self.steps
        correction2_root = np.sqrt(1 - self.beta2 ** self.steps)
        denominator = np.sqrt(exp_avg_sq) / np.float32(correction2_root) + self.eps
        param -= np.float32(lr / correction1) * exp_avg / denominator


class AdamW(Adam):
    """PyTorch's AdamW: decoupled decay ``p ← p·(1 − lr·λ)`` first, then Adam without L2."""

    decoupled = True


def make_optimizer(params, settings: dict) -> Optimizer:
    """The optimiser a ``[training]`` table asks for."""
    kind = settings["optimizer"]
    if kind == "sgd":
        return SGD(params, settings["momentum"], settings["nesterov"], settings["weight_decay"])
    cls = {"adam": Adam, "adamw": AdamW}[kind]
    return cls(params, settings["betas"], settings["eps"], settings["weight_decay"])
