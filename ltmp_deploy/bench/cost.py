"""A measured cost model: what one block costs on a backend, by its token count, and what a
reducing block adds (fixed mode and threshold mode), at the batch sizes a deployment runs.

Each quantity is timed on a graph of one block of the model (its own weights), exported the way
the model is (TorchScript exporter, dynamic batch axis, fixed mode's static token counts) and run
through the runtime's one runner contract (:func:`ltmp_deploy.runtime.backends.open_runner` and
``infer``), as bench times whole models:

- ``block``: a fixed-mode block that neither merges nor prunes (attention with the size bias, then
  the MLP), at ``n`` tokens: what a block costs that only passes its tokens on;
- ``mlp``: the MLP half alone at ``n`` tokens, so that a reducing block's cost splits into its
  attention over the tokens entering and its MLP over the tokens leaving;
- ``fixed``: a fixed-mode block merging ``n // 4`` and pruning ``n // 8`` more: its extra over the
  passing block, after the MLP saved on the tokens it removed is given back;
- ``merge``: a fixed-mode block merging ``n // 4`` and pruning none, which needs no importance
  (:func:`ltmp_deploy.ltmp.reduce.merges_only`): its extra, likewise;
- ``threshold``: a threshold-mode block whose thresholds remove nothing: the extra of its decision.

Every probe takes the features (B, n, C) alone, the sizes computed inside from them (one patch and
up), and each graph's call overhead is measured by a graph that does nothing and subtracted.
Calls are interleaved over rounds (every graph ``repeats`` times per round) and each figure is the
fastest round's mean: on a shared machine other work only ever slows a call down, and a model of what
the graphs cost should not carry what the neighbours did while one of them ran. With one thread, ONNX
Runtime runs a graph on the calling thread, so the clock is that thread's CPU time: a call longer than
the scheduler's time slice is preempted on a busy machine however many rounds are taken (at batch 8 on
two shared cores the wall clock read 5x the CPU time), and the CPU time leaves the preemption out.
With more threads the clock is the wall clock.
"""

from __future__ import annotations

import copy
import datetime
import io
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ltmp_deploy.bench.machine import machine
from ltmp_deploy.bench.timers import ORT_PROVIDER, unavailable
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import model_dims
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.ltmp.reduce import Mode, Plan, Tokens
from ltmp_deploy.runtime.backends import close, infer, open_runner
from ltmp_deploy.runtime.cost_model import SCHEMA, check_cost_model

KINDS = ("block", "mlp", "fixed", "merge", "threshold")


