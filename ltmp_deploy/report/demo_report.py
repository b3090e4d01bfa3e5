"""The demo's report, written at the end of ``run_demo`` from what the demo measured and made.

Accuracy and FLOPs come from the demo's own rows; tokens per block from its calibrated checkpoint
in threshold mode on the test split; the latency from ``run_bench`` on that checkpoint (ONNX
Runtime on the CPU, batch 1 and 8: its calibrated schedule, its oracle, ToMe at its FLOPs, and
its learned thresholds); the token grids from ``report.grids.token_grid``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch

from ltmp_deploy.bench.run import BenchConfig, run_bench
from ltmp_deploy.bench.variants import CALIBRATED, LEARNED
from ltmp_deploy.bench.write import write_bench
from ltmp_deploy.report.accuracy import accuracy_document, tokens_summary, variant_entry, write_accuracy
from ltmp_deploy.report.document import ReportFiles, write_report
from ltmp_deploy.runtime.bench_results import FIXED, THRESHOLD, TOME, UNPATCHED, variant_name

# The demo's row names -> (kind, label) of the bench variant they correspond to.
DEMO_ROWS = {
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


def demo_bench_config(
    checkpoint: str | os.PathLike, rounds: int, threads: int | None = None, progress: bool = True
) -> BenchConfig:
    """The demo's latency run: its calibrated checkpoint on ONNX Runtime CPU at batch 1 and 8, with
    the oracle, ToMe at its FLOPs and its learned thresholds beside it."""
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
        command="ltmp-deploy demo",
    )


def write_demo_report(
    report: Any,
    bench: dict[str, Any] | None = None,
    *,
    data: str = "digits",
    rounds: int = 20,
    seed: int | None = 0,
    progress: bool = True,
) -> ReportFiles:
    """``report``: the demo's DemoReport; ``bench``: its latency run (default: a bench of its calibrated
    checkpoint on ONNX Runtime CPU at batch 1 and 8, ``rounds`` rounds). Writes accuracy.json, bench/
    and report/ into its folder."""
    from ltmp_deploy.data.datasets import dataset_for
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint

    workdir = Path(report.workdir)
    model = load_checkpoint(report.files["fixed"])
    test = dataset_for(data, model, "test")
    acc = _accuracy(report, model, test, data, seed)
    write_accuracy(workdir / "accuracy.json", acc)
    grids = _token_grids(model, test, workdir)

    bench = bench or run_bench(demo_bench_config(report.files["fixed"], rounds, progress=progress))
    write_bench(bench, workdir / "bench")
    files = write_report(workdir / "report", bench, acc, grids, variant=HEADLINE, backend="onnxruntime-cpu")
    print(f"\nreport: {files.html}")
    print("\n".join(files.headline.lines()[1:]))
    return files


def _accuracy(report: Any, model: Any, test: Any, data: str, seed: int | None) -> dict[str, Any]:
    """The accuracy document of the demo's rows, with the tokens per block of both LTMP modes on ``test``."""
    from ltmp_deploy.calibration.evaluate import evaluate

    schedule = model.ltmp.schedule
    keeps = evaluate(model.ltmp_set_mode("threshold"), test)[2].keeps
    fixed = np.tile(np.asarray(schedule.keeps), (len(test), 1))
    tokens = {
        variant_name(THRESHOLD, LEARNED): tokens_summary(keeps),
        variant_name(FIXED, CALIBRATED): tokens_summary(fixed),
    }
    rows = [
        variant_entry(*DEMO_ROWS[name], [{"seed": seed, "accuracy": row["accuracy"], "flops_ratio": row["flops"]}])
        for name, row in report.rows.items()
        if name in DEMO_ROWS
    ]
    arch = model.ltmp.architecture
    return accuracy_document(
        arch.get("timm_model") or str(arch.get("timm_class")),
        {"name": data, "split": "test", "images": len(test)},
        rows,
        tokens=model.ltmp_num_tokens,
        tokens_per_block=tokens,
        headline=HEADLINE,
    )


def _token_grids(model: Any, test: Any, workdir: Path) -> list[Path]:
    """Token grids of the first test images, as PNGs in ``workdir``."""
    from ltmp_deploy.report.grids import token_grid

    grids = []
    for i in range(min(GRID_IMAGES, len(test))):
        image = test[i][0]
        grids.append(token_grid(model, image, _display(image, model), workdir / f"tokens_{i}.png"))
    return grids
