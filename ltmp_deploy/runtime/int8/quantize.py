"""INT8 by explicit quantization: Q/DQ nodes inserted with calibration data, ready for TensorRT.

The quantizer is ONNX Runtime's ``quantize_static`` in QDQ format (maintained, runs on the CPU
here): int8 weights per output channel, int8 activations per tensor, both symmetric (zero
point 0, what TensorRT's explicit quantization expects), biases left in float. The result is
the graph TensorRT 11 needs for INT8 (strongly typed: precision comes from the Q/DQ nodes) and
that TensorRT 8.5-10 builds with the INT8 flag.

Which layers are quantized (decided from the graph, nothing hard-coded by name):

1. Only MatMul/Gemm/Conv nodes that carry weights (an initializer operand). The products of two
   activations (attention scores, attention times values, the bipartite similarity, and the
   one-hot merge assignment that moves features and token sizes) stay float.
2. The weight layers nearest to a token decision stay float: walking back from every decision op
   (TopK, NonZero, ArgMax/ArgMin, comparisons), the first weight layers met are the ``qkv``
   projections: their output is the queries and keys whose attention and similarity choose which
   tokens merge and which are pruned. Quantizing them flips decisions, and top-1 agreement with
   fp32 drops with them. The walk follows every value input; Shape and Size read only shapes, so
   they end it.
3. The first layer (reads the raw image: the patch embedding) and the last (the classifier head)
   stay float, standard practice for post-training quantization; they are a tiny share of the
   FLOPs. ``keep_first_last=False`` quantizes them too.

So the TopK/Gather/score paths are computed in float from float inputs, and a final pass makes
sure no float consumer reads a dequantized activation.

    result = quantize_int8("model.onnx", "model.int8.onnx", calibration="calib.npy")

Calibration files are read by :func:`ltmp_deploy.runtime.int8.calibration_data.read_calibration_data`
(``.npy``, ``.npz`` or the Polygraphy JSON that ``ltmp-deploy calibrate --int8-calib`` writes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.runtime.int8.calibration_data import METHODS, CalibrationLike, read_calibration_data
from ltmp_deploy.runtime.metadata import INPUT_NAME, read_metadata, write_metadata
from ltmp_deploy.runtime.onnxgraph import Graph, Shape, dims, image_io, load, node_name

WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
DECISION_OPS = {"TopK", "NonZero", "ArgMax", "ArgMin", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
SHAPE_OPS = {"Shape", "Size"}  # read a tensor's shape, never its values: no value dependency
DEFAULT_BATCH = 16


@dataclass
class QuantizeResult:
    """What :func:`quantize_int8` did."""

    path: Path
    method: str
    calibration_images: int
    quantized: list[str] = field(default_factory=list)  # node names with int8 inputs
    kept_float: dict[str, str] = field(default_factory=dict)  # MatMul/Gemm/Conv left float -> why
    model: onnx.ModelProto | None = field(default=None, repr=False)  # what was written to ``path``

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.quantized)} layers int8, {len(self.kept_float)} MatMul/Gemm/Conv kept float, "
            f"{self.method} calibration on {self.calibration_images} images"
        )


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the graph already carries Q/DQ nodes (explicit quantization)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def quantize_int8(
    onnx_in: str | os.PathLike,
    onnx_out: str | os.PathLike,
    calibration: CalibrationLike,
    *,
    method: str = "minmax",
    batch_size: int | None = None,
    keep_first_last: bool = True,
    keep_float: Sequence[str] = (),
    model: onnx.ModelProto | None = None,
) -> QuantizeResult:
    """Write ``onnx_out``: ``onnx_in`` with Q/DQ nodes (see the module docstring for which layers).

    ``method``: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime's calibrators; the
    histogram ones need one tensor shape for all batches, which threshold-mode graphs do not
    have). ``keep_float``: extra node names to leave in float. ``model``: ``onnx_in`` already
    loaded, so it is not read again. The metadata is kept, with ``precision`` set to ``int8``
    and a ``quantization`` record added. Raises LTMPError.
    """
    src = Path(onnx_in)
    ensure_writable(onnx_out)
    if method not in METHODS:
        raise LTMPError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    model = load(src) if model is None else model
    meta = read_metadata(model, str(src))
    shape = _float_image_shape(model, src)
    images = read_calibration_data(calibration, shape)
    if method != "minmax" and meta.get("mode") == "threshold":
        raise LTMPError(
            f"{src}: {method} calibration collects histograms that need the same tensor shapes in every "
            "batch, but a threshold-mode graph has data-dependent token counts: use minmax"
        )

    batch = _calibration_batch(src, shape[0], len(images), batch_size)
    quantize, kept = select_layers(model, keep_first_last=keep_first_last, keep_float=keep_float)
    if not quantize:
        raise LTMPError(f"{src}: no MatMul/Gemm/Conv layer is left to quantize")

    out = Path(onnx_out)
    with tempfile.TemporaryDirectory(dir=out.parent if str(out.parent) else None) as work:
        staged = Path(work) / "quantized.onnx"
        _run_ort(src, staged, images, batch, shape[0] is not None, quantize, method)
        qmodel = onnx.load(str(staged))
    _restore_float_consumers(qmodel, set(quantize))
    meta.update(precision="int8", quantization=_quantization_record(method, int(images.shape[0]), quantize, kept))
    write_metadata(qmodel, meta)
    _write_checked(src, qmodel, out)
    return QuantizeResult(out, method, int(images.shape[0]), quantize, kept, qmodel)


def _float_image_shape(model: onnx.ModelProto, src: Path) -> Shape:
    """The image input's shape, once the graph is known to be a float graph without Q/DQ nodes."""
    if has_qdq(model):
        raise LTMPError(f"{src}: already has QuantizeLinear/DequantizeLinear nodes; quantize the float graph instead")
    image_input, _ = image_io(model, str(src))
    dtype = image_input.type.tensor_type.elem_type
    if dtype != onnx.TensorProto.FLOAT:
        raise LTMPError(
            f"{src}: INT8 quantization needs an fp32 graph (this one takes "
            f"{onnx.TensorProto.DataType.Name(dtype)}); export without --fp16"
        )
    return dims(image_input)


