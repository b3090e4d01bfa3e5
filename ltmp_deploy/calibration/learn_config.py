"""The recipe of threshold learning, as one dataclass whose fields carry their command-line options
(:mod:`ltmp_deploy.options`). Imports no torch: the CLI builds its parser from it everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.options import fraction, non_negative_float, non_negative_int, option, positive_float, positive_int


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
        default=5e-6, metadata=option("--lr-prune", type=positive_float, help="learning rate of the prune thresholds")
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
    label_smoothing: float = 0.1
    finetune: bool = field(
        default=False,
        metadata=option("--finetune", action="store_true", help="train every weight, not only the thresholds"),
    )
    seed: int = field(default=0, metadata=option("--seed", type=non_negative_int, help="random seed"))
    workers: int = field(
        default=0, metadata=option("--workers", type=non_negative_int, help="data loader worker processes")
    )

    def check(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise LTMPError(f"--target {self.target}: the fraction of FLOPs kept must lie in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise LTMPError("--epochs and --batch-size must be at least 1")
        if min(self.lr_prune, self.lr_merge, self.lr_model, self.tau) <= 0 or self.lam < 0:
            raise LTMPError("learning rates and --tau must be positive, --lambda not negative")


__all__ = ["LearnConfig"]
