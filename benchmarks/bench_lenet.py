"""LeNet-5 on Fashion-MNIST, declcnn against PyTorch: training, inference, latency, memory.

    python benchmarks/bench_lenet.py [--threads 1 2] [--epochs 1] [--train-limit N]
                                     [--repeats 5] [--latency-repeats 200] [--memory-steps 200]
                                     [--data DIR]

One table per thread count; in each, for declcnn (``specs/lenet.toml``) and its PyTorch twin
(``lenet_memory.torch_lenet``), started from the same initial weights:

* epoch: one epoch of training under the spec's ``[training]`` table (optimiser, learning rate
  and schedule, batch size, cross-entropy; ``--epochs`` replaces its epochs, as ``declcnn train
  --epochs`` does) followed by the evaluation on the 10,000 test images, as ``declcnn train``
  counts an epoch's seconds.  declcnn's runs through ``Trainer`` (its epoch time is the
  ``seconds`` of its history record); PyTorch's is an ordinary loop over the same batches in
  the same order (``declcnn.train.data``) at the same learning rates
  (``declcnn.train.schedules.learning_rate``).  Then the test accuracy after the last epoch;
* inference: the 10,000 test images at batch 256, in eval mode (images/s);
* batch-1 latency of a forward pass and of a training forward + backward (µs);
* peak memory of ``--memory-steps`` training steps, each library in a fresh process
  (``lenet_memory.py``): the absolute peak and its increase over the post-import baseline.

declcnn and PyTorch take turns so load from other processes falls on both alike: the training
runs one after the other (as wholes: a cosine schedule needs its last epoch, so a declcnn run
cannot be cut into epochs), every other measurement run by run (``bench_suite.median_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_suite import median_ms
from lenet_memory import LENET_SPEC, torch_lenet

import declcnn
from declcnn.graph import load_graph
from declcnn.runtime import Network
from declcnn.train import Trainer, load_dataset
from declcnn.train.data import Normalizer, batches, epoch_order, steps_per_epoch, training_batch
from declcnn.train.datasets import write_idx
from declcnn.train.schedules import learning_rate

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

INFERENCE_BATCH = 256


def limited_data(data_dir, train_limit: int, folder: Path) -> tuple[Path, str]:
    """A Fashion-MNIST folder holding the first ``train_limit`` training images and the whole
    test set, so that ``Trainer`` trains on fewer images through its usual data path; and
    what it holds, in words."""
    train, test = load_dataset("fashion-mnist", (1, 28, 28), data_dir)
    for split, data in (("train", train), ("t10k", test)):
        n = train_limit if split == "train" else len(data)
        write_idx(folder / f"{split}-images-idx3-ubyte", data.x[:n, 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte", data.y[:n].astype(np.uint8))
    return folder, f"{train.description}, the first {min(train_limit, len(train))} used"


class TorchTwin:
    """LeNet-5 in PyTorch with declcnn's initial weights, trained on declcnn's batches at
    declcnn's learning rates."""

    def __init__(self, network: Network, settings: dict, train, test, normalizer: Normalizer):
        if (settings["optimizer"], settings["loss"]) != ("sgd", "cross_entropy"):
            raise SystemExit(f"bench_lenet: the PyTorch loop runs SGD with cross-entropy; "
                             f"specs/lenet.toml asks for {settings['optimizer']} with "
                             f"{settings['loss']}.")
        self.model = torch_lenet()
        with torch.no_grad():
            for theirs, ours in zip(self.model.parameters(), network.params.values(),
                                    strict=True):
                theirs.copy_(torch.from_numpy(ours))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings["lr"],
                                         momentum=settings["momentum"],
                                         nesterov=settings["nesterov"],
                                         weight_decay=settings["weight_decay"])
        self.settings, self.train, self.test, self.normalizer = settings, train, test, normalizer

    def epoch(self, e: int) -> tuple[float, float]:
        """Train epoch ``e`` (from 0) and evaluate: (seconds, test accuracy)."""
        settings, data = self.settings, self.train
        batch_size, seed = settings["batch_size"], settings["seed"]
        per_epoch = steps_per_epoch(len(data), batch_size)
        order = epoch_order(len(data), seed, e)
        start = time.perf_counter()
        self.model.train()
        loss_sum, correct = 0.0, 0
        for b in range(per_epoch):
            x, y = training_batch(data, order, b, batch_size, self.normalizer, seed, e,
                                  settings["augment"], settings["ignore_index"])
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(e * per_epoch + b, settings, per_epoch)
            self.optimizer.zero_grad()
            output = self.model(x)
            loss = F.cross_entropy(output, y)
            loss.backward()
            self.optimizer.step()
            # The Trainer keeps the running loss and accuracy for its log; so does this loop.
            loss_sum += loss.item() * len(x)
            correct += int((output.argmax(1) == y).sum())
        accuracy = self.accuracy()
        return time.perf_counter() - start, accuracy

    def accuracy(self) -> float:
        """Test accuracy; the loss is computed too, as the Trainer's evaluation does."""
        self.model.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for x, y in batches(self.test, INFERENCE_BATCH, self.normalizer):
                output, target = self.model(torch.from_numpy(x)), torch.from_numpy(y)
                loss_sum += F.cross_entropy(output, target).item() * len(x)
                correct += int((output.argmax(1) == target).sum())
        return correct / len(self.test)


