"""ltmp-deploy: learned-threshold token merging and pruning for deployable Vision Transformers.

The front door, loaded lazily so that ``import ltmp_deploy`` (and the runtime on a field device)
never pulls in torch:

    import ltmp_deploy as ld
    model = ld.create_model("deit_small_patch16_224", weights="deit_small.safetensors")
    ld.calibrate(model, flops_target=0.5); ld.export_onnx(model, "fixed.onnx")

(``ltmp_deploy.api`` explains each call.)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Name -> module: the whole job (create or load, learn, calibrate, export, validate, build, run).
_LAZY = {
    "create_model": "ltmp_deploy.ltmp.checkpoint",
    "load": "ltmp_deploy.ltmp.checkpoint",
    "save_checkpoint": "ltmp_deploy.ltmp.checkpoint",
    "learn": "ltmp_deploy.api",
    "calibrate": "ltmp_deploy.api",
    "export_onnx": "ltmp_deploy.export.onnx_export",
    "validate": "ltmp_deploy.api",
    "build": "ltmp_deploy.api",
    "Session": "ltmp_deploy.runtime.session",
    "LTMPError": "ltmp_deploy.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltmp_deploy' has no attribute {name!r}")


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
