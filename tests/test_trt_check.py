"""The TensorRT parser check (runtime/trt/parser_check.py): tiny hand-built graphs against each target's rules."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.trt.parser_check import TRT_TARGETS, CheckReport, Finding, check_model

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17, functions=(), domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    model.ir_version = 8
    return model


def _vi(name, dtype=F, shape=(2, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _k_init(k, name="k"):
    return numpy_helper.from_array(np.array([k], dtype=np.int64), name)


def _topk(k_source_nodes=(), k_name="k", inits=(), extra_inputs=(), **attrs):
    nodes = [*k_source_nodes, helper.make_node("TopK", ["x", k_name], ["v", "i"], name="topk", axis=-1, **attrs)]
    return _model(
        nodes, [_vi("x", shape=(2, 5000)), *extra_inputs], [_vi("v", shape=(2, None)), _vi("i", I64, (2, None))], inits
    )


def _reasons(report: CheckReport, op_type: str) -> list[str]:
    return [f.reason for f in report.findings if f.op_type == op_type]


def test_clean_matmul_softmax_passes_every_target():
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    m = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=-1),
        ],
        [_vi("x")],
        [_vi("y")],
        [w],
    )
    for target in TRT_TARGETS:
        report = check_model(m, target)
        assert report.ok, report.summary()
        assert report.opset == 17 and report.target == target


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
def test_scatter_with_reduction_fails_8x(op):
    idx_shape = (2, 8) if op == "ScatterElements" else (2, 1)
    upd_shape = (2, 8) if op == "ScatterElements" else (2,)
    m = _model(
        [helper.make_node(op, ["x", "idx", "upd"], ["y"], name="scatter", reduction="add")],
        [_vi("x"), _vi("idx", I64, idx_shape), _vi("upd", F, upd_shape + ((8,) if op == "ScatterND" else ()))],
        [_vi("y")],
        opset=16,
    )
    for target in ("8.5", "8.6"):
        reasons = _reasons(check_model(m, target), op)
        assert reasons and "reduction='add'" in reasons[0], (target, reasons)
    # ScatterElements reductions import from 10.0 (plugin); ScatterND reductions never do.
    assert bool(_reasons(check_model(m, "10"), op)) == (op == "ScatterND")


def test_scatternd_explicit_none_reduction_fails_10_3_only():
    m = _model(
        [helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="snd", reduction="none")],
        [_vi("x"), _vi("idx", I64, (2, 1)), _vi("upd", F, (2, 8))],
        [_vi("y")],
        opset=16,
    )
    assert _reasons(check_model(m, "10.3"), "ScatterND")
    assert check_model(m, "8.6").ok and check_model(m, "10").ok


def test_topk_unsorted_fails_current_10_and_11():
    m = _topk(inits=[_k_init(16)], sorted=0)
    assert _reasons(check_model(m, "10"), "TopK") and _reasons(check_model(m, "11"), "TopK")
    assert _reasons(check_model(m, "11.4"), "TopK")
    assert check_model(m, "8.6").ok


def test_scatter_without_reduction_passes_8x():
    m = _model(
        [helper.make_node("ScatterElements", ["x", "idx", "upd"], ["y"], name="s", axis=1)],
        [_vi("x"), _vi("idx", I64), _vi("upd")],
        [_vi("y")],
        opset=16,
    )
    assert check_model(m, "8.5").ok and check_model(m, "8.6").ok


def test_topk_constant_k_passes_8_5():
    for m in (
        _topk(inits=[_k_init(16)]),
        _topk([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([16], np.int64)))]),
    ):
        for target in TRT_TARGETS:
            assert check_model(m, target).ok, check_model(m, target).summary()


def test_topk_runtime_k_fails_8_5_passes_8_6():
    from_input = _topk(extra_inputs=[_vi("k", I64, (1,))])
    # K computed from data values: ReduceMax over a float tensor, cast to int64.
    computed = _topk(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], name="rmax", keepdims=0),
            helper.make_node("Cast", ["m"], ["mk"], name="cast", to=I64),
            helper.make_node("Reshape", ["mk", "one"], ["k"], name="resh"),
        ],
        inits=[_k_init(1, "one")],
    )
    for m in (from_input, computed):
        reasons = _reasons(check_model(m, "8.5"), "TopK")
        assert reasons and "run time" in reasons[0], reasons
        assert check_model(m, "8.6").ok, check_model(m, "8.6").summary()


def test_topk_k_from_static_shape_needs_folding_on_8_5():
    # argsort-style K = x.shape[-1]: foldable, but the 8.5 parser only takes an initializer.
    m = _topk(
        [
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("Gather", ["s", "last"], ["k"], name="gather", axis=0),
        ],
        inits=[numpy_helper.from_array(np.array([1], np.int64), "last")],
    )
    reasons = _reasons(check_model(m, "8.5"), "TopK")
    assert reasons and "fold constants" in reasons[0], reasons
    # The folded value is also checked against the K limit (x is (2, 5000)).
    assert any("K = 5000" in r for r in _reasons(check_model(m, "10"), "TopK"))


@pytest.mark.parametrize("k,ok", [(3839, True), (3840, False), (4096, False)])
def test_topk_k_limit(k, ok):
    m = _topk(inits=[_k_init(k)])
    for target in TRT_TARGETS:
        report = check_model(m, target)
        assert report.ok == ok, report.summary()
        if not ok:
            assert f"K = {k}" in report.summary()


def test_topk_int32_input_fails_8_5_only():
    m = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
        [_vi("x", TensorProto.INT32)],
        [_vi("v", TensorProto.INT32), _vi("i", I64)],
        [_k_init(2)],
    )
    assert _reasons(check_model(m, "8.5"), "TopK")
    assert check_model(m, "8.6").ok


@pytest.mark.parametrize(
    "target,opset,ok",
    [
        ("8.5", 18, False),
        ("8.5", 17, True),
        ("8.6", 18, False),
        ("10.3", 21, False),
        ("10", 25, False),
        ("11", 25, True),
        ("11", 26, False),
        ("11.4", 25, True),
        ("11.4", 26, False),
        ("10", 8, False),
    ],
)
def test_opset_range(target, opset, ok):
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x")], [_vi("y")], opset=opset)
    report = check_model(m, target)
    assert report.ok == ok, report.summary()
    if not ok:
        assert any(f.node == "<model>" and str(opset) in f.reason for f in report.findings)


def test_newer_op_version_is_named():
    # LayerNormalization-17 imports from 8.6; Gelu only exists from opset 20.
    ln = _model(
        [helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln", axis=-1)],
        [_vi("x")],
        [_vi("y")],
        [numpy_helper.from_array(np.ones(8, np.float32), "s")],
    )
    assert _reasons(check_model(ln, "8.5"), "LayerNormalization")
    assert check_model(ln, "8.6").ok
    gelu = _model([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], [_vi("x")], [_vi("y")], opset=20)
    assert _reasons(check_model(gelu, "8.6"), "Gelu")
    assert check_model(gelu, "10.3").ok
    # ReduceMean itself imports everywhere, but its opset-18 form (axes as an input) is too new for 8.x.
    rm = _model(
        [helper.make_node("ReduceMean", ["x", "ax"], ["y"], name="rmean")],
        [_vi("x")],
        [_vi("y", shape=(2, 1))],
        [numpy_helper.from_array(np.array([1], np.int64), "ax")],
        opset=18,
    )
    assert any("ReduceMean-18" in r for r in _reasons(check_model(rm, "8.6"), "ReduceMean"))
    assert check_model(rm, "10.3").ok


def test_unknown_custom_domain_op_fails():
    m = _model(
        [helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused", domain="com.microsoft")],
        [_vi("x", shape=(8, 8))],
        [_vi("y", shape=(8, 8))],
        domains=["com.microsoft"],
    )
    for target in TRT_TARGETS:
        reasons = _reasons(check_model(m, target), "FusedMatMul")
        assert reasons and "com.microsoft" in reasons[0]


def test_local_function_needs_trt9():
    fn = helper.make_function(
        "my.funcs", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    m = _model(
        [helper.make_node("Twice", ["x"], ["y"], name="twice", domain="my.funcs")],
        [_vi("x")],
        [_vi("y")],
        functions=[fn],
        domains=["my.funcs"],
    )
    assert _reasons(check_model(m, "8.6"), "Twice")
    assert check_model(m, "10.3").ok


def test_unsupported_op_and_type():
    m = _model(
        [
            helper.make_node("Unique", ["x"], ["y"], name="uniq"),
            helper.make_node("Cast", ["y"], ["z"], name="to_u16", to=TensorProto.UINT16),
        ],
        [_vi("x")],
        [_vi("z", TensorProto.UINT16, (None,))],
    )
    report = check_model(m, "10")
    assert _reasons(report, "Unique")
    assert _reasons(report, "Cast") and "UINT16" in _reasons(report, "Cast")[0]
    assert "<output>" in {f.op_type for f in report.findings}


def test_double_and_int64_are_not_flagged():
    # The parser casts DOUBLE to FLOAT (and INT64 to INT32 before 9.0): both import.
    m = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.DOUBLE)],
        [_vi("x", I64)],
        [_vi("y", TensorProto.DOUBLE)],
    )
    assert check_model(m, "8.5").ok


def test_cumsum_axis_must_be_constant():
    m = _model([helper.make_node("CumSum", ["x", "ax"], ["y"], name="cs")], [_vi("x"), _vi("ax", I64, ())], [_vi("y")])
    for target in TRT_TARGETS:
        assert _reasons(check_model(m, target), "CumSum")


def test_report_dict_and_summary():
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [_vi("x")], [_vi("y", shape=(None,))])
    report = check_model(m, "8.5")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["target"] == "8.5" and d["findings"][0]["node"] == "uniq"
    lines = report.summary().splitlines()
    assert "TensorRT 8.5" in lines[0] and lines[1].strip().startswith("uniq [Unique]")
    assert CheckReport("8.5", 17, []).ok and not CheckReport("8.5", 17, [Finding("n", "Op", "r")]).ok


def test_path_input_roundtrip(tmp_path):
    m = _topk(extra_inputs=[_vi("k", I64, (1,))])
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert not check_model(path, "8.5").ok and check_model(str(path), "8.6").ok


@pytest.mark.parametrize("content", [b"", b"\x00\xffnot an onnx file at all\x12\x34"])
def test_corrupt_file_raises_naming_file(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(LTMPError) as err:
        check_model(path, "8.5")
    assert "broken.onnx" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_raises_naming_file(tmp_path):
    with pytest.raises(LTMPError, match="nothere.onnx"):
        check_model(tmp_path / "nothere.onnx", "10")


def test_unknown_target_raises_listing_valid_ones(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    with pytest.raises(LTMPError) as err:
        check_model(m, "9.0")
    msg = str(err.value)
    assert "9.0" in msg and all(t in msg for t in TRT_TARGETS) and "\n" not in msg
    path = tmp_path / "ok.onnx"
    onnx.save(m, path)
    with pytest.raises(LTMPError, match="ok.onnx"):
        check_model(path, "7")


def test_k_computed_by_any_op_from_constants_is_folded():
    # ReduceMax over an initializer: constants alone decide K, so the 8.5 parser only needs it folded.
    m = _topk(
        [helper.make_node("ReduceMax", ["ks"], ["k"], name="rmax", keepdims=1)],
        inits=[numpy_helper.from_array(np.array([3, 16, 7], np.int64), "ks")],
    )
    reasons = _reasons(check_model(m, "8.5"), "TopK")
    assert reasons and "fold constants" in reasons[0], reasons
    assert check_model(m, "8.6").ok


def test_tensorrt_10_13_sits_between_10_3_and_the_newest_10():
    # Opset 24 came after 10.13; STFT arrived in 10.5, Attention in 10.14 (onnx-tensorrt Changelog.md).
    relu24 = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x")], [_vi("y")], opset=24)
    assert not check_model(relu24, "10.13").ok and check_model(relu24, "10").ok
    stft = _model(
        [helper.make_node("STFT", ["x", "step"], ["y"], name="stft")],
        [_vi("x", shape=(1, 64, 1))],
        [_vi("y", shape=(1, None, None, 2))],
        [numpy_helper.from_array(np.array(16, np.int64), "step")],
    )
    assert _reasons(check_model(stft, "10.3"), "STFT") and check_model(stft, "10.13").ok
    attention = _model(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")],
        [_vi(n, shape=(1, 2, 4, 8)) for n in "qkv"],
        [_vi("y", shape=(1, 2, 4, 8))],
        opset=23,
    )
    assert _reasons(check_model(attention, "10.13"), "Attention") and check_model(attention, "10").ok
    assert "JetPack 7.0" in check_model(relu24, "10.13").summary()


def test_tensorrt_11_4_takes_what_11_does():
    # The Jetson release of 11.x comes after 11.0-11.3: ops, custom ops and types "from 11" hold for it.
    assert list(TRT_TARGETS)[-2:] == ["11", "11.4"]
    swish = _model([helper.make_node("Swish", ["x"], ["y"], name="swish")], [_vi("x")], [_vi("y")], opset=24)
    assert _reasons(check_model(swish, "10"), "Swish")
    assert check_model(swish, "11").ok and check_model(swish, "11.4").ok
    attention = _model(
        [helper.make_node("TRT_Attention", ["x"], ["y"], name="attn", domain="trt")],
        [_vi("x")],
        [_vi("y")],
        domains=["trt"],
    )
    assert _reasons(check_model(attention, "10"), "TRT_Attention")
    assert check_model(attention, "11").ok and check_model(attention, "11.4").ok
    fp4 = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="to_fp4", to=TensorProto.FLOAT4E2M1)],
        [_vi("x")],
        [_vi("y", TensorProto.FLOAT4E2M1)],
        opset=23,
    )
    assert _reasons(check_model(fp4, "10.3"), "Cast") and check_model(fp4, "11.4").ok
    assert "JetPack 7.2.2" in check_model(swish, "11.4").summary()
