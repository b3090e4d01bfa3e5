"""The variants a benchmark times, all from one patched model.

- ``unpatched``: mode off, timm's own blocks.
- ``oracle@T``: a plain ViT whose blocks keep the first k_l tokens of fixed mode's schedule, with
  no reduction operations: the floor no merge/prune implementation can beat at those counts.
- ``ltmp-fixed@T``: fixed mode with ``schedule_for_flops(model, T)`` (merges and prunes in every block).
- ``tome@T``: ToMe's fixed-r merging (``tome_schedule``) at the FLOPs ``ltmp-fixed@T`` keeps.
- ``ltmp-threshold@T``: threshold mode with thresholds bisected to keep about T of the block
  FLOPs on sample images (``thresholds_for_flops``).
- ``oracle@threshold``: threshold mode's oracle, at the token counts it reached on the timed images
  (per block their mean), whatever the target was.

With ``from_checkpoint``, the checkpoint's own thresholds are timed instead (``ltmp-threshold@learned``)
and, when it carries a schedule, ``ltmp-fixed@calibrated`` with its oracle and ToMe at its FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltmp_deploy.calibration.calibrate import schedule_from_counts, tome_schedule
from ltmp_deploy.calibration.evaluate import per_image_counts
from ltmp_deploy.calibration.thresholds import thresholds_for_flops
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import image_flops, padded_flops_ratio, schedule_flops, schedule_for_flops, unpatched_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.runtime.bench_results import FIXED, ORACLE, THRESHOLD, TOME, UNPATCHED, variant_name

CALIBRATED = "calibrated"  # label of the checkpoint's own schedule
LEARNED = "learned"  # label of the checkpoint's own thresholds
REACHED = "threshold"  # label of the oracle at the token counts threshold mode reached
BISECTION_IMAGES = 8


@dataclass(frozen=True)
class Variant:
    kind: str
    label: str | None
    mode: str  # the model's LTMP mode: off, oracle, fixed or threshold
    schedule: Schedule | None
    oracle: str | None  # the name of the oracle at the same token counts or FLOPs
    flops_ratio: float  # block FLOPs kept per image (threshold mode: mean over the timed images)
    macs_per_image: float  # the whole model, reduction matmuls included
    thresholds: dict[str, list[float]] | None = None  # threshold mode: {"merge": [...], "prune": [...]}
    batch: int | None = None  # timed at this batch size only (None: at every one)
    oracles: dict[int, str] | None = None  # threshold mode: the oracle at each batch size, when they differ
    # threshold mode: at each batch size, (block FLOPs kept per image, what the padded batch computes)
    batch_flops: dict[int, tuple[float, float]] | None = None

    def oracle_at(self, batch: int) -> str | None:
        """The oracle this variant is compared with at ``batch``."""
        return self.oracle if self.oracles is None else self.oracles.get(batch, self.oracle)

    def timed_at(self, batch: int) -> bool:
        return self.batch is None or self.batch == batch

    def flops_at(self, batch: int) -> tuple[float, float]:
        """(block FLOPs kept per image, FLOPs the padded batch computes) at ``batch``: a static schedule
        computes its own counts at every batch size."""
        if self.batch_flops is None:
            return self.flops_ratio, self.flops_ratio
        return self.batch_flops[batch]

    @property
    def name(self) -> str:
        return variant_name(self.kind, self.label)

    def apply(self, model: LTMPVisionTransformer) -> LTMPVisionTransformer:
        """Put ``model`` in this variant's mode (schedules were validated when the variant was built)."""
        model.ltmp.mode, model.ltmp.schedule = self.mode, self.schedule
        return model

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "mode": self.mode,
            "oracle": self.oracle,
            "schedule": self.schedule.pairs() if self.schedule is not None else None,
            "flops_ratio": self.flops_ratio,
            "macs_per_image": self.macs_per_image,
            "thresholds": self.thresholds,
            **({"batch": self.batch} if self.batch is not None else {}),
            **({"oracles": {str(b): n for b, n in self.oracles.items()}} if self.oracles else {}),
        }


