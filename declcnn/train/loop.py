"""The training loop, evaluation and prediction on real data.

``Trainer(spec, ...).fit()`` trains a spec's network under its ``[training]`` table (arguments
override single keys) and writes into its run folder (``runs/<spec name>/`` by default):

* ``last.npz`` every ``checkpoint_every`` steps and at each epoch's end, ``best.npz`` when the
  validation score (accuracy, or mean IoU for segmentation) improves — a non-finite validation
  result never counts as an improvement;
* ``metrics.jsonl``: one JSON object per epoch (``train_*`` on the training part, ``val_*`` on
  the validation split); ``curves.png``: loss and accuracy per epoch;
* ``test.json``: the test split scored once, at the end, with ``best.npz``.

The validation split is ``[training] validation``: a seeded, stratified fraction of the training
set (0.1 by default; 0 for none, when ``best.npz`` is the last epoch) or a split the data set
names.  The test split is never used to choose anything.

A run is a pure function of its settings and thread count: the data order of epoch ``e`` comes
from ``(seed, e)``, augmentation from ``(seed, e, batch)``, dropout from a generator whose state
is checkpointed — so a run killed at any step and resumed from ``last.npz`` ends with the same
weights, bit for bit, as one never interrupted.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import DataError, DeclcnnError, DeclcnnWarning, TrainingError
from ..graph import load_graph
from ..ops.activation import softmax
from ..runtime import Network
from ..threads import get_num_threads, set_num_threads
from .checkpoint import (
    Checkpoint,
    checkpoint_budget,
    load_checkpoint,
    save_checkpoint,
    stored_settings,
)
from .data import (
    Normalizer,
    batches,
    crop_masks,
    epoch_order,
    steps_per_epoch,
    training_batch,
    validation_split,
)
from .datasets import Dataset, from_arrays, load_dataset, read_input
from .losses import compute_loss
from .metrics import confusion_matrix, correct_predictions, summarise
from .optimizers import make_optimizer
from .plots import plot_history
from .progress import ProgressBar, duration
from .schedules import learning_rate, plateau_scale

OVERRIDABLE = ("epochs", "batch_size", "lr", "seed")


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training after a step; ``checkpoint`` is where the state was saved."""

    def __init__(self, checkpoint: Path, step: int):
        self.checkpoint, self.step = checkpoint, step
        super().__init__(f"interrupted at step {step}; saved {checkpoint}")


def _spec_source(spec) -> tuple[object, str]:
    """(what load_graph takes, the spec's text) for a path, a spec's text or a spec as a
    dict (as ``tomllib`` reads one)."""
    if isinstance(spec, dict):
        from ..spec.emit import dumps

        spec = dumps(spec)
    if isinstance(spec, str) and "\n" in spec:
        return spec, spec
    path = Path(spec)
    try:
        return str(path), path.read_text(encoding="utf-8")
    except OSError as err:
        raise DeclcnnError(f"{path}: cannot read the spec ({err.strerror}); check the path.") \
            from None


def input_fix(source, name: str, input_shape, images) -> str:
    """How to make the network of ``source`` (spec'd for ``input_shape``) fit ``images`` (C, H,
    W), in words: only fixes that build are offered (the graph is built at each size tried)."""
    channels, height, width = images
    spec_channels = input_shape[0]

    def builds(shape) -> bool:
        try:
            load_graph(source, shape)
        except DeclcnnError:
            return False
        return True

    fixes = []
    if spec_channels == channels and builds(images):
        fixes.append(f"train with --input {height}x{width} (network '{name}' runs at that "
                     f"size), or set [network] input = {list(images)}")
    elif spec_channels != channels:
        # A network built for large images (ImageNet's) may run on smaller ones of its own
        # channel count: that keeps the spec, where changing its channels would not.
        small = [(s, s) for s in (32, 64, 96) if s < min(input_shape[1:])
                 and builds((spec_channels, s, s))]
        if small:
            size = f"{small[0][0]}x{small[0][1]}"
            fixes.append(f"train it on a {spec_channels}-channel data set at a size it allows, "
                         f"e.g. dataset = \"shape-classes\" or --data a CIFAR-10 or image "
                         f"folder, with --input {size}")
        if builds(images):
            fixes.append(f"set [network] input = {list(images)} (it builds at that shape)")
    if not fixes:
        return (f"network '{name}' does not build at {list(images)}; use a data set of "
                f"{tuple(input_shape)} images (an .npz or image folder: images are resized)")
    return "; or ".join(fixes)