def training(threads: int, epochs: int, data_dir, run_dir: Path) -> dict:
    """Epoch seconds (median over epochs) and last test accuracy of declcnn, then PyTorch."""
    graph = load_graph(LENET_SPEC)
    settings = {**graph.training, "epochs": epochs}
    train, test = load_dataset(settings["dataset"], graph.input_shape, data_dir,
                               settings["seed"])
    normalizer = Normalizer.fit(train, settings["normalize"])
    twin = TorchTwin(Network(graph, seed=settings["seed"]), settings, train, test, normalizer)
    history = Trainer(LENET_SPEC, epochs=epochs, threads=threads, data_dir=data_dir,
                      out=run_dir, checkpoint_every=10**9, verbose=False).fit()["history"]
    theirs = [twin.epoch(e) for e in range(epochs)]
    return {"images": len(train), "test_images": len(test),
            "epoch_s": (statistics.median(r["seconds"] for r in history),
                        statistics.median(s for s, _ in theirs)),
            "accuracy": (history[-1]["val_accuracy"], theirs[-1][1]),
            "data": train.description, "settings": settings, "test_x": normalizer(test.x)}


def inference(test_x: np.ndarray, repeats: int) -> tuple[float, float]:
    """Images/s of both over the normalised test images at batch 256, eval mode (untrained
    weights: the time of a forward pass does not depend on them)."""
    network = Network(load_graph(LENET_SPEC)).eval()
    model = torch_lenet().eval()
    chunks = [test_x[i:i + INFERENCE_BATCH] for i in range(0, len(test_x), INFERENCE_BATCH)]
    torch_chunks = [torch.from_numpy(c) for c in chunks]

    def ours():
        for x in chunks:
            network.forward(x)

    def theirs():
        with torch.no_grad():
            for x in torch_chunks:
                model(x)

    ms = median_ms([ours, theirs], repeats, warmup=1)
    return tuple(len(test_x) / (t / 1e3) for t in ms)


