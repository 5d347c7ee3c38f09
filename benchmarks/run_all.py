"""Every benchmark in one run: the layer suite, then LeNet-5, each at every thread count.

    python benchmarks/run_all.py [--threads 1 2] [--quick]

Runs ``bench_suite.py`` and ``bench_lenet.py`` with their defaults (one full Fashion-MNIST
epoch) at the given thread counts, after a line with the machine's load.  ``--quick`` is a
smoke run of about a minute: fewer repeats, and LeNet trained on 6,000 images.  For the other
options, run the two scripts themselves.
"""

from __future__ import annotations

import argparse
import os

import bench_lenet
import bench_suite

QUICK_SUITE = ["--repeats", "2", "--warmup", "1"]
QUICK_LENET = ["--train-limit", "6000", "--repeats", "2", "--latency-repeats", "50",
               "--memory-steps", "50"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", default=["1", "2"])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and 6,000 training images")
    args = parser.parse_args(argv)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} cores (above the thread count, times are "
          f"noisy)")
    threads = ["--threads", *args.threads]
    print("\n== layer suite ==")
    bench_suite.main(threads + (QUICK_SUITE if args.quick else []))
    print("\n== LeNet-5 ==")
    bench_lenet.main(threads + (QUICK_LENET if args.quick else []))


if __name__ == "__main__":
    main()
