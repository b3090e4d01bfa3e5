"""The whole job, end to end, on the embedded default: what ``ltmp-deploy demo`` runs.

base ViT (trained once on the digits set, cached) -> LTMP patch -> learned thresholds ->
calibrated fixed schedule (and the ToMe baseline at the same FLOPs) -> ONNX in both modes,
validated against PyTorch -> TensorRT parser check per target -> ONNX Runtime latency, all
variants interleaved in one run. Every artefact lands in one folder with a JSON report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import write_text_atomic

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
    from ltmp_deploy.ltmp.schedule import Schedule

DEMO_TARGET = 0.5
# The paper trains one epoch on ImageNet (10k steps); the digits train split is 9 steps an
# epoch, so the demo takes more epochs: enough of them to reach each FLOPs target of
# benchmarks/accuracy_table.py from learning's automatic start (the learning rates are LearnConfig's).
DEMO_EPOCHS = 8
# One thread times what the graphs cost, not how a second core that other work may hold splits them:
# on a shared machine that is the steady measurement (``--threads`` times more).
DEMO_THREADS = 1
DEMO_ROUNDS = 20
DEMO_STATISTIC = "mean"  # of threshold mode's per-image counts, for the fixed schedule


@dataclass
class DemoReport:
    workdir: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # accuracy and FLOPs per variant
    files: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    trt: dict[str, dict[str, bool]] = field(default_factory=dict)
    latency: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # batch -> variant -> p50, ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "files": self.files,
            "validation": self.validation,
            "trt": self.trt,
            "latency_ms": self.latency,
        }


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(
    workdir: str | os.PathLike = "ltmp-demo",
    *,
    target: float = DEMO_TARGET,
    epochs: int = DEMO_EPOCHS,
    rounds: int = DEMO_ROUNDS,
    threads: int | None = DEMO_THREADS,
    train_images: int | None = None,
) -> DemoReport:
    """The whole job. ``threads``: CPU threads for the latency step (None: every usable core);
    ``train_images``: learn on only the first that many train images (a smoke run)."""
    import torch

    _check_options(target, epochs, rounds, threads)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(workdir)
    torch.manual_seed(0)

    model, train, val, test = _base_model(report)
    if train_images is not None:
        train = torch.utils.data.Subset(train, range(min(train_images, len(train))))
    _learn(model, train, report, target, epochs)
    schedule = _calibrate(model, val, test, report)
    _export(model, schedule, report)
    _check_tensorrt(report)

    _say("6/6 ONNX Runtime latency on this CPU: the variants interleaved, ratios per round, one run")
    bench = _latency(report, rounds, threads)

    _print_summary(report)
    report.files["report"] = str(_write_report(report, bench))
    write_text_atomic(workdir / "report.json", json.dumps(report.to_dict(), indent=2, default=str))
    print(f"\nartefacts and report.json in {workdir}/")
    return report


def _base_model(report: DemoReport) -> tuple[LTMPVisionTransformer, Dataset, Dataset, Dataset]:
    """Step 1: the cached base ViT, unpatched, scored on the test split; returns it and the three splits."""
    from ltmp_deploy.calibration.evaluate import evaluate
    from ltmp_deploy.data.datasets import dataset_for
    from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
    from ltmp_deploy.ltmp.checkpoint import create_model

    _say("1/6 base model: a ViT trained on scikit-learn's digits (cached after the first run)")
    base = default_base_checkpoint()
    model = create_model(MODEL_NAME, weights=base)
    train, val, test = (dataset_for("digits", model, s) for s in ("train", "val", "test"))
    model.ltmp_set_mode("off")
    acc, _, _ = evaluate(model, test)
    report.rows["unpatched"] = {"accuracy": acc, "flops": 1.0}
    print(f"{base}: test accuracy {acc:.4f} on {len(test)} images")
    return model, train, val, test


def _learn(model: LTMPVisionTransformer, train: Dataset, report: DemoReport, target: float, epochs: int) -> None:
    """Step 2: learn the thresholds in place, saving the patched and the learned checkpoint."""
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    workdir = report.workdir
    _say(f"2/6 learn the thresholds: target {target} of the block FLOPs, {epochs} epochs")
    model.ltmp_set_mode("threshold")
    save_checkpoint(model, workdir / "patched.safetensors")
    cfg = LearnConfig(target=target, epochs=epochs)
    learn_thresholds(model, train, workdir / "learned.safetensors", cfg, progress=True)
    report.files["learned"] = str(workdir / "learned.safetensors")


def _calibrate(model: LTMPVisionTransformer, val: Dataset, test: Dataset, report: DemoReport) -> Schedule:
    """Step 3: the fixed schedule, and the ToMe baseline at its FLOPs; leaves the model in fixed mode
    and returns the schedule."""
    from ltmp_deploy.calibration.calibrate import calibrate, tome_schedule
    from ltmp_deploy.calibration.evaluate import evaluate
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint
    from ltmp_deploy.ltmp.flops import schedule_flops

    workdir = report.workdir
    _say("3/6 calibrate a fixed schedule from threshold mode's counts on the validation split")
    cal = calibrate(model, val, statistic=DEMO_STATISTIC, evaluation=test, progress=False)
    print(cal.summary())
    report.rows["ltmp-threshold"] = {"accuracy": cal.threshold_accuracy, "flops": cal.threshold_flops}
    report.rows["ltmp-fixed"] = {"accuracy": cal.fixed_accuracy, "flops": cal.fixed_flops}
    save_checkpoint(model, workdir / "fixed.safetensors")
    report.files["fixed"] = str(workdir / "fixed.safetensors")
    schedule = model.ltmp.schedule
    tome = tome_schedule(model, cal.fixed_flops)
    model.ltmp_set_mode("fixed", tome)
    tome_acc, _, _ = evaluate(model, test)
    report.rows["tome-fixed-r"] = {"accuracy": tome_acc, "flops": schedule_flops(model, tome).ratio}
    model.ltmp_set_mode("fixed", schedule)
    print(
        f"ToMe (fixed r={tome.merges[0]}, merging only): accuracy {tome_acc:.4f}, block FLOPs kept "
        f"{report.rows['tome-fixed-r']['flops']:.3f}"
    )
    return schedule


def _export(model: LTMPVisionTransformer, schedule: Schedule, report: DemoReport) -> None:
    """Step 4: both modes and the unpatched baseline to ONNX, each validated against PyTorch."""
    from ltmp_deploy.export.onnx_export import export_onnx

    workdir = report.workdir
    _say("4/6 export to ONNX and validate against PyTorch (ONNX Runtime, sample digits)")
    for mode in ("fixed", "threshold"):
        model.ltmp_set_mode(mode, schedule if mode == "fixed" else None)
        # The graphs a deployment runs: validation compares the token decisions all the same,
        # but the decision outputs would cost time that no deployed graph spends.
        result = export_onnx(model, workdir / f"ltmp_{mode}.onnx")
        report.files[f"onnx_{mode}"] = str(result.path)
        report.validation[mode] = result.validation.to_dict()
        print(f"{result.path}:\n{result.validation.summary()}")
    model.ltmp_set_mode("off")
    report.files["onnx_unpatched"] = str(export_onnx(model, workdir / "unpatched.onnx").path)


def _check_tensorrt(report: DemoReport) -> None:
    """Step 5: whether each TensorRT target's ONNX parser takes the two LTMP graphs."""
    from ltmp_deploy.export.trt_check import TRT_TARGETS, check_model

    _say("5/6 TensorRT ONNX-parser check per target")
    print(f"{'graph':<12}" + "".join(f"{t:>7}" for t in TRT_TARGETS))
    for mode in ("fixed", "threshold"):
        report.trt[mode] = {t: check_model(report.files[f"onnx_{mode}"], t).ok for t in TRT_TARGETS}
        print(f"{mode:<12}" + "".join(f"{'ok' if ok else 'no':>7}" for ok in report.trt[mode].values()))


