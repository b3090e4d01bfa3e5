"""The trial's report (``ltmp-deploy trial`` and the demo), written at the end of ``run_trial``.

Accuracy, its sampling error and the tokens per block come from ``report.held_out.evaluate_variants``
on the held-out images (unless the trial passes the document it already measured); the latency
from ``run_bench`` on the calibrated checkpoint (ONNX Runtime on the CPU, batch 1 and 8: its
calibrated schedule, its oracle, ToMe at its FLOPs and its learned thresholds, timed on held-out
images); the token grids from ``pictures.token_grid`` on a few held-out images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
from torch.utils.data import Dataset

from ltmp_deploy.bench.run import BenchConfig, run_bench
from ltmp_deploy.bench.variants import CALIBRATED, LEARNED
from ltmp_deploy.bench.write import write_bench
from ltmp_deploy.report.accuracy import write_accuracy
from ltmp_deploy.report.document import ReportFiles, write_report
from ltmp_deploy.runtime.bench_results import FIXED, THRESHOLD, TOME, UNPATCHED, variant_name

# The trial's row names -> (kind, label) of the bench variant they correspond to.
TRIAL_ROWS = {
    "unpatched": (UNPATCHED, None),
    "ltmp-threshold": (THRESHOLD, LEARNED),
    "ltmp-fixed": (FIXED, CALIBRATED),
    "tome-fixed-r": (TOME, CALIBRATED),
}
HEADLINE = variant_name(FIXED, CALIBRATED)
GRID_IMAGES = 3


def _display(image: torch.Tensor, model: Any) -> np.ndarray:
    """A preprocessed (3, H, W) image back to (H, W, 3) uint8 with the model's mean and std."""
    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = (torch.tensor(cfg[k]).view(-1, 1, 1) for k in ("mean", "std"))
    return ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def trial_bench_config(
    checkpoint: str | os.PathLike,
    rounds: int,
    threads: int | None = None,
    progress: bool = True,
    *,
    data: str | None = None,
    command: str = "ltmp-deploy demo",
) -> BenchConfig:
    """The trial's latency run: its calibrated checkpoint on ONNX Runtime CPU at batch 1 and 8, with
    the oracle, ToMe at its FLOPs and its learned thresholds beside it, timed on held-out images of
    ``data``."""
    return BenchConfig(
        checkpoint=os.fspath(checkpoint),
        targets=(),
        threshold_target=None,
        from_checkpoint=True,
        batches=(1, 8),
        backends=("onnxruntime-cpu",),
        rounds=rounds,
        threads=threads,
        progress=progress,
        command=command,
        data=data,
    )


def write_trial_report(
    report: Any,
    bench: dict[str, Any] | None = None,
    *,
    accuracy: dict[str, Any] | None = None,
    data: str = "digits",
    held_out: Dataset | None = None,
    rounds: int = 20,
    grid_images: int = GRID_IMAGES,
    progress: bool = True,
) -> ReportFiles:
    """``report``: the trial's TrialReport (its ``files["fixed"]``, the calibrated checkpoint, is what
    is reported on); ``bench``: its latency run (default: a bench of that checkpoint, ``rounds``
    rounds); ``accuracy``: its accuracy document (default: measured here on ``held_out``, by default
    the held-out part of ``data``). Writes accuracy.json, bench/ and report/ into its folder."""
    from ltmp_deploy.data.datasets import calibration_split
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint
    from ltmp_deploy.report.held_out import evaluate_variants, split_name

    workdir = Path(report.workdir)
    model = load_checkpoint(report.files["fixed"])
    if held_out is None:
        held_out = calibration_split(data, model, "evaluation")
    if accuracy is None:
        accuracy = evaluate_variants(model, held_out, dataset=data, split=split_name(data, held_out), progress=progress)
    write_accuracy(workdir / "accuracy.json", accuracy)
    grids = token_grids(model, held_out, workdir, grid_images)

    bench = bench or run_bench(trial_bench_config(report.files["fixed"], rounds, progress=progress, data=data))
    write_bench(bench, workdir / "bench")
    headline = accuracy.get("headline") or HEADLINE
    files = write_report(workdir / "report", bench, accuracy, grids, variant=headline, backend="onnxruntime-cpu")
    print(f"\nreport: {files.html}")
    print("\n".join(files.headline.lines()[1:]))
    return files


def grid_indices(images: int, count: int) -> list[int]:
    """``count`` images spread evenly over a held-out set: image folders list one class after
    another, so the first few would all show one class."""
    if images < 1 or count < 1:
        return []
    return sorted({int(i) for i in np.linspace(0, images - 1, min(count, images)).round()})


def token_grids(model: Any, held_out: Dataset, workdir: Path, count: int = GRID_IMAGES) -> list[Path]:
    """Token grids of ``count`` held-out images spread over the set, as PNGs in ``workdir``."""
    from ltmp_deploy.pictures import token_grid

    grids = []
    for n, i in enumerate(grid_indices(len(held_out), count)):
        image = held_out[i][0]
        grids.append(token_grid(model, image, _display(image, model), workdir / f"tokens_{n}.png"))
    return grids
