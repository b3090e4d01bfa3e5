"""Parity with PyTorch as the reference: right after export, and against a checkpoint on demand.

Both run the toolkit's PyTorch runner (:mod:`ltmp_deploy.export.runner`) as the reference and
judge the other runners with the one comparator and set of gates
(:mod:`ltmp_deploy.export.compare`, :mod:`ltmp_deploy.export.tolerances`). Both sample the
same images: the embedded digits' test split when the model takes digits (32x32 RGB, ten
classes), seeded random images in its normalised input space otherwise; so the check after
export and ``validate_checkpoint`` give the same report for the same graph.

Graphs run on ONNX Runtime's CPU provider. Engines and other providers come through
``open_file``, which ``ltmp-deploy validate`` sets to the runtime's opener
(``ltmp_deploy.runtime.validate.open_target``): the runtime sits downstream of this module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES, digits_arrays
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.compare import (
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
from ltmp_deploy.export.metadata import check_graph_file, decode
from ltmp_deploy.export.runner import LTMPTorchRunner
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.ltmp.checkpoint import read_metadata

PathLike = Union[str, os.PathLike]


def sample_images(meta: dict[str, Any], count: int) -> tuple[np.ndarray, str]:
    """``count`` float32 images for the model ``meta`` describes, and what they are."""
    shape = [int(d) for d in meta["data_config"]["input_size"]]
    if shape == [3, IMAGE_SIZE, IMAGE_SIZE] and meta.get("num_classes") == NUM_CLASSES:
        images, _ = digits_arrays("test")
        return images[np.arange(count) % len(images)], "digits test split"
    return random_images(shape, count), RANDOM_IMAGES


def compare_with_torch(
    graph: Any,
    model: Any,
    images: Any,
    fp16: bool | None = None,
    *,
    file: str = "exported graph",
    data: str = "sample images",
) -> ParityReport:
    """The check right after export: ``graph`` (an onnx ModelProto, with decision outputs when it
    has them) on ONNX Runtime's CPU provider against ``model`` in PyTorch, ``images`` as one batch.
    ``fp16``: the graph's precision (default: its metadata's)."""
    target = _onnxruntime_target(graph.SerializeToString(), file)
    if fp16 is not None:
        target.precision = "fp16" if fp16 else "fp32"
    reference = _torch_target(model, model_metadata(model), None)
    batch = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    return run_parity(reference, [target], [batch], data=data, mode=model.ltmp.mode)


def validate_checkpoint(
    checkpoint: PathLike,
    files: PathLike | Sequence[PathLike] = (),
    *,
    images: int = DEFAULT_IMAGES,
    batch: int | None = None,
    mode: str | None = None,
    json_path: PathLike | None = None,
    open_file: Callable[[Path], Target] | None = None,
) -> ParityReport:
    """Compare each of ``files`` with the toolkit ``checkpoint`` it came from, PyTorch the reference.

    Without ``files``, the checkpoint is exported to a temporary graph (in ``mode``, default its
    own) with decision outputs, and that graph is compared with it. ``open_file``: opens each
    file as a comparison target (default: ONNX graphs on ONNX Runtime's CPU provider). ``batch``:
    the batch size for dynamic-batch files (default 4). Writes ``json_path`` when given.
    """
    checkpoint = Path(checkpoint)
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    check_request([checkpoint, *paths], images, batch, json_path)
    reference_meta = read_metadata(checkpoint)  # the header only: weights load when the runner activates
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
        reference = _torch_target(checkpoint, reference_meta, run_mode)
        size = common_batch(targets, batch)
        pictures, data = sample_images(reference_meta, whole_batches(images, size))
        report = run_parity(reference, targets, split_batches(pictures, size), data=data, mode=graph_mode, notes=notes)
    if json_path is not None:
        report.write_json(json_path)
    return report


def _torch_target(source: Any, meta: dict[str, Any], mode: str | None) -> Target:
    on_disk = isinstance(source, (str, os.PathLike))
    name = f"pytorch {Path(source).name}" if on_disk else "pytorch"
    runner = LTMPTorchRunner(source, decisions=True, mode=mode, name=name)
    shape = (None, *(int(d) for d in meta["data_config"]["input_size"]))
    return Target(runner, "torch", str(source) if on_disk else "model", meta, shape, (1, None), "fp32")


def _onnxruntime_target(source: Union[bytes, str], file: str) -> Target:
    """A graph (bytes or a path) on ONNX Runtime's CPU provider, through Polygraphy's loader."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.logger import G_LOGGER

    if isinstance(source, str):
        check_graph_file(source)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            session = SessionFromOnnx(source, providers=["CPUExecutionProvider"])()
    except Exception as err:  # noqa: BLE001  (ONNX Runtime raises InvalidProtobuf, Fail, RuntimeException...)
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise LTMPError(f"{file}: not a loadable ONNX graph, it may be truncated or corrupt ({reason})") from err
    meta = decode(session.get_modelmeta().custom_metadata_map)
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in session.get_inputs()[0].shape)
    batch_range = (1, None) if not shape or shape[0] is None else (shape[0], shape[0])
    runner = OnnxrtRunner(session, name=f"onnxruntime[CPU] {Path(file).name}")
    return Target(runner, "onnxruntime", file, meta, shape, batch_range, meta.get("precision") or "fp32")


def _graph_file(path: Path) -> Target:
    if path.suffix.lower() != ".onnx":
        raise LTMPError(
            f"{path}: only ONNX graphs are opened here; for an engine use `ltmp-deploy validate`, or pass "
            "open_file=ltmp_deploy.runtime.validate.open_target"
        )
    return _onnxruntime_target(str(path), str(path))


def _export_for(checkpoint: Path, mode: str | None, folder: str) -> Path:
    """An ONNX graph of ``checkpoint`` with decision outputs, to compare a checkpoint on its own."""
    from ltmp_deploy.export.onnx_export import export_onnx  # which imports this module for its own check

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


__all__ = ["compare_with_torch", "sample_images", "validate_checkpoint"]
