"""Benchmarks of LTMP variants against the unpatched model, the oracle and ToMe; loaded lazily, so
that reading results (the CSV and Markdown writers, plots) never imports torch."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BenchConfig": "ltmp_deploy.bench.config",
    "run_bench": "ltmp_deploy.bench.run",
    "write_bench": "ltmp_deploy.bench.write",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltmp_deploy.bench' has no attribute {name!r}")


__all__ = sorted(_LAZY)
