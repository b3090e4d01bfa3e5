"""Fixed-mode schedules from data (per-image counts of threshold mode) or from a FLOPs target,
and the ToMe baseline: fixed-r merging alone, through the same code path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ltmp_deploy.calibration.evaluate import evaluate
from ltmp_deploy.calibration.latency import LatencyCalibration, calibrate_for_latency
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import model_dims, schedule_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.runtime.cost_model import CostModel

Statistic = Union[str, float]  # "mean", or a quantile in [0, 1]


def parse_statistic(text: str) -> Statistic:
    """``mean``, or ``q0.9`` / ``0.9`` for a quantile of the per-image counts."""
    if text == "mean":
        return "mean"
    try:
        q = float(text[1:] if text.startswith("q") else text)
    except ValueError:
        q = -1.0
    if not 0.0 <= q <= 1.0:
        raise LTMPError(f"--statistic {text!r}: use 'mean' or a quantile such as q0.9")
    return q


def schedule_from_counts(
    model: LTMPVisionTransformer, merges: np.ndarray, keeps: np.ndarray, statistic: Statistic = "mean"
) -> Schedule:
    """One ``(r_l, k_l)`` per block: the mean (or quantile) of the per-image counts, made feasible.

    A quantile above 0.5 keeps more tokens than the typical image (safer accuracy, more FLOPs).
    Counts are then clipped block by block to what the previous block leaves.
    """
    reduce = (lambda a: a.mean(0)) if statistic == "mean" else (lambda a: np.quantile(a, float(statistic), axis=0))
    dims = model_dims(model)
    # Quantiles of what each block removes, so that "keep more" means "remove less" throughout.
    removed = np.concatenate([np.full((len(keeps), 1), dims.num_tokens), keeps[:, :-1]], 1) - keeps
    q_merge = 1.0 - float(statistic) if statistic != "mean" else "mean"
    r_target = reduce(merges) if statistic == "mean" else np.quantile(merges, q_merge, axis=0)
    drop_target = reduce(removed) if statistic == "mean" else np.quantile(removed, q_merge, axis=0)
    out_r, out_k, n = [], [], dims.num_tokens
    for r, drop in zip(r_target, drop_target):
        mergeable = (n + 1) // 2 - (dims.num_prefix + 1) // 2
        r = int(min(max(round(float(r)), 0), mergeable))
        k = int(min(max(n - round(float(drop)), dims.num_prefix), n - r))
        out_r.append(r)
        out_k.append(k)
        n = k
    schedule = Schedule(tuple(out_r), tuple(out_k))
    schedule.validate(dims.depth, dims.num_tokens, dims.num_prefix)
    return schedule


def tome_schedule(model: LTMPVisionTransformer, flops_ratio: float) -> Schedule:
    """ToMe's fixed-r merging (the same r every block, no pruning) closest to ``flops_ratio``."""
    dims = model_dims(model)
    best: tuple[float, Schedule] | None = None
    for r in range(0, dims.num_tokens // 2 + 1):
        merges, keeps, n = [], [], dims.num_tokens
        for _ in range(dims.depth):
            mergeable = (n + 1) // 2 - (dims.num_prefix + 1) // 2
            rr = min(r, mergeable)
            merges.append(rr)
            keeps.append(n - rr)
            n -= rr
        schedule = Schedule(tuple(merges), tuple(keeps))
        gap = abs(schedule_flops(model, schedule).ratio - flops_ratio)
        if best is None or gap < best[0]:
            best = (gap, schedule)
    assert best is not None
    return best[1]


@dataclass
class CalibrationReport:
    schedule: Schedule
    statistic: str
    threshold_accuracy: float | None
    threshold_flops: float | None
    fixed_accuracy: float | None
    fixed_flops: float

    def summary(self) -> str:
        lines = [f"schedule ({self.statistic}), (r, k) per block: {self.schedule.pairs()}"]
        if self.threshold_accuracy is not None:
            lines.append(
                f"threshold mode: accuracy {self.threshold_accuracy:.4f}, block FLOPs kept {self.threshold_flops:.3f}"
            )
        acc = f"accuracy {self.fixed_accuracy:.4f}, " if self.fixed_accuracy is not None else ""
        lines.append(f"fixed mode:     {acc}block FLOPs kept {self.fixed_flops:.3f}")
        return "\n".join(lines)


@dataclass
class LatencyCalibrationReport(CalibrationReport):
    """A report of calibration with a cost model: also the search and the schedule it replaced."""

    latency: LatencyCalibration | None = None

    def summary(self) -> str:
        return (self.latency.summary() + "\n" if self.latency is not None else "") + super().summary()


def calibrate(
    model: LTMPVisionTransformer,
    calibration: Dataset | None,
    *,
    statistic: Statistic = "mean",
    flops_target: float | None = None,
    evaluation: Dataset | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    cost: CostModel | None = None,
    cost_batch: int = 1,
) -> CalibrationReport:
    """Derive the fixed-mode schedule and set it on ``model``; report both modes side by side.

    From data: the per-image counts of threshold mode on ``calibration``. From a FLOPs target:
    :func:`ltmp_deploy.ltmp.flops.schedule_for_flops`, no data needed. Accuracy is measured on
    ``evaluation`` when given. ``device``: where the model runs (default: CUDA when available).
    ``cost``: a measured cost model (from data only): the schedule is then chosen for its predicted
    latency at ``cost_batch`` at the FLOPs of the counts' schedule
    (:func:`ltmp_deploy.calibration.latency.calibrate_for_latency`).
    """
    from ltmp_deploy.ltmp.flops import schedule_for_flops

    thr_acc = thr_flops = None
    latency = None
    if cost is not None and flops_target is not None:
        raise LTMPError("a cost model chooses among schedules counted on data: leave --flops-target out")
    if flops_target is not None:
        if not 0.0 < flops_target <= 1.0:
            raise LTMPError(f"--flops-target {flops_target}: the fraction of FLOPs kept must lie in (0, 1]")
        schedule, label = schedule_for_flops(model, flops_target), f"flops target {flops_target}"
    else:
        if calibration is None or len(calibration) == 0:
            raise LTMPError("calibration needs images (or --flops-target)")
        model.ltmp_set_mode("threshold")
        counts = evaluate(model, calibration, progress=progress, device=device)[2]
        assert counts is not None  # threshold mode always decides
        schedule = schedule_from_counts(model, counts.merges, counts.keeps, statistic)
        label = "mean" if statistic == "mean" else f"q{statistic}"
        if cost is not None:
            latency = calibrate_for_latency(
                model,
                calibration,
                counts.merges,
                counts.keeps,
                schedule,
                cost,
                cost_batch,
                progress=progress,
                device=device,
            )
            if latency.choice is not None:
                schedule, label = latency.schedule, f"{label}, latency-aware q{latency.choice.floor:g} floor"
    if evaluation is not None and flops_target is None:
        thr_acc, thr_flops, _ = evaluate(model.ltmp_set_mode("threshold"), evaluation, progress=progress, device=device)
    model.ltmp_set_mode("fixed", schedule)
    fixed_acc = None
    if evaluation is not None:
        fixed_acc = evaluate(model, evaluation, progress=progress, device=device)[0]
    ratio = schedule_flops(model, schedule).ratio
    if cost is None:
        return CalibrationReport(schedule, label, thr_acc, thr_flops, fixed_acc, ratio)
    return LatencyCalibrationReport(schedule, label, thr_acc, thr_flops, fixed_acc, ratio, latency)
