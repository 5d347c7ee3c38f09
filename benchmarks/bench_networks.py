"""Whole networks against their peers: a training step against PyTorch, inference against
onnxruntime, on the cases of ``benchmarks/cases/networks.json`` (a copy of the shared list).

    python benchmarks/bench_networks.py [--threads 1 2] [--repeats 7] [--warmup 2]
                                        [--only resnet18,vgg16] [--cases PATH]

Training step (the list's ``train``): in training mode, a forward and the backward of a fixed
random output gradient, every parameter gradient (the input gets none), gradients zeroed first;
PyTorch runs the same graph with the same weights through ``torch.nn.functional``
(``tests/test_runtime.py``'s ``TorchGraph``, the twin the parity tests check) at the same
thread count.  Inference (``inference``): the forward in eval mode, against onnxruntime (CPU
execution provider, default graph optimisations, intra-op threads = ours) on the model that
``declcnn export`` writes for the same weights; skipped with a note while export or
onnxruntime is missing.  A ratio is declcnn's median over the peer's, both timed in turns in
one run (``bench_suite.median_ms``): below 1 declcnn is faster.  The last line of each table is
the geometric mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_suite import median_ms

import declcnn
from declcnn.runtime import load

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = Path(__file__).resolve().parent / "cases" / "networks.json"


def _network(case, training: bool):
    net = load(ROOT / "specs" / f"{case['spec']}.toml", seed=0,
               input_shape=tuple(case["input"]))
    net.train() if training else net.eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case["batch"], *case["input"]), dtype=np.float32)
    return net, x


def train_case(case, torch, repeats, warmup):
    """(declcnn ms, torch ms) of one training step."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_runtime import TorchGraph, dropout_masks

    net, x = _network(case, training=True)
    gy = np.random.default_rng(1).standard_normal(
        (case["batch"], *net.graph.output.output_shape), dtype=np.float32)

    def ours():
        net.zero_grad()
        net.forward(x)
        net.backward(gy, input_grad=False)

    runners = [ours, None]
    if torch is not None:
        net.forward(x)  # draws dropout's masks, which the twin applies as they are
        twin, masks = TorchGraph(torch, net), dropout_masks(net)
        tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
        params = [twin.tensors[name] for name in net.params]

        def theirs():
            for p in params:
                p.grad = None
            twin.forward(tx, True, masks).backward(tgy)

        runners[1] = theirs
    return median_ms(runners, repeats, warmup)


def inference_case(case, ort, threads, repeats, warmup):
    """(declcnn ms, onnxruntime ms) of one forward in eval mode."""
    net, x = _network(case, training=False)
    runners = [lambda: net.forward(x), None]
    export = getattr(declcnn, "export_onnx", None)
    if ort is not None and export is not None:
        path = Path(tempfile.mkdtemp()) / f"{case['spec']}.onnx"
        export(net, path, dynamic_batch=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runners[1] = lambda: session.run(None, {name: x})
    return median_ms(runners, repeats, warmup)


def _label(case) -> str:
    return f"{case['spec']} {'×'.join(map(str, case['input']))} batch {case['batch']}"


def _print_table(title, peer, rows) -> None:
    print(f"\n{title}")
    width = max(len(label) for label, *_ in rows) if rows else 10
    print(f"{'network':<{width}}  {'declcnn ms':>11}  {peer + ' ms':>14}  {'ratio':>6}")
    ratios = []
    for label, ours, theirs in rows:
        ratio = ours / theirs if theirs else None
        if ratio is not None:
            ratios.append(ratio)
        print(f"{label:<{width}}  {ours:11.3f}  "
              f"{'-' if theirs is None else f'{theirs:14.3f}':>14}  "
              f"{'-' if ratio is None else f'{ratio:6.2f}':>6}")
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"{'geometric mean':<{width}}  {'':>11}  {'':>14}  {geomean:6.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", help="comma-separated spec names")
    parser.add_argument("--skip", choices=["train", "inference"], help="leave one table out")
    args = parser.parse_args(argv)
    cases = json.loads(args.cases.read_text())
    only = set(args.only.split(",")) if args.only else None
    try:
        import torch
    except ImportError:
        torch = None
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average {load_avg}; torch {getattr(torch, '__version__', 'not installed')}, "
          f"onnxruntime {getattr(ort, '__version__', 'not installed')}; "
          f"declcnn export {'yes' if hasattr(declcnn, 'export_onnx') else 'missing'}")
    for threads in args.threads:
        declcnn.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        if args.skip != "train":
            rows = [(_label(c), *train_case(c, torch, args.repeats, args.warmup))
                    for c in cases["train"] if only is None or c["spec"] in only]
            _print_table(f"training step, {threads} thread(s), vs PyTorch", "torch", rows)
        if args.skip != "inference":
            rows = [(_label(c), *inference_case(c, ort, threads, args.repeats, args.warmup))
                    for c in cases["inference"] if only is None or c["spec"] in only]
            _print_table(f"inference, {threads} thread(s), vs onnxruntime", "onnxruntime", rows)


if __name__ == "__main__":
    main()
