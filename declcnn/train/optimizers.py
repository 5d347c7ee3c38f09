"""SGD, Adam and AdamW with PyTorch's exact update rules, updating parameters in place.

An optimiser holds ``params`` (name → float32 array, updated in place) and per-parameter state;
``step(grads, lr)`` applies one update with the learning rate of this step (the schedule's
business).  ``state_dict()`` / ``load_state_dict()`` give the state as name → array, so a
checkpoint can store it in an ``.npz``.

When the parameters are consecutive views of one flat array, and so are the gradients (as a
``Network``'s are), a step updates them all in one vectorised pass over the flat arrays, with
the state flat as well (its per-parameter arrays are views into it): a few numpy calls per step
instead of a few per parameter.  The arithmetic is elementwise and the same either way, so the
results are the same bits; parameters replaced by new arrays fall back to the per-array loop.
SGD runs as one loop over its arrays (``declcnn._kernels.training.sgd_update``), rounding after
every operation as numpy does.
"""

from __future__ import annotations

import numpy as np

from .._kernels import training as _kernels
from ..errors import CheckpointError
from ..ops._checks import no_values
from ..runtime.network import flat_views
from ..threads import threads_for

# Below this many values an SGD step runs on one thread.
_SGD_PARALLEL_MIN = 1 << 16


class Optimizer:
    """Base: ``slots`` name the per-parameter state arrays (``momentum_buffer``, ``exp_avg``…)."""

    slots: tuple[str, ...] = ()

    def __init__(self, params: dict[str, np.ndarray], weight_decay: float = 0.0):
        self.params = params
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.state = {slot: {} for slot in self.slots}
        self._flat_arrays: dict[str, tuple[tuple[np.ndarray, ...], np.ndarray | None]] = {}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        self.steps += 1
        lr = np.float32(lr)
        names = list(self.params)
        flat_param = self._flat("params", [self.params[n] for n in names])
        flat_grad = None
        if flat_param is not None and flat_param.dtype == np.float32:
            flat_grad = self._flat("grads", [grads[n] for n in names])
        state = None
        if flat_grad is not None and flat_grad.shape == flat_param.shape \
                and flat_grad.dtype == np.float32:
            state = self._flat_state(names)
        if state is not None:
            created = self._update(flat_param, flat_grad, lr, state)
            for slot, array in created.items():
                self.state[slot] = flat_views(array, self.params)
                self._flat_arrays[slot] = (tuple(self.state[slot].values()), array)
            return
        for name, param in self.params.items():
            state = {slot: self.state[slot].get(name) for slot in self.slots}
            for slot, array in self._update(param, grads[name], lr, state).items():
                self.state[slot][name] = array

    def _update(self, param, grad, lr, state: dict) -> dict[str, np.ndarray]:
        """Update ``param`` in place from ``grad``; ``state`` maps each slot to its array, or
        None before the first step.  Returns the slot arrays it created."""
        raise NotImplementedError

    def _flat(self, key: str, arrays: list[np.ndarray]) -> np.ndarray | None:
        """The flat array ``arrays`` are consecutive views of, or None; remembered per key
        while the same arrays come back."""
        known = self._flat_arrays.get(key)
        if known is None or len(known[0]) != len(arrays) \
                or any(a is not b for a, b in zip(known[0], arrays, strict=True)):
            known = self._flat_arrays[key] = (tuple(arrays), _flat_base(arrays))
        return known[1]

    def _flat_state(self, names: list[str]) -> dict[str, np.ndarray | None] | None:
        """Each slot's flat array (None before the first step), joining per-parameter arrays
        (as ``load_state_dict`` leaves them) into one; None when only some parameters have
        state (then the per-array loop runs)."""
        state = {}
        for slot in self.slots:
            arrays = self.state[slot]
            if not arrays:
                state[slot] = None
                continue
            if len(arrays) != len(names) or any(n not in arrays for n in names):
                return None
            flat = self._flat(slot, [arrays[n] for n in names])
            if flat is None:
                flat = np.concatenate([arrays[n].ravel() for n in names], dtype=np.float32)
                self.state[slot] = flat_views(flat, self.params)
                self._flat_arrays[slot] = (tuple(self.state[slot].values()), flat)
            state[slot] = flat
        return state

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

    def _update(self, param, grad, lr, state):
        created = {}
        target = param if param.flags.c_contiguous else np.ascontiguousarray(param)
        buffer = None
        if self.momentum:
            buffer = state["momentum_buffer"]
            if buffer is None:
                buffer = created["momentum_buffer"] = np.empty(param.shape, param.dtype)
        _kernels.sgd_update(target.reshape(-1),
                            np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1),
                            no_values(param.dtype) if buffer is None else buffer.reshape(-1),
                            lr, self.momentum, self.weight_decay, self.nesterov,
                            "momentum_buffer" in created,
                            threads_for(param.size, _SGD_PARALLEL_MIN))
        if target is not param:
            param[...] = target
        return created


class Adam(Optimizer):
    """PyTorch's Adam: ``g = ∇ + λ·p`` (L2 decay); ``m = β₁m + (1−β₁)g``, ``v = β₂v + (1−β₂)g²``;
    ``p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)``."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = np.float32(eps)

    def _update(self, param, grad, lr, state):
        created = {}
        if self.weight_decay:
            if self.decoupled:
                param *= np.float32(1 - lr * self.weight_decay)
            else:
                grad = grad + np.float32(self.weight_decay) * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if exp_avg is None:
            exp_avg = created["exp_avg"] = np.zeros_like(param)
        if exp_avg_sq is None:
            exp_avg_sq = created["exp_avg_sq"] = np.zeros_like(param)
        exp_avg *= np.float32(self.beta1)
        exp_avg += np.float32(1 - self.beta1) * grad
        exp_avg_sq *= np.float32(self.beta2)
        exp_avg_sq += np.float32(1 - self.beta2) * grad * grad
        correction1 = 1 - self.beta1 ** self.steps
        correction2_root = np.sqrt(1 - self.beta2 ** self.steps)
        denominator = np.sqrt(exp_avg_sq) / np.float32(correction2_root) + self.eps
        param -= np.float32(lr / correction1) * exp_avg / denominator
        return created


class AdamW(Adam):
    """PyTorch's AdamW: decoupled decay ``p ← p·(1 − lr·λ)`` first, then Adam without L2."""

    decoupled = True


def _flat_base(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The 1-D array that ``arrays`` are consecutive C-contiguous views of, covering it from
    start to end, or None."""
    if not arrays:
        return None
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    start = address = base.__array_interface__["data"][0]
    for array in arrays:
        if (array.base is not base or array.dtype != base.dtype or not array.flags.c_contiguous
                or not array.flags.writeable or array.__array_interface__["data"][0] != address):
            return None
        address += array.nbytes
    return base if address == start + base.nbytes else None


def make_optimizer(params, settings: dict) -> Optimizer:
    """The optimiser a ``[training]`` table asks for."""
    kind = settings["optimizer"]
    if kind == "sgd":
        return SGD(params, settings["momentum"], settings["nesterov"], settings["weight_decay"])
    cls = {"adam": Adam, "adamw": AdamW}[kind]
    return cls(params, settings["betas"], settings["eps"], settings["weight_decay"])
