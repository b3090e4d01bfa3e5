"""The PyTorch reference: the images a model is checked on, and the model or a checkpoint on
PyTorch and a graph on ONNX Runtime's CPU provider as comparison targets, for the check right after
export (:func:`compare_with_torch`) and for :func:`ltmp_deploy.export.checkpoint_parity.validate_checkpoint`.

Both sample the same images: the embedded digits' test split when the model takes digits (32x32 RGB,
ten classes), seeded random images in its normalised input space otherwise; so the check after export
and ``validate_checkpoint`` give the same report for the same graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES, digits_arrays
from ltmp_deploy.export.runner import LTMPTorchRunner
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.runtime.parity.compare import (
    DIGITS_IMAGES,
    RANDOM_IMAGES,
    ParityReport,
    Target,
    random_images,
    run_parity,
)


def sample_images(meta: dict[str, Any], count: int) -> tuple[np.ndarray, str]:
    """``count`` float32 images for the model ``meta`` describes, and what they are."""
    shape = [int(d) for d in meta["data_config"]["input_size"]]
    if shape == [3, IMAGE_SIZE, IMAGE_SIZE] and meta.get("num_classes") == NUM_CLASSES:
        images, _ = digits_arrays("test")
        return images[np.arange(count) % len(images)], DIGITS_IMAGES
    return random_images(shape, count), RANDOM_IMAGES


def compare_with_torch(
    graph: Any,
    model: Any,
    images: Any,
    fp16: bool | None = None,
    *,
    file: str = "exported graph",
    data: str = "sample images",
    input_kind: str | None = None,
) -> ParityReport:
    """The check right after export: ``graph`` (an onnx ModelProto, with decision outputs when it
    has them) on ONNX Runtime's CPU provider against ``model`` in PyTorch, ``images`` as one batch.
    ``fp16``: the graph's precision (default: its metadata's). ``data``/``input_kind``: what the
    images are (default kind: from ``data``, the sample images' description)."""
    target = onnxruntime_target(graph.SerializeToString(), file)
    if fp16 is not None:
        target.precision = "fp16" if fp16 else "fp32"
    reference = torch_target(model, model_metadata(model), None)
    batch = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    return run_parity(reference, [target], [batch], data=data, mode=model.ltmp.mode, input_kind=input_kind)


def torch_target(source: Any, meta: dict[str, Any], mode: str | None, device: Any = None) -> Target:
    """``source`` (a checkpoint, or a model) on PyTorch; ``device``: where (see ``LTMPTorchRunner``)."""
    on_disk = isinstance(source, (str, os.PathLike))
    name = f"pytorch {Path(source).name}" if on_disk else "pytorch"
    runner = LTMPTorchRunner(source, decisions=True, mode=mode, name=name, device=device)
    shape = (None, *(int(d) for d in meta["data_config"]["input_size"]))
    return Target(runner, "torch", str(source) if on_disk else "model", meta, shape, (1, None), "fp32")


def onnxruntime_target(source: Union[bytes, str], file: str) -> Target:
    """A graph (bytes or a path) on ONNX Runtime's CPU provider, opened as the runtime opens every graph."""
    from ltmp_deploy.runtime.backends import graph_target

    return graph_target(source if isinstance(source, bytes) else Path(source), ["CPUExecutionProvider"], file=file)
