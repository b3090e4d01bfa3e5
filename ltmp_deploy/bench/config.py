"""What ``ltmp-deploy bench`` times, as one dataclass whose fields carry their command-line options
(:mod:`ltmp_deploy.options`). Imports no torch: the CLI builds its parser from it everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.options import device_option, fraction, non_negative_int, option, positive_int

BACKENDS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda", "onnxruntime-cuda", "tensorrt")
DTYPES = ("fp32", "fp16")


@dataclass
class ModelChoice:
    """The model a measuring command reads (bench, cost): the first fields of its config."""

    checkpoint: str | None = field(
        default=None,
        metadata=option(
            nargs="?",
            metavar="CHECKPOINT",
            help="toolkit checkpoint (.safetensors), or a timm model name / description JSON patched fresh "
            "(random weights unless --weights); default: the embedded base model",
        ),
    )
    weights: str | None = field(
        default=None, metadata=option("--weights", metavar="FILE", help="timm weights for a model name")
    )


@dataclass
class BenchConfig(ModelChoice):
    targets: Sequence[float] = field(
        default=(0.9, 0.75, 0.5),
        metadata=option(
            "--targets",
            type=fraction,
            nargs="*",
            metavar="F",
            help="fractions of block FLOPs for LTMP fixed, its oracle and ToMe",
        ),
    )
    threshold_target: float | None = field(
        default=0.5,
        metadata=option(
            "--threshold-target",
            type=fraction,
            metavar="F",
            help="threshold mode's thresholds are bisected to keep this fraction of block FLOPs on sample images",
            off=("--no-threshold", "leave threshold mode out"),
        ),
    )
    tome: bool = field(
        default=True,
        metadata=option(
            "--no-tome",
            action="store_false",
            help="leave ToMe out (with --compile it costs as long to compile as LTMP's fixed mode, every block "
            "at token counts of its own)",
        ),
    )
    from_checkpoint: bool = field(
        default=False,
        metadata=option(
            "--from-checkpoint",
            action="store_true",
            help="also time the checkpoint's own schedule (ltmp-fixed@calibrated, its oracle, ToMe at its "
            "FLOPs) and its own thresholds (ltmp-threshold@learned) instead of bisected ones",
        ),
    )
    batches: Sequence[int] = field(
        default=(1, 8, 32),
        metadata=option("--batch", type=positive_int, nargs="+", metavar="N", help="batch sizes"),
    )
    backends: Sequence[str] = field(
        default=BACKENDS,
        metadata=option(
            "--backends",
            nargs="+",
            metavar="NAME",
            help="the backends to time (those missing here are skipped with the reason)",
        ),
    )
    rounds: int = field(
        default=20,
        metadata=option(
            "--rounds", metavar="N", type=positive_int, help="timed rounds: every variant once per round, interleaved"
        ),
    )
    warmup: int = field(
        default=2,
        metadata=option("--warmup", metavar="N", type=non_negative_int, help="untimed calls per variant first"),
    )
    dtype: str = field(
        default="fp32",
        metadata=option(
            "--dtype",
            choices=DTYPES,
            help="precision of the model and its input on the PyTorch backends (fp16 on torch-cuda only); "
            "the exported graphs stay fp32",
        ),
    )
    compile: str | None = field(
        default=None,
        metadata=option(
            "--compile",
            nargs="?",
            const="inductor",
            metavar="BACKEND",
            help="also time torch.compile'd copies on the PyTorch backends (as torch-cpu+compile, torch-cuda+compile; "
            "BACKEND: torch.compile's, default inductor); a variant that fails to compile is skipped with the reason",
        ),
    )
    cuda_graph: bool = field(
        default=False,
        metadata=option(
            "--cuda-graph",
            action="store_true",
            help="also time every variant captured in a CUDA graph and replayed, as torch-cuda+graph "
            "(threshold mode cannot be captured: skipped with the reason)",
        ),
    )
    # The PyTorch backends are named for their device type; --device picks which GPU torch-cuda takes
    # (and with cpu, leaves it out), as it places the model of learn, calibrate and the rest.
    device: str | None = field(
        default=None,
        metadata=device_option(
            "the GPU of the torch-cuda backends: auto (the default: the GPU of LOCAL_RANK, cuda:0 alone, when "
            "CUDA is available), cuda or cuda:N; cpu leaves torch-cuda out (torch-cpu stays). A device this "
            "machine lacks is a one-line error (exit 2)"
        ),
    )
    threads: int | None = field(
        default=1,
        metadata=option(
            "--threads",
            metavar="N",
            type=positive_int,
            help="CPU threads for PyTorch and ONNX Runtime (default 1: steady figures on a shared machine; "
            "give the deployment's thread count to time what it gets)",
        ),
    )
    opset: int = field(
        default=17,
        metadata=option(
            "--opset",
            metavar="N",
            type=positive_int,
            help="ONNX opset of every exported graph (threshold mode needs 17)",
        ),
    )
    merge_threshold: float = field(
        default=0.8,
        metadata=option(
            "--merge-threshold", type=float, help="threshold mode's merge threshold when its thresholds are bisected"
        ),
    )
    workdir: str | None = field(
        default=None,
        metadata=option(
            "--workdir", metavar="DIR", help="keep the exported graphs (and engines) here (default: a temporary folder)"
        ),
    )
    data: str | None = field(
        default=None,
        metadata=option(
            "--data",
            metavar="DIR",
            help="time held-out images of this image folder (or 'digits'): threshold mode's cost depends on them "
            "(default: the export check's sample images)",
        ),
    )
    note: str = field(
        default="",
        metadata=option("--note", metavar="TEXT", help="a line for the results' header, e.g. how busy the machine was"),
    )
    command: str = ""  # the command line that repeats the run, for the results' header
    progress: bool = True

    def check(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise LTMPError(f"--batch {list(self.batches)}: batch sizes must be at least 1")
        if self.rounds < 1 or self.warmup < 0:
            raise LTMPError(f"--rounds {self.rounds} / --warmup {self.warmup}: at least one round, no negative warm-up")
        if self.threads is not None and self.threads < 1:
            raise LTMPError(f"--threads {self.threads}: at least 1")
        for backend in self.backends:
            if backend not in BACKENDS:
                raise LTMPError(f"--backends {backend}: choose from {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise LTMPError(f"--dtype {self.dtype}: choose from {', '.join(DTYPES)}")
        if self.dtype == "fp16" and "torch-cpu" in self.backends:
            raise LTMPError("--dtype fp16: PyTorch runs fp16 on CUDA only; leave torch-cpu out of --backends")
        if self.cuda_graph and "torch-cuda" not in self.backends:
            raise LTMPError("--cuda-graph: CUDA graphs are captured on torch-cuda; add it to --backends")


__all__ = ["BACKENDS", "DTYPES", "BenchConfig"]
