"""ONNX export of an LTMP model, in fixed or threshold mode, validated against PyTorch on the spot.

Exporter: torch.onnx's TorchScript exporter (``dynamo=False``). Both exporters reproduce the
model, but only the TorchScript one emits opset 16 (the dynamo exporter starts at 18), and opset
16 is what TensorRT 8.5 (JetPack 5.1) needs: its parser reads opsets up to 17 and has no
LayerNormalization op, which opset 17 exports use. It also exports much faster. Threshold
mode's data-dependent token counts come out as Shape(NonZero(...)) feeding TopK's K
(docs/arithmetic.md#batches-in-threshold-mode).

After export: constant folding and dead-node removal with onnxslim (so every fixed-mode TopK K is
an initializer, which TensorRT 8.5 requires), ONNX's full checker and shape inference, metadata,
one atomic write. The same checkpoint exported twice gives the same bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.export.reference import compare_with_torch, sample_images
from ltmp_deploy.extras import ORT, missing
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.ltmp.checkpoint import load_checkpoint
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.ltmp.flops import image_flops, schedule_flops, unpatched_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.metadata import INPUT_NAME, OUTPUT_NAME, decision_output_names, write_metadata
from ltmp_deploy.runtime.parity.compare import RANDOM_IMAGES, ParityReport

# "off" (the unpatched model) and "oracle" (same token counts, no reduction) export too: they
# are the baselines benchmarks compare against, exported the same way.
DEFAULT_OPSET = {"fixed": 16, "threshold": 17, "off": 16, "oracle": 16}
MIN_OPSET = 13  # TopK with K as an input and Unsqueeze with axes as an input
TWO_GB = 2**31
FLOPS_IMAGES = 256  # held-out images threshold mode's FLOPs are measured on, for the metadata


class ExportWrapper(torch.nn.Module):
    """images -> logits, plus every block's decisions when asked (for parity debugging)."""

    def __init__(self, model: LTMPVisionTransformer, decisions: bool) -> None:
        super().__init__()
        self.model, self.decisions = model, decisions

    def forward(self, images: torch.Tensor):  # noqa: ANN201  (a tuple of tensors)
        out = self.model.forward_ltmp(images, record=self.decisions)
        if not self.decisions:
            return out.logits
        extra = []
        for d in out.decisions:
            extra += [d.kept, d.merge_dst]
        return (out.logits, *extra)


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, Any]
    validation: ParityReport | None = None
    warnings: list[str] = field(default_factory=list)


