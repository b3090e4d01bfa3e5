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
   fp32 drops with them. The walk follows columns through Slice/Concat/Gather, so that a size
   column carried next to the features does not make every layer look like a decision input.
3. The first layer (reads the raw image: the patch embedding) and the last (the classifier head)
   stay float, standard practice for post-training quantization; they are a tiny share of the
   FLOPs. ``keep_first_last=False`` quantizes them too.

So the TopK/Gather/score paths are computed in float from float inputs, and a final pass makes
sure no float consumer reads a dequantized activation.

    result = quantize_int8("model.onnx", "model.int8.onnx", calibration="calib.npy")
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import onnx

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.metadata import read_metadata, write_metadata
from ltmp_deploy.files import atomic_output, ensure_writable

CalibrationLike = Union[np.ndarray, str, os.PathLike]

METHODS = ("minmax", "entropy", "percentile")
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

    def summary(self) -> str:
        return (f"{self.path}: {len(self.quantized)} layers int8, {len(self.kept_float)} MatMul/Gemm/Conv kept float, "
                f"{self.method} calibration on {self.calibration_images} images")


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the graph already carries Q/DQ nodes (explicit quantization)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def load_calibration(calibration: CalibrationLike, input_shape: Sequence[Optional[int]], where: str = "calibration") -> np.ndarray:
    """Calibration images as float32 (N, C, H, W), checked against the graph's input shape.

    ``calibration``: an array, a ``.npy`` file, or a ``.npz`` file with an ``images`` array (or a
    single array). Images must be preprocessed the way the model expects (normalised floats).
    """
    if isinstance(calibration, (str, os.PathLike)):
        path = Path(calibration)
        where = str(path)
        if not path.is_file():
            raise LTMPError(f"{path}: calibration file does not exist")
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise LTMPError(f"{path}: not a NumPy .npy/.npz file ({exc})") from exc
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.files)
                if "images" in keys:
                    array = loaded["images"]
                elif len(keys) == 1:
                    array = loaded[keys[0]]
                else:
                    raise LTMPError(f"{path}: .npz holds {keys}; name the calibration array 'images'")
        else:
            array = loaded
    elif isinstance(calibration, np.ndarray):
        array = calibration
    else:
        raise LTMPError(f"{where}: expected a NumPy array or a .npy/.npz path, got {type(calibration).__name__}")

    if array.dtype.kind != "f":
        raise LTMPError(f"{where}: calibration images must be preprocessed floats (normalised like the model's "
                        f"data_config), got dtype {array.dtype}")
    expected = tuple(input_shape[1:])
    if array.ndim != 4 or any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
        want = "x".join("?" if e is None else str(e) for e in expected)
        raise LTMPError(f"{where}: calibration images must have shape (N, {want.replace('x', ', ')}), got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise LTMPError(f"{where}: no calibration images (N = 0)")
    if not np.isfinite(array).all():
        raise LTMPError(f"{where}: calibration images contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def quantize_int8(
    onnx_in: str | os.PathLike,
    onnx_out: str | os.PathLike,
    calibration: CalibrationLike,
    *,
    method: str = "minmax",
    batch_size: Optional[int] = None,
    keep_first_last: bool = True,
    keep_float: Sequence[str] = (),
) -> QuantizeResult:
    """Write ``onnx_out``: ``onnx_in`` with Q/DQ nodes (see the module docstring for which layers).

    ``method``: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime's calibrators; the
    histogram ones need one tensor shape for all batches, which threshold-mode graphs do not
    have). ``keep_float``: extra node names to leave in float. The metadata is kept, with
    ``precision`` set to ``int8`` and a ``quantization`` record added. Raises LTMPError.
    """
    src = Path(onnx_in)
    ensure_writable(onnx_out)
    if method not in METHODS:
        raise LTMPError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    model = _load(src)
    meta = read_metadata(model)
    if has_qdq(model):
        raise LTMPError(f"{src}: already has QuantizeLinear/DequantizeLinear nodes; quantize the float graph instead")
    image_input = _image_input(model, src)
    if image_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise LTMPError(f"{src}: INT8 quantization needs an fp32 graph (this one takes "
                        f"{onnx.TensorProto.DataType.Name(image_input.type.tensor_type.elem_type)}); export without --fp16")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in image_input.type.tensor_type.shape.dim]
    images = load_calibration(calibration, shape)
    mode = meta.get("mode")
    if method != "minmax" and mode == "threshold":
        raise LTMPError(f"{src}: {method} calibration collects histograms that need the same tensor shapes in every batch, "
                        "but a threshold-mode graph has data-dependent token counts: use minmax")

    fixed_batch = shape[0]
    if fixed_batch is not None:
        if images.shape[0] < fixed_batch:
            raise LTMPError(f"{src}: the graph takes batches of exactly {fixed_batch}; got only {images.shape[0]} calibration images")
        batch = fixed_batch
    else:
        batch = batch_size or DEFAULT_BATCH
        if batch < 1:
            raise LTMPError(f"batch size {batch}: must be at least 1")

    quantize, kept = select_layers(model, keep_first_last=keep_first_last, keep_float=keep_float)
    if not quantize:
        raise LTMPError(f"{src}: no MatMul/Gemm/Conv layer is left to quantize")

    out = Path(onnx_out)
    with tempfile.TemporaryDirectory(dir=out.parent if str(out.parent) else None) as work:
        staged = Path(work) / "quantized.onnx"
        _run_ort(src, staged, images, batch, image_input.name, quantize, method)
        qmodel = onnx.load(str(staged))
    _restore_float_consumers(qmodel, set(quantize))
    meta.update(precision="int8", quantization={
        "tool": f"onnxruntime.quantization.quantize_static {_ort_version()}",
        "format": "QDQ", "weights": "int8 per channel, symmetric", "activations": "int8 per tensor, symmetric",
        "method": method, "calibration_images": int(images.shape[0]),
        "quantized_layers": len(quantize), "float_layers": kept,
    })
    write_metadata(qmodel, meta)
    try:
        onnx.checker.check_model(qmodel, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker raises several types
        raise LTMPError(f"{src}: the quantized graph fails ONNX's checker ({str(exc).splitlines()[0]})") from exc
    with atomic_output(out, suffix=".onnx") as tmp:
        tmp.write_bytes(qmodel.SerializeToString(deterministic=True))
    return QuantizeResult(out, method, int(images.shape[0]), quantize, kept)


def select_layers(model: onnx.ModelProto, *, keep_first_last: bool = True, keep_float: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """(names to quantize, {name kept float: reason}) for the MatMul/Gemm/Conv nodes of ``model``."""
    g = _Graph(model)
    decision_inputs = [(i, None) for n in g.nodes if n.op_type in DECISION_OPS for i in n.input if i]
    near_decisions = g.weight_layers_upstream(decision_inputs)
    first = g.weight_layers_downstream([i.name for i in model.graph.input if i.name not in g.weights])
    last = g.weight_layers_upstream([(o.name, None) for o in model.graph.output])

    quantize, kept = [], {}
    for n in g.nodes:
        if n.op_type not in WEIGHT_OPS:
            continue
        name = _name(n)
        if not g.is_weight_layer(n):
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


Cols = Optional[tuple[int, int]]  # a range of the last axis a value depends on; None: all of it


class _Graph:
    """Value dependencies between tensors, precise enough to follow LTMP's carried columns.

    Graphs may carry token sizes as one extra column next to the features (``[x * size, size]``)
    and slice it out again after gathering; attention then reads
    ``log(size)``. A plain walk would conclude that every layer feeding the features feeds the
    decisions. So the walk tracks which columns of the last axis matter through Slice, Concat,
    Gather and elementwise ops, and treats Shape/Size as reading shapes, not values. Any other op
    depends on all of its inputs.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.weights = set(self.inits) | {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - no shapes: the walk stays conservative
            inferred = graph
        self.shapes: dict[str, tuple] = {}
        for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for t in graph.initializer:
            self.shapes[t.name] = tuple(t.dims)

    def is_weight_layer(self, n: onnx.NodeProto) -> bool:
        return n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in self.weights

    def weight_layers_downstream(self, start: Sequence[str]) -> set[str]:
        found, seen, queue = set(), set(), deque(start)
        while queue:
            tensor = queue.popleft()
            if tensor in seen:
                continue
            seen.add(tensor)
            for n in self.consumers.get(tensor, []):
                if self.is_weight_layer(n):
                    found.add(_name(n))
                else:
                    queue.extend(n.output)
        return found

    def weight_layers_upstream(self, start: Sequence[tuple[str, Cols]]) -> set[str]:
        """Weight layers met first walking up from ``start`` (tensor, columns) along value dependencies."""
        found: set[str] = set()
        seen: set[tuple[str, Cols]] = set()
        queue = deque(start)
        while queue:
            tensor, cols = queue.popleft()
            if (tensor, cols) in seen or tensor in self.weights:
                continue
            seen.add((tensor, cols))
            node = self.producer.get(tensor)
            if node is None or node.op_type in SHAPE_OPS:
                continue
            if self.is_weight_layer(node):
                found.add(_name(node))
                continue
            queue.extend(self._inputs(node, tensor, cols))
        return found

    def _inputs(self, node: onnx.NodeProto, out: str, cols: Cols) -> list[tuple[str, Cols]]:
        """The inputs of ``node`` (and their columns) that columns ``cols`` of ``out`` depend on."""
        op = node.op_type
        rank = len(self.shapes.get(out, ()))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        everything = [(i, None) for i in node.input if i]
        if op == "Slice":
            axes = self._const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            steps = self._const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
            starts, ends = self._const(node.input[1]), self._const(node.input[2])
            width = self._last(node.input[0])
            if starts is None or ends is None or rank == 0:
                return everything
            axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
            if rank - 1 not in axes:  # slices other axes: the columns pass through
                return [(node.input[0], cols)]
            k = axes.index(rank - 1)
            if width is None or (steps is not None and int(steps[k]) != 1):
                return everything
            lo = min(max(int(starts[k]) + (width if starts[k] < 0 else 0), 0), width)
            hi = min(max(int(ends[k]) + (width if ends[k] < 0 else 0), 0), width)
            sub = (lo, hi) if cols is None else (lo + cols[0], lo + cols[1])
            return [(node.input[0], sub)]
        if op == "Concat":
            axis = int(attrs.get("axis", 0)) % rank if rank else -1
            if axis != rank - 1:
                return [(i, cols) for i in node.input if i]
            widths = [self._last(i) for i in node.input]
            if cols is None or None in widths:
                return everything
            picked, offset = [], 0
            for name, w in zip(node.input, widths):
                lo, hi = max(cols[0], offset), min(cols[1], offset + w)
                if lo < hi:
                    picked.append((name, (lo - offset, hi - offset)))
                offset += w
            return picked
        if op == "Gather":  # out[..., j] = data[..., idx[j]] on the last axis; other axes keep the columns
            data_rank = len(self.shapes.get(node.input[0], ()))
            if data_rank == 0:
                return everything
            if int(attrs.get("axis", 0)) % data_rank == data_rank - 1:
                idx, width = self._const(node.input[1]), self._last(node.input[0])
                if idx is None or width is None or idx.size == 0:
                    return everything
                idx = np.where(idx < 0, idx + width, idx)
                return [(node.input[0], (int(idx.min()), int(idx.max()) + 1))]
            return everything if cols is None else [(node.input[0], cols), (node.input[1], None)]
        if cols is None:
            return everything
        if op == "GatherElements" and int(attrs.get("axis", 0)) % max(rank, 1) != rank - 1:
            return [(node.input[0], cols), (node.input[1], None)]
        if op == "MatMul":  # columns of A @ B come from the same columns of B, and all of A
            return [(node.input[0], None), (node.input[1], cols)]
        if op in _ELEMENTWISE:
            width = self._last(out)
            return [(i, cols if self._last(i) == width and len(self.shapes.get(i, ())) == rank else None)
                    for i in node.input if i]
        return everything

    def _last(self, name: str) -> Optional[int]:
        shape = self.shapes.get(name)
        return shape[-1] if shape else None

    def _const(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return onnx.numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return onnx.numpy_helper.to_array(a.t)
        return None


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Cast", "Log", "Exp", "Sqrt", "Reciprocal", "Neg",
                "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Max", "Min", "Clip", "Identity", "Not", "And", "Or",
                "Equal", "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf"}


class _Reader:
    """ONNX Runtime's CalibrationDataReader contract: ``get_next`` until None."""

    def __init__(self, name: str, images: np.ndarray, batch: int, exact: bool) -> None:
        stop = len(images) - len(images) % batch if exact else len(images)
        self._batches: Iterator[np.ndarray] = (images[i:i + batch] for i in range(0, stop, batch))
        self._name = name

    def get_next(self) -> Optional[dict]:
        nxt = next(self._batches, None)
        return None if nxt is None else {self._name: nxt}

    def rewind(self) -> None:  # some ORT versions call it; a second pass is never needed here
        pass


def _run_ort(src: Path, dst: Path, images: np.ndarray, batch: int, input_name: str, nodes: list[str], method: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader_cls = type("CalibrationReader", (_Reader, CalibrationDataReader), {})
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    exact = _fixed_batch(onnx.load(str(src), load_external_data=False)) is not None
    with _quiet():
        try:
            quantize_static(
                str(src), str(dst), reader_cls(input_name, images, batch, exact),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate, op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
        except LTMPError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises many kinds
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LTMPError(f"{src}: ONNX Runtime could not quantize the graph ({first})") from exc


def _restore_float_consumers(model: onnx.ModelProto, quantized: set[str]) -> None:
    """Make every node that is not quantized read the float tensor, never a dequantized copy."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    for n in nodes:
        if n.op_type in QDQ_OPS or _name(n) in quantized:
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


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise LTMPError(f"{path}: ONNX file does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types on corrupt files
        raise LTMPError(f"{path}: cannot read ONNX file ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from exc


def _image_input(model: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise LTMPError(f"{path}: expected one image input (N, C, H, W), found {[i.name for i in inputs]}")
    return inputs[0]


def _fixed_batch(model: onnx.ModelProto) -> Optional[int]:
    inits = {t.name for t in model.graph.initializer}
    dim = next(i for i in model.graph.input if i.name not in inits).type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


__all__ = ["METHODS", "QuantizeResult", "has_qdq", "load_calibration", "quantize_int8", "select_layers"]