def latency(repeats: int) -> dict:
    """Median µs of a batch-1 forward (eval) and a training forward + backward, both."""
    network = Network(load_graph(LENET_SPEC))
    model = torch_lenet()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 28, 28), dtype=np.float32)
    grad = rng.standard_normal((1, 10), dtype=np.float32)
    xt, gradt = torch.from_numpy(x), torch.from_numpy(grad)

    def ours_forward():
        network.eval().forward(x)

    def theirs_forward():
        model.eval()
        with torch.no_grad():
            model(xt)

    def ours_step():
        network.train().zero_grad()
        network.forward(x)
        network.backward(grad, input_grad=False)

    def theirs_step():
        model.train().zero_grad()
        model(xt).backward(gradt)

    ms = median_ms([ours_forward, theirs_forward, ours_step, theirs_step], repeats,
                   warmup=max(1, repeats // 10))
    return {"forward_us": (1e3 * ms[0], 1e3 * ms[1]), "step_us": (1e3 * ms[2], 1e3 * ms[3])}


def memory(threads: int, steps: int) -> dict:
    """Peak RSS and its increase over the post-import baseline (MiB), each library alone in a
    fresh process."""
    probe = Path(__file__).resolve().parent / "lenet_memory.py"
    result = {}
    for library in ("declcnn", "torch"):
        out = subprocess.run([sys.executable, str(probe), library, "--steps", str(steps),
                              "--threads", str(threads)], capture_output=True, text=True,
                             check=True).stdout
        report = json.loads(out)
        result[library] = (report["peak_kib"] / 1024,
                           (report["peak_kib"] - report["baseline_kib"]) / 1024)
    return {"peak_mib": (result["declcnn"][0], result["torch"][0]),
            "increase_mib": (result["declcnn"][1], result["torch"][1])}


def lenet_table(threads: int, args) -> list[str]:
    declcnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data_dir, described = args.data, None
        if args.train_limit:
            data_dir, described = limited_data(args.data, args.train_limit, folder)
        train = training(threads, args.epochs, data_dir, folder / "run")
    rate = inference(train.pop("test_x"), args.repeats)
    fast = latency(args.latency_repeats)
    mem = memory(threads, args.memory_steps)
    epochs = f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}"
    rows = [
        (f"epoch s (train {train['images']} + test {train['test_images']}"
         f"{', median' if args.epochs > 1 else ''})", train["epoch_s"], "{:.2f}", True),
        (f"test accuracy after {epochs}", train["accuracy"], "{:.4f}", None),
        (f"inference images/s (batch {INFERENCE_BATCH})", rate, "{:,.0f}", False),
        ("batch-1 forward µs", fast["forward_us"], "{:.1f}", True),
        ("batch-1 forward + backward µs", fast["step_us"], "{:.1f}", True),
        (f"peak RSS MiB ({args.memory_steps} steps)", mem["peak_mib"], "{:.1f}", True),
        ("  increase over post-import MiB", mem["increase_mib"], "{:.1f}", True),
    ]
    width = max(len(r[0]) for r in rows)
    header = f"{'LeNet-5':<{width}} {'declcnn':>10} {'torch':>10} {'ratio':>6}"
    settings = train["settings"]
    lines = [f"threads = {threads}  ({described or train['data']}; {settings['optimizer']} lr "
             f"{settings['lr']:g}, schedule {settings['schedule']}, batch "
             f"{settings['batch_size']})", header, "-" * len(header)]
    for label, (ours, theirs), number, lower_is_better in rows:
        if lower_is_better is None:
            ratio = "-"
        else:
            ratio = f"{ours / theirs if lower_is_better else theirs / ours:.2f}"
        lines.append(f"{label:<{width}} {number.format(ours):>10} {number.format(theirs):>10} "
                     f"{ratio:>6}")
    return lines


LEGEND = ("ratio: declcnn's time (or memory) over torch's, for images/s torch's rate over "
          "declcnn's;\n< 1 means declcnn is faster or smaller.  Memory compares the increase over "
          "the post-import\nbaseline (the training itself); the peak adds each library's import "
          "footprint.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=0,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes over the test set for the inference rate")
    parser.add_argument("--latency-repeats", type=int, default=200)
    parser.add_argument("--memory-steps", type=int, default=200)
    parser.add_argument("--data", help="folder of the Fashion-MNIST IDX files (default: "
                                       "declcnn's search: DECLCNN_DATA, the system folder)")
    args = parser.parse_args(argv)
    if torch is None:
        raise SystemExit("bench_lenet: PyTorch is not installed; pip install torch.")
    print(f"declcnn {declcnn.__version__}, torch {torch.__version__}: LeNet-5 (specs/lenet.toml) "
          f"on Fashion-MNIST")
    for threads in args.threads:
        print()
        print("\n".join(lenet_table(threads, args)))
    print(LEGEND)


if __name__ == "__main__":
    main()
