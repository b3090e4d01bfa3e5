"""What learning ends with: threshold mode measured as it will run, on images learning did not train on.

Training measures FLOPs with its own masks, batch-averaged while the thresholds still move; the
check runs the learned thresholds with hard decisions, each image at its own token counts, and
says how far that lands from the target, and how many tokens each block's merging and pruning
removed.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ltmp_deploy.calibration.evaluate import evaluate
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer

FLOPS_TOLERANCE = 0.02  # |measured - target| above this warns: the checkpoint misses its budget
CHECK_SEED = 0


@dataclass
class BlockCounts:
    """Mean tokens per image a block received and removed."""

    block: int
    tokens_in: float
    merged: float
    pruned: float


@dataclass
class ThresholdCheck:
    """Threshold mode on ``images`` images of ``split``: accuracy, mean block FLOPs kept, per-block counts."""

    split: str
    images: int
    target: float
    flops_ratio: float
    accuracy: float
    blocks: list[BlockCounts]

    @property
    def off_target(self) -> bool:
        return abs(self.flops_ratio - self.target) > FLOPS_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "off_target": self.off_target}

    def lines(self) -> list[str]:
        head = (
            f"threshold mode on {self.images} {self.split} images: FLOPs kept {self.flops_ratio:.3f} "
            f"(target {self.target:g}), accuracy {self.accuracy:.4f}"
        )
        rows = [f"{'block':>5} {'tokens in':>10} {'merged':>8} {'pruned':>8}  (mean per image)"]
        rows += [f"{b.block:>5} {b.tokens_in:>10.1f} {b.merged:>8.1f} {b.pruned:>8.1f}" for b in self.blocks]
        return [head, *rows]

    def warning(self) -> str | None:
        if not self.off_target:
            return None
        return (
            f"threshold mode keeps {self.flops_ratio:.3f} of the block FLOPs on {self.split} images, "
            f"{self.flops_ratio - self.target:+.3f} from the target {self.target:g} (more than {FLOPS_TOLERANCE}): "
            "learn longer (--epochs), or recalibrate with a fixed schedule"
        )


def check_threshold_mode(
    model: LTMPVisionTransformer,
    data: Dataset,
    target: float,
    split: str,
    max_images: int = 0,
    device: str | torch.device | None = None,
) -> ThresholdCheck:
    """Run ``model`` in threshold mode on ``data`` (a seeded sample of ``max_images`` when larger, 0: all),
    on ``device`` (default: CUDA when available)."""
    if max_images and len(data) > max_images:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(CHECK_SEED))[:max_images]
        data = Subset(data, sorted(int(i) for i in order))
    model.ltmp_set_mode("threshold")
    accuracy, flops, counts = evaluate(model, data, device=device)
    n = model.ltmp_num_tokens
    merges, keeps = counts.merges.astype(np.float64), counts.keeps.astype(np.float64)
    entering = np.concatenate([np.full((len(keeps), 1), float(n)), keeps[:, :-1]], axis=1)
    # Every token entering a block either stays, merges into another or is pruned.
    pruned = entering - merges - keeps
    blocks = [
        BlockCounts(i, float(entering[:, i].mean()), float(merges[:, i].mean()), float(pruned[:, i].mean()))
        for i in range(keeps.shape[1])
    ]
    return ThresholdCheck(split, len(data), target, flops, accuracy, blocks)


def report(check: ThresholdCheck, progress: bool = True) -> None:
    """Print the check (with ``progress``) and warn when it misses the target."""
    if progress:
        print("\n".join(check.lines()))
    message = check.warning()
    if message is not None:
        warnings.warn(message, stacklevel=4)  # report, _check, learn_thresholds, its caller
