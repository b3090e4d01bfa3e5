"""Latency-aware calibration against FLOPs calibration on the embedded default (issue 22, items 1 and 2).

For every learning seed whose learned checkpoint is given: threshold mode's per-image counts on the
digits val split (the demo's calibration images), the FLOPs-calibrated schedule (their mean, what the
demo calibrates) and the latency-aware one (``calibrate_for_latency`` with the cost model, batch
``--cost-batch``), their accuracy on the test split with its sampling error, and ONNX Runtime latency
of both (and of the unpatched model) at batch 1 and 8: the three graphs called in turn every round,
ratios per round against the unpatched call of the same round, medians and quartiles, on the wall clock
and on the calling thread's CPU time (one thread: ONNX Runtime runs on it; on a busy shared machine the
CPU time leaves out the preemption that the wall clock carries).

    python benchmarks/cost_model.py --cost cost.json --learned s0.safetensors s1.safetensors ... \\
        --json benchmarks/results/2026-12-05-cost-model-digits.json

``--frontier 0 0.05 ...`` adds the search's schedule at each of those floors with no accuracy guard, and
``--oracles`` times every schedule's oracle in the same rounds: how much faster the same FLOPs can run,
what accuracy that costs, and how much of a schedule's time its reductions take.

``--cost-b`` calibrates a second time on another cost model (say, the same measurement at every token
count) and times that schedule beside the first.

``--model deit_tiny_patch16_224`` (random weights, no learned thresholds): the two schedules come from
the FLOPs target's geometric schedule (``schedule_for_flops``) and the search's per-image statistics
from that schedule itself (every image at its counts), so only latency is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltmp_deploy.calibration.calibrate import schedule_from_counts
from ltmp_deploy.calibration.evaluate import evaluate
from ltmp_deploy.calibration.latency import FLOORS, calibrate_for_latency, latency_schedule
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.checkpoint import load
from ltmp_deploy.ltmp.flops import model_dims, schedule_flops, schedule_for_flops
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.runtime.backends import close, infer, open_runner
from ltmp_deploy.runtime.cost_model import read_cost_model


def time_schedules(
    model: Any, schedules: dict[str, Schedule | None], batches, rounds: int, threads: int, oracles: bool = False
) -> dict:
    """Per-round ratios to ``unpatched`` (its schedule None) of every schedule's fixed-mode graph, and with
    ``oracles`` of each one's oracle too (``oracle:<name>``: the same counts with no reduction operators)."""
    out: dict[str, Any] = {}
    runs = [(name, "fixed", s) for name, s in schedules.items()]
    if oracles:
        runs += [(f"oracle:{name}", "oracle", s) for name, s in schedules.items() if s is not None]
    with tempfile.TemporaryDirectory() as tmp:
        targets = {}
        for name, mode, schedule in runs:
            model.ltmp_set_mode("off") if schedule is None else model.ltmp_set_mode(mode, schedule)
            path = Path(tmp) / f"{name.replace(':', '-')}.onnx"
            export_onnx(model, path, validate=False)
            targets[name] = open_runner(path, "onnxruntime", ["CPUExecutionProvider"], threads)
        size = model.patch_embed.img_size
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
            for t in targets.values():
                for _ in range(3):
                    infer(t, x)
            ms = {name: [] for name in targets}
            cpu = {name: [] for name in targets}
            for _ in range(rounds):
                for name, t in targets.items():
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    infer(t, x)
                    cpu[name].append((time.thread_time() - start_cpu) * 1e3)
                    ms[name].append((time.perf_counter() - start) * 1e3)
            out[str(batch)] = {}
            for name in targets:
                entry = {}
                for clock, values in (("wall", ms), ("cpu", cpu)):
                    ratios = [a / b for a, b in zip(values[name], values["unpatched"])]
                    q = np.quantile(ratios, [0.25, 0.5, 0.75]).tolist()
                    p50, low = statistics.median(values[name]), min(values[name])
                    entry[clock] = {
                        "p50_ms": p50,
                        "ratio": q[1],
                        "ratio_q1_q3": [q[0], q[2]],
                        "min_ms": low,
                        "ratio_of_min": low / min(values["unpatched"]),
                    }
                out[str(batch)][name] = entry
        for t in targets.values():
            close(t)
    return out


def stderr(acc: float, n: int) -> float:
    return float(np.sqrt(acc * (1 - acc) / n))


