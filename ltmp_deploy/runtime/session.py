"""One Session over ONNX Runtime, TensorRT and PyTorch: open a file, feed images, get classes.

    from ltmp_deploy.runtime import Session

    with Session("model.onnx") as s:              # or model.engine, or model.safetensors
        result = s.predict(["cat.jpg", "dog.png"], k=5)
        result.topk_indices, result.topk_probs     # (N, 5) each
        result.decisions                           # per-block kept / merged tokens, if exported

The file carries everything needed to run it the same way as in training (ONNX metadata, the
engine's JSON sidecar, the checkpoint's header): preprocessing comes from there. ``run`` takes a
preprocessed batch and checks it (shape, dtype, NaN) before any backend sees it; ``predict``
takes images of any count and splits them into batches the file allows.

This module imports neither torch nor timm: a Jetson needs numpy, Pillow and TensorRT or ONNX
Runtime only. A checkpoint opens on the PyTorch backend of the full toolkit, which the runtime
finds through the ``ltmp_deploy.backends`` entry point group. Every backend is a Polygraphy runner,
opened and run by :mod:`ltmp_deploy.runtime.backends`, the same runners validate compares and
bench times.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.backends import Provider, close, infer, open_runner
from ltmp_deploy.runtime.metadata import OUTPUT_NAME
from ltmp_deploy.runtime.parity.compare import Target
from ltmp_deploy.runtime.preprocess import ImageLike, preprocess


@dataclass
class BlockDecisions:
    """One block's token decisions, in its input positions; -1 pads (see ltmp.reduce.Decision)."""

    kept: np.ndarray  # (N, K) int64
    merge_dst: np.ndarray  # (N, Ns) int64


@dataclass
class Result:
    logits: np.ndarray  # (N, classes) float32
    topk_indices: np.ndarray  # (N, k) int64, best first (ties: lower class index)
    topk_probs: np.ndarray  # (N, k) float32 softmax probabilities
    decisions: list[BlockDecisions] | None = None  # when the file carries decision outputs

    @property
    def top1(self) -> np.ndarray:
        return self.topk_indices[:, 0]


def topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k class indices (stable: ties to the lower index) and their softmax probabilities."""
    k = max(1, min(int(k), logits.shape[-1]))
    wide = logits.astype(np.float64)
    probs = np.exp(wide - wide.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    idx = np.argsort(-wide, axis=-1, kind="stable")[:, :k]
    return idx.astype(np.int64), np.take_along_axis(probs, idx, axis=-1).astype(np.float32)


def _pad_cols(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate (n_i, w_i) int arrays along the batch, padding narrower ones with -1."""
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in arrays])