def export_onnx(
    checkpoint: str | os.PathLike | LTMPVisionTransformer,
    output: str | os.PathLike,
    *,
    mode: str | None = None,
    opset: int | None = None,
    batch: int | None = None,
    fp16: bool = False,
    decisions: bool = False,
    validate: bool = True,
    num_samples: int = 8,
    data: str | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``output``; raise LTMPError if it cannot or if validation fails.

    ``batch``: a fixed batch size; None gives a dynamic batch axis. ``fp16``: an fp16 graph
    (for strongly typed TensorRT builds). ``decisions``: extra outputs with each block's kept
    and merged indices. ``data``: "digits" or an image folder (see ``data.datasets.calibration_split``)
    on whose held-out images threshold mode's FLOPs are measured for the metadata; by default the
    folder the checkpoint learned on (its ``learned_on``) when it is still here, else the digits
    test split for a model that takes it, else the random sample images, and the metadata's
    ``flops_measured_on`` says which.
    """
    ensure_writable(output)
    if validate and missing(("onnxruntime",)):
        raise LTMPError(f"{output}: checking the export needs onnxruntime, not installed here: {ORT}; or --no-validate")
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_checkpoint(checkpoint)
    model = model.eval()
    if mode is not None:
        model.ltmp_set_mode(mode)
    mode = model.ltmp.mode
    if mode not in DEFAULT_OPSET:
        raise LTMPError(f"mode {mode!r} cannot be exported: choose fixed or threshold (off and oracle for baselines)")
    opset = opset if opset is not None else DEFAULT_OPSET[mode]
    if opset < MIN_OPSET:
        raise LTMPError(f"--opset {opset}: LTMP's TopK with a K input needs opset {MIN_OPSET} or newer")
    if batch is not None and batch < 1:
        raise LTMPError(f"--batch {batch}: must be at least 1")

    pictures, sample_data = sample_images(model_metadata(model), max(num_samples, batch or 0, 2))
    images = torch.from_numpy(pictures)
    graph = _export(model, opset, batch, fp16, images)
    needed = FLOPS_IMAGES if mode == "threshold" else len(images) if validate else 0
    real, real_on = _held_out(model, data, needed) if needed else (None, "no images needed")
    meta = _metadata(model, opset, fp16, *_flops_images(model, real, real_on, images, sample_data), batch)
    write_metadata(graph, meta)

    report = None
    if validate:
        # Random images may exercise no merge at all in threshold mode: check on real ones when there are.
        on_real = real is not None and sample_data == RANDOM_IMAGES
        checked = real[: len(images)] if on_real else images
        checked = checked if batch is None else _fill(checked, batch)
        checked_on = f"{len(checked)} images of {real_on}" if on_real else sample_data
        kind = "folder" if on_real else None
        report = compare_with_torch(graph, model, checked, fp16, file=str(output), data=checked_on, input_kind=kind)
        if not report.ok:
            raise LTMPError(f"{output}: exported graph does not match PyTorch, nothing written:\n{report.summary()}")
    if not decisions:
        graph = _drop_decision_outputs(graph)
    onnx.checker.check_model(graph, full_check=True)
    _save(graph, Path(output))
    return ExportResult(Path(output), meta, report)


def _export(
    model: LTMPVisionTransformer, opset: int, batch: int | None, fp16: bool, images: torch.Tensor
) -> onnx.ModelProto:
    """Trace with decisions always exported (validation compares them); drop them later if unasked."""
    wrapper = ExportWrapper(model, decisions=True)
    reducing = model.ltmp.mode in ("fixed", "threshold")
    names = [OUTPUT_NAME, *(decision_output_names(len(model.blocks)) if reducing else [])]
    example = images[:2]  # two images: a batch-1 trace could fold the batch axis into broadcasts
    if fp16:
        wrapper, example = wrapper.half(), example.half()
    # Traced with a dynamic batch axis even when a fixed batch is asked for, then pinned: a
    # static trace lowers every Linear to Reshape+Gemm+Reshape, which ONNX Runtime's CPU kernels
    # run slower than the MatMul form.
    dynamic = {n: {0: "batch"} for n in [INPUT_NAME, *names]}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes are expected
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    except Exception as err:  # noqa: BLE001  (the exporter raises many kinds)
        first = first_line(err)
        raise LTMPError(f"opset {opset}: the model cannot be exported ({first})") from err
    finally:
        if fp16:
            model.float()
    graph = onnx.load_from_string(buffer.getvalue())
    if batch is not None:
        _pin_batch(graph, batch)
    graph = _simplify(graph)
    return onnx.shape_inference.infer_shapes(graph, strict_mode=True, data_prop=True)


def _pin_batch(graph: onnx.ModelProto, batch: int) -> None:
    """Make the batch axis of every input and output ``batch``; simplification then folds the
    shape computations that depended on it."""
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    del graph.graph.value_info[:]  # inferred again, from the pinned inputs


def _simplify(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-node removal with onnxslim (a maintained tool, not ours)."""
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(graph, skip_fusion_patterns=None, no_shape_infer=False)


def _drop_decision_outputs(graph: onnx.ModelProto) -> onnx.ModelProto:
    keep = [o for o in graph.graph.output if o.name == OUTPUT_NAME]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    return _simplify(graph)


def _held_out(model: LTMPVisionTransformer, data: str | None, count: int) -> tuple[torch.Tensor | None, str]:
    """Up to ``count`` held-out images of ``data`` and where they come from; with none given, of the
    folder the checkpoint learned on while it is here, else of the digits test split for a model that
    takes them. None and the reason when there are no real images: the caller falls back to its
    samples and says so."""
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, held_out_source, sample_batch

    data, recorded, missing = held_out_source(model, data)
    if data is None:
        return None, f"no data given and {missing}" if missing else "no data given"
    held_out = calibration_split(data, model, "evaluation")
    where = "the digits test split" if data == EMBEDDED else f"{data} (held-out images)"
    if recorded:
        where = f"{data} (held-out images, where the checkpoint learned)"
    return torch.from_numpy(sample_batch(held_out, min(count, len(held_out)))), where


def _flops_images(
    model: LTMPVisionTransformer, real: torch.Tensor | None, real_on: str, samples: torch.Tensor, sample_data: str
) -> tuple[torch.Tensor | None, str]:
    """The images threshold mode's FLOPs are measured on, and what they are: real held-out images
    whenever there are some, the random samples (said so) otherwise. Other modes need none."""
    if model.ltmp.mode != "threshold":
        return None, "the schedule (no images)" if model.ltmp.mode != "off" else "the unpatched model (no images)"
    if real is None:
        return samples, f"{len(samples)} {sample_data}: {real_on}, not what real images cost"
    return real, f"{len(real)} images of {real_on}"


def _fill(images: torch.Tensor, batch: int) -> torch.Tensor:
    """Exactly ``batch`` images for a fixed-batch graph, repeating the first ones when there are fewer."""
    return images[torch.arange(batch) % len(images)]


def _metadata(
    model: LTMPVisionTransformer,
    opset: int,
    fp16: bool,
    images: torch.Tensor | None,
    measured_on: str,
    batch: int | None,
) -> dict[str, Any]:
    base = {k: v for k, v in model_metadata(model).items() if k != "format"}  # "schema" says what this is
    if model.ltmp.mode in ("fixed", "oracle"):
        patched = schedule_flops(model, model.ltmp.schedule, reduce=model.ltmp.mode == "fixed")
        flops_note = f"{model.ltmp.mode} schedule"
    elif model.ltmp.mode == "off":
        patched, flops_note = unpatched_flops(model), "unpatched"
    else:
        with torch.no_grad():
            reports = [r for part in images.split(32) for r in image_flops(model, model.forward_ltmp(part).decisions)]
        patched = reports[0].__class__(
            **{
                k: float(np.mean([getattr(r, k) for r in reports]))
                for k in ("blocks", "reduction", "embed_and_head", "unpatched_blocks")
            }
        )
        flops_note = f"mean over {len(reports)} images"
    return {
        **base,
        "toolkit_version": __version__,
        "opset": opset,
        "precision": "fp16" if fp16 else "fp32",
        "input_name": INPUT_NAME,
        "input_shape": [batch or "batch", *base["data_config"]["input_size"]],
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "patch_grid": [int(g) for g in model.patch_embed.grid_size],  # rows, columns: how decisions map to the image
        "num_blocks": len(model.blocks),
        "decision_outputs": decision_output_names(len(model.blocks)),
        "block_macs": {
            "unpatched": unpatched_flops(model).unpatched_blocks,
            "patched": patched.blocks,
            "reduction": patched.reduction,
            "basis": flops_note,
        },
        "flops_measured_on": measured_on,
    }


def _save(graph: onnx.ModelProto, path: Path) -> None:
    """One atomic write; graphs over 2 GB keep their weights in a ``.data`` file beside them."""
    if graph.ByteSize() < TWO_GB:
        with atomic_output(path, suffix=".onnx") as tmp:
            tmp.write_bytes(graph.SerializeToString(deterministic=True))
        return
    data_name = path.name + ".data"
    with atomic_output(path.parent / data_name) as tmp_data, atomic_output(path, suffix=".onnx") as tmp:
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            staged = Path(work) / path.name
            onnx.save_model(graph, staged, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
            os.replace(Path(work) / data_name, tmp_data)
            os.replace(staged, tmp)


__all__ = ["ExportResult", "export_onnx"]
