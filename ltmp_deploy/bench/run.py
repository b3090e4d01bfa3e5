"""``ltmp-deploy bench``: every variant of one model, on every backend here, over batch sizes.

Per backend and batch size, all variants are timed interleaved (A, B, C, A, B, C, ...) after a
warm-up, so drift and other processes slow every variant alike, and each variant's ratio to the
unpatched model and to its oracle is taken round by round (the paired ratio). The result is the
bench document of :mod:`ltmp_deploy.runtime.bench_results`; :func:`write_bench` writes it out.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ltmp_deploy.bench.config import BenchConfig
from ltmp_deploy.bench.machine import load_average, machine, usable_cores
from ltmp_deploy.bench.timers import (
    ONNX_BACKENDS,
    close_targets,
    open_targets,
    timed_calls,
    torch_device,
    unavailable,
)
from ltmp_deploy.bench.torch_paths import TorchPaths, paths, set_compile_limits
from ltmp_deploy.bench.variants import Variant, build_variants
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.export.reference import sample_images
from ltmp_deploy.ltmp.checkpoint import load
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.ltmp.device import AUTO, resolve_device
from ltmp_deploy.ltmp.flops import model_dims, unpatched_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.bench import interleaved, paired_samples
from ltmp_deploy.runtime.bench_results import SCHEMA, UNPATCHED, latency_stats
from ltmp_deploy.runtime.parity.compare import RANDOM_IMAGES, RANDOM_WARNING


def _model(config: BenchConfig) -> LTMPVisionTransformer:
    """The model to benchmark: what ``config.checkpoint`` names, by default the embedded base model."""
    if config.checkpoint is not None:
        return load(config.checkpoint, weights=config.weights)
    from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint

    return load(MODEL_NAME, weights=config.weights or default_base_checkpoint())


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Time every variant on every available backend and batch; return the bench document."""
    config.check()
    if config.device not in (None, AUTO):
        resolve_device(config.device)  # a device this machine lacks stops here, before any work
    threads = config.threads or usable_cores()
    skipped = [{"backend": b, "reason": r} for b in config.backends if (r := unavailable(b, config.device)) is not None]
    runnable = [b for b in config.backends if b not in {s["backend"] for s in skipped}]
    if not runnable:
        raise LTMPError("no backend can run here: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    model = _model(config).eval()
    if config.compile is not None:
        for line in set_compile_limits(64):  # every variant at a static batch, then a dynamic one
            print(line, file=sys.stderr)
    images, images_are = _images(model, config.data, max(config.batches))
    before = torch.get_num_threads()
    # Preparing is not timed, and threshold mode's bisection and counts run every timed image through the
    # model: every core for them, the configured threads for the timing.
    torch.set_num_threads(usable_cores())
    try:
        started = _now()
        host = machine(threads, _gpu_index(config))
        variants = build_variants(
            model,
            images,
            config.targets,
            config.threshold_target,
            config.from_checkpoint,
            config.merge_threshold,
            config.batches,
            config.tome,
        )
        with tempfile.TemporaryDirectory(prefix="ltmp-bench-") as tmp:
            workdir = Path(config.workdir or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            graphs = _export(model, variants, workdir, config) if set(runnable) & set(ONNX_BACKENDS) else {}
            torch.set_num_threads(threads)
            records = _time_all(model, variants, graphs, images, runnable, workdir, threads, config, skipped)
    finally:
        torch.set_num_threads(before)
    host["load_average_end"] = load_average()
    return {
        "schema": SCHEMA,
        "created": started,
        "command": config.command,
        "note": config.note,
        "model": _describe(model, config),
        "machine": host,
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(config).items()
            if k not in ("note", "command", "progress", "workdir")
        },
        "images": images_are,  # what was timed, and what threshold mode's FLOPs were measured on
        "variants": {v.name: v.to_dict() for v in variants},
        "skipped": skipped,
        "records": records,
    }


def _gpu_index(config: BenchConfig) -> int:
    """The GPU torch-cuda takes, described in the results (0 without CUDA or without torch-cuda)."""
    if "torch-cuda" not in config.backends or not torch.cuda.is_available():
        return 0
    on = torch_device("torch-cuda", config.device)
    return (on.index or 0) if on.type == "cuda" else 0


def _images(model: LTMPVisionTransformer, data: str | None, count: int) -> tuple[torch.Tensor, str]:
    """``count`` images to time and what they are: held-out images of ``data`` (repeated when it holds
    fewer); given no data, those of the folder the checkpoint learned on when it is still here, else
    the sample images (for a digits model the digits test split, else random images, said so)."""
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, held_out_source, sample_batch, takes_digits

    data, recorded, missing = held_out_source(model, data)
    where = " (where the checkpoint learned)" if recorded else ""
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
    if data is None or (data == EMBEDDED and takes_digits(model)):
        pictures, what = sample_images(model_metadata(model), count)
        if what == RANDOM_IMAGES:
            print(f"bench: timing {RANDOM_WARNING} on them (give --data FOLDER)", file=sys.stderr)
        return torch.from_numpy(pictures).float(), what
    held_out = calibration_split(data, model, "evaluation")
    drawn = sample_batch(held_out, min(count, len(held_out)))
    what = f"{len(drawn)} held-out images of {data}{where}"
    if where:
        print(f"bench: timing {what}", file=sys.stderr)
    return torch.from_numpy(drawn[np.arange(count) % len(drawn)]).float(), what


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _describe(model: LTMPVisionTransformer, config: BenchConfig) -> dict[str, Any]:
    arch = model.ltmp.architecture
    dims = model_dims(model)
    return {
        "name": arch.get("timm_model") or arch.get("timm_class"),
        "source": config.checkpoint or "embedded default",
        "weights": config.weights,
        "tokens": dims.num_tokens,
        "depth": dims.depth,
        "width": dims.dim,
        "input_size": list(model.patch_embed.img_size),
        "macs_unpatched": unpatched_flops(model).unpatched_total,
    }


def _export(
    model: LTMPVisionTransformer, variants: Sequence[Variant], workdir: Path, config: BenchConfig
) -> dict[str, Path]:
    """Every variant exported the same way (one opset, dynamic batch axis), validated on 2 images."""
    from ltmp_deploy.export.onnx_export import export_onnx

    graphs = {}
    for v in tqdm(variants, desc="exporting ONNX", unit="graph", disable=not config.progress):
        graphs[v.name] = export_onnx(v.apply(model), workdir / f"{v.name}.onnx", opset=config.opset, num_samples=2).path
    return graphs


def _time_all(
    model: LTMPVisionTransformer,
    variants: Sequence[Variant],
    graphs: dict[str, Path],
    images: torch.Tensor,
    backends: Sequence[str],
    workdir: Path,
    threads: int,
    config: BenchConfig,
    skipped: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    extra = {b: paths(b, config.compile, config.cuda_graph) for b in backends}
    total = sum(1 + len(extra[b]) for b in backends) * len(config.batches) * config.rounds
    bar = tqdm(total=total, desc="timing", unit="round", disable=not config.progress)
    records: list[dict[str, Any]] = []
    try:
        for backend in backends:
            targets, left_out = open_targets(
                backend, model, variants, graphs, workdir, config.batches, threads, config.dtype, config.device
            )
            skipped += [{"backend": backend, "variant": n, "reason": r} for n, r in left_out.items()]
            torch_paths = (
                TorchPaths(next(iter(targets.values())).runner.model, config.compile) if extra[backend] else None
            )
            try:
                for batch in sorted(config.batches):
                    x = np.ascontiguousarray(images[:batch].numpy())
                    here = [v for v in variants if v.timed_at(batch)]
                    on = {n: t for n, t in targets.items() if n in {v.name for v in here}}
                    for path in ["", *extra[backend]]:
                        bar.set_description(f"timing {backend}{path} batch {batch}")
                        calls = torch_paths.calls(path, here, x) if path else timed_calls(on, here, x)
                        samples = _timed(calls, batch, config, bar, torch_paths, path)
                        records += [_record(backend + path, batch, v, samples) for v in here if v.name in samples]
            finally:
                close_targets(targets)
            if torch_paths is not None:
                skipped += [
                    {"backend": backend + p, "variant": n, "reason": r} for (p, n), r in torch_paths.failed.items()
                ]
    finally:
        bar.close()
    return records


def _timed(
    calls: dict[str, Any], batch: int, config: BenchConfig, bar: tqdm, torch_paths: TorchPaths | None, path: str
) -> dict[str, list[float]]:
    """The samples of every call, timed interleaved; a compiled or graphed path that fails while
    timed is left out at this batch with the reason (eager failures are the run's errors)."""
    if not calls:
        bar.update(config.rounds)
        return {}
    try:
        timings = interleaved(calls, batch, rounds=config.rounds, warmup=config.warmup, on_round=bar.update)
    except Exception as exc:
        if not path or torch_paths is None:
            raise
        for name in calls:
            torch_paths.failed.setdefault((path, name), f"failed while timed at batch {batch}: {first_line(exc)}")
        return {}
    return {name: list(t.samples_ms) for name, t in timings.items()}


def _record(backend: str, batch: int, v: Variant, samples: dict[str, list[float]]) -> dict[str, Any]:
    flops = v.flops_at(batch)
    rec: dict[str, Any] = {
        "backend": backend,
        "batch": batch,
        "variant": v.name,
        "kind": v.kind,
        "label": v.label,
        "oracle": v.oracle_at(batch),
        "flops_ratio": flops[0],
        "flops_ratio_padded": flops[1],
        **latency_stats(samples[v.name], batch),
    }
    for ref, key in ((UNPATCHED, "vs_unpatched"), (v.oracle_at(batch), "vs_oracle")):
        ratio = paired_samples(samples[v.name], samples[ref]) if ref in samples else (None, None, None)
        rec[key], rec[f"{key}_q1"], rec[f"{key}_q3"] = ratio
    rec["samples_ms"] = samples[v.name]
    return rec
