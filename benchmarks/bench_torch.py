"""PyTorch (eager, optionally torch.compile) on CPU or CUDA: LTMP fixed and threshold mode against
the unpatched model and the oracle, timed interleaved.

For every model, dtype and batch, four variants of the same patched model (random weights) are
timed interleaved (A, B, C, D, A, B, ...), so drift hits every variant alike:

- ``unpatched``: mode off, timm's own blocks;
- ``oracle``: the same ViT whose blocks simply keep the first k_l tokens after attention (no
  reduction operations at all). No merge/prune implementation can beat it, so the gap between
  fixed mode and the oracle is the overhead of the reduction;
- ``ltmp-fixed``: fixed mode with ``schedule_for_flops(model, --target)`` (the oracle's schedule);
- ``ltmp-threshold``: threshold mode, with thresholds bisected (``thresholds_for_flops``) so
  that it keeps about ``--target`` of the block FLOPs on 8 sample images, on the same device and
  dtype as the timing. A batch pads to its largest per-image counts, so the
  FLOPs it really spends are printed too ("padded").

The FLOPs each variant keeps (block MACs over the unpatched block MACs) are printed above each
table; the table gives median and p90 latency, images/s and the ratio to unpatched, oracle and
ltmp-fixed. On CUDA every timed call ends in ``torch.cuda.synchronize()``; each variant is warmed
up first; everything runs under ``torch.inference_mode()``. With ``--compile``, torch.compile'd
copies of every variant are timed in the same interleaved rounds and reported in a second table
against the compiled baselines (the first batch compiles static, the second recompiles with a
dynamic batch that later batches share; threshold mode may recompile more, its token counts vary;
a variant that fails to compile is reported in one line and left out). With ``--cuda-graph``
(CUDA only), every variant is also captured once in a CUDA graph and replayed, which removes the
per-op Python and launch cost; fixed mode captures (static shapes), threshold mode cannot (its
padded length is read back to the host) and says so. A batch
that runs out of GPU memory is reported in one line and skipped. ``--json`` writes every result
(one record per model/dtype/batch/variant) atomically, after each batch, so a run cut short
keeps what it measured. Prints measured numbers from this one run; nothing here is asserted.

CPU (the defaults: deit_small, batch 8, fp32):

    python benchmarks/bench_torch.py --model deit_small_patch16_224 --batch 8 --target 0.5
    python benchmarks/bench_torch.py --model vit_tiny_patch16_224 --batch 1 8 --profile

GPU (torch.compile takes minutes per model and dtype, as each of the 4 variants compiles at
least twice, so give it fewer configurations):

    python benchmarks/bench_torch.py --device cuda --model deit_small_patch16_224 vit_base_patch16_224 \\
        --dtype fp32 fp16 --batch 1 8 64 256 --rounds 30 --cuda-graph --json bench_torch_h200.json
    python benchmarks/bench_torch.py --device cuda --model deit_small_patch16_224 --dtype fp16 \\
        --batch 1 64 --rounds 30 --compile --json bench_torch_h200_compile.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch

from ltmp_deploy.calibration.thresholds import thresholds_for_flops
from ltmp_deploy.errors import first_line
from ltmp_deploy.files import ensure_writable, write_text_atomic
from ltmp_deploy.ltmp.flops import image_flops, padded_flops_ratio, schedule_flops, schedule_for_flops
from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.runtime.bench import Timing, interleaved, table

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VARIANTS = {"unpatched": "off", "oracle": "oracle", "ltmp-fixed": "fixed", "ltmp-threshold": "threshold"}
BASELINES = ("unpatched", "oracle", "ltmp-fixed")
COMPILED = "+compile"
GRAPHED = "+graph"
BACKENDS = {COMPILED: "torch.compile", GRAPHED: "CUDA graph"}  # suffix of a variant's name -> what runs it


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu=torch.cuda.get_device_name(device),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        env.update(threads=threads, cpu=platform.processor() or platform.machine())
    return env


def timed_call(
    model: Any, fn: Callable[[torch.Tensor], object], mode: str, schedule: Any, x: torch.Tensor, sync: bool
) -> Callable[[], None]:
    """A zero-argument call for ``interleaved``: switch the mode (already validated), run, and on
    CUDA wait for the GPU, so the clock covers the work and not just the launches."""

    def call() -> None:
        model.ltmp.mode, model.ltmp.schedule = mode, schedule
        fn(x)
        if sync:
            torch.cuda.synchronize()

    return call


def graphed_call(model: Any, mode: str, schedule: Any, x: torch.Tensor) -> Callable[[], None]:
    """The variant captured once in a CUDA graph and replayed: no Python and no kernel launches
    per call, which is how a fixed-shape model is served from PyTorch when launches dominate.
    Capture fails for anything that reads a GPU value back on the host (threshold mode does)."""
    model.ltmp.mode, model.ltmp.schedule = mode, schedule
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(static_x)

    def call() -> None:
        graph.replay()
        torch.cuda.synchronize()

    return call


def bench_batch(
    model: Any,
    compiled: Callable | None,
    schedule: Any,
    flops: dict[str, float],
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    note: Callable[[str], None],
    compile_failed: set[str],
) -> tuple[dict[str, Timing], dict[str, float]]:
    """Time every variant (and compiled copies) at one batch; returns the timings and the FLOPs
    ratio of each variant at this batch. Variants in ``compile_failed`` are not compiled again;
    a variant whose compile fails here is added to it."""
    size = tuple(model.patch_embed.img_size)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    sync = device.type == "cuda"
    flops = {**flops, **threshold_flops(model, x, batch)}

    calls = {name: timed_call(model, model, mode, schedule, x, sync) for name, mode in VARIANTS.items()}
    if compiled is not None:
        calls.update(compiled_calls(model, compiled, schedule, x, sync, note, compile_failed))
    if args.cuda_graph:
        calls.update(graphed_calls(model, schedule, x, note))
    return time_calls(calls, batch, args, note), flops


def threshold_flops(model: Any, x: torch.Tensor, batch: int) -> dict[str, float]:
    """The block FLOPs threshold mode keeps on ``x``: per image, and as the padded batch spends them."""
    model.ltmp_set_mode("threshold")
    decisions = model.forward_ltmp(x).decisions
    return {
        "ltmp-threshold": sum(r.ratio for r in image_flops(model, decisions)) / batch,
        "ltmp-threshold (padded)": padded_flops_ratio(model, decisions),
    }


def compiled_calls(
    model: Any,
    compiled: Callable,
    schedule: Any,
    x: torch.Tensor,
    sync: bool,
    note: Callable[[str], None],
    compile_failed: set[str],
) -> dict[str, Callable[[], None]]:
    """The torch.compile'd call of every variant, compiled here (once per batch shape) so that the
    timed rounds never compile; a variant that fails to compile is noted, added to ``compile_failed``
    and left out."""
    batch = x.shape[0]
    calls = {}
    for name, mode in VARIANTS.items():
        if name in compile_failed:
            continue
        call = timed_call(model, compiled, mode, schedule, x, sync)
        start = time.perf_counter()
        try:
            call()  # compiles (or recompiles for this batch) here, not in the timed rounds
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # one variant failing to compile never stops the run
            first = first_line(exc)
            note(
                f"torch.compile failed for {name} at batch {batch} (not tried again for this model and dtype): "
                f"{type(exc).__name__}: {first}"[:300]
            )
            compile_failed.add(name)
            continue
        print(f"  compiled {name} at batch {batch} in {time.perf_counter() - start:.1f} s", flush=True)
        calls[name + COMPILED] = call
    return calls


def graphed_calls(
    model: Any, schedule: Any, x: torch.Tensor, note: Callable[[str], None]
) -> dict[str, Callable[[], None]]:
    """The CUDA-graph replay of every variant that can be captured; the others are noted."""
    calls = {}
    for name, mode in VARIANTS.items():
        try:
            calls[name + GRAPHED] = graphed_call(model, mode, schedule, x)
        except Exception as exc:  # threshold mode cannot be captured: its token counts are read back
            first = first_line(exc)
            note(f"CUDA graph capture failed for {name} at batch {x.shape[0]}: {type(exc).__name__}: {first}"[:300])
    return calls


def time_calls(
    calls: dict[str, Callable[[], None]], batch: int, args: argparse.Namespace, note: Callable[[str], None]
) -> dict[str, Timing]:
    """All ``calls`` timed interleaved; if a compiled one fails while timed, the eager ones again alone."""
    try:
        return interleaved(calls, batch, rounds=args.rounds, warmup=args.warmup)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if not any(k.endswith(COMPILED) for k in calls):
            raise
        note(f"a compiled variant failed while timed at batch {batch} ({type(exc).__name__}); timing eager only")
        return interleaved(
            {k: v for k, v in calls.items() if not k.endswith(COMPILED)}, batch, rounds=args.rounds, warmup=args.warmup
        )


def records_for(timings: dict[str, Timing], flops: dict[str, float], base: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, t in timings.items():
        suffix = next((sfx for sfx in BACKENDS if name.endswith(sfx)), "")
        variant, compiled = name[: len(name) - len(suffix)], suffix == COMPILED
        rec = {
            **base,
            "variant": variant,
            "compiled": compiled,
            "backend": BACKENDS.get(suffix, "eager"),
            "median_ms": t.median_ms,
            "p90_ms": t.p90_ms,
            "img_per_s": t.throughput,
            "runs": t.runs,
            "flops_ratio": flops[variant],
        }
        if variant == "ltmp-threshold":
            rec["flops_ratio_padded"] = flops["ltmp-threshold (padded)"]
        for b in BASELINES:  # compiled (graphed) variants against the compiled (graphed) baselines
            ref = timings.get(b + suffix)
            rec[f"vs_{b}"] = t.median_ms / ref.median_ms if ref is not None else None
        if suffix:
            rec["vs_eager"] = t.median_ms / timings[variant].median_ms
        out.append(rec)
    return out


def profile(model: Any, schedule: Any, batch: int, device: torch.device, dtype: torch.dtype) -> None:
    """Where fixed mode spends its time (one call, after a warm-up)."""
    size = tuple(model.patch_embed.img_size)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    model.ltmp_set_mode("fixed", schedule)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    model(x)
    with torch.profiler.profile(activities=activities) as prof:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    sort = "self_cpu_time_total"
    if device.type == "cuda":  # renamed in torch 2.4
        sort = (
            "self_device_time_total"
            if events and hasattr(events[0], "self_device_time_total")
            else "self_cuda_time_total"
        )
    print(events.table(sort_by=sort, row_limit=15))


# Dynamo's recompile settings have no public API. The limit was called cache_size_limit before
# torch 2.6 and recompile_limit since; some builds (seen in a 2.14.1 wheel) do not expose it at all,
# and reading a missing one raises AttributeError. Each is set only where this torch has it.
_RECOMPILE_LIMIT_NAMES = ("recompile_limit", "cache_size_limit")
_FAIL_ON_LIMIT_NAMES = ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")


def set_compile_limits(limit: int) -> list[str]:
    """Allow ``limit`` recompiles per model and fail rather than silently run eager past it.

    Returns notes for the settings this torch does not have, so a run says what it could not set.
    """
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    notes = []
    for names, value, why in (
        (_RECOMPILE_LIMIT_NAMES, limit, "the default recompile limit applies"),
        (_FAIL_ON_LIMIT_NAMES, True, "a variant past the limit may run eager under its compiled name"),
    ):
        name = next((n for n in names if config is not None and hasattr(config, n)), None)
        if name is None:
            notes.append(f"note: torch {torch.__version__} has no dynamo setting {names[0]}: {why}")
        else:
            setattr(config, name, value)
    return notes


def main(argv: list[str] | None = None) -> None:
    args, device = setup(argv)
    t0 = time.perf_counter()
    env = environment(device, args.threads)
    print(", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    log = RunLog(env, args)
    for name in args.model:
        for dtype_name in args.dtype:
            bench_model(name, dtype_name, args, device, log, t0)
    log.save()
    if args.json is not None:
        print(f"\nwrote {args.json} ({len(log.results['records'])} records)")
    print(f"done in {time.perf_counter() - t0:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", nargs="+", default=["deit_small_patch16_224"], help="timm model names (random weights)"
    )
    parser.add_argument("--batch", nargs="+", type=int, default=[8])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype", nargs="+", choices=tuple(DTYPES), default=["fp32"], help="model and input converted with .to(dtype)"
    )
    parser.add_argument("--target", type=float, default=0.5, help="fraction of block FLOPs kept")
    parser.add_argument("--merge-threshold", type=float, default=0.8, help="threshold mode's merge threshold")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--warmup", type=int, help="untimed calls per variant before timing (default: 2 on CPU, 10 on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd copies of every variant")
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time every variant captured in a CUDA graph (static shapes only: fixed mode, not threshold mode)",
    )
    parser.add_argument("--profile", action="store_true", help="also print where fixed mode spends its time")
    parser.add_argument("--json", type=Path, help="write every result here (atomically, after each batch)")
    return parser


def setup(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """The command line, checked before anything is timed, and the global settings it asks for."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.json is not None:
        ensure_writable(args.json)  # fail now, not after the timing
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.cuda_graph and device.type != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    if args.warmup is None:
        args.warmup = 10 if device.type == "cuda" else 2
    if args.compile:
        for line in set_compile_limits(64):  # 4 modes x (static batch 1 + dynamic batch) per model
            print(line, flush=True)
    return args, device


