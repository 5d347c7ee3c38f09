"""Peak memory of LeNet-5 training steps, declcnn's or PyTorch's, measured in this process.

    python benchmarks/lenet_memory.py declcnn|torch [--steps 200] [--threads 1] [--batch-size 64]

Run it in a fresh process (``bench_lenet.py`` does): it imports only the library it measures,
records the high-water mark of its resident memory after the imports (``VmHWM``; see
``_max_rss_kib`` for why not ``ru_maxrss``), builds LeNet-5 with SGD (momentum 0.9; the
learning rate does not change memory) and runs ``--steps`` training steps on random batches of
Fashion-MNIST's shape (the data set itself would dwarf the network), then prints one JSON
object: ``{"library", "steps", "threads", "baseline_kib", "peak_kib"}``.

Also home of :func:`torch_lenet`, the PyTorch twin of ``specs/lenet.toml``: this module
imports nothing heavy at load, so both benchmarks can share it.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

LENET_SPEC = Path(__file__).resolve().parents[1] / "specs" / "lenet.toml"


def torch_lenet():
    """``specs/lenet.toml`` in PyTorch, parameters in the same order as declcnn's."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def _max_rss_kib() -> int:
    """This process's peak resident memory in KiB: ``VmHWM``, the high-water mark of its own
    address space.  ``ru_maxrss`` is not used where ``/proc`` has it: Linux carries the parent's
    peak across fork and exec into it, so a probe started by a large process would report
    the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _declcnn_steps(steps: int, threads: int, batch_size: int) -> int:
    import numpy as np

    import declcnn
    from declcnn.runtime import load
    from declcnn.train.losses import compute_loss
    from declcnn.train.optimizers import make_optimizer

    baseline = _max_rss_kib()
    declcnn.set_num_threads(threads)
    network = load(LENET_SPEC)
    settings = network.graph.training
    optimizer = make_optimizer(network.params, settings)
    rng = np.random.default_rng(0)
    for _ in range(steps):  # Trainer's step: zero, forward, loss, backward, update
        x = rng.standard_normal((batch_size, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, batch_size)
        network.zero_grad()
        _, grad = compute_loss(settings["loss"], network.forward(x), y)
        network.backward(grad, input_grad=False)
        optimizer.step(network.grads, settings["lr"])
    return baseline


def _torch_steps(steps: int, threads: int, batch_size: int) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    baseline = _max_rss_kib()
    torch.set_num_threads(threads)
    model = torch_lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = torch.from_numpy(rng.standard_normal((batch_size, 1, 28, 28), dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, 10, batch_size))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return baseline


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", choices=("declcnn", "torch"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    run = _declcnn_steps if args.library == "declcnn" else _torch_steps
    baseline = run(args.steps, args.threads, args.batch_size)
    print(json.dumps({"library": args.library, "steps": args.steps, "threads": args.threads,
                      "baseline_kib": baseline, "peak_kib": _max_rss_kib()}))


if __name__ == "__main__":
    main()