def _quantization_record(method: str, images: int, quantize: list[str], kept: dict[str, str]) -> dict:
    """The ``quantization`` entry of the metadata: how the graph was quantized, by what."""
    return {
        "tool": f"onnxruntime.quantization.quantize_static {_ort_version()}",
        "format": "QDQ",
        "weights": "int8 per channel, symmetric",
        "activations": "int8 per tensor, symmetric",
        "method": method,
        "calibration_images": images,
        "quantized_layers": len(quantize),
        "float_layers": kept,
    }


def _calibration_batch(src: Path, fixed_batch: int | None, images: int, batch_size: int | None) -> int:
    """The batch the calibration runs at: the graph's own when it is fixed, else ``batch_size``."""
    if fixed_batch is not None:
        if images < fixed_batch:
            raise LTMPError(
                f"{src}: the graph takes batches of exactly {fixed_batch}; got only {images} calibration images"
            )
        return fixed_batch
    batch = batch_size or DEFAULT_BATCH
    if batch < 1:
        raise LTMPError(f"batch size {batch}: must be at least 1")
    return batch


def _write_checked(src: Path, qmodel: onnx.ModelProto, out: Path) -> None:
    """Write ``qmodel`` to ``out`` whole, once ONNX's full checker accepts it."""
    try:
        onnx.checker.check_model(qmodel, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker raises several types
        raise LTMPError(f"{src}: the quantized graph fails ONNX's checker ({first_line(exc)})") from exc
    with atomic_output(out, suffix=".onnx") as tmp:
        tmp.write_bytes(qmodel.SerializeToString(deterministic=True))


def select_layers(
    model: onnx.ModelProto, *, keep_first_last: bool = True, keep_float: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """(names to quantize, {name kept float: reason}) for the MatMul/Gemm/Conv nodes of ``model``."""
    g = Graph(model)
    near_decisions = _weight_layers_upstream(g, [i for n in g.nodes if n.op_type in DECISION_OPS for i in n.input])
    first = _weight_layers_downstream(g, [i.name for i in model.graph.input if i.name not in g.weights])
    last = _weight_layers_upstream(g, [o.name for o in model.graph.output])

    quantize, kept = [], {}
    for n in g.nodes:
        if n.op_type not in WEIGHT_OPS:
            continue
        name = node_name(n)
        if not _is_weight_layer(g, n):
            kept[name] = "product of two activations (attention, similarity or merge assignment)"
        elif name in keep_float:
            kept[name] = "asked to stay float"
        elif name in near_decisions:
            kept[name] = "its output feeds the token decisions (queries/keys)"
        elif keep_first_last and name in first:
            kept[name] = "first layer (reads the image)"
        elif keep_first_last and name in last:
            kept[name] = "last layer (classifier)"
        else:
            quantize.append(name)
    return quantize, kept


def _is_weight_layer(g: Graph, n: onnx.NodeProto) -> bool:
    return n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in g.weights


def _weight_layers_downstream(g: Graph, start: Sequence[str]) -> set[str]:
    """Weight layers met first walking down from the tensors ``start``."""
    found, seen, queue = set(), set(), deque(start)
    while queue:
        tensor = queue.popleft()
        if tensor in seen:
            continue
        seen.add(tensor)
        for n in g.consumers.get(tensor, []):
            if _is_weight_layer(g, n):
                found.add(node_name(n))
            else:
                queue.extend(n.output)
    return found


def _weight_layers_upstream(g: Graph, start: Sequence[str]) -> set[str]:
    """Weight layers met first walking up from the tensors ``start`` along value dependencies."""
    found, seen, queue = set(), set(), deque(t for t in start if t)
    while queue:
        tensor = queue.popleft()
        if tensor in seen or tensor in g.weights:
            continue
        seen.add(tensor)
        node = g.producer.get(tensor)
        if node is None or node.op_type in SHAPE_OPS:
            continue
        if _is_weight_layer(g, node):
            found.add(node_name(node))
        else:
            queue.extend(i for i in node.input if i)
    return found


class _Reader:
    """ONNX Runtime's CalibrationDataReader contract: ``get_next`` until None."""

    def __init__(self, name: str, images: np.ndarray, batch: int, exact: bool) -> None:
        stop = len(images) - len(images) % batch if exact else len(images)
        self._batches: Iterator[np.ndarray] = (images[i : i + batch] for i in range(0, stop, batch))
        self._name = name

    def get_next(self) -> dict | None:
        nxt = next(self._batches, None)
        return None if nxt is None else {self._name: nxt}

    def rewind(self) -> None:  # some ORT versions call it; a second pass is never needed here
        pass


def _run_ort(src: Path, dst: Path, images: np.ndarray, batch: int, exact: bool, nodes: list[str], method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader_cls = type("CalibrationReader", (_Reader, CalibrationDataReader), {})
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with _quiet():
        try:
            quantize_static(
                str(src),
                str(dst),
                reader_cls(INPUT_NAME, images, batch, exact),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                op_types_to_quantize=list(WEIGHT_OPS),
                nodes_to_quantize=nodes,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
        except LTMPError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises many kinds
            first = first_line(exc)
            raise LTMPError(f"{src}: ONNX Runtime could not quantize the graph ({first})") from exc


def _restore_float_consumers(model: onnx.ModelProto, quantized: set[str]) -> None:
    """Make every node that is not quantized read the float tensor, never a dequantized copy."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    for n in nodes:
        if n.op_type in QDQ_OPS or node_name(n) in quantized:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice and prints progress: keep the CLI's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


__all__ = ["QuantizeResult", "has_qdq", "quantize_int8", "select_layers"]