class Session:
    """Open ``path`` (an ONNX graph, a TensorRT engine or a toolkit checkpoint) on a backend.

    ``backend``: "auto" (from the file's content, whatever its name), "onnxruntime", "tensorrt" or "torch".
    ``providers``: ONNX Runtime execution providers, in order (names, or (name, options));
    default: TensorRT, CUDA, CPU, those that are installed.

    A Session may be shared by threads. ONNX Runtime's sessions and the PyTorch forward run
    concurrently; TensorRT's runner reuses one execution context and its buffers, so on TensorRT
    calls take turns.
    """

    def __init__(
        self, path: str | os.PathLike, backend: str = "auto", providers: Sequence[Provider] | None = None
    ) -> None:
        self.path = Path(path)
        self._target: Target | None = open_runner(self.path, backend, providers)
        self._turns = threading.Lock() if self._target.backend == "tensorrt" else contextlib.nullcontext()

    # -- what the file is ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._open().backend

    @property
    def runner(self) -> Any:
        """The Polygraphy runner the file runs on (active while the session is open)."""
        return self._open().runner

    @property
    def providers(self) -> list[str] | None:
        """The ONNX Runtime execution providers in use (None for other backends)."""
        return self._open().providers

    @property
    def metadata(self) -> dict[str, Any]:
        return self._open().metadata

    @property
    def sidecar(self) -> dict[str, Any] | None:
        """A TensorRT engine's build sidecar (None for other backends)."""
        return self._open().sidecar

    @property
    def input_name(self) -> str:
        return self._open().input_name

    @property
    def input_dtype(self) -> np.dtype:
        return self._open().input_dtype

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """(batch, C, H, W); None for a dynamic batch axis."""
        return self._open().input_shape

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """Smallest and largest batch the file takes; largest None when unbounded."""
        return self._open().batch_range

    @property
    def output_names(self) -> list[str]:
        return self._open().output_names

    @property
    def has_decisions(self) -> bool:
        return any(n.endswith("_kept") for n in self.output_names)

    # -- running ------------------------------------------------------------------------------

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Images (PIL, paths, uint8 arrays) -> the batch this file takes, per its data config."""
        cfg = self.metadata.get("data_config")
        if not isinstance(cfg, dict):
            raise LTMPError(
                f"{self.path}: carries no preprocessing (data_config) in its metadata; feed preprocessed arrays to "
                "run()"
            )
        batch = preprocess(images, cfg)
        expected = tuple(d for d in self.input_shape[1:])
        if batch.shape[1:] != expected:
            raise LTMPError(
                f"{self.path}: its data_config makes images of shape {batch.shape[1:]}, but the input is "
                f"{self._expected()}"
            )
        return batch.astype(self.input_dtype, copy=False)

    def run(self, batch: np.ndarray, k: int = 5) -> Result:
        """Run one preprocessed batch (N, C, H, W) of the input's dtype; N within batch_range."""
        self._check(batch)
        with self._turns:
            outputs = infer(self._open(), batch)
        if OUTPUT_NAME not in outputs:
            raise LTMPError(f"{self.path}: has no 'logits' output (outputs: {', '.join(outputs)})")
        logits = np.asarray(outputs[OUTPUT_NAME], dtype=np.float32)
        indices, probs = topk(logits, k)
        decisions = None
        blocks = sorted(
            {int(n[len("block") : -len("_kept")]) for n in outputs if n.startswith("block") and n.endswith("_kept")}
        )
        if blocks:
            decisions = [
                BlockDecisions(np.asarray(outputs[f"block{i}_kept"]), np.asarray(outputs[f"block{i}_merge_dst"]))
                for i in blocks
            ]
        return Result(logits, indices, probs, decisions)

    def predict(self, images: ImageLike | Sequence[ImageLike], k: int = 5) -> Result:
        """Preprocess ``images`` and run them in batches this file allows (padding a fixed batch)."""
        batch = self.preprocess(images)
        if len(batch) == 0:
            raise LTMPError(f"{self.path}: no images to predict")
        low, high = self.batch_range
        step = high if high is not None else len(batch)
        results = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            real = len(chunk)
            if real < low:  # a fixed batch: fill with copies of the last image, drop their answers
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - real, axis=0)])
            results.append(self._trim(self.run(chunk, k), real))
        return results[0] if len(results) == 1 else self._concat(results)

    def close(self) -> None:
        if self._target is not None:
            close(self._target)
            self._target = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._target.backend if self._target is not None else "closed"
        return f"Session({str(self.path)!r}, backend={state!r})"

    # -- helpers ------------------------------------------------------------------------------

    def _open(self) -> Target:
        if self._target is None:
            raise LTMPError(f"{self.path}: session is closed")
        return self._target

    def _expected(self) -> str:
        low, high = self.batch_range
        dims = ", ".join(str(d) for d in self.input_shape[1:])
        if low == high:
            return f"({low}, {dims})"
        return f"(N, {dims}) with N from {low}" + (f" to {high}" if high is not None else "")

    def _check(self, batch: Any) -> None:
        where = f"{self.path}: input {self.input_name!r}"
        if not isinstance(batch, np.ndarray):
            raise LTMPError(
                f"{where}: expected a numpy array {self._expected()} of {self.input_dtype}, got "
                f"{type(batch).__name__}; use predict() for images"
            )
        if batch.dtype != self.input_dtype:
            raise LTMPError(
                f"{where}: expected dtype {self.input_dtype}, got {batch.dtype}; preprocess() gives the right one"
            )
        shape = self.input_shape
        low, high = self.batch_range
        if (
            batch.ndim != len(shape)
            or tuple(batch.shape[1:]) != tuple(shape[1:])
            or not low <= batch.shape[0] <= (high or batch.shape[0])
        ):
            raise LTMPError(f"{where}: expected shape {self._expected()}, got {tuple(batch.shape)}")
        bad = ~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
        if bad.any():
            what = "NaN" if np.isnan(batch).any() else "infinite"
            raise LTMPError(
                f"{where}: {what} values in image {int(np.argmax(bad))} of the batch; refusing to run on them"
            )

    @staticmethod
    def _trim(result: Result, n: int) -> Result:
        if len(result.logits) == n:
            return result
        decisions = (
            None
            if result.decisions is None
            else [BlockDecisions(d.kept[:n], d.merge_dst[:n]) for d in result.decisions]
        )
        return Result(result.logits[:n], result.topk_indices[:n], result.topk_probs[:n], decisions)

    @staticmethod
    def _concat(results: list[Result]) -> Result:
        decisions = None
        if results[0].decisions is not None:
            decisions = [
                BlockDecisions(
                    _pad_cols([r.decisions[i].kept for r in results]),
                    _pad_cols([r.decisions[i].merge_dst for r in results]),
                )
                for i in range(len(results[0].decisions))
            ]
        return Result(
            np.concatenate([r.logits for r in results]),
            np.concatenate([r.topk_indices for r in results]),
            np.concatenate([r.topk_probs for r in results]),
            decisions,
        )


__all__ = ["BlockDecisions", "Result", "Session", "topk"]
