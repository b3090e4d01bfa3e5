"""The runners a benchmark times on, each opened once for every batch size.

Every backend runs as a Session runs it: on the runtime's Polygraphy runners, each call one
:func:`ltmp_deploy.runtime.backends.infer` (what ``Session.run``, and so ``predict``, calls), host
arrays in and host arrays out. ``torch-cpu`` and ``torch-cuda`` run the patched model eagerly on
the toolkit's PyTorch runner (``LTMPTorchRunner``: inference mode, no decisions recorded; on CUDA
the copy of the logits to the host waits for the work, so the clock covers it), in fp32 or, on
CUDA, fp16 (``--dtype``; the input is converted on the device). ``--compile`` and ``--cuda-graph``
add torch.compile'd and CUDA-graph paths beside the eager one (:mod:`ltmp_deploy.bench.torch_paths`),
timed the same way, host to host.
``onnxruntime-cpu`` and ``onnxruntime-cuda`` open the exported graphs (dynamic batch axis) with
the runtime's opener, on the provider and thread count asked. ``tensorrt`` builds an engine per
graph with ``runtime.build`` (datacenter preset, the graph's precision, a profile over the timed
batch sizes) and opens it the same way. A backend this machine lacks is skipped with the reason.
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
from ltmp_deploy.ltmp.device import AUTO, resolve_device
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.backends import close, infer, open_runner
from ltmp_deploy.runtime.metadata import OUTPUT_NAME
from ltmp_deploy.runtime.parity.compare import Target

ONNX_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
ORT_PROVIDER = {"onnxruntime-cpu": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider"}

Calls = dict[str, Callable[[], object]]


def torch_device(backend: str, device: str | None = None) -> torch.device:
    """Where a PyTorch backend runs: torch-cpu on the CPU, torch-cuda on ``device``'s GPU (``--device``;
    None or auto: the GPU of LOCAL_RANK). A device this machine lacks is refused (LTMPError)."""
    if backend == "torch-cpu":
        return torch.device("cpu")
    if device is None or device == AUTO:
        return resolve_device("cuda")
    return resolve_device(device)


def unavailable(backend: str, device: str | None = None) -> str | None:
    """Why ``backend`` cannot run here, or None when it can. ``device``: bench's ``--device``."""
    if backend not in BACKENDS:
        raise LTMPError(f"--backends {backend}: choose from {', '.join(BACKENDS)}")
    if backend == "torch-cpu":
        return None
    if backend == "torch-cuda" and device not in (None, AUTO) and torch_device(backend, device).type != "cuda":
        return f"--device {device}: PyTorch runs on the CPU here (torch-cpu)"
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


def open_targets(
    backend: str,
    model: LTMPVisionTransformer,
    variants: Sequence[Variant],
    graphs: dict[str, Path],
    workdir: Path,
    batches: Sequence[int],
    threads: int,
    dtype: str = "fp32",
    device: str | None = None,
) -> tuple[dict[str, Target], dict[str, str]]:
    """Every variant on ``backend``'s runner, activated (``graphs``: the exported ONNX per variant), and
    why each variant that cannot run there is left out. ``dtype``: the PyTorch backends' precision;
    ``device``: torch-cuda's GPU (:func:`torch_device`)."""
    if backend.startswith("torch"):
        on = torch_device(backend, device)
        return _torch_targets(model, variants, on, backend.split("-", 1)[1], dtype), {}
    if backend == "tensorrt":
        return _engine_targets(graphs, workdir, batches)
    return _graph_targets(graphs, backend, threads)


def timed_calls(targets: dict[str, Target], variants: Sequence[Variant], images: np.ndarray) -> Calls:
    """One zero-argument call per variant: ``images`` through its runner. PyTorch's variants share one
    model, so each call first puts it in its variant's mode, as the timed calls always have."""
    by_name = {v.name: v for v in variants}

    def call(name: str, target: Target) -> Callable[[], object]:
        if target.backend != "torch":
            return lambda: infer(target, images)
        variant, model = by_name[name], target.runner.model

        def run() -> object:
            variant.apply(model)
            return infer(target, images)

        return run

    return {name: call(name, t) for name, t in targets.items()}


def close_targets(targets: dict[str, Target]) -> None:
    """Deactivate every runner once (PyTorch's variants share one) and let a CUDA copy of the model go."""
    opened = {id(t): t for t in targets.values()}
    targets.clear()
    while opened:
        close(opened.popitem()[1])
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _torch_targets(
    model: LTMPVisionTransformer, variants: Sequence[Variant], on: torch.device, device: str, dtype: str
) -> dict[str, Target]:
    """``device``: the backend's device type as it names the runner ("cpu", "cuda"); ``on``: the device."""
    from ltmp_deploy.bench.torch_paths import DTYPES
    from ltmp_deploy.export.runner import LTMPTorchRunner

    placed = model if on.type == "cpu" and dtype == "fp32" else copy.deepcopy(model).to(on, DTYPES[dtype])
    runner = LTMPTorchRunner(placed, decisions=False, name=f"pytorch {device}")
    runner.activate()
    shape = (None, *runner.image_shape)
    target = Target(runner, "torch", f"the model on {device}", input_shape=shape, output_names=[OUTPUT_NAME])
    return {v.name: target for v in variants}


def _graph_targets(graphs: dict[str, Path], backend: str, threads: int) -> tuple[dict[str, Target], dict[str, str]]:
    provider = ORT_PROVIDER[backend]
    targets, skipped = {}, {}
    for name, path in graphs.items():
        target = open_runner(path, "onnxruntime", [provider], threads)
        if target.providers[0] != provider:  # ONNX Runtime falls back to the CPU silently
            close(target)
            skipped[name] = f"{provider} did not take the graph (it ran on {target.providers[0]})"
            continue
        targets[name] = target
    return targets, skipped


def _engine_targets(
    graphs: dict[str, Path], workdir: Path, batches: Sequence[int]
) -> tuple[dict[str, Target], dict[str, str]]:
    from ltmp_deploy.runtime.trt.build import build_engine

    targets, skipped = {}, {}
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
            targets[name] = open_runner(engine, "tensorrt")
        except LTMPError as err:
            skipped[name] = str(err)
    return targets, skipped
