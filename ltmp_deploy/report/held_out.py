"""Accuracy of every variant of one model on held-out images, each with its sampling error: what
``ltmp-deploy evaluate`` writes and the trial's accuracy step runs.

The variants are those a bench of the same checkpoint times, under the same names, so a report
puts each accuracy beside its latency: ``unpatched``, ``ltmp-threshold@learned`` (the model's own
thresholds), ``ltmp-fixed@calibrated`` (its schedule; calibrated from threshold mode's counts when
it carries none) and ``tome@calibrated`` (ToMe's fixed-r merging at the same FLOPs). With a FLOPs
target the fixed schedule is ``schedule_for_flops`` instead, labelled by the target. A site's
held-out set is often a few hundred images: the binomial standard error sqrt(p(1-p)/n) beside each
accuracy says how far apart two variants must be to differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ltmp_deploy.bench.variants import CALIBRATED, LEARNED
from ltmp_deploy.calibration.calibrate import calibrate, tome_schedule
from ltmp_deploy.calibration.evaluate import evaluate
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import schedule_flops, schedule_for_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.report.accuracy import accuracy_document, tokens_summary, variant_entry
from ltmp_deploy.report.document import sampling_error_text
from ltmp_deploy.runtime.bench_results import FIXED, THRESHOLD, TOME, UNPATCHED, variant_name


def split_name(data: str, held_out: Dataset) -> str:
    """What ``held_out`` is within ``data``, for the accuracy file: "test" for the digits, else its
    folder relative to ``data`` (a seeded part of it: "held-out part of train")."""
    from ltmp_deploy.data.datasets import EMBEDDED

    if data == EMBEDDED:
        return "test"
    part = isinstance(held_out, Subset)
    base = held_out.dataset if part else held_out
    root = getattr(base, "root", None)
    where = os.path.relpath(root, data) if root is not None else "the data"
    where = Path(data).name if where == "." else where
    return f"held-out part of {where}" if part else where


def fixed_schedule(
    model: LTMPVisionTransformer,
    target: float | None = None,
    calibration: Dataset | None = None,
    statistic: str | float = "mean",
    progress: bool = True,
    device: str | None = None,
) -> tuple[Schedule, str]:
    """(schedule, label) of the fixed variant: ``schedule_for_flops(target)`` when a target is given,
    else the model's own schedule, else one calibrated from threshold mode's counts on ``calibration``."""
    if target is not None:
        if not 0.0 < target <= 1.0:
            raise LTMPError(f"--target {target}: the fraction of FLOPs kept must lie in (0, 1]")
        return schedule_for_flops(model, target), f"{target:g}"
    if model.ltmp.schedule is not None:
        return model.ltmp.schedule, CALIBRATED
    if calibration is None:
        raise LTMPError("the model carries no fixed schedule: give calibration images or a --target")
    mode = model.ltmp.mode
    try:
        schedule = calibrate(model, calibration, statistic=statistic, progress=progress, device=device).schedule
    finally:
        model.ltmp.mode, model.ltmp.schedule = mode, None
    return schedule, CALIBRATED


def evaluate_variants(
    model: LTMPVisionTransformer,
    held_out: Dataset,
    *,
    dataset: str,
    split: str | None = None,
    target: float | None = None,
    calibration: Dataset | None = None,
    statistic: str | float = "mean",
    model_name: str | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """The ``ltmp-deploy-accuracy/1`` document of the four variants on ``held_out`` (see the module
    doc), with the tokens each LTMP variant keeps per block; headline: the fixed variant.

    ``dataset``/``split``: what ``held_out`` is, for the document. ``calibration``: images to calibrate
    a schedule on when the model has none (never ``held_out``'s). The model's mode and schedule are
    as the caller left them afterwards."""
    n = len(held_out)
    if n == 0:
        raise LTMPError(f"{dataset}: no held-out images to measure accuracy on")
    schedule, label = fixed_schedule(model, target, calibration, statistic, progress, device)
    tome = tome_schedule(model, schedule_flops(model, schedule).ratio)
    mode, own = model.ltmp.mode, model.ltmp.schedule
    runs: dict[str, tuple[str, str | None, float, float]] = {}  # name -> (method, label, accuracy, flops)
    tokens: dict[str, dict[str, Any]] = {}
    try:
        for method, var_label, var_mode, var_schedule in (
            (UNPATCHED, None, "off", None),
            (THRESHOLD, LEARNED, "threshold", None),
            (FIXED, label, "fixed", schedule),
            (TOME, label, "fixed", tome),
        ):
            model.ltmp_set_mode(var_mode, var_schedule)
            acc, flops, counts = evaluate(model, held_out, progress=progress, device=device)
            name = variant_name(method, var_label)
            runs[name] = (method, var_label, acc, flops)
            if method == THRESHOLD and counts is not None:
                tokens[name] = tokens_summary(counts.keeps)
            elif method == FIXED:
                tokens[name] = tokens_summary(np.tile(np.asarray(schedule.keeps), (n, 1)))
    finally:
        model.ltmp.mode, model.ltmp.schedule = mode, own
    variants = [
        variant_entry(method, var_label, [{"seed": None, "accuracy": acc, "flops_ratio": flops}], images=n)
        for method, var_label, acc, flops in runs.values()
    ]
    arch = model.ltmp.architecture
    return accuracy_document(
        model_name or arch.get("timm_model") or str(arch.get("timm_class")),
        {"name": dataset, "split": split, "images": n},
        variants,
        tokens=model.ltmp_num_tokens,
        tokens_per_block=tokens,
        headline=variant_name(FIXED, label),
        note="accuracy_stderr: binomial standard error sqrt(p(1-p)/n) on the held-out images",
    )


def accuracy_table(doc: dict[str, Any]) -> str:
    """The document's variants as a plain-text table: accuracy with its sampling error, FLOPs kept."""
    header = ("variant", "accuracy", "sampling error", "FLOPs kept")
    rows = [
        (v["name"], f"{100 * v['accuracy']:.2f}%", sampling_error_text(v), f"{v['flops_ratio']:.3f}")
        for v in doc["variants"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    head = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(header, widths)))
    return "\n".join([head, *lines])
