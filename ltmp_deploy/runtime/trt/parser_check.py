"""Check an ONNX graph against what a TensorRT version's ONNX parser (onnx-tensorrt) accepts.

No TensorRT is needed: the rules below are a table of facts from onnx-tensorrt's
``docs/operators.md`` support matrix and ``docs/Changelog.md`` for each release, NVIDIA's
TensorRT release notes, and the parser's importer source. The graph is read through
:class:`ltmp_deploy.runtime.onnxgraph.Graph` (shapes, weights, constant values). Pure ``onnx`` +
``numpy``; runs on Python 3.8 (JetPack 5.1), never imports torch.

    report = check_model("model.onnx", "8.5")
    if not report.ok:
        print(report.summary())
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.onnxgraph import Graph, ModelLike, load, node_name
from ltmp_deploy.runtime.trt.targets import TRT_TARGETS, at_least

_ORDER = list(TRT_TARGETS)  # oldest first; "an op supported from X" means X and every later target

# ai.onnx opset range the parser documents. 8.5 and 8.6: "up to Opset 17" (operators.md on the
# release/8.5-GA and 8.6 branches); older opsets down to 7 are imported (TensorRT developer
# guide). 10.0: "inclusive range of opset 9 to opset 20" (no 10.3 matrix found: 10.0's range is
# used). 10.13: the ONNX 1.18 submodule (since 10.11, Changelog.md) defines opset 23; opset 24
# came with ONNX 1.19, after 10.13 GA. 10.15: 9..24. 11.x: max 25 (NVIDIA "ONNX Opset Guide";
# opset 25 came with 11.5, github.com/onnx/onnx-tensorrt/releases/tag/release%2F11.5-GA); 11.4
# (the Jetson release) takes what 11 does.
_OPSET_RANGE = {
    "8.5": (7, 17),
    "8.6": (7, 17),
    "10.3": (9, 20),
    "10.13": (9, 23),
    "10": (9, 24),
    "11": (9, 25),
    "11.4": (9, 25),
}

# ONNX element types the parser can import at all (onnx2trt convertDtype). DOUBLE is cast down
# to FLOAT and, before 9.0, INT64 down to INT32, clamping values: both import, so neither is
# flagged. BF16/FP8 arrived in 9.0, INT4 in 10.0 EA, FP4 (FLOAT4E2M1) in 10.8 (Changelog.md).
_T = TensorProto
# INT4 and FLOAT4E2M1 by number: onnx names them from 1.16 and 1.18, and the field runtime takes
# onnx 1.15 (JetPack 5.1's Python 3.8 gets 1.17 at most).
_INT4, _FLOAT4E2M1 = 22, 23
_BASE_TYPES = {_T.FLOAT, _T.DOUBLE, _T.FLOAT16, _T.INT8, _T.UINT8, _T.BOOL, _T.INT32, _T.INT64}
_TYPES = {"8.5": _BASE_TYPES, "8.6": _BASE_TYPES, "10.3": _BASE_TYPES | {_T.BFLOAT16, _T.FLOAT8E4M3FN, _INT4}}
_TYPES["10.13"] = _TYPES["10"] = _TYPES["11"] = _TYPES["11.4"] = _TYPES["10.3"] | {_FLOAT4E2M1}

# First target whose parser imports the op (operators.md "Y" rows, Changelog.md "Added support").
_OPS_FROM = {
    "8.5": """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
        BatchNormalization Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose
        Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
        EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
        GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If
        InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
        LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
        NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear RandomNormal
        RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
        ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
        ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round Scan Scatter
        ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
        Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
        TopK Transpose Trilu Unsqueeze Upsample Where Xor""",  # NonZero: new in 8.5 GA
    "8.6": "LayerNormalization GroupNormalization IsInf",  # 8.6 EA; 8.5 matrix: LayerNorm "N"
    "10.3": "CastLike Hardmax Gelu DeformConv",  # 9.2 matrix; Gelu: opset 20, 10.0+ (see report)
    "10.13": "BlackmanWindow HammingWindow HannWindow STFT",  # 10.4, 10.5 (Changelog.md)
    # Attention: 10.14; RMSNormalization, RotaryEmbedding, TensorScatter: 10.15 (Changelog.md);
    # Mish: in the 10.15 matrix, release it arrived in not found, so held to the newest.
    "10": "Mish Attention RMSNormalization RotaryEmbedding TensorScatter",
    "11": "Swish DFT",  # 11.0 and 11.2 release notes
}
_SUPPORTED_FROM = {op: t for t, ops in _OPS_FROM.items() for op in ops.split()}

# Custom-domain ops a parser imports natively (TensorRT 11.0 notes: TRT_Attention, TRT_MoE,
# TRT_KVCacheUpdate). The domain "trt" is what public exporter code uses; not confirmed by NVIDIA.
_KNOWN_CUSTOM_OPS = {("trt", "TRT_Attention"): "11", ("trt", "TRT_MoE"): "11", ("trt", "TRT_KVCacheUpdate"): "11"}

# Inputs that must be constant: (input index, what it is, targets that need it as weights).
# 8.x importers assert an initializer (TopK K, CumSum axis, Squeeze axes, Slice axes); runtime K
# came in 8.6 EA, tensor Slice axes in 10.3, dynamic Squeeze/Unsqueeze axes in 10.7. The 10.15
# matrix still wants CumSum axis, Reduce* axes and OneHot depth to be build-time constants.
_ALL = set(_ORDER)
_REDUCE = (
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare"
)
_CONST_INPUTS: dict[str, tuple[int, str, set[str]]] = {
    "TopK": (1, "K", {"8.5"}),
    "CumSum": (1, "axis", _ALL),
    "Squeeze": (1, "axes", {"8.5", "8.6", "10.3"}),
    "Unsqueeze": (1, "axes", {"8.5", "8.6", "10.3"}),
    "Slice": (3, "axes", {"8.5", "8.6"}),
    "OneHot": (1, "depth", _ALL),
    **{op: (1, "axes", _ALL) for op in _REDUCE.split()},
}
_STRICT = {"8.5", "8.6", "10.3"}  # parsers that want weights, not a foldable subgraph
TOPK_MAX_K = 3840  # "K input must be less than 3840" (operators.md, TopK row)
# TopK input types: 8.5 importer rejects INT32 (and INT64, which 8.x turns into INT32); INT32
# input came in 8.6 EA; BF16 in 9.0.
_TOPK_TYPES = {"8.5": {_T.FLOAT, _T.FLOAT16, _T.DOUBLE}}
_TOPK_TYPES["8.6"] = _TOPK_TYPES["8.5"] | {_T.INT32, _T.INT64}
for _target in _ORDER[2:]:
    _TOPK_TYPES[_target] = _TOPK_TYPES["8.6"] | {_T.BFLOAT16}


@dataclass
class Finding:
    """One thing the target's parser will reject (or import wrongly)."""

    node: str
    op_type: str
    reason: str


