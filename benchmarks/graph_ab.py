"""Two or more ONNX graphs of one model timed against the first, round by round: an A/B of an exporter change.

Export the same checkpoint (or timm model) at two commits, then give both files here. Every graph is run on
the same random images and its outputs compared with the first graph's (the largest absolute difference is
printed, so that "same arithmetic" is checked, not assumed); then the graphs are called in turn every round
in ONNX Runtime CPU at ``--threads`` threads, and each graph's per-round time over the first graph's is
reported as the median and quartiles. The clock is the calling thread's CPU time, which other work on a
shared machine disturbs less than the wall clock (one thread only: with more, the pool's time is not the
caller's).

    git checkout OLD && ltmp-deploy export model.safetensors --mode threshold -o old.onnx --no-validate
    git checkout NEW && ltmp-deploy export model.safetensors --mode threshold -o new.onnx --no-validate
    python benchmarks/graph_ab.py old.onnx new.onnx --batch 1 8 --rounds 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ltmp_deploy.runtime.backends import close, infer, open_runner


@contextlib.contextmanager
def cpu_runners(paths: dict[str, Path], threads: int = 1) -> Iterator[dict]:
    """ONNX Runtime CPU runners of ``paths`` by name, closed on the way out; the load average is printed
    before and after, so that a busy machine shows in the output."""
    print(f"load average at the start {os.getloadavg()}")
    runners = {name: open_runner(p, "onnxruntime", ["CPUExecutionProvider"], threads) for name, p in paths.items()}
    try:
        yield runners
    finally:
        for runner in runners.values():
            close(runner)
        print(f"load average at the end {os.getloadavg()}")


def time_batch(runners: dict, images: np.ndarray, rounds: int, calls: int) -> dict[str, list[float]]:
    """Per-round seconds per call of every runner, each called ``calls`` times in turn every round, after one
    warm-up call."""
    for runner in runners.values():
        infer(runner, images)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            start = time.thread_time()
            for _ in range(calls):
                infer(runner, images)
            seconds[name].append((time.thread_time() - start) / calls)
    return seconds


def quartiles(values: list[float]) -> str:
    q1, q2, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return f"{q2:.3f} ({q1:.3f}-{q3:.3f})"


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest absolute difference over the outputs both graphs have, by name."""
    shared = [name for name in a if name in b]
    return max(float(np.abs(a[name].astype(np.float64) - b[name]).max()) for name in shared)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", type=Path, help="ONNX files of one model; the first is the baseline")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if len(args.graphs) < 2:
        parser.error("give at least two graphs")
    with cpu_runners({str(p): p for p in args.graphs}, args.threads) as runners:
        first = str(args.graphs[0])
        shape = runners[first].input_shape
        for batch in args.batch:
            images = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
            base = infer(runners[first], images)
            for name, runner in runners.items():
                print(
                    f"batch {batch}: {name} largest output difference to {first}: "
                    f"{largest_difference(infer(runner, images), base):.3g}"
                )
            s = time_batch(runners, images, args.rounds, 5 if batch == 1 else 1)
            for name in runners:
                ratio = [a / b for a, b in zip(s[name], s[first])]
                print(
                    f"batch {batch}: {name} p50 {statistics.median(s[name]) * 1e3:.3f} ms, "
                    f"per-round ratio to the first {quartiles(ratio)}"
                )


if __name__ == "__main__":
    main()
