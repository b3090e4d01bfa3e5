"""Where ONNX Runtime's CPU time goes in one mode against another: its own profiler, per op type.

By default fixed mode against the oracle (``--mode``, ``--base``: threshold against fixed, for
instance). Both graphs of one model (a timm name with random weights, or a toolkit checkpoint; a
calibrated checkpoint's own schedule, else ``schedule_for_flops(--target)``; threshold mode's thresholds
bisected on random images to the same mean FLOPs as ``bench`` does) are exported as
``ltmp-deploy export`` does, then run ``--runs`` times each, alternating, with ONNX Runtime's
profiler on (``SessionOptions.enable_profiling``) at ``--threads`` intra-op threads. Every node
run is summed by op type; the table gives each op type's kernel time per run in both graphs and
the difference, largest first, so the gap between the two is split between the reduction's own
op types (TopK, gathers, the merge matmuls) and the work both graphs do. The
profiler's timings include its own overhead; they locate the cost, and the benchmark's paired
ratios measure it.

    python benchmarks/profile_ort.py --model deit_small_patch16_224 --batch 1 --threads 2
    python benchmarks/profile_ort.py --mode threshold --base fixed --batch 8 --threads 2

``--by-node`` splits the time by node instead, each node step summed over the blocks (``/blocks.*/TopK_2``
is that TopK in every block), which tells apart the several MatMuls or TopKs of one block.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ltmp_deploy.calibration.thresholds import thresholds_for_flops
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.checkpoint import load
from ltmp_deploy.ltmp.flops import schedule_for_flops


def session(path: Path, threads: int, prefix: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def role(event: dict) -> str:
    """A node's op type and name with the block number left out: the same step of every block sums together."""
    name = re.sub(r"/blocks\.\d+/", "/blocks.*/", event["name"].removesuffix("_kernel_time"))
    return f"{event['args']['op_name']} {name}"


def op_times(profile: Path, runs: int, by_role: bool = False) -> tuple[dict[str, float], int]:
    """Mean kernel microseconds per run for every op type, or every node :func:`role` (the warm-up run
    dropped), and the node count."""
    events = [
        e for e in json.loads(profile.read_text()) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    total: dict[str, float] = collections.defaultdict(float)
    for e in events:
        total[role(e) if by_role else e["args"]["op_name"]] += e["dur"]
    nodes = len({e["name"] for e in events})
    return {op: us / (runs + 1) for op, us in total.items()}, nodes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="deit_small_patch16_224", help="a timm name (random weights) or a toolkit checkpoint"
    )
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mode", choices=("fixed", "threshold"), default="fixed")
    parser.add_argument("--base", choices=("oracle", "fixed"), default="oracle")
    parser.add_argument("--by-node", action="store_true", help="rows per node step of a block, not per op type")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = load(args.model)
    schedule = model.ltmp.schedule  # a calibrated checkpoint's own; otherwise the FLOPs target's geometric one
    model.ltmp_set_mode("fixed", schedule if schedule is not None else schedule_for_flops(model, args.target))
    where = "its calibrated schedule" if schedule is not None else f"{args.target} of the block FLOPs"
    size = model.patch_embed.img_size
    images = np.random.default_rng(0).standard_normal((args.batch, 3, *size), dtype=np.float32)
    if "threshold" in (args.mode, args.base):
        sample = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 3, *size), dtype=np.float32))
        thresholds_for_flops(model, sample, args.target)
    with tempfile.TemporaryDirectory(prefix="ltmp-profile-") as work:
        sessions = {}
        for mode in (args.base, args.mode):
            model.ltmp_set_mode(mode)
            path = Path(work) / f"{mode}.onnx"
            export_onnx(model, path, batch=args.batch, validate=False, num_samples=2)
            sessions[mode] = session(path, args.threads, Path(work) / mode)
        for _ in range(args.runs + 1):  # alternating, the first run of each a warm-up
            for s in sessions.values():
                s.run(None, {s.get_inputs()[0].name: images})
        times = {mode: op_times(Path(s.end_profiling()), args.runs, args.by_node) for mode, s in sessions.items()}
    report(args, where, times)


def report(args: argparse.Namespace, where: str, times: dict[str, tuple[dict[str, float], int]]) -> None:
    a, b = args.mode, args.base
    (ours, our_nodes), (base, base_nodes) = times[a], times[b]
    print(f"{args.model}, {a} against {b} at {where}, batch {args.batch},", end=" ")
    print(f"{args.threads} threads; onnxruntime {ort.__version__} CPU profiler, kernel time per run,", end=" ")
    print(f"mean of {args.runs} runs\n")
    print(f"{b} {sum(base.values()) / 1e3:.2f} ms in {base_nodes} nodes,", end=" ")
    print(f"{a} {sum(ours.values()) / 1e3:.2f} ms in {our_nodes} nodes:", end=" ")
    print(f"{a} / {b} {sum(ours.values()) / sum(base.values()):.3f}\n")
    print(f"| {'node' if args.by_node else 'op type'} | {b} ms | {a} ms | {a} - {b} ms |\n|---|---:|---:|---:|")
    rows = [(ours.get(op, 0.0) - base.get(op, 0.0), op) for op in {*base, *ours}]
    for diff, op in sorted(rows, key=lambda r: -abs(r[0])):
        print(f"| {op} | {base.get(op, 0.0) / 1e3:.3f} | {ours.get(op, 0.0) / 1e3:.3f} | {diff / 1e3:+.3f} |")


if __name__ == "__main__":
    main()
