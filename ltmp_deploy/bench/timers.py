"""The backends a benchmark times on, each opened once for every batch size.

``torch-cpu`` and ``torch-cuda`` run the patched model eagerly (inference mode; on CUDA each call
ends in a synchronize, so the clock covers the work). ``onnxruntime-cpu`` and ``onnxruntime-cuda``
run the exported graphs (dynamic batch axis) with host inputs, as a service would feed them.
``tensorrt`` builds an engine per graph with ``runtime.trt.build`` (datacenter preset, the graph's
precision, a profile over the timed batch sizes) and runs it through the runtime's TensorRT
backend, host to host. A backend this machine lacks is skipped with the reason.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ltmp_deploy.bench.config import BACKENDS
from ltmp_deploy.bench.variants import Variant
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer

ONNX_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
ORT_PROVIDER = {"onnxruntime-cpu": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider"}

Calls = dict[str, Callable[[], object]]


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None when it can."""
    if backend not in BACKENDS:
        raise LTMPError(f"--backends {backend}: choose from {', '.join(BACKENDS)}")
    if backend == "torch-cpu":
        return None
    if backend in ("torch-cuda", "tensorrt") and not torch.cuda.is_available():
        return f"no CUDA device: torch {torch.__version__} sees none"
    if backend == "tensorrt":
        from ltmp_deploy.runtime.trt.build import tensorrt_version

        return None if tensorrt_version() else "TensorRT (the tensorrt Python module) is not installed"
    if backend.startswith("onnxruntime"):
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        import onnxruntime as ort

        if ORT_PROVIDER[backend] not in ort.get_available_providers():
            return (
                f"ONNX Runtime {ort.__version__} has no {ORT_PROVIDER[backend]} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
    return None


class Timer:
    """Zero-argument calls, one per variant, over one batch of images."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}  # variant -> why it cannot run on this backend

    def calls(self, images: np.ndarray) -> Calls:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TorchTimer(Timer):
    def __init__(self, model: LTMPVisionTransformer, variants: Sequence[Variant], device: str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)
        self.variants = list(variants)

    def calls(self, images: np.ndarray) -> Calls:
        x = torch.from_numpy(images).to(self.device)
        sync = self.device.type == "cuda"

        def call(variant: Variant) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    variant.apply(self.model)(x)
                if sync:
                    torch.cuda.synchronize()

            return run

        return {v.name: call(v) for v in self.variants}

    def close(self) -> None:
        if self.device.type == "cuda":
            del self.model
            torch.cuda.empty_cache()


class OrtTimer(Timer):
    """The graphs on the runtime's ONNX Runtime backend: what ``predict`` and a Session run."""

    def __init__(self, graphs: dict[str, Path], backend: str, threads: int) -> None:
        from ltmp_deploy.runtime.backends import OnnxruntimeBackend

        super().__init__()
        provider = ORT_PROVIDER[backend]
        self.backends = {}
        for name, path in graphs.items():
            opened = OnnxruntimeBackend(path, [provider], threads)
            if opened.providers[0] != provider:  # ONNX Runtime falls back to the CPU silently
                self.skipped[name] = f"{provider} did not take the graph (it ran on {opened.providers[0]})"
                continue
            self.backends[name] = opened

    def calls(self, images: np.ndarray) -> Calls:
        return {name: (lambda b=b: b.run(images)) for name, b in self.backends.items()}

    def close(self) -> None:
        for opened in self.backends.values():
            opened.close()
        self.backends.clear()


class TensorrtTimer(Timer):
    def __init__(self, graphs: dict[str, Path], workdir: Path, batches: Sequence[int]) -> None:
        from ltmp_deploy.runtime.backends import TensorrtBackend
        from ltmp_deploy.runtime.trt.build import build_engine

        super().__init__()
        self.engines = {}
        for name, path in graphs.items():
            try:
                engine = build_engine(
                    path,
                    workdir / f"{name}.engine",
                    preset="datacenter",
                    min_batch=min(batches),
                    opt_batch=max(batches),
                    max_batch=max(batches),
                )
                self.engines[name] = TensorrtBackend(engine)
            except LTMPError as err:
                self.skipped[name] = str(err)

    def calls(self, images: np.ndarray) -> Calls:
        return {name: (lambda e=e: e.run(images)) for name, e in self.engines.items()}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


def open_timer(
    backend: str,
    model: LTMPVisionTransformer,
    variants: Sequence[Variant],
    graphs: dict[str, Path],
    workdir: Path,
    batches: Sequence[int],
    threads: int,
) -> Timer:
    """The timer for ``backend`` (checked available); ``graphs``: the exported ONNX per variant."""
    if backend.startswith("torch"):
        return TorchTimer(model, variants, backend.split("-", 1)[1])
    if backend == "tensorrt":
        return TensorrtTimer(graphs, workdir, batches)
    return OrtTimer(graphs, backend, threads)
