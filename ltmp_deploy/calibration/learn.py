"""Learning the thresholds: LTMP's budget loss with straight-through masks (docs/arithmetic.md#training-the-thresholds).

Reference recipe: one epoch, plain SGD (no momentum, no weight decay), cosine schedule, batch
128, label smoothing 0.1, ``lambda`` 10, ``tau`` 0.1, learning rate 5e-6 for the prune thresholds
and 5e-3 for the merge thresholds, only the thresholds trainable, thresholds clamped to [0, 1]
after every step. Loss: ``CE + lambda * (r_flops - r_target)^2`` with ``r_flops`` the fraction of
the unpatched block FLOPs the masks keep.

Runs under ``torchrun`` as DistributedDataParallel (gloo on CPU, nccl on GPUs); rank 0 writes
the checkpoints. A checkpoint is written after every epoch, with a resume file beside it, so an
interrupted run continues from the last finished epoch.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ltmp_deploy.calibration.learn_config import LearnConfig
from ltmp_deploy.data.folder import unreadable_marks, warn_skipped
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.ltmp.checkpoint import save_checkpoint
from ltmp_deploy.ltmp.flops import flops_ratio_of_token_means, soft_token_means
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer


@dataclass
class EpochStats:
    epoch: int
    loss: float
    flops_ratio: float
    accuracy: float


class _TrainStep(nn.Module):
    """images -> (logits, soft token means per block): one module, so DDP sees the whole forward."""

    def __init__(self, model: LTMPVisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_ltmp(images)
        return out.logits, soft_token_means(out.decisions)


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


def _optimizer(model: LTMPVisionTransformer, cfg: LearnConfig) -> torch.optim.Optimizer:
    merge, prune = _threshold_params(model)
    ids = {id(p) for p in merge + prune}
    for p in model.parameters():
        p.requires_grad_(cfg.finetune or id(p) in ids)
    groups = [{"params": merge, "lr": cfg.lr_merge}, {"params": prune, "lr": cfg.lr_prune}]
    if cfg.finetune:
        groups.append({"params": [p for p in model.parameters() if id(p) not in ids], "lr": cfg.lr_model})
    return torch.optim.SGD(groups, momentum=0.0, weight_decay=0.0)


def resume_path(output: Path) -> Path:
    return output.with_name(output.name + ".resume.pt")


def learn_thresholds(
    model: LTMPVisionTransformer,
    data: Dataset,
    output: str | os.PathLike | None = None,
    cfg: LearnConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[EpochStats]:
    """Train the thresholds of ``model`` on ``data``; write ``output`` (if given) after every epoch."""
    if cfg is None:
        raise LTMPError("learning needs a LearnConfig with at least its FLOPs target")
    cfg.check()
    output = ensure_writable(output) if output is not None else None
    if len(data) == 0:
        raise LTMPError("the training data holds no images")
    if resume and output is None:
        raise LTMPError("resume needs the output checkpoint to resume from")
    rank, world = _distributed()
    torch.manual_seed(cfg.seed)
    model.ltmp.tau = cfg.tau
    model.ltmp_set_mode("train")
    optimizer = _optimizer(model, cfg)
    loader, sampler, order = _loader(data, cfg, rank, world)
    total_steps = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    start = 0
    if resume and resume_path(output).is_file():
        start = _load_resume(resume_path(output), model, optimizer, scheduler)
    step = _TrainStep(model)
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step)
    history = []
    for epoch in range(start, cfg.epochs):
        # The order of every epoch depends on the seed and the epoch only, so a resumed run
        # sees exactly the batches an uninterrupted one would have.
        order.manual_seed(cfg.seed + epoch)
        sampler.set_epoch(epoch)
        bar = tqdm(loader, desc=f"learn epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
        sums = _train_epoch(model, step, bar, optimizer, scheduler, cfg, epoch, output if epoch > start else None)
        if world > 1:
            dist.all_reduce(sums)
        stats = EpochStats(epoch + 1, float(sums[0] / sums[3]), float(sums[1] / sums[3]), float(sums[2] / sums[3]))
        history.append(stats)
        if rank == 0 and output is not None:
            _save_epoch(model, output, cfg, stats, optimizer, scheduler)
        if rank == 0 and progress:
            print(
                f"epoch {stats.epoch}: loss {stats.loss:.4f}, FLOPs kept {stats.flops_ratio:.3f}, "
                f"train accuracy {stats.accuracy:.3f}" + (f", checkpoint {output}" if output else "")
            )
        if world > 1:
            dist.barrier()
    _warn_skipped(data, rank, world)
    model.eval()
    model.ltmp_set_mode("threshold")
    return history


def _warn_skipped(data: Dataset, rank: int, world: int) -> None:
    marks = unreadable_marks(data)
    if marks is not None and world > 1:
        combined = marks.int()
        dist.all_reduce(combined, op=dist.ReduceOp.MAX)
        marks.copy_(combined)
    if rank == 0:
        warn_skipped(data)


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


def _train_epoch(
    model: LTMPVisionTransformer,
    step: nn.Module,
    batches: Any,
    optimizer: Any,
    scheduler: Any,
    cfg: LearnConfig,
    epoch: int,
    last_good: Path | None,
) -> torch.Tensor:
    """One pass of the budget loss; returns the sums of (loss, FLOPs ratio, correct, seen)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    merge, prune = _threshold_params(model)
    model.train()
    sums = torch.zeros(4)
    world = dist.get_world_size() if dist.is_initialized() else 1
    for images, labels in batches:
        logits, means = step(images)
        ratio = _global_ratio(model, means, world)
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
            for p in merge + prune:
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


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)
