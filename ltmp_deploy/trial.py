"""One trial of the whole job on a model and its data: what ``ltmp-deploy trial`` runs on a user's
model and image folder, and ``ltmp-deploy demo`` on the embedded default (``ltmp_deploy.demo``).

base model -> LTMP patch -> learned thresholds -> calibrated fixed schedule -> accuracy of every
variant on held-out images with its sampling error (ToMe at the same FLOPs beside it) -> ONNX in
both modes, validated against PyTorch -> TensorRT parser check per target -> ONNX Runtime latency,
all variants interleaved in one run, on held-out images -> report.html with the headline. Every
artefact lands in one folder with a JSON report.

Learning, calibration and the accuracy never share an image they should not: thresholds are learned
on the train split, the schedule calibrated on the calibration part and the accuracy measured on the
held-out part (``data.datasets.calibration_split``); a folder without ``train/`` beside a held-out
folder learns on the calibration part, so that no image it learned on is scored.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import write_text_atomic
from ltmp_deploy.options import device_option, fraction, option, positive_float, positive_int

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
    from ltmp_deploy.ltmp.schedule import Schedule
    from ltmp_deploy.runtime.cost_model import CostModel

STEPS = 7
# The paper trains one epoch on ImageNet (10k steps); the digits train split is 9 steps an
# epoch, so the default takes more epochs: enough of them to reach each FLOPs target of
# benchmarks/accuracy_table.py from learning's automatic start. A folder of another size may need
# other epochs: each epoch prints the FLOPs its masks keep, and learning ends by checking threshold
# mode against the target on the calibration images.
EPOCHS = 8
LR_MERGE = 5e-3  # learning's own rates (LearnConfig): its automatic start puts both thresholds near the target
LR_PRUNE = 1e-5
# One thread times what the graphs cost, not how a second core that other work may hold splits them:
# on a shared machine that is the steady measurement (``threads`` times more).
THREADS = 1
ROUNDS = 20
STATISTIC = "mean"  # of threshold mode's per-image counts, for the fixed schedule
SUBSET_SEED = 0


@dataclass
class TrialRecipe:
    """How a trial learns, calibrates and times; ``train_images``: learn on only that many train
    images (seeded; a smoke run); ``threads``: CPU threads of the latency step (None: every core)."""

    target: float = field(default=0.5, metadata=option("--target", type=fraction, help="fraction of block FLOPs kept"))
    epochs: int = field(
        default=EPOCHS, metadata=option("--epochs", type=positive_int, help="threshold-learning epochs")
    )
    lr_merge: float = field(default=LR_MERGE, metadata=option("--lr-merge", type=positive_float, help="merge step"))
    lr_prune: float = field(default=LR_PRUNE, metadata=option("--lr-prune", type=positive_float, help="prune step"))
    batch_size: int = field(default=128, metadata=option("--batch-size", type=positive_int, help="learning batch"))
    statistic: str = field(
        default=STATISTIC,
        metadata=option("--statistic", help="'mean' of threshold mode's per-image counts, or a quantile such as q0.9"),
    )
    rounds: int = field(default=ROUNDS, metadata=option("--rounds", type=positive_int, help="timed rounds per variant"))
    threads: int | None = field(
        default=THREADS,
        metadata=option("--threads", type=positive_int, help="CPU threads of the latency step (1: steady when shared)"),
    )
    train_images: int | None = field(
        default=None,
        metadata=option("--limit", type=positive_int, metavar="N", help="learn on N train images drawn at random"),
    )
    flops_only: bool = field(
        default=False,
        metadata=option(
            "--flops-only",
            action="store_true",
            help="calibrate for FLOPs alone, without timing this CPU's cost model for a latency-aware schedule",
        ),
    )
    # Where learning, calibration and the accuracy run (None: auto). Export, the parity check and the
    # latency step stay where they were: the ONNX graphs are timed on ONNX Runtime's CPU provider.
    device: str | None = field(default=None, metadata=device_option())
    grid_images: int = 3

    def check(self) -> None:
        """Refused before the first step: a bad value would otherwise surface only at the end of the run."""
        from ltmp_deploy.calibration.calibrate import parse_statistic

        if not 0.0 < self.target <= 1.0:
            raise LTMPError(f"--target {self.target}: the fraction of FLOPs kept must lie in (0, 1]")
        for flag, value in (
            ("--epochs", self.epochs),
            ("--rounds", self.rounds),
            ("--threads", self.threads),
            ("--batch-size", self.batch_size),
            ("--limit", self.train_images),
        ):
            if value is not None and value < 1:
                raise LTMPError(f"{flag} {value}: must be at least 1")
        if min(self.lr_merge, self.lr_prune) <= 0:
            raise LTMPError("--lr-merge and --lr-prune must be positive")
        parse_statistic(self.statistic)
        if self.device is not None:
            from ltmp_deploy.ltmp.device import resolve_device

            resolve_device(self.device)


@dataclass
class TrialInputs:
    """The model and the three disjoint parts of its data a trial works on."""

    model: LTMPVisionTransformer
    train: Dataset  # thresholds are learned here
    calibration: Dataset  # the fixed schedule is counted here
    held_out: Dataset  # accuracy, token pictures and timed images come from here
    data: str  # "digits" or the image folder: named in the accuracy file, timed by the bench
    source: str  # the model as printed: its file or name
    about: str  # step 1's heading
    held_out_name: str = "test"  # the split the accuracy is measured on
    model_name: str | None = None  # for the accuracy file (default: the timm name or class)
    note: str = ""  # how the images were divided, when not by split folders


@dataclass
class TrialReport:
    workdir: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # accuracy and FLOPs per variant
    files: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    trt: dict[str, dict[str, bool]] = field(default_factory=dict)
    latency: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # batch -> variant -> p50, ratio
    calibration: dict[str, Any] = field(default_factory=dict)  # the schedule, and the one it replaced
    headline: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "headline": self.headline,
            "rows": self.rows,
            "files": self.files,
            "validation": self.validation,
            "trt": self.trt,
            "latency_ms": self.latency,
            "calibration": self.calibration,
        }


def _say(step: int, text: str) -> None:
    print(f"\n== {step}/{STEPS} {text}", flush=True)


def run_trial(
    inputs: TrialInputs,
    workdir: str | os.PathLike,
    recipe: TrialRecipe | None = None,
    *,
    command: str = "ltmp-deploy trial",
) -> TrialReport:
    """The whole job on ``inputs``; every artefact, accuracy.json, report/ and report.json in ``workdir``."""
    import torch

    recipe = recipe or TrialRecipe()
    recipe.check()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = TrialReport(workdir)
    torch.manual_seed(0)

    _base_model(inputs, report, recipe)
    _learn(inputs, report, recipe)
    schedule = _calibrate(inputs, report, recipe)
    accuracy = _accuracy(inputs, report, recipe.device)
    _export(inputs, schedule, report)
    _check_tensorrt(report)
    _say(7, "ONNX Runtime latency on this CPU: the variants interleaved, ratios per round, one run")
    bench = _latency(inputs, report, recipe, command)

    _print_summary(inputs, report)
    report.files["report"] = str(_write_report(inputs, report, recipe, accuracy, bench))
    write_text_atomic(workdir / "report.json", json.dumps(report.to_dict(), indent=2, default=str))
    print(f"\nartefacts and report.json in {workdir}/")
    return report


def _base_model(inputs: TrialInputs, report: TrialReport, recipe: TrialRecipe) -> None:
    """Step 1: the base model, unpatched, scored on the held-out images (before minutes of learning)."""
    from ltmp_deploy.calibration.evaluate import evaluate

    _say(1, f"base model: {inputs.about}")
    if inputs.note:
        print(inputs.note)
    model = inputs.model
    model.ltmp_set_mode("off")
    acc, _, _ = evaluate(model, inputs.held_out, progress=True, device=recipe.device)
    report.rows["unpatched"] = {"accuracy": acc, "flops": 1.0}
    print(f"{inputs.source}: {inputs.held_out_name} accuracy {acc:.4f} on {len(inputs.held_out)} images")


def _learn(inputs: TrialInputs, report: TrialReport, recipe: TrialRecipe) -> None:
    """Step 2: learn the thresholds in place, saving the patched and the learned checkpoint."""
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
    from ltmp_deploy.data.datasets import record_source
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    workdir, model, train = report.workdir, inputs.model, _train_images(inputs.train, recipe.train_images)
    _say(2, f"learn the thresholds: target {recipe.target} of the block FLOPs, {recipe.epochs} epochs")
    model.ltmp_set_mode("threshold")
    save_checkpoint(model, workdir / "patched.safetensors")
    record_source(model, inputs.data, "train")  # learned.safetensors and fixed.safetensors say where
    cfg = LearnConfig(
        target=recipe.target,
        epochs=recipe.epochs,
        lr_merge=recipe.lr_merge,
        lr_prune=recipe.lr_prune,
        batch_size=recipe.batch_size,
    )
    learned = workdir / "learned.safetensors"
    learn_thresholds(
        model,
        train,
        learned,
        cfg,
        heldout=inputs.calibration,
        heldout_name="calibration",
        progress=True,
        device=recipe.device,
    )
    report.files["learned"] = str(workdir / "learned.safetensors")


def _train_images(train: Dataset, count: int | None) -> Dataset:
    """``count`` train images drawn at random (seeded): a folder lists one class after another."""
    import torch

    if count is None or count >= len(train):
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED))[:count]
    return torch.utils.data.Subset(train, sorted(int(i) for i in order))


def _calibrate(inputs: TrialInputs, report: TrialReport, recipe: TrialRecipe) -> Schedule:
    """Step 3: the fixed schedule from threshold mode's counts on the calibration images, chosen for this
    CPU's latency at batch 1 where its measured cost model finds a faster one as accurate on them
    (``--flops-only``: for FLOPs alone); leaves the model in fixed mode and returns the schedule."""
    from ltmp_deploy.calibration.calibrate import calibrate, parse_statistic
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    aim = "FLOPs" if recipe.flops_only else "this CPU's latency"
    _say(3, f"calibrate a fixed schedule for {aim} from threshold mode's counts on {len(inputs.calibration)} images")
    model = inputs.model
    statistic = parse_statistic(recipe.statistic)
    cost = None if recipe.flops_only else _cost_model(model, report, recipe)
    cal = calibrate(model, inputs.calibration, statistic=statistic, progress=True, device=recipe.device, cost=cost)
    print(cal.summary())
    latency = getattr(cal, "latency", None)
    report.calibration = {
        "schedule": cal.schedule.pairs(),
        "statistic": cal.statistic,
        "flops_ratio": cal.fixed_flops,
        "chosen_for": "latency" if latency is not None and latency.choice is not None else "flops",
    }
    if latency is not None:
        chosen_ms = latency.flops_ms if latency.choice is None else latency.choice.predicted_ms
        report.calibration.update(
            flops_schedule=latency.flops_schedule.pairs(),
            predicted_ms={"flops_schedule": latency.flops_ms, "schedule": chosen_ms},
        )
    save_checkpoint(model, report.workdir / "fixed.safetensors")
    report.files["fixed"] = str(report.workdir / "fixed.safetensors")
    return model.ltmp.schedule


def _cost_model(model: LTMPVisionTransformer, report: TrialReport, recipe: TrialRecipe) -> CostModel | None:
    """What a block costs on this CPU (ONNX Runtime at batch 1, the latency step's threads), as cost.json;
    None, with the reason said, where it cannot be measured."""
    from ltmp_deploy.bench.cost import measure_cost_model
    from ltmp_deploy.bench.machine import usable_cores
    from ltmp_deploy.runtime.cost_model import CostModel

    threads = recipe.threads or usable_cores()
    try:
        doc = measure_cost_model(
            model, batches=(1,), threads=threads, step=8, reduce_step=16, rounds=min(recipe.rounds, 8), repeats=2
        )
    except LTMPError as err:
        print(f"no cost model, so the schedule is chosen for FLOPs alone: {err}")
        return None
    path = report.workdir / "cost.json"
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    report.files["cost"] = str(path)
    return CostModel(doc)


def _accuracy(inputs: TrialInputs, report: TrialReport, device: str | None = None) -> dict[str, Any]:
    """Step 4: every variant on the held-out images, each with its sampling error; accuracy.json."""
    from ltmp_deploy.report.accuracy import write_accuracy
    from ltmp_deploy.report.held_out import accuracy_table, evaluate_variants
    from ltmp_deploy.report.trial_report import TRIAL_ROWS
    from ltmp_deploy.runtime.bench_results import variant_name

    _say(4, f"accuracy on {len(inputs.held_out)} held-out images: unpatched, LTMP both modes, ToMe at equal FLOPs")
    doc = evaluate_variants(
        inputs.model,
        inputs.held_out,
        dataset=inputs.data,
        split=inputs.held_out_name,
        model_name=inputs.model_name,
        device=device,
    )
    report.files["accuracy"] = str(write_accuracy(report.workdir / "accuracy.json", doc))
    found = {v["name"]: v for v in doc["variants"]}
    for row, (kind, label) in TRIAL_ROWS.items():
        v = found[variant_name(kind, label)]
        report.rows[row] = {
            "accuracy": v["accuracy"],
            "flops": v["flops_ratio"],
            "accuracy_stderr": v["accuracy_stderr"],
            "images": v["images"],
        }
    print(accuracy_table(doc))
    return doc


def _export(inputs: TrialInputs, schedule: Schedule, report: TrialReport) -> None:
    """Step 5: both modes and the unpatched baseline to ONNX, each validated against PyTorch."""
    from ltmp_deploy.export.onnx_export import export_onnx

    workdir, model = report.workdir, inputs.model
    _say(5, "export to ONNX and validate against PyTorch (ONNX Runtime, sample images)")
    for mode in ("fixed", "threshold"):
        model.ltmp_set_mode(mode, schedule if mode == "fixed" else None)
        # The graphs a deployment runs: validation compares the token decisions all the same,
        # but the decision outputs would cost time that no deployed graph spends.
        result = export_onnx(model, workdir / f"ltmp_{mode}.onnx", data=inputs.data)
        report.files[f"onnx_{mode}"] = str(result.path)
        report.validation[mode] = result.validation.to_dict()
        print(f"{result.path}:\n{result.validation.summary()}")
    model.ltmp_set_mode("off")
    report.files["onnx_unpatched"] = str(export_onnx(model, workdir / "unpatched.onnx").path)


def _check_tensorrt(report: TrialReport) -> None:
    """Step 6: whether each TensorRT target's ONNX parser takes the two LTMP graphs."""
    from ltmp_deploy.runtime.trt.parser_check import TRT_TARGETS, check_model

    _say(6, "TensorRT ONNX-parser check per target")
    print(f"{'graph':<12}" + "".join(f"{t:>7}" for t in TRT_TARGETS))
    for mode in ("fixed", "threshold"):
        report.trt[mode] = {t: check_model(report.files[f"onnx_{mode}"], t).ok for t in TRT_TARGETS}
        print(f"{mode:<12}" + "".join(f"{'ok' if ok else 'no':>7}" for ok in report.trt[mode].values()))


def _latency(inputs: TrialInputs, report: TrialReport, recipe: TrialRecipe, command: str) -> dict[str, Any]:
    """Step 7: ``ltmp-deploy bench`` on the calibrated checkpoint: ONNX Runtime CPU at batch 1 and 8,
    the variants interleaved, ratios per round. The report reads its headline from this same run."""
    from ltmp_deploy.bench.run import run_bench
    from ltmp_deploy.bench.tables import LATENCY_HEADER, latency_rows, markdown_table
    from ltmp_deploy.report.trial_report import trial_bench_config
    from ltmp_deploy.runtime.bench_results import noise_warning

    config = trial_bench_config(report.files["fixed"], recipe.rounds, recipe.threads, data=inputs.data, command=command)
    bench = run_bench(config)
    for batch in config.batches:
        rows = latency_rows(bench, "onnxruntime-cpu", batch)
        print(f"\nbatch {batch}:\n{markdown_table(LATENCY_HEADER, rows)}")
    warning = noise_warning(bench)
    if warning:  # a headline read from these must say they are noise
        print(f"\nwarning: {warning}")
    for rec in bench["records"]:
        row = {"p50_ms": rec["p50_ms"], "vs_unpatched": rec["vs_unpatched"]}
        report.latency.setdefault(f"batch{rec['batch']}", {})[rec["variant"]] = row
    return bench


def _print_summary(inputs: TrialInputs, report: TrialReport) -> None:
    print(f"\nsummary ({inputs.held_out_name}, {len(inputs.held_out)} images; +- the sampling error):")
    print(f"{'variant':<16}{'accuracy':>10}{'+-':>8}{'FLOPs kept':>12}")
    for name, row in report.rows.items():
        err = row.get("accuracy_stderr")
        print(f"{name:<16}{row['accuracy']:>10.4f}{'-' if err is None else f'{err:.4f}':>8}{row['flops']:>12.3f}")


def _write_report(
    inputs: TrialInputs, report: TrialReport, recipe: TrialRecipe, accuracy: dict[str, Any], bench: dict[str, Any]
) -> Path:
    """report/report.html and report.md (headline, accuracy and latency against FLOPs, tokens per block,
    token grids of held-out images) with accuracy.json and bench/ beside them; prints the path and the
    headline."""
    from ltmp_deploy.report.trial_report import write_trial_report

    files = write_trial_report(
        report, bench, accuracy=accuracy, data=inputs.data, held_out=inputs.held_out, grid_images=recipe.grid_images
    )
    report.headline = files.headline.lines()
    return files.html


def folder_inputs(model: str, data: str, *, weights: str | os.PathLike | None = None) -> TrialInputs:
    """A user's model (a timm name or a model description JSON with ``weights``, or a toolkit
    checkpoint; see ``ltmp_deploy.load``) and image folder (class subfolders, optionally under
    ``train/``, ``val/``, ``test/``) as a trial's inputs."""
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, dataset_for
    from ltmp_deploy.formats import FileKind, sniff
    from ltmp_deploy.ltmp.checkpoint import load
    from ltmp_deploy.report.held_out import split_name

    net = load(model, weights=weights)
    calibration = calibration_split(data, net, "calibration")
    held_out = calibration_split(data, net, "evaluation")
    checkpoint = os.path.isfile(model) and sniff(model) is FileKind.TOOLKIT_CHECKPOINT
    if weights is None and not checkpoint:
        print(f"warning: no --weights: {model} has random weights, its accuracy means nothing", file=sys.stderr)
    root = Path(data)
    split_folders = data == EMBEDDED or (
        (root / "train").is_dir() and any((root / n).is_dir() for n in ("val", "validation", "test"))
    )
    train = dataset_for(data, net, "train") if split_folders else calibration
    note = (
        ""
        if split_folders
        else f"{data}: no train/ beside val/ or test/, so thresholds are learned and the schedule calibrated on a "
        f"seeded part of it ({len(calibration)} images) and accuracy is measured on the rest ({len(held_out)} images)"
    )
    arch = net.ltmp.architecture
    return TrialInputs(
        model=net,
        train=train,
        calibration=calibration,
        held_out=held_out,
        data=data,
        source=str(model),
        about=f"{model} on {data} ({len(train)} train, {len(calibration)} calibration, {len(held_out)} held-out)",
        held_out_name=split_name(data, held_out),
        model_name=arch.get("timm_model") or Path(str(model)).name,
        note=note,
    )