def check_fit(network: Network, data: Dataset) -> None:
    """Refuse a data set whose labels the network's output cannot represent."""
    out = tuple(network.graph.output.output_shape)
    where = f"network '{network.graph.name}'"
    labels = int(data.y.max(initial=0)) + 1
    if data.segmentation:
        if len(out) != 3 or out[1] > data.y.shape[1] or out[2] > data.y.shape[2]:
            raise DataError(f"{where}: the data set '{data.name}' has masks of size "
                            f"{data.y.shape[1:]} per image, so the output must be (classes, "
                            f"{data.y.shape[1]}, {data.y.shape[2]}) or smaller (an unpadded "
                            f"network's masks are centre-cropped to its output); it is {out}. "
                            f"Make the spec's last layer a per-pixel classifier of that size.")
    elif len(out) != 1:
        raise DataError(f"{where}: the data set '{data.name}' has one label per image, so the "
                        f"output must be (classes,); it is {out}. End the spec with a flatten "
                        f"and a linear layer (or a global pool).")
    if out[0] < labels:
        raise DataError(f"{where}: the data set '{data.name}' has {labels} classes "
                        f"(labels 0..{labels - 1}) but the output gives {out[0]} scores; set the "
                        f"last layer's outputs to {labels}.")


def clip_gradients(grads: dict, max_norm: float) -> float:
    """Scale ``grads`` in place so their joint L2 norm is at most ``max_norm`` (by
    ``max_norm / (norm + 1e-6)``, as PyTorch's ``clip_grad_norm_``); returns the norm before."""
    norm = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= np.float32(scale)
    return norm


def first_non_finite(network: Network, x: np.ndarray) -> str:
    """Re-run ``x`` through the network node by node and name the first node whose output is
    not finite (or the parameters that already are not)."""
    bad_params = [name for name, value in network.params.items() if not np.isfinite(value).all()]
    if bad_params:
        shown = ", ".join(f"'{n}'" for n in bad_params[:4])
        return f"the parameters {shown} are already not finite (the previous update overflowed)"
    for node, output in network.outputs(x):
        if not np.isfinite(output).all():
            return f"the first layer whose output is not finite is '{node.name}' ({node.type})"
    return "every layer's output is finite, so the loss itself overflowed"


def evaluate_network(network: Network, data: Dataset, normalizer: Normalizer, settings: dict,
                     batch_size: int = 256) -> dict:
    """Loss and :func:`~declcnn.train.metrics.summarise`'s metrics of ``network`` (in eval mode)
    on ``data``."""
    network.eval()
    classes = len(data.classes)
    matrix = np.zeros((classes, classes), np.int64)
    loss_sum, weight = 0.0, 0
    ignore = settings["ignore_index"]
    for x, y in batches(data, batch_size, normalizer):
        output = network.forward(x)
        if data.segmentation:
            y = crop_masks(y, output.shape[2:])
        loss, _ = compute_loss(settings["loss"], output, y, ignore)
        loss_sum += loss * len(x)
        weight += len(x)
        predicted = output.argmax(axis=1)
        matrix += confusion_matrix(np.minimum(predicted, classes - 1), y, classes, ignore)
    result = summarise(matrix, data.classes, data.segmentation)
    result["loss"] = loss_sum / max(weight, 1)
    return result


