"""Where the PyTorch side runs: the GPU when there is one, each torchrun process on its own GPU.

Learning, calibration, evaluation and the PyTorch reference take a ``device``: ``None`` or
``"auto"`` picks CUDA when torch sees a GPU (under torchrun, the GPU of the process's
``LOCAL_RANK``) and the CPU otherwise; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` say so outright.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ltmp_deploy.errors import LTMPError

AUTO = "auto"
AUTOCAST = ("bf16", "fp16")  # mixed precision for learning; thresholds and the optimizer stay fp32


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device ``device`` names (None or "auto": CUDA when available, else the CPU)."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == AUTO:
        return _local_gpu() if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise LTMPError(f"--device {device!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise LTMPError(f"--device {device}: torch {torch.__version__} sees no CUDA device here")
        if chosen.index is None:
            return _local_gpu()
        if chosen.index >= torch.cuda.device_count():
            raise LTMPError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here")
    elif chosen.type != "cpu":
        raise LTMPError(f"--device {device}: only cpu and cuda are supported")
    return chosen


@contextlib.contextmanager
def placed(model: torch.nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """``model`` on ``device`` (resolved, and yielded) for the duration, then back where it was: the
    caller's model stays where it expects it (export and saving read it on the CPU)."""
    where, home = resolve_device(device), next(model.parameters()).device
    model.to(where)
    try:
        yield where
    finally:
        model.to(home)


def _local_gpu() -> torch.device:
    """The GPU of this process: under torchrun, its LOCAL_RANK's (so no two processes share one)."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); under torchrun, starts the process group: nccl on CUDA, gloo on the CPU.

    Each process then works on its own GPU (``resolve_device`` picks it from LOCAL_RANK), so
    the tensors nccl reduces are on the device it expects."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str | None) -> Iterator[None]:
    """Mixed precision for the forward pass (``"bf16"``, ``"fp16"``), or none for None."""
    if precision is None:
        yield
        return
    if precision not in AUTOCAST:
        raise LTMPError(f"--autocast {precision!r}: choose one of {', '.join(AUTOCAST)}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 on CUDA for the duration: cuDNN's convolutions default to it on Ampere and newer, and
    its ~1e-3 relative error would fail a parity check whose reference must be plain fp32."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