class RunLog:
    """What the run measured, as ``--json`` holds it: rewritten whole after every batch, so a run cut
    short keeps what it measured."""

    def __init__(self, env: dict[str, Any], args: argparse.Namespace) -> None:
        self.path: Path | None = args.json
        self.results: dict[str, Any] = {
            "environment": env,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "models": {},
            "records": [],
            "notes": [],
        }

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.results["notes"].append(line)

    def save(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(self.results, indent=1) + "\n")


def bench_model(
    name: str, dtype_name: str, args: argparse.Namespace, device: torch.device, log: RunLog, t0: float
) -> None:
    """Every batch of one model in one dtype, on one set of random weights."""
    dtype = DTYPES[dtype_name]
    model, schedule, flops = prepare_model(name, dtype_name, args, device, log)
    compiled, compile_failed = None, set()
    if args.compile:
        torch.compiler.reset()
        compiled = torch.compile(model)

    for batch in args.batch:
        base = {"model": name, "dtype": dtype_name, "device": str(device), "batch": batch}
        try:
            with torch.inference_mode():
                timings, batch_flops = bench_batch(
                    model, compiled, schedule, flops, batch, args, device, dtype, log.note, compile_failed
                )
        except torch.cuda.OutOfMemoryError:
            log.note(f"{name} {dtype_name} batch {batch}: out of GPU memory, skipped")
            timings = None
        if timings is None:
            gc.collect()  # the traceback is gone now: its tensors can be freed
            torch.cuda.empty_cache()
            continue
        print_batch(f"{name}, {dtype_name}, batch {batch}", timings, batch_flops, t0)
        log.results["records"].extend(records_for(timings, batch_flops, base))
        log.save()
        if args.profile:
            with torch.inference_mode():
                profile(model, schedule, batch, device, dtype)
    del model, compiled
    if device.type == "cuda":
        torch.cuda.empty_cache()