@dataclass
class CheckReport:
    """The result of :func:`check_model` for one target."""

    target: str
    opset: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def to_dict(self) -> dict:
        """A JSON-ready dict: target, opset, ok, findings."""
        return {
            "target": self.target,
            "opset": self.opset,
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
        }

    def summary(self) -> str:
        """Readable text: a headline, then one line per offending node."""
        head = f"{TRT_TARGETS.get(self.target, self.target)}, model opset {self.opset}: "
        if self.ok:
            return head + "OK"
        return "\n".join([head + f"{len(self.findings)} problem(s)"] + [f"  {_line(f)}" for f in self.findings])

    def one_line(self) -> str:
        """The findings in one line: each kind of problem once, with how many nodes and the first."""
        if self.ok:
            return "OK"
        kinds: dict[tuple[str, str], list[str]] = {}
        for f in self.findings:
            kinds.setdefault((f.op_type, f.reason), []).append(f.node)
        parts = [
            f"{reason} ({len(nodes)} {op or 'model'} node{'s' if len(nodes) > 1 else ''}, first {nodes[0]})"
            for (op, reason), nodes in kinds.items()
        ]
        return _printable(f"{len(self.findings)} problem(s): " + "; ".join(parts))


def _line(f: Finding) -> str:
    return _printable(f"{f.node} [{f.op_type}]: {f.reason}" if f.op_type else f"{f.node}: {f.reason}")