def _reducing_counts(kind: str, n: int) -> tuple[int, int]:
    """(r, k) of a reducing probe on ``n`` tokens: ``fixed`` merges n // 4 and prunes n // 8 more,
    ``merge`` merges n // 4 and prunes none."""
    r = n // 4
    return r, n - r - (n // 8 if kind == "fixed" else 0)


class _Probe(nn.Module):
    """One block of the model, run as ``kind`` on ``n`` tokens (see the module's docstring)."""

    def __init__(self, block: nn.Module, kind: str, n: int, num_prefix: int, length: int) -> None:
        super().__init__()
        self.block, self.kind, self.num_prefix = block, kind, num_prefix
        if kind == "threshold":  # cosine similarity never exceeds 2, importance never falls below -1
            self.plan = Plan(Mode.THRESHOLD, 0, 0, torch.tensor([2.0]), torch.tensor([-1.0]), length=length)
        elif kind in ("fixed", "merge"):
            self.plan = Plan(Mode.FIXED, *_reducing_counts(kind, n))
        else:
            self.plan = Plan(Mode.FIXED, 0, n)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "empty":
            return x + 1.0
        if self.kind == "mlp":
            return x + self.block.ls2(self.block.mlp(self.block.norm2(x)))
        size = x[..., :1].abs() + 1.0
        tokens, _ = self.block(Tokens(x, size), self.plan, self.num_prefix, record=False)
        return tokens.x


def export_probe(block: nn.Module, kind: str, n: int, num_prefix: int, length: int, opset: int = 17) -> bytes:
    """The ONNX bytes of one probe (dynamic batch axis)."""
    probe = _Probe(block, kind, n, num_prefix, length).eval()
    example = torch.randn(2, n, block.norm1.normalized_shape[0])
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            probe,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def token_grid(num_tokens: int, step: int, smallest: int) -> list[int]:
    """Token counts from ``smallest`` to the model's count every ``step``, the full count included."""
    grid = list(range(smallest, num_tokens, step))
    return [*grid, num_tokens] if not grid or grid[-1] != num_tokens else grid


def measure_cost_model(
    model: LTMPVisionTransformer,
    *,
    backend: str = "onnxruntime-cpu",
    batches: Sequence[int] = (1, 8),
    threads: int = 1,
    step: int = 4,
    reduce_step: int = 16,
    rounds: int = 15,
    repeats: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every probe on ``backend`` at every batch size; the cost-model document."""
    why = unavailable(backend)
    if why is not None:
        raise LTMPError(f"cost model on {backend}: {why}")
    if backend not in ORT_PROVIDER:
        raise LTMPError(f"cost model on {backend}: only ONNX Runtime backends are timed so far")
    dims = model_dims(model)
    smallest = dims.num_prefix + 4
    grid = {"block": token_grid(dims.num_tokens, step, smallest), "mlp": token_grid(dims.num_tokens, step, smallest)}
    grid["fixed"] = grid["merge"] = grid["threshold"] = token_grid(dims.num_tokens, reduce_step, smallest + 4)
    block = copy.deepcopy(model.blocks[len(model.blocks) // 2]).float().eval()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per_batch = _time_probes(block, dims, grid, backend, batches, threads, rounds, repeats, progress)
    finally:
        torch.set_num_threads(torch_threads)  # the caller's, for whatever it runs next
    doc = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": str(getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__),
            "num_tokens": dims.num_tokens,
            "num_prefix": dims.num_prefix,
            "depth": dims.depth,
            "dim": dims.dim,
        },
        "backend": backend,
        "provider": ORT_PROVIDER[backend],
        "threads": threads,
        "rounds": rounds,
        "repeats": repeats,
        "statistic": "fastest round",
        "clock": "thread CPU time" if threads == 1 else "wall",
        "machine": machine(threads),
        "batches": per_batch,
    }
    return check_cost_model(doc, "the measured cost model")


def _time_probes(
    block: nn.Module,
    dims: Any,
    grid: dict[str, list[int]],
    backend: str,
    batches: Sequence[int],
    threads: int,
    rounds: int,
    repeats: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Every probe of ``grid`` exported and opened on ``backend``, then timed at every batch size."""
    with tempfile.TemporaryDirectory() as tmp:
        targets = {("empty", 0): _open(block, "empty", 4, dims, backend, threads, Path(tmp))}
        for kind in KINDS:
            for n in grid[kind]:
                targets[(kind, n)] = _open(block, kind, n, dims, backend, threads, Path(tmp))
        if progress:
            print(f"cost model: {len(targets)} graphs on {backend}, batches {list(batches)}, {threads} thread(s)")
        try:
            clock = clock_for(threads)
            return [_time_batch(targets, b, dims.dim, rounds, repeats, grid, clock) for b in batches]
        finally:
            for t in targets.values():
                close(t)


def _open(block: nn.Module, kind: str, n: int, dims: Any, backend: str, threads: int, folder: Path) -> Any:
    path = folder / f"{kind}-{n}.onnx"
    path.write_bytes(export_probe(block, kind, n, dims.num_prefix, dims.num_tokens))
    return open_runner(path, "onnxruntime", [ORT_PROVIDER[backend]], threads)


def clock_for(threads: int) -> Callable[[], float]:
    """The calling thread's CPU time with one thread (ONNX Runtime then runs on it), else the wall clock."""
    return time.thread_time if threads == 1 else time.perf_counter


def _time_batch(
    targets: dict[tuple[str, int], Any],
    batch: int,
    dim: int,
    rounds: int,
    repeats: int,
    grid: dict[str, list[int]],
    clock: Callable[[], float],
) -> dict[str, Any]:
    """Median milliseconds per probe at ``batch``, interleaved over rounds, less the empty graph's."""
    rng = np.random.default_rng(0)
    inputs = {key: rng.standard_normal((batch, max(key[1], 4), dim)).astype(np.float32) for key in targets}
    for key, target in targets.items():  # warm-up
        infer(target, inputs[key])
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in targets}
    for _ in range(rounds):
        for key, target in targets.items():
            start = clock()
            for _ in range(repeats):
                infer(target, inputs[key])
            samples[key].append((clock() - start) * 1e3 / repeats)
    ms = {key: min(v) for key, v in samples.items()}
    call = ms[("empty", 0)]
    net = {key: max(v - call, 0.0) for key, v in ms.items()}
    mlp = dict(zip(grid["mlp"], (net[("mlp", n)] for n in grid["mlp"])))
    block = dict(zip(grid["block"], (net[("block", n)] for n in grid["block"])))

    def at(table: dict[int, float], n: float) -> float:
        keys = sorted(table)
        return float(np.interp(n, keys, [table[k] for k in keys]))

    def extra(kind: str, n: int) -> float:  # the probe less the passing block, the MLP it saved given back
        k = _reducing_counts(kind, n)[1]
        return net[(kind, n)] - at(block, n) + at(mlp, n) - at(mlp, k)

    return {
        "batch": batch,
        "call_ms": call,
        "tokens": grid["block"],
        "block_ms": [block[n] for n in grid["block"]],
        "mlp_ms": [mlp[n] for n in grid["mlp"]],
        "reduce_tokens": grid["fixed"],
        "fixed_extra_ms": [extra("fixed", n) for n in grid["fixed"]],
        "merge_extra_ms": [extra("merge", n) for n in grid["merge"]],
        "threshold_extra_ms": [net[("threshold", n)] - at(block, n) for n in grid["threshold"]],
    }
