"""What ``ltmp-deploy cost`` measures, as one dataclass whose fields carry their command-line options
(:mod:`ltmp_deploy.options`). Imports no torch: the CLI builds its parser from it everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ltmp_deploy.bench.config import ModelChoice
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.options import option, positive_int

COST_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda")


@dataclass
class CostConfig(ModelChoice):
    backend: str = field(
        default="onnxruntime-cpu",
        metadata=option("--backend", choices=COST_BACKENDS, help="the backend the deployment runs on"),
    )
    batches: Sequence[int] = field(
        default=(1, 8),
        metadata=option("--batch", type=positive_int, nargs="+", metavar="N", help="the deployment's batch sizes"),
    )
    threads: int = field(
        default=1,
        metadata=option("--threads", metavar="N", type=positive_int, help="ONNX Runtime's CPU threads"),
    )
    step: int = field(
        default=4,
        metadata=option("--step", metavar="N", type=positive_int, help="token counts of the block table, every N"),
    )
    reduce_step: int = field(
        default=8,
        metadata=option(
            "--reduce-step", metavar="N", type=positive_int, help="token counts of the reducing blocks' tables, every N"
        ),
    )
    rounds: int = field(
        default=15,
        metadata=option("--rounds", metavar="N", type=positive_int, help="timed rounds, every graph once per round"),
    )
    repeats: int = field(
        default=3,
        metadata=option("--repeats", metavar="N", type=positive_int, help="calls per graph and round, averaged"),
    )

    def check(self) -> None:
        if self.backend not in COST_BACKENDS:
            raise LTMPError(f"--backend {self.backend}: choose from {', '.join(COST_BACKENDS)}")
        for flag, value in (("--threads", self.threads), ("--step", self.step), ("--rounds", self.rounds)):
            if value < 1:
                raise LTMPError(f"{flag} {value}: must be at least 1")
        if not self.batches or min(self.batches) < 1 or len(set(self.batches)) != len(self.batches):
            raise LTMPError(f"--batch {list(self.batches)}: distinct batch sizes of at least 1")


__all__ = ["COST_BACKENDS", "CostConfig"]
