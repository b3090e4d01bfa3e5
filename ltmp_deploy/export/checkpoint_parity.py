"""Parity of exported files against the toolkit checkpoint they came from, PyTorch the reference.

The reference and the sample images are :mod:`ltmp_deploy.export.reference`'s, shared with the check
right after export; the other runners are judged with the one comparator and set of gates
(:mod:`ltmp_deploy.runtime.parity.compare`, :mod:`ltmp_deploy.runtime.parity.tolerances`).

Graphs run on ONNX Runtime's CPU provider. Engines and other providers come through
``open_file``, which :func:`ltmp_deploy.api.validate` (and so ``ltmp-deploy validate``) sets to the
runtime's opener (``ltmp_deploy.runtime.parity.validate.open_target``) with the backend and
providers it was asked for.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.export.reference import onnxruntime_target, sample_images, torch_target
from ltmp_deploy.ltmp.checkpoint import read_metadata
from ltmp_deploy.ltmp.device import resolve_device
from ltmp_deploy.runtime.parity.compare import (
    DEFAULT_IMAGES,
    SAMPLE_KINDS,
    ParityReport,
    Target,
    check_request,
    common_batch,
    run_parity,
    split_batches,
    whole_batches,
)
from ltmp_deploy.runtime.parity.inputs import RANDOM, Inputs, read_inputs, recorded_inputs
from ltmp_deploy.runtime.preprocess import preprocess

PathLike = Union[str, os.PathLike]


def validate_checkpoint(
    checkpoint: PathLike,
    files: PathLike | Sequence[PathLike] = (),
    *,
    images: int | PathLike | Sequence[Any] = DEFAULT_IMAGES,
    batch: int | None = None,
    mode: str | None = None,
    json_path: PathLike | None = None,
    open_file: Callable[[Path], Target] | None = None,
    require_reductions: bool = False,
    device: str | None = None,
) -> ParityReport:
    """Compare each of ``files`` with the toolkit ``checkpoint`` it came from, PyTorch the reference.

    Without ``files``, the checkpoint is exported to a temporary graph (in ``mode``, default its
    own) with decision outputs, and that graph is compared with it. ``open_file``: opens each
    file as a comparison target (default: ONNX graphs on ONNX Runtime's CPU provider). ``batch``:
    the batch size for dynamic-batch files (default 4). ``images``: a count of sample images, an
    image folder or pictures (see :func:`ltmp_deploy.runtime.parity.validate.validate`); a count
    draws held-out images of the folder the checkpoint learned on when it recorded one that is
    still here, else the digits for a digits model, else seeded random images (said so).
    ``require_reductions``: fail when the images exercised no merge and no prune. Writes
    ``json_path`` when given. ``device``: where the PyTorch reference runs, in plain fp32 (default:
    CUDA when available, else the CPU).
    """
    checkpoint = Path(checkpoint)
    where = resolve_device(device)  # a device not here stops before the export
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    check_request([checkpoint, *paths], int(images) if isinstance(images, numbers.Integral) else 1, batch, json_path)
    reference_meta = read_metadata(checkpoint)  # the header only: weights load when the runner activates
    inputs = _inputs(images, reference_meta)
    with tempfile.TemporaryDirectory(prefix="ltmp-validate-") as work:
        notes = []
        if not paths:
            paths = [_export_for(checkpoint, mode, work)]
            notes.append(f"{checkpoint.name} exported to a temporary ONNX graph with decision outputs for this check")
        targets = [(open_file or _graph_file)(p) for p in paths]
        _check_one_mode(targets)
        meta = next((t.metadata for t in targets if t.metadata), {})
        _check_same_model(checkpoint, reference_meta, meta)
        graph_mode = meta.get("mode")
        run_mode = graph_mode if graph_mode in ("fixed", "threshold") else mode
        reference = torch_target(checkpoint, reference_meta, run_mode, where)
        size = common_batch(targets, batch)
        if inputs.pictures is None:
            pictures, inputs.description = sample_images(reference_meta, whole_batches(inputs.count, size))
            inputs.kind = SAMPLE_KINDS.get(inputs.description, inputs.kind)
        else:
            pictures = preprocess(inputs.pictures, reference_meta["data_config"])
        report = run_parity(
            reference,
            targets,
            split_batches(pictures, size),
            data=inputs.description,
            mode=graph_mode,
            notes=[*notes, *inputs.notes],
            input_kind=inputs.kind,
            input_source=inputs.source,
            require_reductions=require_reductions,
        )
    if json_path is not None:
        report.write_json(json_path)
    return report


def _inputs(images: int | PathLike | Sequence[Any], meta: dict[str, Any]) -> Inputs:
    """What to compare on: what was asked, or for a count the folder the checkpoint learned on."""
    inputs = read_inputs(images)
    if inputs.kind != RANDOM:
        return inputs
    return recorded_inputs(meta, inputs.count) or inputs


def _graph_file(path: Path) -> Target:
    if path.suffix.lower() != ".onnx":
        raise LTMPError(
            f"{path}: only ONNX graphs are opened here; for an engine use `ltmp-deploy validate`, or pass "
            "open_file=ltmp_deploy.runtime.parity.validate.open_target"
        )
    return onnxruntime_target(str(path), str(path))


def _export_for(checkpoint: Path, mode: str | None, folder: str) -> Path:
    """An ONNX graph of ``checkpoint`` with decision outputs, to compare a checkpoint on its own."""
    out = Path(folder) / f"{checkpoint.stem}.onnx"
    return export_onnx(checkpoint, out, mode=mode, decisions=True, validate=False).path


def _check_one_mode(targets: Sequence[Target]) -> None:
    """The PyTorch reference runs in one mode per comparison, so every file must be in that mode."""
    modes = {t.file: t.metadata.get("mode") for t in targets if t.metadata.get("mode")}
    if len(set(modes.values())) > 1:
        which = ", ".join(f"{Path(f).name} ({m} mode)" for f, m in modes.items())
        raise LTMPError(f"{which}: the reference runs in one mode per run; validate each mode's files on their own")


def _check_same_model(checkpoint: Path, reference: dict[str, Any], meta: dict[str, Any]) -> None:
    for key in ("architecture", "num_classes"):
        if key in meta and key in reference and meta[key] != reference[key]:
            raise LTMPError(
                f"{checkpoint}: its {key} ({reference[key]}) differs from the file's ({meta[key]}): "
                "not the checkpoint it was exported from"
            )


__all__ = ["validate_checkpoint"]
