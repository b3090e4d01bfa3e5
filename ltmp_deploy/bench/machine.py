"""What a benchmark ran on: CPU, cores, threads, load, GPU and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from ltmp_deploy.extras import installed_versions

# Distributions whose versions a result records (onnxruntime-gpu stands in for onnxruntime).
VERSIONED = (
    "torch",
    "timm",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxslim",
    "polygraphy",
    "tensorrt",
    "ltmp-deploy",
)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    found = installed_versions(VERSIONED)
    if found.get("onnxruntime-gpu") is None:
        found.pop("onnxruntime-gpu", None)
    return found


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: how busy the machine was (other jobs slow every variant)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which a container or taskset may cut."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(threads: int, gpu_index: int = 0) -> dict[str, Any]:
    """The machine a bench ran on; ``gpu_index``: the GPU torch-cuda took (``--device cuda:N``)."""
    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(gpu_index),
            "cuda": torch.version.cuda,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(gpu_index))),
        }
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "load_average_start": load_average(),
        "os": platform.platform(),
        "gpu": gpu,
        "versions": versions(),
    }
