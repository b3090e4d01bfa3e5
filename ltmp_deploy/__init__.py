"""ltmp-deploy: learned-threshold token merging and pruning for deployable Vision Transformers.

The front door, loaded lazily so that ``import ltmp_deploy`` (and the runtime on a field device)
never pulls in torch:

    from ltmp_deploy import create_model, load_checkpoint, export_onnx, Session
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "ltmp_deploy.ltmp.checkpoint",
    "load_checkpoint": "ltmp_deploy.ltmp.checkpoint",
    "save_checkpoint": "ltmp_deploy.ltmp.checkpoint",
    "apply_patch": "ltmp_deploy.ltmp.patch",
    "learn_thresholds": "ltmp_deploy.calibration.learn",
    "calibrate": "ltmp_deploy.calibration.schedule",
    "export_onnx": "ltmp_deploy.export.onnx_export",
    "Session": "ltmp_deploy.runtime.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltmp_deploy' has no attribute {name!r}")


__all__ = sorted(_LAZY)