def prepare_model(
    name: str, dtype_name: str, args: argparse.Namespace, device: torch.device, log: RunLog
) -> tuple[Any, Any, dict[str, float]]:
    """The patched model with its fixed schedule and bisected thresholds, logged; returns it, the
    schedule and the FLOPs ratio of every variant that does not depend on the batch."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)  # the same random weights for every dtype
    model = apply_patch(timm.create_model(name, pretrained=False).eval()).to(device, dtype)
    schedule = schedule_for_flops(model, args.target)
    fixed = schedule_flops(model, schedule)
    size = tuple(model.patch_embed.img_size)
    images = torch.randn(8, 3, *size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        start = time.perf_counter()
        thr_ratio = thresholds_for_flops(model, images, args.target, args.merge_threshold)
        bisect_s = time.perf_counter() - start
    del images
    merge, prune = model.ltmp_thresholds()
    flops = {
        "unpatched": 1.0,
        "oracle": schedule_flops(model, schedule, reduce=False).ratio,
        "ltmp-fixed": fixed.ratio,
    }
    log.results["models"][f"{name}/{dtype_name}"] = {
        "schedule": schedule.pairs(),
        "fixed_flops": fixed.to_dict(),
        "threshold_flops_ratio_8_images": thr_ratio,
        "merge_thresholds": merge,
        "prune_thresholds": prune,
    }
    print(f"\n=== {name}, {dtype_name}, {device}: schedule (r, k) per block {schedule.pairs()}", flush=True)
    print(
        f"block FLOPs kept: fixed/oracle {fixed.ratio:.3f} (reduction matmuls add "
        f"{fixed.reduction / fixed.unpatched_blocks:.4f}); "
        f"threshold {thr_ratio:.3f} on 8 images (bisected in {bisect_s:.1f} s)",
        flush=True,
    )
    return model, schedule, flops


def print_batch(title: str, timings: dict[str, Timing], flops: dict[str, float], t0: float) -> None:
    """One batch's tables: eager, then each other backend against its own baselines."""
    kept = ", ".join(f"{k} {v:.3f}" for k, v in flops.items())
    print(f"\n{title} ({time.perf_counter() - t0:.0f} s into the run): block FLOPs kept: {kept}")
    print(
        table(
            {k: v for k, v in timings.items() if not any(k.endswith(sfx) for sfx in BACKENDS)},
            baselines=BASELINES,
        )
    )
    for sfx, backend in BACKENDS.items():
        comp = {k[: -len(sfx)]: replace(v, name=k[: -len(sfx)]) for k, v in timings.items() if k.endswith(sfx)}
        if comp:
            print(f"{backend}, against the same baselines under {backend}:")
            print(table(comp, baselines=BASELINES))
            print(
                f"{backend} / eager median: "
                + ", ".join(f"{k} {v.median_ms / timings[k].median_ms:.3f}" for k, v in comp.items())
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
