"""Learning the thresholds: LTMP's budget loss with straight-through masks (docs/arithmetic.md#training-the-thresholds).

Recipe: one epoch, plain SGD (no momentum, no weight decay), cosine schedule, batch 128, label
smoothing 0.1, ``lambda`` 10, ``tau`` 0.1, learning rate 1e-5 for the prune thresholds and 5e-3
for the merge thresholds, only the thresholds trainable, thresholds clamped to [0, 1] after every
step. Loss: ``CE + lambda * (r_flops - r_target)^2`` with ``r_flops`` the fraction of the
unpatched block FLOPs the masks keep.

Two things differ from the authors' recipe, so that pruning learns as well as merging
(docs/arithmetic.md#why-the-prune-thresholds-did-not-learn). The prune mask's temperature is
``tau / tokens``: importance, the attention a token receives, averages 1 / tokens, and at ``tau``
the mask is flat across tokens. And the thresholds start where the budget asks both mechanisms to
remove more: pruning at its edge, where it starts to remove tokens, and merging where the two keep
(1 + target) / 2 of the FLOPs. From the authors' 0.9 and 0, merging alone can already keep less
than the target, the budget then pushes the prune thresholds down, and the clamp holds them at 0.
The authors' recipe is ``LearnConfig(merge_start=0.9, prune_start=0.0, prune_tau=tau, lr_prune=5e-6)``.

Learning ends by measuring threshold mode as it will run, on held-out images when given
(:mod:`ltmp_deploy.calibration.learn_check`).

Runs on ``device`` (default: CUDA when available, :mod:`ltmp_deploy.ltmp.device`), and under
``torchrun`` as DistributedDataParallel, each process on the GPU of its LOCAL_RANK (nccl), or on
the CPU (gloo); rank 0 writes the checkpoints. ``LearnConfig.autocast`` runs the forward pass in
bf16; the thresholds, the loss and the optimizer stay fp32. A checkpoint is written after every
epoch, with a resume file beside it, so an interrupted run continues from the last finished epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ltmp_deploy.calibration.learn_check import ThresholdCheck, check_threshold_mode, report
from ltmp_deploy.calibration.learn_config import LearnConfig
from ltmp_deploy.data.folder import unreadable_marks, warn_skipped
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.ltmp.checkpoint import read_metadata, save_checkpoint
from ltmp_deploy.ltmp.device import autocast, distributed, placed
from ltmp_deploy.ltmp.flops import flops_ratio_of_token_means, image_flops, soft_token_means
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer

PRUNE_START_REMOVES = 0.01  # the prune start: where pruning alone removes this much of the block FLOPs
START_STEPS = 14  # bisection steps of an automatic start: to 1e-4 of a merge threshold, where blank patches sit
NO_MERGE = 2.0  # a merge threshold above every cosine similarity, to measure pruning alone


@dataclass
class EpochStats:
    epoch: int
    loss: float
    flops_ratio: float
    accuracy: float


class _TrainStep(nn.Module):
    """images -> (logits, soft token means per block): one module, so DDP sees the whole forward.

    With ``precision`` the forward pass runs in autocast; what it returns is fp32, so the loss and
    the FLOPs budget are computed in fp32 whatever the forward ran in."""

    def __init__(self, model: LTMPVisionTransformer, device: torch.device, precision: str | None = None) -> None:
        super().__init__()
        self.model, self.device, self.precision = model, device, precision

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.precision):
            out = self.model.forward_ltmp(images)
            means = soft_token_means(out.decisions)
        return out.logits.float(), means.float()


def _global_ratio(model: LTMPVisionTransformer, means: torch.Tensor, world: int) -> torch.Tensor:
    """The kept FLOPs ratio of the global batch, whose gradient on each process is its own share.

    The ratio is not linear in the token means, so the mean of per-process ratios is not the ratio
    of the global batch. The means are averaged over processes (detached); the local means' gradient
    is let through, and DDP's gradient averaging then gives exactly the one-process gradient."""
    if world > 1:
        total = means.detach().clone()
        dist.all_reduce(total)
        means = total / world + (means - means.detach())
    return flops_ratio_of_token_means(model, means)