def _print_summary(report: DemoReport) -> None:
    print("\nsummary (test split):")
    print(f"{'variant':<16}{'accuracy':>10}{'FLOPs kept':>12}")
    for name, row in report.rows.items():
        print(f"{name:<16}{row['accuracy']:>10.4f}{row['flops']:>12.3f}")


def _check_options(target: float, epochs: int, rounds: int, threads: int | None) -> None:
    """Refused before the first step: a bad value would otherwise surface only at the end of the run."""
    if not 0.0 < target <= 1.0:
        raise LTMPError(f"--target {target}: the fraction of FLOPs kept must lie in (0, 1]")
    for option, value in (("--epochs", epochs), ("--rounds", rounds), ("--threads", threads)):
        if value is not None and value < 1:
            raise LTMPError(f"{option} {value}: must be at least 1")


def _latency(report: DemoReport, rounds: int, threads: int | None) -> dict[str, Any]:
    """``ltmp-deploy bench`` on the calibrated checkpoint: ONNX Runtime CPU at batch 1 and 8, the
    variants interleaved, ratios per round. The report reads its headline from this same run."""
    from ltmp_deploy.bench.run import run_bench
    from ltmp_deploy.bench.tables import LATENCY_HEADER, latency_rows, markdown_table
    from ltmp_deploy.report.demo_report import demo_bench_config

    config = demo_bench_config(report.files["fixed"], rounds, threads)
    bench = run_bench(config)
    for batch in config.batches:
        rows = latency_rows(bench, "onnxruntime-cpu", batch)
        print(f"\nbatch {batch}:\n{markdown_table(LATENCY_HEADER, rows)}")
    for rec in bench["records"]:
        row = {"p50_ms": rec["p50_ms"], "vs_unpatched": rec["vs_unpatched"]}
        report.latency.setdefault(f"batch{rec['batch']}", {})[rec["variant"]] = row
    return bench


def _write_report(report: DemoReport, bench: dict[str, Any]) -> Path:
    """report/report.html and report.md (headline, accuracy and latency against FLOPs, tokens per block,
    token grids) with accuracy.json and bench/ beside them; prints the path and the headline."""
    from ltmp_deploy.report.demo_report import write_demo_report

    return write_demo_report(report, bench).html
