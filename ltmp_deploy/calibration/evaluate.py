"""Accuracy, FLOPs and token counts of a patched model on a data set, in its current mode: what
learning, calibration and the demo report on held-out images."""

from __future__ import annotations

import array
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ltmp_deploy.data.folder import warn_skipped
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer


class TokenCounts(NamedTuple):
    """Per-image token counts of threshold mode, each (images, blocks): all a schedule needs of the decisions."""

    merges: np.ndarray  # tokens each block merged away
    keeps: np.ndarray  # tokens each block passed on


def per_image_counts(decisions: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(merges, keeps), each (images, blocks), from the decisions of evaluation batches."""
    merges, keeps = [], []
    for batch in decisions:
        merges.append(torch.stack([(d.merge_dst >= 0).sum(1) for d in batch], 1).cpu().numpy())
        keeps.append(torch.stack([d.n_out.round().long() for d in batch], 1).cpu().numpy())
    return np.concatenate(merges), np.concatenate(keeps)


def evaluate(
    model: LTMPVisionTransformer,
    data: Dataset,
    batch_size: int = 256,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[float, float, TokenCounts | None]:
    """(accuracy, mean FLOPs ratio, per-image token counts) of the model in its current mode, on
    ``device`` (see :func:`ltmp_deploy.ltmp.device.resolve_device`), the model back where it was after.

    Only the counts are kept of each batch's decisions, so memory does not grow with the images
    beyond a few integers each; the counts are None in a mode that makes no decisions."""
    from ltmp_deploy.ltmp.device import placed

    with placed(model, device) as where:
        correct, seen, ratios, merges, keeps = _run(model.eval(), data, batch_size, progress, where)
    warn_skipped(data)
    counts = TokenCounts(np.concatenate(merges), np.concatenate(keeps)) if merges else None
    return correct / max(seen, 1), sum(ratios) / max(len(ratios), 1), counts


def _run(
    model: LTMPVisionTransformer, data: Dataset, batch_size: int, progress: bool, where: torch.device
) -> tuple[int, int, array.array, list[np.ndarray], list[np.ndarray]]:
    """Counts of one pass over ``data`` on ``where``: correct, seen, FLOPs ratios, merges, keeps."""
    from ltmp_deploy.ltmp.flops import image_flops, schedule_flops

    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    correct = seen = 0
    ratios = array.array("d")
    merges, keeps = [], []
    with torch.no_grad():
        for images, labels in tqdm(loader, desc=f"evaluate {model.ltmp.mode}", disable=not progress, leave=False):
            out = model.forward_ltmp(images.to(where, non_blocking=True))
            correct += int((out.logits.argmax(-1).cpu() == labels).sum())
            seen += len(labels)
            if model.ltmp.mode == "fixed":
                ratios.extend([schedule_flops(model, model.ltmp.schedule).ratio] * len(labels))
            elif out.decisions:
                ratios.extend([r.ratio for r in image_flops(model, out.decisions)])
            else:
                ratios.extend([1.0] * len(labels))
            if out.decisions:
                batch_merges, batch_keeps = per_image_counts([out.decisions])
                merges.append(batch_merges)
                keeps.append(batch_keeps)
    return correct, seen, ratios, merges, keeps