def _threshold_params(model: LTMPVisionTransformer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    merge = [b.merge_masker.threshold for b in model.blocks]
    prune = [b.prune_masker.threshold for b in model.blocks]
    return merge, prune


def _trained_thresholds(model: LTMPVisionTransformer, cfg: LearnConfig) -> list[nn.Parameter]:
    merge, prune = _threshold_params(model)
    return merge if cfg.merge_only else merge + prune


def _start(model: LTMPVisionTransformer, cfg: LearnConfig, data: Dataset | None) -> None:
    """The temperatures of the masks and, given the training data, the start values."""
    n, depth = model.ltmp_num_tokens, len(model.blocks)
    model.ltmp.tau = cfg.tau
    model.ltmp.prune_tau = cfg.tau / n if cfg.prune_tau is None else cfg.prune_tau
    if data is None:
        return
    images = None
    if (cfg.prune_start is None and not cfg.merge_only) or cfg.merge_start is None:
        images = _sample(data, cfg.batch_size, cfg.seed).to(next(model.parameters()).device)
    prune = cfg.prune_start
    if cfg.merge_only:
        prune = 0.0
    elif prune is None:
        prune = start_at_edge(model, images, "prune", 1.0 - PRUNE_START_REMOVES, other=NO_MERGE)
    merge = cfg.merge_start
    if merge is None:
        merge = start_at_edge(model, images, "merge", (1.0 + cfg.target) / 2, other=prune)
    model.ltmp_set_thresholds([merge] * depth, [prune] * depth)


def _sample(data: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images of ``data`` drawn at random (seeded): folders list one class after another."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([torch.as_tensor(data[int(i)][0]) for i in order])


@torch.no_grad()
def start_at_edge(model: LTMPVisionTransformer, images: torch.Tensor, which: str, keep: float, other: float) -> float:
    """The threshold of ``which`` ("merge" or "prune", the other's thresholds at ``other``) that removes
    the most while threshold mode still keeps ``keep`` of the block FLOPs of ``images``.

    Bisected: a merge threshold in [0, 1] (lower merges more), a prune threshold in [0, 1 / tokens]
    (higher prunes more; some token's importance lies below the mean 1 / tokens), each to 2^-14 of
    its range."""
    model.eval()
    model.ltmp_set_mode("threshold")
    depth, merging = len(model.blocks), which == "merge"
    safe, risky = (1.0, 0.0) if merging else (0.0, 1.0 / model.ltmp_num_tokens)
    for _ in range(START_STEPS):
        mid = (safe + risky) / 2
        merge, prune = (mid, other) if merging else (other, mid)
        model.ltmp_set_thresholds([merge] * depth, [prune] * depth)
        flops = [r.ratio for r in image_flops(model, model.forward_ltmp(images).decisions)]
        safe, risky = (mid, risky) if sum(flops) / len(flops) >= keep else (safe, mid)
    return safe


def _optimizer(model: LTMPVisionTransformer, cfg: LearnConfig) -> torch.optim.Optimizer:
    merge, prune = _threshold_params(model)
    trained_ids = {id(p) for p in _trained_thresholds(model, cfg)}
    ids = {id(p) for p in merge + prune}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained_ids or (cfg.finetune and id(p) not in ids))
    groups = [{"params": merge, "lr": cfg.lr_merge}]
    if not cfg.merge_only:
        groups.append({"params": prune, "lr": cfg.lr_prune})
    if cfg.finetune:
        groups.append({"params": [p for p in model.parameters() if id(p) not in ids], "lr": cfg.lr_model})
    return torch.optim.SGD(groups, momentum=0.0, weight_decay=0.0)


def resume_path(output: Path) -> Path:
    return output.with_name(output.name + ".resume.pt")


@dataclass
class LearnResult(Sequence):
    """What learning did: the statistics of every epoch run (a sequence of :class:`EpochStats`, as
    learning returned before) and threshold mode's check on held-out images (None on ranks other than 0)."""

    history: list[EpochStats]
    check: ThresholdCheck | None = None
    start: tuple[list[float], list[float]] = ([], [])  # the merge and prune thresholds learning started from

    def __getitem__(self, i: Any) -> Any:
        return self.history[i]

    def __len__(self) -> int:
        return len(self.history)


@dataclass
class _Run:
    """The state of one learning run, across its epochs."""

    model: LTMPVisionTransformer
    step: nn.Module
    loader: DataLoader
    sampler: Any
    order: torch.Generator
    device: torch.device
    optimizer: Any
    scheduler: Any
    start: int
    rank: int
    world: int


def learn_thresholds(
    model: LTMPVisionTransformer,
    data: Dataset,
    output: str | os.PathLike | None = None,
    cfg: LearnConfig | None = None,
    *,
    heldout: Dataset | None = None,
    heldout_name: str = "held-out",
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> LearnResult:
    """Train the thresholds of ``model`` on ``data``; write ``output`` (if given) after every epoch.

    Then threshold mode is measured on ``heldout`` (a sample of ``data`` when None, named "train") and
    printed with ``progress``; a FLOPs ratio more than ``learn_check.FLOPS_TOLERANCE`` from the target warns.
    ``device``: where it runs (see :func:`~ltmp_deploy.ltmp.device.resolve_device`); the model is back
    where it was after.
    """
    if cfg is None:
        raise LTMPError("learning needs a LearnConfig with at least its FLOPs target")
    cfg.check()
    output = ensure_writable(output) if output is not None else None
    if len(data) == 0:
        raise LTMPError("the training data holds no images")
    if resume and output is None:
        raise LTMPError("resume needs the output checkpoint to resume from")
    with placed(model, device) as where:
        run = _setup(model, data, cfg, output, resume, where)
        start = model.ltmp_thresholds() if run.start == 0 else ([], [])  # a resumed run started before
        if start[0] and progress and run.rank == 0:
            print(
                f"start: merge thresholds {start[0][0]:.5f}, prune thresholds {start[1][0]:.3g} "
                f"(prune mask temperature {model.ltmp.prune_tau:.3g})"
            )
        history = [_epoch(run, cfg, epoch, output, progress) for epoch in range(run.start, cfg.epochs)]
        _warn_skipped(data, run)
        model.eval()
        model.ltmp_set_mode("threshold")
        check = None
        if run.rank == 0:
            named = (heldout_name, heldout) if heldout is not None else ("train", data)
            check = _check(model, cfg, *named, output, progress, where)
        if run.world > 1:
            dist.barrier()
    return LearnResult(history, check, start)


def _setup(
    model: LTMPVisionTransformer,
    data: Dataset,
    cfg: LearnConfig,
    output: Path | None,
    resume: bool,
    device: torch.device,
) -> _Run:
    rank, world = distributed(device)
    torch.manual_seed(cfg.seed)
    resuming = resume and resume_path(output).is_file()
    _start(model, cfg, None if resuming else data)  # a resumed run takes its thresholds from the resume file
    model.ltmp_set_mode("train")
    optimizer = _optimizer(model, cfg)
    loader, sampler, order = _loader(data, cfg, rank, world)
    total_steps = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    start = _load_resume(resume_path(output), model, optimizer, scheduler) if resuming else 0
    step = _TrainStep(model, device, cfg.autocast)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None  # this process's GPU; None on the CPU
        step = nn.parallel.DistributedDataParallel(step, device_ids=ids)
    return _Run(model, step, loader, sampler, order, device, optimizer, scheduler, start, rank, world)


def _epoch(run: _Run, cfg: LearnConfig, epoch: int, output: Path | None, progress: bool) -> EpochStats:
    # The order of every epoch depends on the seed and the epoch only, so a resumed run
    # sees exactly the batches an uninterrupted one would have.
    run.order.manual_seed(cfg.seed + epoch)
    run.sampler.set_epoch(epoch)
    quiet = not progress or run.rank != 0
    bar = tqdm(run.loader, desc=f"learn epoch {epoch + 1}/{cfg.epochs}", disable=quiet, leave=False)
    last_good = output if epoch > run.start else None
    sums = _train_epoch(run, bar, cfg, epoch, last_good)
    if run.world > 1:
        sums = _all_reduce(sums, run.device)
    stats = EpochStats(epoch + 1, float(sums[0] / sums[3]), float(sums[1] / sums[3]), float(sums[2] / sums[3]))
    if run.rank == 0 and output is not None:
        _save_epoch(run.model, output, cfg, stats, run.optimizer, run.scheduler)
    if not quiet:
        print(
            f"epoch {stats.epoch}: loss {stats.loss:.4f}, FLOPs kept {stats.flops_ratio:.3f}, "
            f"train accuracy {stats.accuracy:.3f}" + (f", checkpoint {output}" if output else "")
        )
    if run.world > 1:
        dist.barrier()
    return stats


def _check(
    model: LTMPVisionTransformer,
    cfg: LearnConfig,
    name: str,
    data: Dataset,
    output: Path | None,
    progress: bool,
    device: torch.device,
) -> ThresholdCheck:
    """Threshold mode on ``data``, reported, and recorded beside the learning record in the checkpoint's
    metadata (the weights are written again unchanged)."""
    check = check_threshold_mode(model, data, cfg.target, name, cfg.check_images, device=device)
    report(check, progress)
    if output is not None and output.is_file():
        learned = read_metadata(output).get("learn", {})
        save_checkpoint(model, output, extra={"learn": {**learned, "check": check.to_dict()}})
    return check


def _warn_skipped(data: Dataset, run: _Run) -> None:
    marks = unreadable_marks(data)
    if marks is not None and run.world > 1:
        marks.copy_(_all_reduce(marks.int(), run.device, dist.ReduceOp.MAX))
    if run.rank == 0:
        warn_skipped(data)


def _all_reduce(tensor: torch.Tensor, device: torch.device, op: Any = None) -> torch.Tensor:
    """``tensor`` reduced over the processes, back where it was: nccl reduces only tensors on the GPU."""
    on_device = tensor.to(device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM if op is None else op)
    return on_device.to(tensor.device)


def _loader(data: Dataset, cfg: LearnConfig, rank: int, world: int) -> tuple[DataLoader, Any, torch.Generator]:
    """Batches of ``data``: each process takes its share of the global batch; the order is seeded.

    One process uses the same sampler as many: global batch ``b`` is then the same images however
    many processes share it (process ``p`` takes every ``world``-th image of it)."""
    sampler = torch.utils.data.DistributedSampler(data, world, rank, shuffle=True, seed=cfg.seed)
    order = torch.Generator()  # the workers' seeds
    loader = DataLoader(
        data,
        batch_size=max(1, cfg.batch_size // world),
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=len(data) >= cfg.batch_size,
        generator=order,
    )
    return loader, sampler, order


def _train_epoch(run: _Run, batches: Any, cfg: LearnConfig, epoch: int, last_good: Path | None) -> torch.Tensor:
    """One pass of the budget loss; returns the sums of (loss, FLOPs ratio, correct, seen)."""
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    trained = _trained_thresholds(model, cfg)
    model.train()
    sums = torch.zeros(4)
    for images, labels in batches:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        logits, means = run.step(images)
        ratio = _global_ratio(model, means, run.world)
        loss = criterion(logits, labels) + cfg.lam * (ratio - cfg.target) ** 2
        if not torch.isfinite(loss):
            raise LTMPError(
                f"loss became {float(loss.detach())} in epoch {epoch + 1}: lower --lr-merge/--lr-prune or raise "
                f"--tau; the last good checkpoint is {last_good or 'not written yet'}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for p in trained:
                p.clamp_(0.0, 1.0)
        n = len(labels)
        correct = float((logits.argmax(-1) == labels).sum())
        sums += torch.tensor([float(loss.detach()) * n, float(ratio.detach()) * n, correct, n])
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(
                loss=f"{sums[0] / sums[3]:.3f}", flops=f"{sums[1] / sums[3]:.3f}", acc=f"{sums[2] / sums[3]:.3f}"
            )
    return sums


def _save_epoch(
    model: LTMPVisionTransformer, output: Path, cfg: LearnConfig, stats: EpochStats, optimizer: Any, scheduler: Any
) -> None:
    """The checkpoint (threshold mode, ready to use) and the resume state, each written whole."""
    model.ltmp_set_mode("threshold")
    save_checkpoint(
        model, output, extra={"learn": {"config": asdict(cfg), "epoch": stats.epoch, "stats": asdict(stats)}}
    )
    model.ltmp_set_mode("train")
    with atomic_output(resume_path(output)) as tmp:
        torch.save(
            {
                "epoch": stats.epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "model": model.state_dict(),
            },
            tmp,
        )


def _load_resume(path: Path, model: LTMPVisionTransformer, optimizer: Any, scheduler: Any) -> int:
    from ltmp_deploy.formats import FileKind, sniff

    kind = sniff(path)
    if kind not in (FileKind.TORCH_ZIP, FileKind.TORCH_PICKLE):
        raise LTMPError(f"{path}: cannot resume from this file, it is {kind.human}; delete it to start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["epoch"])
    except Exception as err:  # noqa: BLE001  (torch.load raises many kinds, with pages of advice)
        reason = first_line(err, 200)
        raise LTMPError(
            f"{path}: cannot resume from this file, it may be truncated or corrupt ({reason}); delete it to start over"
        ) from err
