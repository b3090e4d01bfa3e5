"""Latency-aware fixed schedules: the token counts a measured cost model
(:mod:`ltmp_deploy.runtime.cost_model`) predicts to run fastest, within the FLOPs of the FLOPs-calibrated
schedule and the counts the learned thresholds reach on real images.

Every block that merges or prunes pays a reduction (similarity, TopK, gathers) on top of its attention
and MLP, and on a small model or at batch 1 that extra is a large part of the block; a block that keeps
all its tokens pays nothing of it (:func:`ltmp_deploy.ltmp.reduce.pass_through`), and one that only
merges pays less than one that also prunes (:func:`ltmp_deploy.ltmp.reduce.merges_only`). So the same
FLOPs run faster removed in fewer, larger steps. Each block splits what it removes between merging and
pruning as the learned thresholds did in that block (:func:`merge_shares`). The search is a dynamic
programme over blocks and token counts: it minimises predicted milliseconds plus ``lam`` times block
MACs, ``lam`` bisected so that the schedule keeps as many FLOPs as allowed and no more. Each block may
keep no fewer tokens than the ``floor`` quantile of what threshold mode keeps there per image: the
thresholds' own statistics bound how far the schedule may run ahead of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.flops import Dims, block_macs, model_dims, schedule_flops
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.runtime.cost_model import CostModel

BISECTION_STEPS = 60
FLOORS = (0.1, 0.25, 0.5)  # quantiles of the per-image kept counts tried, fastest first


@dataclass(frozen=True)
class LatencyChoice:
    schedule: Schedule
    floor: float  # the quantile of the per-image kept counts no block went below
    predicted_ms: float  # the blocks at the cost model's batch
    flops_ratio: float


def _mergeable(dims: Dims, n: np.ndarray | int) -> np.ndarray | int:
    """Sources a block of ``n`` tokens can merge (the prefix's own sources left out)."""
    return (n + 1) // 2 - (dims.num_prefix + 1) // 2


def _merge_count(dims: Dims, share: float, n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray | int:
    """How many of the ``n - k`` tokens a block removes merge, at ``share`` (the rest are pruned)."""
    return np.minimum(np.minimum(np.round(share * (n - k)).astype(int), _mergeable(dims, n)), n - k)


def _block_ms(dims: Dims, tables: tuple[np.ndarray, ...], shares: Sequence[float]) -> list[np.ndarray]:
    """Per block, the predicted ms of entering with ``n`` and leaving with ``k`` tokens ([n, k]): block ``i``
    merges ``shares[i]`` of what it removes, and pays the cheaper extra where that is all of it."""
    attention, mlp, extra, merge_extra = tables
    n = np.arange(dims.num_tokens + 1)
    removed = np.maximum(n[:, None] - n[None, :], 0)
    costs = []
    for share in shares:
        only_merges = _merge_count(dims, share, n[:, None], n[None, :]) == removed
        paid = np.where(removed > 0, np.where(only_merges, merge_extra[:, None], extra[:, None]), 0.0)
        costs.append(attention[:, None] + mlp[None, :] + paid)
    return costs


def _dp(dims: Dims, block_ms: Sequence[np.ndarray], floors: Sequence[int], lam: float) -> tuple[list[int], float]:
    """Kept counts per block minimising predicted ms (``block_ms``, from :func:`_block_ms`) + ``lam`` *
    block MACs / unpatched block MACs."""
    n_all = dims.num_tokens
    n = np.arange(n_all + 1)
    full = dims.depth * block_macs(dims, n_all, n_all)
    macs = block_macs(dims, n[:, None], n[None, :]) / full  # [n_in, k]
    value = np.full(n_all + 1, np.inf)
    value[n_all] = 0.0
    back = []
    for floor, ms in zip(floors, block_ms):
        allowed = (n[None, :] <= n[:, None]) & (n[None, :] >= floor)
        total = np.where(allowed, value[:, None] + (ms + lam * macs), np.inf)
        back.append(total.argmin(axis=0))  # best n_in for every k
        value = total.min(axis=0)
    k = int(value.argmin())
    keeps = [k]
    for prev in reversed(back[1:]):
        k = int(prev[k])
        keeps.append(k)
    return keeps[::-1], float(value.min())


def _schedule(dims: Dims, keeps: Sequence[int], shares: Sequence[float]) -> Schedule:
    """Merges and prunes for the kept counts: block ``i`` merges ``shares[i]`` of what it removes (as the
    learned thresholds did there), as far as it can merge, and prunes the rest."""
    merges, n = [], dims.num_tokens
    for k, share in zip(keeps, shares):
        merges.append(int(_merge_count(dims, share, n, k)))
        n = k
    schedule = Schedule(tuple(merges), tuple(int(k) for k in keeps))
    schedule.validate(dims.depth, dims.num_tokens, dims.num_prefix)
    return schedule


def merge_shares(dims: Dims, merges: np.ndarray, keeps: np.ndarray) -> list[float]:
    """Per block, the share of the tokens the learned thresholds removed there that merged (images x
    blocks of counts); a block where they removed nothing takes the share over all blocks."""
    entering = np.concatenate([np.full((len(keeps), 1), dims.num_tokens), keeps[:, :-1]], 1)
    removed = (entering - keeps).sum(axis=0)
    merged = merges.sum(axis=0)
    overall = float(np.clip(merged.sum() / max(removed.sum(), 1), 0.0, 1.0))
    return [float(np.clip(m / r, 0.0, 1.0)) if r > 0 else overall for m, r in zip(merged, removed)]


def check_cost_fits(model: object, cost: CostModel) -> None:
    """LTMPError unless ``cost`` was measured on a model of this one's token count, width and depth."""
    dims, info = model_dims(model), cost.doc["model"]
    if (info["num_tokens"], info["dim"], info["depth"]) != (dims.num_tokens, dims.dim, dims.depth):
        raise LTMPError(
            f"the cost model was measured on {info['depth']} blocks of {info['num_tokens']} tokens of width "
            f"{info['dim']}, this model has {dims.depth} of {dims.num_tokens} of width {dims.dim}: measure it "
            "with `ltmp-deploy cost`"
        )


def latency_schedule(
    model: object,
    merges: np.ndarray,
    keeps: np.ndarray,
    cost: CostModel,
    batch: int,
    flops_target: float,
    floor: float,
) -> LatencyChoice:
    """The schedule of least predicted latency at ``batch`` keeping at most ``flops_target`` of the block
    FLOPs, no block below the ``floor`` quantile of threshold mode's per-image kept counts (``keeps``,
    images x blocks; ``merges`` alike, for each block's share of removed tokens that merge)."""
    dims = model_dims(model)
    if keeps.ndim != 2 or keeps.shape[1] != dims.depth:
        raise LTMPError(f"per-image counts for {keeps.shape[-1]} blocks, the model has {dims.depth}")
    check_cost_fits(model, cost)
    floors = [max(dims.num_prefix, int(np.floor(np.quantile(keeps[:, i], floor)))) for i in range(dims.depth)]
    shares = merge_shares(dims, merges, keeps)
    block_ms = _block_ms(dims, cost.tables(batch, dims.num_tokens), shares)

    def solve(lam: float) -> tuple[Schedule, float]:
        kept, _ = _dp(dims, block_ms, floors, lam)
        schedule = _schedule(dims, kept, shares)
        return schedule, schedule_flops(model, schedule).ratio

    best = _bisect(solve, flops_target)
    if best is None:
        raise LTMPError(
            f"no schedule keeps at most {flops_target:.3f} of the block FLOPs with every block at or above the "
            f"q{floor:g} of threshold mode's kept counts: lower the floor or raise the target"
        )
    schedule = _fill(
        model, best[0], shares, flops_target, lambda s: cost.schedule_ms(batch, dims.num_tokens, *_pair(s))
    )
    ratio = schedule_flops(model, schedule).ratio
    return LatencyChoice(schedule, floor, cost.schedule_ms(batch, dims.num_tokens, *_pair(schedule)), ratio)


def _fill(
    model: object, schedule: Schedule, shares: Sequence[float], target: float, ms: Callable[[Schedule], float]
) -> Schedule:
    """Give back the FLOPs the programme left under ``target``, a token at a time where it costs the
    least predicted time: each step raises one reducing block's output count and the blocks that pass
    it on unchanged. The trade-off points of the Lagrangian lie apart; at equal FLOPs the schedule
    keeps the tokens that accuracy needs and the comparison with the counted schedule is fair."""
    dims = model_dims(model)
    keeps = list(schedule.keeps)
    while True:
        best: tuple[float, Schedule] | None = None
        for start in range(dims.depth):
            before = dims.num_tokens if start == 0 else keeps[start - 1]
            if keeps[start] >= before or (start and keeps[start] == keeps[start - 1]):
                continue  # not the first block of a plateau that a reduction left
            end = start
            while end + 1 < dims.depth and keeps[end + 1] == keeps[start]:
                end += 1
            raised = keeps[:start] + [keeps[start] + 1] * (end - start + 1) + keeps[end + 1 :]
            candidate = _schedule(dims, raised, shares)
            if schedule_flops(model, candidate).ratio > target:
                continue
            cost = ms(candidate)
            if best is None or cost < best[0]:
                best = (cost, candidate)
        if best is None:
            return _schedule(dims, keeps, shares)
        keeps = list(best[1].keeps)


def _pair(schedule: Schedule) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return schedule.merges, schedule.keeps


def _bisect(solve: Callable[[float], tuple[Schedule, float]], target: float) -> tuple[Schedule, float] | None:
    """The solution with the most FLOPs at or below ``target``: ``lam`` negative rewards keeping tokens."""
    lo, hi = -1e4, 1e4
    best = solve(hi)
    if best[1] > target:
        return None
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        found = solve(mid)
        if found[1] <= target:
            hi = mid
            if found[1] >= best[1]:
                best = found
        else:
            lo = mid
    return best


@dataclass(frozen=True)
class LatencyCalibration:
    """The latency-aware choice beside the FLOPs-calibrated schedule it replaces, with what decided it."""

    choice: LatencyChoice | None  # None: no candidate was faster and as accurate; the FLOPs schedule stays
    flops_schedule: Schedule
    flops_ms: float  # predicted, the blocks of the FLOPs schedule
    flops_accuracy: float  # on the calibration images
    tried: list[tuple[float, float | None, float | None]]  # (floor, predicted ms, calibration accuracy)

    @property
    def schedule(self) -> Schedule:
        return self.flops_schedule if self.choice is None else self.choice.schedule

    def summary(self) -> str:
        lines = [
            f"latency-aware (cost model): FLOPs schedule predicted {self.flops_ms:.3f} ms of blocks, "
            f"calibration accuracy {self.flops_accuracy:.4f}"
        ]
        for floor, ms, acc in self.tried:
            shown = (
                "no schedule" if ms is None else f"{ms:.3f} ms" + (f", accuracy {acc:.4f}" if acc is not None else "")
            )
            lines.append(f"  floor q{floor:g}: {shown}")
        lines.append("  kept the FLOPs schedule" if self.choice is None else f"  chose floor q{self.choice.floor:g}")
        return "\n".join(lines)


def calibrate_for_latency(
    model: object,
    calibration: object,
    merges: np.ndarray,
    keeps: np.ndarray,
    flops_schedule: Schedule,
    cost: CostModel,
    batch: int = 1,
    floors: Sequence[float] = FLOORS,
    progress: bool = False,
    device: object = None,
) -> LatencyCalibration:
    """The fastest candidate (lowest floor first) at the FLOPs of ``flops_schedule`` whose accuracy on the
    ``calibration`` images is within one sampling error of the FLOPs schedule's; leaves ``model`` in fixed
    mode with the schedule chosen (the FLOPs schedule when none qualifies)."""
    from ltmp_deploy.calibration.evaluate import evaluate

    check_cost_fits(model, cost)  # before any image is read; a mismatch is no reason to keep the FLOPs schedule
    dims = model_dims(model)
    target = schedule_flops(model, flops_schedule).ratio
    flops_ms = cost.schedule_ms(batch, dims.num_tokens, *_pair(flops_schedule))
    model.ltmp_set_mode("fixed", flops_schedule)
    base_acc = evaluate(model, calibration, progress=progress, device=device)[0]
    images = max(len(calibration), 1)
    # At 100% the binomial error is 0 and would refuse every other schedule: one image is the least error.
    error = max(float(np.sqrt(base_acc * (1 - base_acc) / images)), 1.0 / images)
    tried, chosen = [], None
    for floor in floors:
        try:
            choice = latency_schedule(model, merges, keeps, cost, batch, target, floor)
        except LTMPError:
            tried.append((floor, None, None))
            continue
        if choice.predicted_ms >= flops_ms:
            tried.append((floor, choice.predicted_ms, None))
            continue
        model.ltmp_set_mode("fixed", choice.schedule)
        acc = evaluate(model, calibration, progress=progress, device=device)[0]
        tried.append((floor, choice.predicted_ms, acc))
        if acc >= base_acc - error:
            chosen = choice
            break
    result = LatencyCalibration(chosen, flops_schedule, flops_ms, base_acc, tried)
    model.ltmp_set_mode("fixed", result.schedule)
    return result
