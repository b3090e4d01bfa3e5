"""Which optional part of the install each import belongs to, and the pip command that adds it.

The base install is the field runtime (no torch). The full toolkit is the ``full`` extra; ONNX
Runtime is the ``cpu`` or ``gpu`` extra; TensorRT comes from JetPack or NVIDIA's index. A command
that needs a part that is not installed says so in one line with the command to run.
"""

from __future__ import annotations

import importlib.util
import sys

from ltmp_deploy.errors import LTMPError

FULL = 'pip install "ltmp-deploy[full,cpu]"'
#: The oldest Python the full toolkit runs on; the field runtime runs on 3.8 (JetPack 5.1).
FULL_PYTHON = (3, 10)
if sys.version_info < FULL_PYTHON:
    # The extra is empty here (environment markers): installing it would change nothing.
    FULL = (
        f"the toolkit needs Python {'.'.join(map(str, FULL_PYTHON))} or newer and this is "
        f"{sys.version_info[0]}.{sys.version_info[1]}; on a workstation with a newer Python, {FULL}"
    )
ORT = (
    "pip install onnxruntime, or onnxruntime-gpu for the CUDA and TensorRT providers "
    '(the "ltmp-deploy[cpu]" and "ltmp-deploy[gpu]" extras); never both'
)
TENSORRT = "JetPack ships TensorRT on a Jetson (python3-libnvinfer); elsewhere pip install tensorrt from NVIDIA's index"

# Top-level module -> (what it is for, how to install it).
PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("the full toolkit", FULL),
    "timm": ("the full toolkit", FULL),
    "torchvision": ("the full toolkit", FULL),
    "safetensors": ("the full toolkit", FULL),
    "sklearn": ("the full toolkit", FULL),
    "onnxscript": ("the full toolkit", FULL),
    "onnxslim": ("the full toolkit", FULL),
    "matplotlib": ("the full toolkit", FULL),
    "onnxruntime": ("ONNX Runtime", ORT),
    "tensorrt": ("TensorRT", TENSORRT),
}
FULL_TOOLKIT = ("torch", "timm", "safetensors", "sklearn", "onnxscript", "onnxslim")


def installed_versions(dists: tuple[str, ...]) -> dict[str, str | None]:
    """The Python version and each of ``dists``' installed version (None when it is not installed),
    read from the distributions' metadata: nothing is imported."""
    import importlib.metadata
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def missing(modules: tuple[str, ...] = FULL_TOOLKIT) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require_full(command: str) -> None:
    """Refuse ``command`` in one line when the full toolkit is not installed."""
    absent = missing()
    if absent:
        raise LTMPError(f"{command} needs the full toolkit ({', '.join(absent)} not installed here): {FULL}")


def explain_missing(err: ModuleNotFoundError) -> LTMPError | None:
    """A one-line LTMPError for an optional package that is missing, or None for anything else."""
    top = (err.name or "").split(".")[0]
    if top not in PACKAGES:
        return None
    what, how = PACKAGES[top]
    return LTMPError(f"needs {top} ({what}), which is not installed here: {how}")
