"""One ONNX graph, read for what the torch-free tools ask of it.

Producers and consumers of each tensor, which tensors are weights, the element types and shapes
onnx's shape inference finds, the image input, and the value of a tensor that constants alone
decide. The TensorRT parser check (``trt.parser_check``) and the INT8 layer selection (``int8.quantize``)
both read graphs through :class:`Graph`.

Constant values are computed by onnx's own reference evaluator over the constant part of the
graph. That part is found here: onnx's ``utils.Extractor`` walks the top-level graph only and
cannot stand a static shape in for a Shape node. Pure onnx + numpy: no torch, no onnxslim.

Not onnx-graphsurgeon, although it installs on JetPack 5.1's Python 3.8: its importer raises on an
element type the installed onnx cannot name (FLOAT4E2M1 under onnx 1.17, the newest for 3.8), a
graph the parser check must report rather than refuse; its ``fold_constants`` evaluates with ONNX
Runtime, which the base field install lacks (without it nothing folds, with a warning only), and
folds Shape reads but not Size (benchmarks/results/2026-12-05-graphsurgeon-check.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Union

import numpy as np
import onnx
from onnx import numpy_helper

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.metadata import INPUT_NAME, OUTPUT_NAME, load_onnx

ModelLike = Union[onnx.ModelProto, str, os.PathLike]
Shape = tuple  # of Optional[int]: None for a dimension known only at run time
DEFAULT_DOMAINS = ("", "ai.onnx")


def load(model: ModelLike) -> onnx.ModelProto:
    """``model`` itself, or the graph at that path (read by :func:`metadata.load_onnx`)."""
    return model if isinstance(model, onnx.ModelProto) else load_onnx(model)


def dims(value: onnx.ValueInfoProto) -> Shape:
    """The shape of a graph input or output; None marks a dimension known only at run time."""
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "<unnamed>")


def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from walk(g)


def image_io(model: onnx.ModelProto, where: str) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """(the image input, the logits output) of an ltmp-deploy export, or a one-line LTMPError.

    The input must be (batch, C, H, W) with static C, H, W; the batch may be dynamic.
    """
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    outputs = {o.name: o for o in model.graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise LTMPError(
            f"{where}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}' (an ltmp-deploy export), "
            f"found inputs {list(inputs)} and outputs {list(outputs)}"
        )
    shape = dims(inputs[INPUT_NAME])
    if len(shape) != 4 or None in shape[1:]:
        raise LTMPError(f"{where}: '{INPUT_NAME}' must be (batch, C, H, W) with static C, H, W; got {shape}")
    return inputs[INPUT_NAME], outputs[OUTPUT_NAME]


class Graph:
    """Lookups over one model. Nodes of If/Loop/Scan bodies are in ``all_nodes`` and the
    producer/consumer maps; ``nodes`` is the top-level graph only."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = opset(model)
        self.nodes = list(model.graph.node)
        self.all_nodes = list(walk(model.graph))
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in self.all_nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.all_nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        # What the TensorRT parser sees as weights, and what ORT's quantizer treats as constant.
        self.weights = set(self.inits) | {o for n in self.all_nodes if n.op_type == "Constant" for o in n.output}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, Shape] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - custom ops etc.: what needs types or shapes stays unknown
            inferred = model.graph
        for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = dims(vi)
        for t in model.graph.initializer:
            self.types[t.name], self.shapes[t.name] = t.data_type, tuple(t.dims)
        self._values: dict[str, np.ndarray | None] = {}

    def is_weights(self, name: str) -> bool:
        """An initializer or a Constant node's output."""
        return name in self.weights

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when initializers, Constant nodes and static shapes decide it, else None."""
        if name not in self._values:
            self._values[name] = self._evaluate(name)
        return self._values[name]

    def _evaluate(self, name: str) -> np.ndarray | None:
        cone = self._constant_cone(name)
        if cone is None:
            return None
        nodes, inits = cone
        try:
            if not nodes:
                return numpy_helper.to_array(self.inits[name])
            from onnx.reference import ReferenceEvaluator

            graph = onnx.helper.make_graph(
                nodes, "constant", [], [onnx.ValueInfoProto(name=name)], [self.inits[i] for i in sorted(inits)]
            )
            sub = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
            sub.ir_version = self.model.ir_version
            return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
        except Exception:  # noqa: BLE001 - weights in external files, an op the evaluator lacks: unknown
            return None

    def _constant_cone(self, name: str) -> tuple[list[onnx.NodeProto], set[str]] | None:
        """The nodes (in graph order, shape reads replaced by their values) and initializers that
        ``name`` is computed from; None when a graph input or anything unfoldable is among them."""
        picked: dict[int, onnx.NodeProto] = {}
        inits: set[str] = set()
        order = {id(n): k for k, n in enumerate(self.all_nodes)}
        stack, seen = [name], set()
        while stack:
            tensor = stack.pop()
            if not tensor or tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.inits:
                inits.add(tensor)
                continue
            node = self.producer.get(tensor)
            if node is None or node.domain not in DEFAULT_DOMAINS:
                return None
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                return None
            if node.op_type in ("Shape", "Size"):
                value = self._shape_read(node)
                if value is None:
                    return None
                picked[id(node)] = onnx.helper.make_node(
                    "Constant", [], [node.output[0]], value=numpy_helper.from_array(value)
                )
                continue
            picked[id(node)] = node
            stack.extend(node.input)
        return [picked[k] for k in sorted(picked, key=order.__getitem__)], inits

    def _shape_read(self, node: onnx.NodeProto) -> np.ndarray | None:
        """What a Shape or Size node returns, when its input's shape is static."""
        shape = self.shapes.get(node.input[0])
        if shape is None or None in shape:
            return None
        if node.op_type == "Size":
            return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], np.int64)


__all__ = ["Graph", "dims", "image_io", "load", "node_name", "opset", "walk"]
