"""Thresholds for a FLOPs target without learning: one scalar, bisected on sample images.

For benchmarks of threshold mode on a model whose thresholds were never learned (random weights,
or a base model before ``learn``): the timing needs threshold mode to keep about the FLOPs it would
keep after learning, not what the thresholds a fresh patch starts with happen to keep.
"""

from __future__ import annotations

import numpy as np
import torch

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import image_flops, schedule_for_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer

BISECTION_STEPS = 12


def thresholds_for_flops(
    model: LTMPVisionTransformer, images: torch.Tensor, target: float, merge_threshold: float = 0.8
) -> float:
    """Set every block's merge threshold to ``merge_threshold`` and bisect c in
    ``prune_threshold_l = c / n_l`` (n_l: the tokens block l receives under ``schedule_for_flops``)
    until threshold mode keeps about ``target`` of the block FLOPs on ``images``. Leaves the
    model in threshold mode; returns the mean fraction of block FLOPs it keeps on ``images``."""
    if not 0.0 < target <= 1.0:
        raise LTMPError(f"threshold target {target}: the fraction of FLOPs kept must lie in (0, 1]")
    counts = [n for n, _ in schedule_for_flops(model, target).token_counts(model.ltmp_num_tokens)]
    lo, hi, ratio = 0.0, 2.0, 1.0
    model.ltmp_set_mode("threshold")
    for _ in range(BISECTION_STEPS):
        c = (lo + hi) / 2
        model.ltmp_set_thresholds([merge_threshold] * len(counts), [c / n for n in counts])
        ratio = mean_flops_ratio(model, images)
        lo, hi = (c, hi) if ratio > target else (lo, c)
    return ratio


def mean_flops_ratio(model: LTMPVisionTransformer, images: torch.Tensor) -> float:
    """The mean over ``images`` of the fraction of block FLOPs the model's current mode keeps."""
    with torch.no_grad():
        decisions = model.forward_ltmp(images).decisions
    return float(np.mean([r.ratio for r in image_flops(model, decisions)]))