def _printable(text: str) -> str:
    """``text`` as one printable line: names read from a damaged file may hold control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _check_graph(g: Graph, target: str) -> list[Finding]:
    """Model-level rules: opset range and the element types of inputs, outputs and constants."""
    lo, hi = _OPSET_RANGE[target]
    out = []
    if not lo <= g.opset <= hi:
        out.append(
            Finding(
                "<model>",
                "",
                f"ai.onnx opset {g.opset} is outside the {lo}..{hi} range the TensorRT {target} parser supports",
            )
        )
    allowed = _TYPES[target]
    tensors = [(vi.name, vi.type.tensor_type.elem_type, "<input>") for vi in g.model.graph.input]
    tensors += [(vi.name, vi.type.tensor_type.elem_type, "<output>") for vi in g.model.graph.output]
    tensors += [(t.name, t.data_type, "<initializer>") for t in g.model.graph.initializer]
    for node in (n for n in g.all_nodes if n.domain in ("", "ai.onnx")):
        for a in node.attribute:  # Constant / ConstantOfShape values, Cast / EyeLike / Random* types
            if a.type == onnx.AttributeProto.TENSOR:
                tensors.append((node_name(node), a.t.data_type, node.op_type))
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT:
                tensors.append((node_name(node), a.i, node.op_type))
    for name, dtype, kind in tensors:
        if dtype in TensorProto.DataType.values() and dtype and dtype not in allowed:
            out.append(
                Finding(
                    name,
                    kind,
                    f"element type {TensorProto.DataType.Name(dtype)} cannot be imported by TensorRT {target}",
                )
            )
    return out


def _check_node(g: Graph, node: onnx.NodeProto, target: str) -> list[str]:
    """Node-level rules; returns the reasons (empty when the node imports)."""
    op, domain = node.op_type, node.domain or ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if domain not in ("", "ai.onnx"):
        first = _KNOWN_CUSTOM_OPS.get((domain, op))
        if first and at_least(target, first):
            return []
        if any(f.domain == domain and f.name == op for f in g.model.functions):
            # ONNX local functions are inlined by the parser from TensorRT 9.0 (Changelog 9.0 EA).
            return [] if at_least(target, "10.3") else ["ONNX local functions need TensorRT 9.0+"]
        return [
            f"custom op in domain '{domain}': not built into the TensorRT {target} parser "
            "(it would need a plugin registered under that name)"
        ]
    first = _SUPPORTED_FROM.get(op)
    if first is None:
        return [f"{op} is not in the TensorRT {target} ONNX parser's support matrix"]
    if not at_least(target, first):
        return [f"{op} is imported only from TensorRT {first} on"]
    reasons = []
    try:  # the op's version at the model's opset must be one the parser knows
        since = onnx.defs.get_schema(op, g.opset, "").since_version
        if since > _OPSET_RANGE[target][1]:
            reasons.append(
                f"{op}-{since} is newer than opset {_OPSET_RANGE[target][1]}, "
                f"the newest the TensorRT {target} parser reads"
            )
    except Exception:  # noqa: BLE001 - op unknown to this onnx build: the table decides
        pass
    if op in _CONST_INPUTS:
        idx, what, targets = _CONST_INPUTS[op]
        name = node.input[idx] if len(node.input) > idx else ""
        if name and target in targets and not g.is_weights(name):
            if target in _STRICT and g.constant_value(name) is not None:
                reasons.append(
                    f"{what} is computed from constants but TensorRT {target} wants an "
                    "initializer: fold constants first (polygraphy surgeon sanitize "
                    "--fold-constants)"
                )
            elif g.constant_value(name) is None:
                reasons.append(f"{what} must be a constant for TensorRT {target}, here it is computed at run time")
    if op == "TopK":
        reasons += _check_topk(g, node, attrs, target)
    if op in ("ScatterElements", "ScatterND"):
        reasons += _check_scatter(op, attrs, target)
    return reasons


def _check_topk(g: Graph, node: onnx.NodeProto, attrs: dict, target: str) -> list[str]:
    reasons = []
    k = g.constant_value(node.input[1]) if len(node.input) > 1 else np.array(attrs.get("k", 1))
    if k is not None and k.size == 1 and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
        reasons.append(f"K = {int(k.reshape(-1)[0])}: TensorRT needs K < {TOPK_MAX_K}")
    if attrs.get("sorted", 1) == 0 and at_least(target, "10.13"):
        reasons.append("sorted=0: the parser requires sorted=1 (operators.md, TensorRT 10.x)")
    dtype = g.types.get(node.input[0], 0)
    if dtype and dtype not in _TOPK_TYPES[target]:
        reasons.append(f"TopK on {TensorProto.DataType.Name(dtype)} input is not imported by TensorRT {target}")
    return reasons


def _check_scatter(op: str, attrs: dict, target: str) -> list[str]:
    reduction = attrs.get("reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction != "none" and not at_least(target, "10.3"):
        # IScatterLayer has no reduction (NVIDIA/TensorRT#2396); the 8.x importers ignore the
        # attribute, so the engine builds and overwrites instead of reducing (NVIDIA/TensorRT#3750,
        # onnx/onnx-tensorrt#957). ScatterElements reductions import from 10.0 EA, through the
        # standard "ScatterElements" plugin (v2 since 10.3), so libnvinfer_plugin must be loaded.
        return [
            f"{op} reduction='{reduction}' is silently ignored by TensorRT {target} "
            "(wrong results): use a one-hot MatMul or Gather instead"
        ]
    if reduction != "none" and op == "ScatterND":
        # 10.x/11 importer: "ScatterND with reduction is not supported" (kUNSUPPORTED_NODE_ATTR).
        return [f"ScatterND reduction='{reduction}' is rejected by the TensorRT {target} parser"]
    if op == "ScatterND" and "reduction" in attrs and at_least(target, "10.3") and not at_least(target, "10.13"):
        # 10.0-10.8 assert the attribute is absent even when it is 'none' (error text
        # `!attrs.count("reduction")` in user reports); 10.9 "Fixed support for opset 18+ ScatterND".
        return [
            "ScatterND with an explicit reduction attribute (even 'none') is rejected by "
            "TensorRT 10.0-10.8 parsers: drop the attribute"
        ]
    return []


def check_model(model: ModelLike, target: str) -> CheckReport:
    """Check ``model`` (a ModelProto or a path) against TensorRT ``target`` (a key of TRT_TARGETS).

    Raises :class:`LTMPError` for a missing or unreadable file and for an unknown target.
    """
    if target not in TRT_TARGETS:
        where = "" if isinstance(model, onnx.ModelProto) else f"{os.fspath(model)}: "
        raise LTMPError(f"{where}unknown TensorRT target {target!r}; valid targets: " + ", ".join(TRT_TARGETS))
    g = Graph(load(model))
    findings = _check_graph(g, target)
    for node in g.all_nodes:
        findings += [Finding(node_name(node), node.op_type, r) for r in _check_node(g, node, target)]
    return CheckReport(target=target, opset=g.opset, findings=findings)