def _score(result: dict) -> float:
    return result.get("mean_iou", result["accuracy"])


def _json_ready(record: dict) -> dict:
    """``record`` with NaN and infinities as null: JSON has no such numbers."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}
def _improves(result: dict, best: float | None) -> bool:
    """Whether a validation result beats ``best``; a non-finite loss or score never does (a
    network whose outputs overflowed can still give a finite accuracy)."""
    score = _score(result)
    if not (math.isfinite(score) and math.isfinite(result["loss"])):
        return False
    return best is None or score > best


def _scores_text(result: dict) -> str:
    iou = f" mean IoU {result['mean_iou']:.4f}" if "mean_iou" in result else ""
    return f"loss {result['loss']:.4f} acc {result['accuracy']:.4f}{iou}"


@contextmanager
def _stop_on_sigint():
    """While training, the first Ctrl-C asks for a clean stop after the current step; a second
    one interrupts at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print("\nstopping after this step (Ctrl-C again to stop at once)…", flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Train the network of ``spec`` (a path, or a spec's text) on its ``[training]`` data.

    ``epochs``, ``batch_size``, ``lr`` and ``seed`` override the table's keys; ``threads`` fixes
    the kernels' thread count; ``data_dir`` is ``--data``; ``out`` the run folder;
    ``checkpoint_every`` the steps between checkpoints; ``verbose`` prints progress and
    summaries to stdout; ``input_size`` ``(height, width)`` builds the network at another size
    than the spec's input (``--input HxW``: where every layer allows it, e.g. with global
    pooling), and the checkpoints remember it.
    """

    def __init__(self, spec, *, epochs=None, batch_size=None, lr=None, seed=None, threads=None,
                 data_dir=None, out=None, checkpoint_every: int = 200, verbose: bool = True,
                 input_size=None):
        self.source, self.spec_text = _spec_source(spec)
        self.graph = load_graph(self.source)
        if input_size is not None:
            self.graph = load_graph(self.source, _input_shape(self.graph, input_size))
        self.overrides = {k: v for k, v in zip(OVERRIDABLE, (epochs, batch_size, lr, seed),
                                               strict=True) if v is not None}
        self.settings = {**self.graph.training, **self.overrides}
        if threads is not None:
            set_num_threads(threads)
        self.data_dir = data_dir
        self.run_dir = Path(out) if out else Path("runs") / self.graph.name
        if checkpoint_every < 1:
            raise DeclcnnError(f"checkpoint_every must be ≥ 1 step; got {checkpoint_every}.")
        self.checkpoint_every = checkpoint_every
        self.verbose = verbose
        self.network: Network | None = None
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.val_data: Dataset | None = None
        self.cycle_start = 0  # the epoch the schedule restarted at (a finished run extended)
        self._lr_scale = 1.0  # the plateau schedule's factor

    def _fix(self, images) -> str:
        return input_fix(self.source, self.graph.name, self.graph.input_shape, images)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.npz"

    def _checkpoint(self, epoch: int, step: int, running: dict, best: float | None) -> Checkpoint:
        meta = {
            "epoch": epoch, "step": step, "settings": self.settings, "history": self.history,
            "running": running, "best": best, "threads": get_num_threads(),
            "dropout_rng": self.network.dropout_rng.bit_generator.state,
            "classes": list(self.train_data.classes), "spec_name": self.graph.name,
            "segmentation": self.train_data.segmentation, "overrides": sorted(self.overrides),
            "best_epoch": self.best_epoch, "input_shape": list(self.graph.input_shape),
            "cycle_start": self.cycle_start,
        }
        state = self.network.state_dict()
        params = {k: state[k] for k in self.network.params}
        buffers = {k: state[k] for k in self.network.buffers}
        return Checkpoint(params, buffers, self.optimizer.state_dict(), self.spec_text, meta,
                          self.normalizer.mean, self.normalizer.std)

    def fit(self, x=None, y=None, *, x_val=None, y_val=None, x_test=None, y_test=None,
            classes=None, resume=None) -> dict:
        """Train; ``resume`` is a checkpoint path, or True for the run folder's ``last.npz``.

        With numpy arrays ``x``, ``y`` the network trains on them instead of the spec's data
        set (``x`` ``(N, C, H, W)``, or ``(N, H, W)`` for one channel; ``y`` class indices);
        ``x_val``, ``y_val`` are the validation split (otherwise ``[training] validation`` of
        ``x``), ``x_test``, ``y_test`` a test split scored once at the end (otherwise none);
        ``classes`` names the classes.

        Returns ``{"history", "best", "best_epoch", "test", "last", "best_path", "run_dir"}``
        (``test``: the test split's metrics with the best weights).  Raises
        :class:`TrainingInterrupted` after saving on Ctrl-C and
        :class:`~declcnn.errors.TrainingError` on a non-finite loss.
        """
        checkpoint = None
        if resume:
            path = self.last_path if resume is True else Path(resume)
            checkpoint = load_checkpoint(path, checkpoint_budget(self.graph))
            checkpoint.check_resumable()
            self.settings, notes = stored_settings(checkpoint, self.graph.training,
                                                   self.overrides)
            for note in notes:
                self.log(f"note: {note}")
        settings = self.settings
        shape = self.graph.input_shape
        if x is not None:
            train_data = from_arrays(x, y, shape, "fit(x, y)", classes)
            self.test_data = (None if x_test is None else
                              from_arrays(x_test, y_test, shape, "fit(x_test, y_test)",
                                          train_data.classes))
        else:
            train_data, self.test_data = load_dataset(settings["dataset"], shape, self.data_dir,
                                                      settings["seed"], self._fix)
        if x_val is not None:
            self.train_data = train_data
            self.val_data = from_arrays(x_val, y_val, shape, "fit(x_val, y_val)",
                                        train_data.classes)
            self.val_data.description = f"validation: {len(self.val_data)} samples (x_val)"
        else:
            self.train_data, self.val_data = validation_split(
                train_data, settings["validation"], settings["seed"])
        del train_data
        for note in self.train_data.notes:
            self.log(f"note: {note}")
        if settings["batch_size"] > len(self.train_data):
            self.log(f"note: batch_size {settings['batch_size']} is larger than the "
                     f"{len(self.train_data)} training samples; each epoch is one batch of them.")
        held = (self.val_data.description if self.val_data is not None else
                "no validation split (validation = 0): best.npz is the last epoch")
        tested = ("no test split" if self.test_data is None else
                  f"test (scored once, at the end): {self.test_data.description}")
        self.log(f"data: {self.train_data.description}; {held}; {tested}")
        self.network = Network(self.graph, seed=settings["seed"])
        check_fit(self.network, self.train_data)
        if settings["loss"] == "cross_entropy" and self.graph.output.type == "softmax":
            raise TrainingError(f"network '{self.graph.name}': the last layer "
                                f"'{self.graph.output.name}' is a softmax, but cross_entropy "
                                f"takes raw scores (it applies the softmax itself); remove that "
                                f"layer from the spec.")
        self.optimizer = make_optimizer(self.network.params, settings)
        self.normalizer = Normalizer.fit(self.train_data, settings["normalize"])
        epoch, step, best = 0, 0, None
        running = {"loss": 0.0, "correct": 0, "counted": 0, "images": 0}
        if checkpoint is not None:
            checkpoint.restore(self.network)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.network.dropout_rng.bit_generator.state = checkpoint.meta["dropout_rng"]
            self.normalizer = Normalizer(checkpoint.mean, checkpoint.std)
            meta = checkpoint.meta
            epoch, step, best = meta["epoch"], meta["step"], meta["best"]
            self.best_epoch = meta.get("best_epoch")
            self.cycle_start = meta.get("cycle_start", 0)
            running, self.history = meta["running"], meta["history"]
            self.log(f"resuming {checkpoint.path} at epoch {epoch + 1}, step {step} "
                     f"(saved with {meta['threads']} threads; now {get_num_threads()})")
            planned = meta.get("settings", {}).get("epochs", epoch)
            if epoch >= planned and settings["epochs"] > epoch:
                # A finished run given more epochs: its schedule had ended (cosine at lr ≈ 0),
                # so it restarts over the added epochs (a warm restart, as in SGDR).
                self.cycle_start = epoch
                self.log(f"the run had finished its {planned} epochs; the '{settings['schedule']}'"
                         f" schedule restarts from lr = {settings['lr']:g} for epochs "
                         f"{epoch + 1}-{settings['epochs']}")
            elif epoch >= settings["epochs"]:
                self.log(f"the run has finished its {epoch} epochs; pass --epochs N (more than "
                         f"{epoch}) to continue it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        with _stop_on_sigint() as stop:
            best = self._epochs(epoch, step, running, best, stop, metrics_path)
        plot_history(self.history, self.run_dir / "curves.png")
        test = self._score_test()
        self.log(f"saved {self.last_path}, {self.best_path}, {metrics_path}, "
                 f"{self.run_dir / 'test.json'} and {self.run_dir / 'curves.png'}")
        return {"history": self.history, "best": best, "best_epoch": self.best_epoch,
                "test": test, "last": self.last_path, "best_path": self.best_path,
                "run_dir": self.run_dir}

    def _score_test(self) -> dict | None:
        """Score the test split once with ``best.npz`` (``last.npz`` if no epoch had a finite
        validation result) and write ``test.json``; None without a test split."""
        if self.test_data is None:
            return None
        weights = self.best_path if self.best_epoch is not None else self.last_path
        network = Network(self.graph)
        load_checkpoint(weights).restore(network)
        result = evaluate_network(network, self.test_data, self.normalizer, self.settings)
        result.update(split="test", dataset=self.test_data.description, weights=str(weights),
                      epoch=self.best_epoch if self.best_epoch is not None else len(self.history))
        (self.run_dir / "test.json").write_text(json.dumps(result) + "\n")
        which = (f"best.npz, epoch {self.best_epoch}" if self.best_epoch is not None else
                 "last.npz: no epoch had a finite validation result")
        self.log(f"test ({len(self.test_data)} samples, {which}): {_scores_text(result)}")
        return result

    def _lr(self, step: int, per_epoch: int) -> float:
        """The learning rate of ``step``: the schedule, restarted at ``cycle_start`` when a
        finished run was extended, times the plateau schedule's factor."""
        settings = self.settings
        if self.cycle_start:
            settings = {**settings, "epochs": settings["epochs"] - self.cycle_start,
                        "warmup_epochs": 0}
            step -= self.cycle_start * per_epoch
        return learning_rate(step, settings, per_epoch) * self._lr_scale

    def _plateau(self) -> float:
        settings = self.settings
        if settings["schedule"] != "plateau":
            return 1.0
        scores = [r.get("val_mean_iou", r.get("val_accuracy")) if math.isfinite(
            r.get("val_loss", math.nan)) else None for r in self.history]
        return plateau_scale(scores, settings["plateau_patience"], settings["gamma"])

    def _stops_early(self, epoch: int) -> bool:
        """Whether ``early_stopping`` epochs have passed without a better validation score."""
        patience = self.settings["early_stopping"]
        if not patience or self.val_data is None or epoch == 0:
            return False
        since = epoch - (self.best_epoch or 0)
        if since < patience:
            return False
        self.log(f"early stopping after epoch {epoch}: {since} epochs without a better "
                 f"validation score (early_stopping = {patience}); best.npz is epoch "
                 f"{self.best_epoch}")
        return True

    def _epochs(self, epoch, step, running, best, stop, metrics_path):
        settings, data = self.settings, self.train_data
        batch_size, epochs, seed = settings["batch_size"], settings["epochs"], settings["seed"]
        per_epoch = steps_per_epoch(len(data), batch_size)
        ignore = settings["ignore_index"]
        for e in range(epoch, epochs):
            self._lr_scale = self._plateau()
            if step == e * per_epoch and self._stops_early(e):
                break
            order = epoch_order(len(data), seed, e)
            first = step - e * per_epoch
            bar = ProgressBar(f"epoch {e + 1}/{epochs}", per_epoch, first, enabled=self.verbose)
            started = time.perf_counter()
            self.network.train()
            for b in range(first, per_epoch):
                x, y = training_batch(data, order, b, batch_size, self.normalizer, seed, e,
                                      settings["augment"], ignore)
                if data.segmentation:  # after augmenting, which moves image and mask together
                    y = crop_masks(y, self.graph.output.output_shape[1:])
                loss = self._step(x, y, step, per_epoch, e, b)
                step += 1
                correct, counted = correct_predictions(self._output, y, ignore)
                running["loss"] += loss * len(x)
                running["images"] += len(x)
                running["correct"] += correct
                running["counted"] += counted
                bar.update(len(x), running["loss"] / running["images"],
                           running["correct"] / max(running["counted"], 1))
                if step % self.checkpoint_every == 0 or stop.is_set():
                    save_checkpoint(self.last_path, self._checkpoint(e, step, running, best))
                if stop.is_set():
                    bar.close()
                    raise TrainingInterrupted(self.last_path, step)
            bar.close()
            record = {"epoch": e + 1, "step": step,
                      "train_loss": running["loss"] / max(running["images"], 1),
                      "train_accuracy": running["correct"] / max(running["counted"], 1)}
            if self.val_data is not None:
                val = evaluate_network(self.network, self.val_data, self.normalizer, settings)
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                if "mean_iou" in val:
                    record["val_mean_iou"] = val["mean_iou"]
                improved = _improves(val, best)
                shown = f" | validation {_scores_text(val)}"
            else:
                improved, shown = True, ""
            record.update(lr=self._lr(step - 1, per_epoch),
                          seconds=time.perf_counter() - started)
            self.history.append(_json_ready(record))
            if improved:
                best = _score(val) if self.val_data is not None else None
                self.best_epoch = e + 1
            running = {"loss": 0.0, "correct": 0, "counted": 0, "images": 0}
            checkpoint = self._checkpoint(e + 1, step, running, best)
            save_checkpoint(self.last_path, checkpoint)
            if improved:
                save_checkpoint(self.best_path, checkpoint)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(self.history[-1]) + "\n")
            self.log(f"epoch {e + 1}/{epochs}: train loss {record['train_loss']:.4f} acc "
                     f"{record['train_accuracy']:.4f}{shown} | {duration(record['seconds'])}"
                     f"{' (best)' if improved and self.val_data is not None else ''}")
            if stop.is_set():
                raise TrainingInterrupted(self.last_path, step)
        return best

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` (per pixel for segmentation) of the trained
        network for samples ``x`` (``(N, C, H, W)`` or ``(N, H, W)``), normalised as in
        training: ``uint8`` scaled by 1/255, then the training set's mean and std."""
        if self.network is None:
            raise TrainingError("predict: the network is not trained yet; call fit() first.")
        images = from_arrays(x, np.zeros(len(x), np.int64), self.graph.input_shape,
                             "predict(x)").x
        self.network.eval()
        return softmax(self.network.forward(self.normalizer(images)), axis=1)

    def _step(self, x, y, step, per_epoch, epoch, batch) -> float:
        settings = self.settings
        self.network.zero_grad()
        output = self.network.forward(x)
        loss, grad = compute_loss(settings["loss"], output, y, settings["ignore_index"],
                                  settings["label_smoothing"])
        if not math.isfinite(loss):
            where = first_non_finite(self.network, x)
            kept = (f"the last good checkpoint is {self.last_path}" if self.last_path.exists()
                    else "no checkpoint was written yet")
            raise TrainingError(
                f"step {step + 1} (epoch {epoch + 1}, batch {batch + 1}): the loss is {loss}; "
                f"{where}. Training stopped; {kept}. Lower the learning rate (lr = "
                f"{self._lr(step, per_epoch):g} at this step), add warm-up "
                f"(warmup_epochs) or check the data for non-finite values.")
        self.network.backward(grad, input_grad=False)
        if settings["clip_grad_norm"]:
            clip_gradients(self.network.grads, settings["clip_grad_norm"])
        self.optimizer.step(self.network.grads, self._lr(step, per_epoch))
        self._output = output
        return loss


def train(spec, resume=None, **options) -> dict:
    """``Trainer(spec, **options).fit(resume)``."""
    return Trainer(spec, **options).fit(resume)


def _input_shape(graph, input_size) -> tuple[int, ...]:
    """The spec's input with ``(height, width)`` = ``input_size``."""
    if len(graph.input_shape) != 3:
        raise DeclcnnError(f"network '{graph.name}': --input sets an image's height and width, "
                           f"but the input is {tuple(graph.input_shape)}; leave --input out.")
    return (graph.input_shape[0], *(int(v) for v in input_size))


def _network_from(spec, weights) -> tuple[Network, Checkpoint]:
    source, _ = _spec_source(spec)
    graph = load_graph(source)
    checkpoint = load_checkpoint(weights, checkpoint_budget(graph))
    stored = checkpoint.meta.get("input_shape")
    network = Network(load_graph(source, tuple(stored)) if stored else graph)
    checkpoint.restore(network)
    network.eval()
    return network, checkpoint


SPLITS = ("test", "validation", "train")


def evaluate(spec, weights, data_dir=None, batch_size: int = 256, split: str = "test") -> dict:
    """Metrics of the checkpoint ``weights`` on one split of the spec's data set (``"test"`` by
    default; ``"validation"`` and ``"train"`` are the parts the run held out and trained on):
    accuracy, per-class accuracy, confusion matrix, loss; pixel accuracy and (mean) IoU for
    segmentation.  ``result["split"]`` names the split scored."""
    if split not in SPLITS:
        raise DeclcnnError(f"split '{split}' is not one of {', '.join(SPLITS)}; choose one.")
    network, checkpoint = _network_from(spec, weights)
    settings, notes = stored_settings(checkpoint, network.graph.training, {})
    for note in notes:
        warnings.warn(DeclcnnWarning(note), stacklevel=2)
    train, test = load_dataset(settings["dataset"], network.graph.input_shape, data_dir,
                               settings["seed"])
    if split == "test":
        data = test
    else:
        train, validation = validation_split(train, settings["validation"], settings["seed"])
        if split == "validation" and validation is None:
            raise DataError(f"{weights}: the run held out no validation split (validation = "
                            f"0); evaluate the test or train split instead.")
        data = validation if split == "validation" else train
    check_fit(network, data)
    result = evaluate_network(network, data, Normalizer(checkpoint.mean, checkpoint.std),
                              settings, batch_size)
    result["split"], result["dataset"] = split, data.description
    return result


class _SizedNetworks:
    """The network of one spec and checkpoint at each input size asked for: built (shapes
    re-inferred and checked) where every layer allows that size and the trained parameters
    fit it — fully convolutional nets, global pooling, SPP."""

    def __init__(self, spec, network: Network, checkpoint: Checkpoint):
        self.source, _ = _spec_source(spec)
        self.checkpoint = checkpoint
        self.networks = {tuple(network.graph.input_shape): network}
        self.trained = tuple(network.graph.input_shape)

    def at(self, shape: tuple, path: Path, stored: tuple) -> Network:
        if shape in self.networks:
            return self.networks[shape]
        refused = (f"{path}: the array has shape {stored} but the network takes "
                   f"{self.trained}")
        try:
            graph = load_graph(self.source, shape)
        except DeclcnnError as err:
            first = str(err).splitlines()[0]
            raise DataError(f"{refused}; it does not run at {shape[1]}×{shape[2]} ({first}). "
                            f"Save the array at {self.trained[1]}×{self.trained[2]} (an image "
                            f"file would be resized instead).") from None
        network = Network(graph)
        for name, value in self.checkpoint.params.items():
            if name in network.params and network.params[name].shape != value.shape:
                raise DataError(f"{refused}; at {shape[1]}×{shape[2]} parameter '{name}' would "
                                f"be {network.params[name].shape}, but it was trained as "
                                f"{value.shape} (the layer's size depends on the input's). Save "
                                f"the array at {self.trained[1]}×{self.trained[2]} (an image "
                                f"file would be resized instead).")
        self.checkpoint.restore(network)
        network.eval()
        self.networks[shape] = network
        return network


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """A class-index mask as a palette PNG: pixel values are the classes, shown in colour."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200, 255, 225, 25, 145, 30, 180]
    image.putpalette(palette + [128] * (768 - len(palette)))
    image.save(path)


def predict(spec, weights, inputs, top_k: int = 3, out=None) -> list[dict]:
    """Classify (or segment) image files (PNG, JPEG…) or ``.npy`` arrays, or the samples of
    one numpy array ``(N, C, H, W)`` (then each result's ``input`` is ``"sample i"``).

    Classification: per input ``{"input", "top": [{"class", "index", "probability"}…]}`` with the
    ``top_k`` most probable classes.  Segmentation: ``{"input", "mask", "classes"}`` with the
    mask written as a PNG into ``out`` (default: beside the input) as ``<name>_mask.png``.
    """
    network, checkpoint = _network_from(spec, weights)
    normalizer = Normalizer(checkpoint.mean, checkpoint.std)
    classes = checkpoint.meta.get("classes") or []
    if isinstance(inputs, np.ndarray):  # samples, normalised as in training
        batch = normalizer(from_arrays(inputs, np.zeros(len(inputs), np.int64),
                                       network.graph.input_shape, "predict(inputs)").x)
        paths = [Path(f"sample {i}") for i in range(len(batch))]
        probabilities = list(softmax(network.forward(batch), axis=1))
    else:
        paths = [Path(p) for p in inputs]
        sized = _SizedNetworks(spec, network, checkpoint)
        probabilities = []
        for path in paths:
            # Normalised one by one: bytes are scaled by 1/255, float arrays are not.
            sample, stored = read_input(path, network.graph.input_shape)
            runner = sized.at(tuple(sample.shape), path, stored)
            probabilities.append(softmax(runner.forward(normalizer(sample[None])), axis=1)[0])

    def name(index: int) -> str:
        return classes[index] if index < len(classes) else str(index)

    results = []
    for path, p in zip(paths, probabilities, strict=True):
        if p.ndim == 1:
            top = np.argsort(-p, kind="stable")[:top_k]
            results.append({"input": str(path), "top": [
                {"class": name(int(i)), "index": int(i), "probability": float(p[i])}
                for i in top]})
        else:
            mask = p.argmax(axis=0)
            folder = Path(out) if out else path.parent
            target = folder / f"{path.stem}_mask.png"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _save_mask(mask, target)
            except OSError as err:
                raise DataError(f"{folder}: cannot write the mask {target.name} there "
                                f"({err.strerror or err}); choose another --out folder, or check "
                                f"its permissions and free space.") from None
            present = np.bincount(mask.ravel(), minlength=len(p)) / mask.size
            results.append({"input": str(path), "mask": str(target), "classes": {
                name(i): float(f) for i, f in enumerate(present) if f > 0}})
    return results
