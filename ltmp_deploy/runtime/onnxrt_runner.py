"""Polygraphy's ONNX Runtime runner without its per-call bookkeeping: what graphs run on.

Polygraphy's ``OnnxrtRunner.infer_impl`` checks on every call which function called it (through
``inspect.getmodule``, which stats the caller's source file), whether any input is a torch tensor,
and asks the session for its outputs again. On a small graph that is a measurable share of a
batch-1 call (``benchmarks/results/2026-12-05-runner-overhead.md``). :class:`LeanOnnxrtRunner`
keeps Polygraphy's runner in every other respect (activation, input metadata, deactivation, its
place in ``Comparator``) and runs numpy inputs straight through the session, whose output names
it reads once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
from polygraphy.backend.onnxrt import OnnxrtRunner


class LeanOnnxrtRunner(OnnxrtRunner):
    """An ``OnnxrtRunner`` over an open ``onnxruntime.InferenceSession`` (not a loader); numpy in and out."""

    def __init__(self, sess: Any, name: str | None = None) -> None:
        super().__init__(sess, name=name)
        self.output_names = [o.name for o in sess.get_outputs()]

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.sess.run(None, feed_dict)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(zip(self.output_names, outputs))


__all__ = ["LeanOnnxrtRunner"]