def digits_seed(path: str, cost, args, cost_b=None) -> dict[str, Any]:
    from ltmp_deploy.data.datasets import EMBEDDED, dataset_for

    model = load(path)
    val, test = (dataset_for(EMBEDDED, model, s) for s in ("val", "test"))
    model.ltmp_set_mode("threshold")
    counts = evaluate(model, val, progress=False)[2]
    flops_schedule = schedule_from_counts(model, counts.merges, counts.keeps, "mean")
    result = calibrate_for_latency(model, val, counts.merges, counts.keeps, flops_schedule, cost, args.cost_batch)
    print(result.summary(), flush=True)
    schedules = {"unpatched": None, "flops": flops_schedule, "latency": result.schedule}
    search = {"latency": result.summary()}
    if cost_b is not None:
        other = calibrate_for_latency(model, val, counts.merges, counts.keeps, flops_schedule, cost_b, args.cost_batch)
        schedules["latency-b"], search["latency-b"] = other.schedule, other.summary()
        print(other.summary(), flush=True)
    schedules |= frontier(model, counts, cost, args, schedule_flops(model, flops_schedule).ratio, schedules)
    row: dict[str, Any] = {"checkpoint": path, "search": search, "schedules": {}}
    for name, schedule in schedules.items():
        model.ltmp_set_mode("off") if schedule is None else model.ltmp_set_mode("fixed", schedule)
        acc = evaluate(model, test, progress=False)[0]
        entry = {"test_accuracy": acc, "stderr": stderr(acc, len(test)), "images": len(test)}
        if schedule is not None:
            entry |= {
                "pairs": schedule.pairs(),
                "flops_ratio": schedule_flops(model, schedule).ratio,
                "predicted_ms": {
                    str(b): cost.schedule_ms(b, model.ltmp_num_tokens, *_mk(schedule)) for b in cost.batches
                },
            }
        row["schedules"][name] = entry
    row["latency"] = time_schedules(model, schedules, args.batches, args.rounds, args.threads, args.oracles)
    return row


def frontier(model: Any, counts: Any, cost, args, target: float, known: dict) -> dict[str, Schedule]:
    """The search's schedule at each ``--frontier`` floor with no accuracy guard: how much faster the cost
    model says the same FLOPs can run once the schedule may run further ahead of the thresholds, and (timed
    and tested beside the others) what that costs in accuracy. A floor of 0 is the fewest tokens any
    calibration image kept in each block."""
    found: dict[str, Schedule] = {}
    for floor in args.frontier:
        try:
            choice = latency_schedule(model, counts.merges, counts.keeps, cost, args.cost_batch, target, floor)
        except LTMPError as e:
            print(f"floor q{floor:g}: {e}", flush=True)
            continue
        if all(choice.schedule != s for s in [*known.values(), *found.values()]):
            found[f"q{floor:g}"] = choice.schedule
    return found


def _mk(schedule: Schedule):
    return schedule.merges, schedule.keeps


def random_model(name: str, cost, args) -> dict[str, Any]:
    """Latency only: the FLOPs target's schedule against the search from its own counts."""
    model = load(name)
    dims = model_dims(model)
    flops_schedule = schedule_for_flops(model, args.target)
    keeps = np.array([flops_schedule.keeps])
    merges = np.array([flops_schedule.merges])
    # No learned thresholds: the floor is the counts' own schedule less the spread the digits' thresholds
    # showed (--spread of the tokens entering each block), so the search has room to move.
    spread = np.stack([keeps[0] * (1 - args.spread), keeps[0] * (1 + args.spread)])
    choice = latency_schedule(
        model, np.repeat(merges, 2, 0), spread, cost, args.cost_batch, schedule_flops(model, flops_schedule).ratio, 0.0
    )
    schedules = {"unpatched": None, "flops": flops_schedule, "latency": choice.schedule}
    row: dict[str, Any] = {"model": name, "spread": args.spread, "schedules": {}}
    for key, schedule in schedules.items():
        if schedule is not None:
            row["schedules"][key] = {
                "pairs": schedule.pairs(),
                "flops_ratio": schedule_flops(model, schedule).ratio,
                "predicted_ms": {str(b): cost.schedule_ms(b, dims.num_tokens, *_mk(schedule)) for b in cost.batches},
            }
    print(json.dumps(row["schedules"]), flush=True)
    row["latency"] = time_schedules(model, schedules, args.batches, args.rounds, args.threads)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cost", required=True)
    p.add_argument("--cost-b", help="a second cost model: its latency-aware schedule is timed as latency-b")
    p.add_argument("--learned", nargs="*", default=[])
    p.add_argument("--model", help="a timm model name: latency only, random weights")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--spread", type=float, default=0.2)
    p.add_argument("--cost-batch", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument(
        "--frontier", type=float, nargs="*", default=[], help="floors to search at without the accuracy guard"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oracles", action="store_true", help="time each schedule's oracle too")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cost = read_cost_model(args.cost)
    cost_b = read_cost_model(args.cost_b) if args.cost_b else None
    doc = {"cost": args.cost, "load_start": os.getloadavg(), "floors": FLOORS, "args": vars(args), "runs": []}
    if args.model:
        doc["runs"].append(random_model(args.model, cost, args))
    for path in args.learned:
        doc["runs"].append(digits_seed(path, cost, args, cost_b))
        Path(args.json).write_text(json.dumps(doc, indent=1))
    doc["load_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(doc, indent=1))
    for run in doc["runs"]:
        for batch, rows in run["latency"].items():
            for clock in ("wall", "cpu"):
                shown = {
                    k: (round(v[clock]["p50_ms"], 3), round(v[clock]["ratio"], 3), round(v[clock]["ratio_of_min"], 3))
                    for k, v in rows.items()
                }
                print(batch, clock, shown)


if __name__ == "__main__":
    main()
