"""The recipe of threshold learning, as one dataclass whose fields carry their command-line options
(:mod:`ltmp_deploy.options`). Imports no torch: the CLI builds its parser from it everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.options import fraction, non_negative_float, non_negative_int, option, positive_float, positive_int

AUTOCAST = ("bf16",)


@dataclass
class LearnConfig:
    target: float = field(
        metadata=option("--target", type=fraction, help="fraction of the unpatched block FLOPs to keep, in (0, 1]")
    )
    epochs: int = field(
        default=1,
        metadata=option(
            "--epochs",
            type=positive_int,
            help="training epochs (1 is the paper's recipe on ImageNet; small sets need more)",
        ),
    )
    batch_size: int = field(default=128, metadata=option("--batch-size", type=positive_int, help="images per step"))
    lr_prune: float = field(
        default=1e-5,
        metadata=option(
            "--lr-prune", type=positive_float, help="learning rate of the prune thresholds (authors': 5e-6)"
        ),
    )
    lr_merge: float = field(
        default=5e-3, metadata=option("--lr-merge", type=positive_float, help="learning rate of the merge thresholds")
    )
    lr_model: float = field(
        default=1e-5,
        metadata=option(
            "--lr-model", type=positive_float, help="with --finetune: the learning rate of every other weight"
        ),
    )
    lam: float = field(
        default=10.0, metadata=option("--lambda", type=non_negative_float, help="weight of the FLOPs budget term")
    )
    tau: float = field(default=0.1, metadata=option("--tau", type=positive_float, help="temperature of the soft masks"))
    # Temperature of the prune mask, in units of importance; None: tau / tokens. Importance is attention
    # received, which averages 1/tokens, so at tau itself the mask is flat across tokens.
    prune_tau: float | None = field(
        default=None,
        metadata=option(
            "--prune-tau", type=positive_float, help="of the prune mask (default tau/tokens; authors': tau)"
        ),
    )
    # Start values of every merge / prune threshold. None: pruning starts at its edge, where it removes
    # 1% of the block FLOPs (so its mask has a gradient), and merging where, with pruning at its start,
    # 1 - (1 + target) / 2 is removed: the budget then asks both to remove more. The authors' recipe
    # starts at 0.9 and 0 (apply_patch's values).
    merge_start: float | None = field(
        default=None,
        metadata=option(
            "--merge-start", type=non_negative_float, help="default: keeping (1 + target) / 2 (authors': 0.9)"
        ),
    )
    prune_start: float | None = field(
        default=None,
        metadata=option("--prune-start", type=non_negative_float, help="default: where pruning starts (authors': 0)"),
    )
    merge_only: bool = field(
        default=False,
        metadata=option("--merge-only", action="store_true", help="hold the prune thresholds at 0: merging alone"),
    )
    label_smoothing: float = 0.1
    finetune: bool = field(
        default=False,
        metadata=option("--finetune", action="store_true", help="train every weight, not only the thresholds"),
    )
    seed: int = field(default=0, metadata=option("--seed", type=non_negative_int, help="random seed"))
    workers: int = field(
        default=0, metadata=option("--workers", type=non_negative_int, help="data loader worker processes")
    )
    # Mixed precision of the forward pass. The thresholds, the loss, the budget and the optimizer stay
    # fp32 (the masks' sigmoid upcasts its input). bf16 only: fp16 would need loss scaling.
    autocast: str | None = field(
        default=None,
        metadata=option(
            "--autocast",
            choices=AUTOCAST,
            help="run the forward pass in bf16 autocast (CUDA, or CPUs with bf16); the thresholds stay fp32",
        ),
    )
    check_images: int = field(
        default=5000,
        metadata=option(
            "--check-images", type=non_negative_int, help="held-out images threshold mode is checked on after (0: all)"
        ),
    )

    def check(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise LTMPError(f"--target {self.target}: the fraction of FLOPs kept must lie in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise LTMPError("--epochs and --batch-size must be at least 1")
        if min(self.lr_prune, self.lr_merge, self.lr_model, self.tau) <= 0 or self.lam < 0:
            raise LTMPError("learning rates and --tau must be positive, --lambda not negative")
        if self.prune_tau is not None and self.prune_tau <= 0:
            raise LTMPError(f"--prune-tau {self.prune_tau}: must be positive")
        for name, value in (("--merge-start", self.merge_start), ("--prune-start", self.prune_start)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise LTMPError(f"{name} {value}: thresholds lie in [0, 1]")
        if self.autocast is not None and self.autocast not in AUTOCAST:
            raise LTMPError(f"--autocast {self.autocast!r}: choose one of {', '.join(AUTOCAST)}")
        if self.check_images < 0:
            raise LTMPError(f"--check-images {self.check_images}: must not be negative")


__all__ = ["LearnConfig"]
