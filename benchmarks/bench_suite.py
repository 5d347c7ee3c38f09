"""Time declcnn's conv and pooling ops against PyTorch on the shared layer suite.

    python benchmarks/bench_suite.py [--suite PATH] [--threads 1 2] [--repeats 5] [--warmup 2]
                                     [--cases a,c,i]

Every case runs forward, and forward + backward, for declcnn and (when installed) PyTorch at the
same thread count; a time is the median of ``--repeats`` timed runs after ``--warmup`` runs
(see ``median_ms`` for how the runs are interleaved).  One table
per thread count.  FLOPs follow the suite's ``_doc``: conv 2·N·O·OH·OW·(C/groups)·kh·kw, a
transposed conv as its adjoint conv, backward 2× forward; pooling has no FLOP count ("-").
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

import declcnn
from declcnn.ops import conv as conv_ops
from declcnn.shapes import conv_output_size

DEFAULT_SUITE = Path(__file__).resolve().parent / "cases" / "conv_suite.json"

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table then has declcnn's columns only
    torch = None


def median_ms(runners, repeats: int, warmup: int) -> list[float | None]:
    """Median wall time of each runner (None stays None), in ms.

    The runners take turns within every repeat, so load from other processes falls on all of
    them alike; each timed run follows an untimed run of the same runner, so the other
    library's idle OpenMP threads have stopped spinning and this runner's threads are awake.
    """
    live = [run for run in runners if run is not None]
    for _ in range(warmup):
        for run in live:
            run()
    times: dict[int, list[float]] = {id(run): [] for run in live}
    for _ in range(repeats):
        for run in live:
            run()
            start = time.perf_counter()
            run()
            times[id(run)].append(time.perf_counter() - start)
    return [None if run is None else 1e3 * statistics.median(times[id(run)]) for run in runners]


def conv_case(case, rng):
    """(declcnn fwd, declcnn fwd+bwd, torch fwd, torch fwd+bwd, forward FLOPs) for a conv."""
    N, C, H, W = case["input"]
    O, k, groups = case["out_channels"], case["kernel"], case.get("groups", 1)
    stride, padding = case.get("stride", 1), case.get("padding", 0)
    dilation = case.get("dilation", 1)
    transposed = case["op"] == "conv_transpose2d"
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    if transposed:
        w = rng.standard_normal((C, O // groups, k, k), dtype=np.float32)
        args = dict(stride=stride, padding=padding, groups=groups, dilation=dilation)
        forward, backward = conv_ops.conv_transpose2d, conv_ops.conv_transpose2d_backward
        flops = 2 * N * C * H * W * (O // groups) * k * k
    else:
        w = rng.standard_normal((O, C // groups, k, k), dtype=np.float32)
        args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        forward, backward = conv_ops.conv2d, conv_ops.conv2d_backward
        side = conv_output_size(H, k, stride, padding, padding, dilation)
        flops = 2 * N * O * side * side * (C // groups) * k * k
    b = rng.standard_normal(O, dtype=np.float32)
    gy = rng.standard_normal(forward(x, w, b, **args).shape, dtype=np.float32)

    def ours_fwd():
        forward(x, w, b, **args)

    def ours_both():
        forward(x, w, b, **args)
        backward(gy, x, w, **args)

    if torch is None:
        return ours_fwd, ours_both, None, None, flops
    torch_op = F.conv_transpose2d if transposed else F.conv2d
    xt, wt, bt, gyt = (torch.from_numpy(a) for a in (x, w, b, gy))
    xg, wg, bg = (t.clone().requires_grad_() for t in (xt, wt, bt))

    def torch_fwd():
        with torch.no_grad():
            torch_op(xt, wt, bt, **args)

    def torch_both():
        for t in (xg, wg, bg):
            t.grad = None
        torch_op(xg, wg, bg, **args).backward(gyt)

    return ours_fwd, ours_both, torch_fwd, torch_both, flops


def pool_case(case, rng):
    """The same four runners for max/avg pooling (no FLOP count)."""
    from declcnn.ops import pool  # another engineer's module: absent until it lands

    x = rng.standard_normal(case["input"], dtype=np.float32)
    k, s = case["kernel"], case.get("stride", case["kernel"])
    if case["op"] == "maxpool2d":
        y, indices = pool.max_pool2d(x, k, s)
        gy = rng.standard_normal(y.shape, dtype=np.float32)

        def ours_fwd():
            pool.max_pool2d(x, k, s)

        def ours_both():
            _, idx = pool.max_pool2d(x, k, s)
            pool.max_pool2d_backward(gy, idx, x.shape)

        torch_op = F.max_pool2d if torch is not None else None
    else:
        gy = rng.standard_normal(pool.avg_pool2d(x, k, s).shape, dtype=np.float32)

        def ours_fwd():
            pool.avg_pool2d(x, k, s)

        def ours_both():
            pool.avg_pool2d(x, k, s)
            pool.avg_pool2d_backward(gy, x.shape, k, s)

        torch_op = F.avg_pool2d if torch is not None else None
    if torch is None:
        return ours_fwd, ours_both, None, None, None
    xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
    xg = xt.clone().requires_grad_()

    def torch_fwd():
        with torch.no_grad():
            torch_op(xt, k, s)

    def torch_both():
        xg.grad = None
        torch_op(xg, k, s).backward(gyt)

    return ours_fwd, ours_both, torch_fwd, torch_both, None


RUNNERS = {"conv2d": conv_case, "conv_transpose2d": conv_case, "maxpool2d": pool_case,
           "avgpool2d": pool_case}


def _ms(value):
    return "-" if value is None else f"{value:.2f}"


def _rate(flops, ms):
    return "-" if flops is None or ms is None else f"{flops / ms / 1e6:.1f}"


def _ratio(ours, theirs):
    return "-" if theirs is None else f"{ours / theirs:.2f}"


def run_table(cases, threads: int, repeats: int, warmup: int) -> list[str]:
    declcnn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    header = (f"{'case':<4} {'name':<28} {'fwd ms':>8} {'f+b ms':>8} {'torch fwd':>9} "
              f"{'torch f+b':>9} {'GF/s fwd':>8} {'GF/s f+b':>8} {'ratio fwd':>9} "
              f"{'ratio f+b':>9}")
    lines = [f"threads = {threads}  (ratio = declcnn ms / torch ms; < 1 means declcnn is faster)",
             header, "-" * len(header)]
    notes, ratios = [], []
    for case in cases:
        rng = np.random.default_rng(0)
        try:
            ours_fwd, ours_both, torch_fwd, torch_both, flops = RUNNERS[case["op"]](case, rng)
        except ImportError as err:
            notes.append(f"case {case['id']} ({case['name']}) skipped: {err}")
            continue
        ms = median_ms([ours_fwd, ours_both, torch_fwd, torch_both], repeats, warmup)
        if ms[2] is not None:
            ratios += [ms[0] / ms[2], ms[1] / ms[3]]
        lines.append(
            f"{case['id']:<4} {case['name'][:28]:<28} {_ms(ms[0]):>8} {_ms(ms[1]):>8} "
            f"{_ms(ms[2]):>9} {_ms(ms[3]):>9} {_rate(flops, ms[0]):>8} "
            f"{_rate(None if flops is None else 3 * flops, ms[1]):>8} "
            f"{_ratio(ms[0], ms[2]):>9} {_ratio(ms[1], ms[3]):>9}"
        )
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        lines.append(f"geometric mean of all ratios: {geomean:.2f}")
    return lines + notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE,
                        help="the suite JSON (default: benchmarks/cases/conv_suite.json)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    args = parser.parse_args(argv)
    cases = json.loads(args.suite.read_text())["cases"]
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in cases if c["id"] in wanted]
    print(f"declcnn {declcnn.__version__}, torch "
          f"{torch.__version__ if torch is not None else 'not installed'}, suite {args.suite}, "
          f"median of {args.repeats} after {args.warmup} warm-up runs")
    for threads in args.threads:
        print()
        print("\n".join(run_table(cases, threads, args.repeats, args.warmup)))


if __name__ == "__main__":
    main()
