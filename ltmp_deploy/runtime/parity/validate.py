"""Parity on a device without torch: engines and graphs against an ONNX graph on ONNX Runtime.

``validate(["model.engine"], against="model.onnx")`` runs the reference graph on ONNX Runtime's
CPU provider and every file (.onnx on ONNX Runtime, .engine/.plan on TensorRT) on the same
batches, and judges them with the toolkit's one comparator and gates
(:mod:`ltmp_deploy.runtime.parity.compare`, :mod:`ltmp_deploy.runtime.parity.tolerances`): fp32 within 1e-4
and identical token decisions; fp16 / bf16 / int8 by top-1 agreement and the precision's logit
bound. The images are seeded random ones in the model's normalised input space, or pictures
of your own (a folder, files, arrays), preprocessed as the file's metadata says. The report counts
the merges and prunes the reference made on them (:mod:`ltmp_deploy.runtime.parity.inputs`): on
random images threshold mode may make none, and the report says so.

A toolkit checkpoint as the reference (PyTorch) is the full toolkit's job:
:func:`ltmp_deploy.export.checkpoint_parity.validate_checkpoint`, which ``ltmp-deploy validate`` calls
when ``--against`` is a checkpoint. Nothing here imports torch.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.backends import Provider, close, open_runner, resolve_backend
from ltmp_deploy.runtime.parity.compare import (
    DEFAULT_IMAGES,
    RANDOM_IMAGES,
    ParityReport,
    Target,
    check_request,
    common_batch,
    random_images,
    run_parity,
    split_batches,
    whole_batches,
)
from ltmp_deploy.runtime.parity.inputs import read_inputs
from ltmp_deploy.runtime.preprocess import ImageLike, preprocess

CHECKPOINT_REFERENCE = (
    "a checkpoint is the PyTorch reference: pass it as --against to `ltmp-deploy validate` "
    "(ltmp_deploy.export.checkpoint_parity.validate_checkpoint), which needs the full toolkit"
)


def open_target(path: str | os.PathLike, backend: str = "auto", providers: Sequence[Provider] | None = None) -> Target:
    """``path`` as a comparison target: a graph on ONNX Runtime (default CPU), an engine on TensorRT; opened
    by the Session's own opener, its runner left inactive for Polygraphy's ``Comparator`` to activate."""
    path = Path(path)
    name = resolve_backend(path, backend)
    if name not in ("onnxruntime", "tensorrt"):
        raise LTMPError(f"{path}: {CHECKPOINT_REFERENCE}")
    if name == "onnxruntime" and providers is None:
        providers = ["CPUExecutionProvider"]
    target = open_runner(path, name, providers if name == "onnxruntime" else None)
    close(target)
    return target


def validate(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    against: str | os.PathLike | None = None,
    *,
    images: int | str | os.PathLike | Sequence[ImageLike] = DEFAULT_IMAGES,
    batch: int | None = None,
    backend: str = "auto",
    providers: Sequence[Provider] | None = None,
    json_path: str | os.PathLike | None = None,
    require_reductions: bool = False,
) -> ParityReport:
    """Compare each of ``files`` (.onnx, .engine/.plan) with the ONNX graph ``against``.

    ``images``: how many seeded random images, an image folder (at most
    :data:`~ltmp_deploy.runtime.parity.inputs.FOLDER_IMAGES` of it, evenly drawn), or your own
    pictures (paths, PIL images, uint8 arrays), preprocessed by the reference's data config.
    ``providers``: ONNX Runtime execution providers for the files (default CPU). ``batch``: the
    batch size for dynamic-batch files (default 4). ``require_reductions``: fail when the images
    exercised no merge and no prune. Writes ``json_path`` when given.
    """
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    if not paths:
        raise LTMPError("validate: no file given")
    if against is None:
        raise LTMPError(
            f"{paths[0]}: --against is required: the checkpoint it was exported from (PyTorch reference), "
            "or for an engine its source ONNX graph"
        )
    reference_path = Path(against)
    count = int(images) if isinstance(images, numbers.Integral) else 1  # a folder's or files' count comes later
    check_request([*paths, reference_path], count, batch, json_path)
    kind = resolve_backend(reference_path, "auto")
    if kind == "torch":
        raise LTMPError(f"{reference_path}: {CHECKPOINT_REFERENCE}")
    if kind == "tensorrt":
        raise LTMPError(f"{reference_path}: --against takes a toolkit checkpoint or an ONNX graph, not an engine")
    inputs = read_inputs(images)

    targets = [open_target(p, backend, providers) for p in paths]
    reference = open_target(reference_path)
    meta = next((t.metadata for t in targets if t.metadata), reference.metadata)
    size = common_batch(targets, batch)
    if inputs.pictures is None:
        pictures = random_images(targets[0].input_shape[1:], whole_batches(inputs.count, size))
        inputs.description = RANDOM_IMAGES
    else:
        pictures = _preprocessed(inputs.pictures, meta, reference_path)
    report = run_parity(
        reference,
        targets,
        split_batches(pictures, size),
        data=inputs.description,
        mode=meta.get("mode"),
        notes=inputs.notes,
        input_kind=inputs.kind,
        input_source=inputs.source,
        require_reductions=require_reductions,
    )
    if json_path is not None:
        report.write_json(json_path)
    return report


def _preprocessed(pictures: list[ImageLike], meta: dict, where: Path) -> np.ndarray:
    cfg = meta.get("data_config")
    if not isinstance(cfg, dict):
        raise LTMPError(f"{where}: carries no preprocessing (data_config) in its metadata; validate on random images")
    return preprocess(pictures, cfg)


__all__ = ["open_target", "validate"]
