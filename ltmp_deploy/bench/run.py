"""``ltmp-deploy bench``: every variant of one model, on every backend here, over batch sizes.

Per backend and batch size, all variants are timed interleaved (A, B, C, A, B, C, ...) after a
warm-up, so drift and other processes slow every variant alike, and each variant's ratio to the
unpatched model and to its oracle is taken round by round (the paired ratio). The result is the
bench document of :mod:`ltmp_deploy.runtime.bench_results`; :func:`write_bench` writes it out.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ltmp_deploy.bench.machine import load_average, machine, usable_cores
from ltmp_deploy.bench.timers import BACKENDS, ONNX_BACKENDS, open_timer, unavailable
from ltmp_deploy.bench.variants import Variant, build_variants
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.reference import sample_images
from ltmp_deploy.ltmp.checkpoint import load
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.ltmp.flops import image_flops, model_dims, padded_flops_ratio, unpatched_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.bench import interleaved, paired_samples
from ltmp_deploy.runtime.bench_results import SCHEMA, THRESHOLD, UNPATCHED, latency_stats


@dataclass
class BenchConfig:
    checkpoint: str | None = None  # default: the embedded base model
    weights: str | None = None
    targets: Sequence[float] = (0.9, 0.75, 0.5)
    threshold_target: float | None = 0.5
    from_checkpoint: bool = False
    batches: Sequence[int] = (1, 8, 32)
    backends: Sequence[str] = BACKENDS
    rounds: int = 20
    warmup: int = 2
    threads: int | None = None  # default: every core this process may use
    opset: int = 17  # one opset for every graph (threshold mode needs 17)
    merge_threshold: float = 0.8
    workdir: str | None = None  # where the graphs (and engines) go; default a temporary folder
    # The images timed (threshold mode's cost depends on them): held-out images of "digits" or an
    # image folder (data.datasets.calibration_split); default the export check's sample images.
    data: str | None = None
    note: str = ""
    command: str = ""
    progress: bool = True

    def check(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise LTMPError(f"--batch {list(self.batches)}: batch sizes must be at least 1")
        if self.rounds < 1 or self.warmup < 0:
            raise LTMPError(f"--rounds {self.rounds} / --warmup {self.warmup}: at least one round, no negative warm-up")
        if self.threads is not None and self.threads < 1:
            raise LTMPError(f"--threads {self.threads}: at least 1")
        for backend in self.backends:
            unavailable(backend)  # raises for an unknown name


def _model(config: BenchConfig) -> LTMPVisionTransformer:
    """The model to benchmark: what ``config.checkpoint`` names, by default the embedded base model."""
    if config.checkpoint is not None:
        return load(config.checkpoint, weights=config.weights)
    from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint

    return load(MODEL_NAME, weights=config.weights or default_base_checkpoint())


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Time every variant on every available backend and batch; return the bench document."""
    config.check()
    threads = config.threads or usable_cores()
    skipped = [{"backend": b, "reason": r} for b in config.backends if (r := unavailable(b)) is not None]
    runnable = [b for b in config.backends if b not in {s["backend"] for s in skipped}]
    if not runnable:
        raise LTMPError("no backend can run here: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    model = _model(config).eval()
    images = _images(model, config.data, max(config.batches))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = _now()
        host = machine(threads)
        variants = build_variants(
            model, images, config.targets, config.threshold_target, config.from_checkpoint, config.merge_threshold
        )
        with tempfile.TemporaryDirectory(prefix="ltmp-bench-") as tmp:
            workdir = Path(config.workdir or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            graphs = _export(model, variants, workdir, config) if set(runnable) & set(ONNX_BACKENDS) else {}
            flops = _batch_flops(model, variants, images, config.batches)
            records = _time_all(model, variants, graphs, images, flops, runnable, workdir, threads, config, skipped)
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
        "variants": {v.name: v.to_dict() for v in variants},
        "skipped": skipped,
        "records": records,
    }


def _images(model: LTMPVisionTransformer, data: str | None, count: int) -> torch.Tensor:
    """``count`` images to time: held-out images of ``data`` (repeated when it holds fewer), or the
    sample images (for a digits model the digits test split, else random images)."""
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, sample_batch, takes_digits

    if data is None or (data == EMBEDDED and takes_digits(model)):
        return torch.from_numpy(sample_images(model_metadata(model), count)[0]).float()
    held_out = calibration_split(data, model, "evaluation")
    drawn = sample_batch(held_out, min(count, len(held_out)))
    return torch.from_numpy(drawn[np.arange(count) % len(drawn)]).float()


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


def _batch_flops(
    model: LTMPVisionTransformer, variants: Sequence[Variant], images: torch.Tensor, batches: Sequence[int]
) -> dict[tuple[str, int], tuple[float, float]]:
    """(block FLOPs kept per image, FLOPs a padded batch computes) of each variant at each batch:
    threshold mode measured on the very images timed, static schedules as built."""
    out = {}
    for v in variants:
        for b in batches:
            if v.kind != THRESHOLD:
                out[v.name, b] = (v.flops_ratio, v.flops_ratio)
                continue
            with torch.no_grad():
                decisions = v.apply(model).forward_ltmp(images[:b]).decisions
            ratio = float(np.mean([r.ratio for r in image_flops(model, decisions)]))
            out[v.name, b] = (ratio, padded_flops_ratio(model, decisions))
    return out


def _time_all(
    model: LTMPVisionTransformer,
    variants: Sequence[Variant],
    graphs: dict[str, Path],
    images: torch.Tensor,
    flops: dict[tuple[str, int], tuple[float, float]],
    backends: Sequence[str],
    workdir: Path,
    threads: int,
    config: BenchConfig,
    skipped: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    total = len(backends) * len(config.batches) * config.rounds
    bar = tqdm(total=total, desc="timing", unit="round", disable=not config.progress)
    records: list[dict[str, Any]] = []
    try:
        for backend in backends:
            timer = open_timer(backend, model, variants, graphs, workdir, config.batches, threads)
            skipped += [{"backend": backend, "variant": n, "reason": r} for n, r in timer.skipped.items()]
            try:
                for batch in sorted(config.batches):
                    bar.set_description(f"timing {backend} batch {batch}")
                    x = np.ascontiguousarray(images[:batch].numpy())
                    timings = interleaved(
                        timer.calls(x), batch, rounds=config.rounds, warmup=config.warmup, on_round=bar.update
                    )
                    samples = {name: list(t.samples_ms) for name, t in timings.items()}
                    records += [
                        _record(backend, batch, v, samples, flops[v.name, batch]) for v in variants if v.name in samples
                    ]
            finally:
                timer.close()
    finally:
        bar.close()
    return records


def _record(
    backend: str, batch: int, v: Variant, samples: dict[str, list[float]], flops: tuple[float, float]
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "backend": backend,
        "batch": batch,
        "variant": v.name,
        "kind": v.kind,
        "label": v.label,
        "oracle": v.oracle,
        "flops_ratio": flops[0],
        "flops_ratio_padded": flops[1],
        **latency_stats(samples[v.name], batch),
    }
    for ref, key in ((UNPATCHED, "vs_unpatched"), (v.oracle, "vs_oracle")):
        ratio = paired_samples(samples[v.name], samples[ref]) if ref in samples else (None, None, None)
        rec[key], rec[f"{key}_q1"], rec[f"{key}_q3"] = ratio
    rec["samples_ms"] = samples[v.name]
    return rec
