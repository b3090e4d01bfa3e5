"""Class names a model carries (checkpoint and ONNX metadata ``labels``), so predictions and audit
logs name classes instead of numbering them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError


def check_labels(labels: Any, num_classes: int, where: str) -> list[str]:
    """``labels`` as a list of ``num_classes`` distinct non-empty names, else one line naming ``where``."""
    if not isinstance(labels, Sequence) or isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
        raise LTMPError(f"{where}: class names must be a list of strings")
    names = [x.strip() for x in labels]
    if len(names) != num_classes:
        raise LTMPError(f"{where}: {len(names)} class names for a model with {num_classes} classes")
    if not all(names) or len(set(names)) != len(names):
        raise LTMPError(f"{where}: class names must be non-empty and distinct")
    return names


def read_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names from a file: a JSON list, or plain text with one name per line (class order)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LTMPError(f"{path}: cannot read the class names ({err.__class__.__name__})") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except ValueError as err:
            raise LTMPError(f"{path}: not a JSON list of class names ({err})") from None
    else:
        labels = [line for line in text.splitlines() if line.strip()]
    return check_labels(labels, num_classes, str(path))