def _fixed_family(model: LTMPVisionTransformer, label: str, schedule: Schedule, tome: bool = True) -> list[Variant]:
    """oracle, ltmp-fixed and (``tome``) ToMe at one schedule's token counts (ToMe: at its FLOPs)."""
    oracle_name = variant_name(ORACLE, label)
    fixed = schedule_flops(model, schedule)
    floor = schedule_flops(model, schedule, reduce=False)
    family = [
        Variant(ORACLE, label, "oracle", schedule, None, floor.ratio, floor.total),
        Variant(FIXED, label, "fixed", schedule, oracle_name, fixed.ratio, fixed.total),
    ]
    if tome:
        tome_pairs = tome_schedule(model, fixed.ratio)
        tome_flops = schedule_flops(model, tome_pairs)
        family.append(Variant(TOME, label, "fixed", tome_pairs, oracle_name, tome_flops.ratio, tome_flops.total))
    return family


def build_variants(
    model: LTMPVisionTransformer,
    images: torch.Tensor,
    targets: Sequence[float] = (0.9, 0.75, 0.5),
    threshold_target: float | None = 0.5,
    from_checkpoint: bool = False,
    merge_threshold: float = 0.8,
    batches: Sequence[int] = (),
    tome: bool = True,
) -> list[Variant]:
    """Every variant, in timing order. Sets the model's thresholds when they are bisected. ``batches``:
    the batch sizes timed, each on the first images of ``images`` (threshold mode's oracle follows them);
    ``tome`` False leaves ToMe out."""
    for t in targets:
        if not 0.0 < t <= 1.0:
            raise LTMPError(f"--targets {t}: a fraction of block FLOPs kept must lie in (0, 1]")
    own_schedule = model.ltmp.schedule if from_checkpoint else None
    base = unpatched_flops(model)
    variants = [Variant(UNPATCHED, None, "off", None, None, 1.0, base.unpatched_total)]
    for t in targets:
        variants += _fixed_family(model, f"{t:g}", schedule_for_flops(model, t), tome)
    if own_schedule is not None:
        own_schedule.validate(len(model.blocks), model.ltmp_num_tokens, model.num_prefix_tokens)
        variants += _fixed_family(model, CALIBRATED, own_schedule, tome)
    if from_checkpoint:
        label = LEARNED
    elif threshold_target is not None:
        thresholds_for_flops(model, images[:BISECTION_IMAGES], threshold_target, merge_threshold)
        label = f"{threshold_target:g}"
    else:
        return variants
    return [*variants, *_threshold_pair(model, images, label, batches)]


def _threshold_pair(
    model: LTMPVisionTransformer, images: torch.Tensor, label: str, batches: Sequence[int] = ()
) -> list[Variant]:
    """Threshold mode with the model's thresholds, and its oracle: the plain ViT at the token counts
    threshold mode reached on ``images`` (the timed ones; per block the mean over the images), so
    "vs oracle" compares at the FLOPs actually reached, not at a target it may have missed (on random
    images threshold mode may merge nothing). A batch of ``b`` times the first ``b`` images only, so
    where their counts give another schedule, that batch gets an oracle of its own (``threshold-bB``)."""
    model.ltmp_set_mode("threshold")
    with torch.no_grad():
        decisions = model.forward_ltmp(images).decisions
    reports = image_flops(model, decisions)
    ratio, total = (float(np.mean([getattr(r, k) for r in reports])) for k in ("ratio", "total"))
    timed = sorted(set(batches))
    # A batch of b runs the first b images, and an image's decisions do not depend on its batch.
    batch_flops = {
        b: (float(np.mean([r.ratio for r in reports[:b]])), padded_flops_ratio(model, decisions, b)) for b in timed
    }
    merges, keeps = per_image_counts([decisions])
    reached = schedule_from_counts(model, merges, keeps, "mean")
    per_batch = {b: schedule_from_counts(model, merges[:b], keeps[:b], "mean") for b in timed}
    names = None
    if all(s == reached for s in per_batch.values()):
        oracles = [_oracle(model, REACHED, reached, None)]
    else:
        oracles = [_oracle(model, f"{REACHED}-b{b}", s, b) for b, s in per_batch.items()]
        names = {o.batch: o.name for o in oracles}
    merge, prune = model.ltmp_thresholds()
    thresholds = {"merge": merge, "prune": prune}
    threshold = Variant(
        THRESHOLD, label, "threshold", None, oracles[-1].name, ratio, total, thresholds, None, names, batch_flops
    )
    return [*oracles, threshold]


def _oracle(model: LTMPVisionTransformer, label: str, schedule: Schedule, batch: int | None) -> Variant:
    floor = schedule_flops(model, schedule, reduce=False)
    return Variant(ORACLE, label, "oracle", schedule, None, floor.ratio, floor.total, batch=batch)
