"""INT8 by explicit quantization (ONNX Runtime's quantize_static, QDQ): accuracy, graph, TensorRT targets.

The model is DeiT-tiny shaped (width 192, 3 heads, patch 16) at 96 px with 4 blocks, whose
classifier is fitted (ridge regression on its features) to a synthetic 10-class task: random
weights alone give near-tied logits, where any rounding flips the top-1 and the agreement
measures nothing. The fp32 and the Q/DQ graph both run in ONNX Runtime on the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import one_torch_thread
from timm.models.vision_transformer import VisionTransformer

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.int8.calibration_data import read_calibration_data
from ltmp_deploy.runtime.int8.quantize import has_qdq, quantize_int8, select_layers
from ltmp_deploy.runtime.metadata import read_metadata
from ltmp_deploy.runtime.parity.tolerances import gates
from ltmp_deploy.runtime.trt.parser_check import check_model

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

SIZE, CLASSES = 96, 10
MIN_AGREEMENT = gates("int8")["top1"]  # the gate validate holds an INT8 graph to


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of 10 classes: a smooth class pattern plus as much noise as signal."""
    templates = F.interpolate(
        torch.randn(CLASSES, 3, 6, 6, generator=torch.Generator().manual_seed(1234)),
        size=SIZE,
        mode="bilinear",
        align_corners=False,
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return templates[y] + torch.randn(n, 3, SIZE, SIZE, generator=g), y


def probe_model():
    """A DeiT-tiny-shaped ViT with a fitted head, patched with LTMP (threshold mode)."""
    from ltmp_deploy.ltmp.patch import apply_patch

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=SIZE, patch_size=16, embed_dim=192, depth=4, num_heads=3, num_classes=CLASSES
    ).eval()
    with torch.no_grad():
        for blk in model.blocks:  # peaked attention: clear-cut, varied token decisions
            blk.attn.qkv.weight[:384] *= 3.0
        x, y = synthetic(384, 1)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        a = torch.cat([feats, torch.ones(len(feats), 1)], 1)
        w = torch.linalg.solve(a.T @ a + 0.1 * torch.eye(a.shape[1]), a.T @ (F.one_hot(y, CLASSES).float() * 2 - 1))
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    model = apply_patch(model)
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.5, 0.45, 0.4, 0.35], [0.7 / n, 0.9 / n, 1.0 / n, 1.0 / n])
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.ltmp.flops import schedule_for_flops

    folder = tmp_path_factory.mktemp("quantize")
    with one_torch_thread():  # much faster than two threads contending on 2 cores
        model = probe_model()
        graphs = {"threshold": export_onnx(model, folder / "threshold.onnx").path}
        model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
        graphs["fixed"] = export_onnx(model, folder / "fixed.onnx").path
    calib = synthetic(64, 3)[0].numpy()
    np.save(folder / "calib.npy", calib)
    quantized = {
        mode: quantize_int8(path, folder / f"{mode}.int8.onnx", folder / "calib.npy") for mode, path in graphs.items()
    }
    return {
        "folder": folder,
        "graphs": graphs,
        "quantized": quantized,
        "calib": calib,
        "test": synthetic(200, 4)[0].numpy(),
    }


def logits(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_qdq_graph_agrees_with_fp32_on_top1(setup, mode):
    images = setup["test"]
    ref = logits(setup["graphs"][mode], images)
    got = logits(setup["quantized"][mode].path, images)
    agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    print(
        f"\n{mode}: INT8 (Q/DQ) vs fp32 top-1 agreement {agreement:.3f} on {len(images)} images, "
        f"max |logit diff| {np.abs(ref - got).max():.3f}"
    )
    assert agreement >= MIN_AGREEMENT, f"{mode}: top-1 agreement {agreement:.3f} < {MIN_AGREEMENT}"
    assert np.abs(ref - got).max() <= gates("int8")["logit_abs"]


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_qdq_nodes_sit_on_the_linear_layers_and_decisions_stay_float(setup, mode):
    result = setup["quantized"][mode]
    model = onnx.load(str(result.path))
    ops = [n.op_type for n in model.graph.node]
    assert has_qdq(model) and ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    producer = {o: n for n in model.graph.node for o in n.output}

    def reads_int8(node):
        return any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input)

    by_name = {n.name: n for n in model.graph.node}
    mlp = "Gemm" if mode == "threshold" else "MatMul"  # threshold mode's MLP runs on a (B*N, C) matrix
    for block in range(4):
        for layer in ("proj/MatMul", f"mlp/fc1/{mlp}", f"mlp/fc2/{mlp}"):
            assert reads_int8(by_name[f"/blocks.{block}/{layer}"]), layer
        assert not reads_int8(by_name[f"/blocks.{block}/qkv/MatMul"])  # queries/keys choose the tokens
    assert not reads_int8(by_name["/patch_embed/proj/Conv"]) and not reads_int8(by_name["/head/Gemm"])
    quantized = set(result.quantized)
    for node in model.graph.node:  # no float consumer reads a dequantized activation
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.name not in quantized:
            assert not reads_int8(node), node.name
    assert result.kept_float["/blocks.0/qkv/MatMul"].startswith("its output feeds the token decisions")
    assert "product of two activations" in result.kept_float["/blocks.0/MatMul"]


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_metadata_is_kept_with_precision_int8(setup, mode):
    before = read_metadata(onnx.load(str(setup["graphs"][mode])))
    after = read_metadata(onnx.load(str(setup["quantized"][mode].path)))
    assert after["precision"] == "int8" and after["mode"] == before["mode"] == mode
    for key in ("data_config", "schedule", "opset", "input_shape", "num_classes"):
        assert after.get(key) == before.get(key), key
    q = after["quantization"]
    assert q["format"] == "QDQ" and q["method"] == "minmax" and q["calibration_images"] == 64
    assert q["quantized_layers"] == len(setup["quantized"][mode].quantized) == 12


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
@pytest.mark.parametrize("target", ["8.6", "10", "11"])
def test_qdq_graph_passes_the_tensorrt_parser_check(setup, mode, target):
    report = check_model(setup["quantized"][mode].path, target)
    assert report.ok, report.summary()


def test_fixed_qdq_graph_also_passes_tensorrt_85(setup):
    report = check_model(setup["quantized"]["fixed"].path, "8.5")
    assert report.ok, report.summary()


def test_histogram_calibrators_on_a_fixed_graph_and_their_refusal_on_threshold(setup, tmp_path):
    result = quantize_int8(setup["graphs"]["fixed"], tmp_path / "p.onnx", setup["calib"][:32], method="percentile")
    assert result.method == "percentile" and has_qdq(onnx.load(str(result.path)))
    with pytest.raises(LTMPError, match="use minmax"):
        quantize_int8(setup["graphs"]["threshold"], tmp_path / "t.onnx", setup["calib"], method="entropy")
    with pytest.raises(LTMPError, match="choose one of"):
        quantize_int8(setup["graphs"]["fixed"], tmp_path / "t.onnx", setup["calib"], method="kl")
    assert not (tmp_path / "t.onnx").exists()


def test_calibration_files_and_their_mistakes(setup, tmp_path):
    calib = setup["calib"]
    shape = [None, 3, SIZE, SIZE]
    np.savez(tmp_path / "named.npz", images=calib, labels=np.zeros(len(calib)))
    np.savez(tmp_path / "single.npz", calib)
    np.savez(tmp_path / "two.npz", a=calib, b=calib)
    for name in ("named.npz", "single.npz"):
        np.testing.assert_array_equal(read_calibration_data(tmp_path / name, shape), calib)
    np.testing.assert_array_equal(read_calibration_data(calib.astype(np.float64), shape), calib)
    cases = [
        (tmp_path / "two.npz", "name the calibration array 'images'"),
        (tmp_path / "missing.npy", "does not exist"),
        ((calib * 255).astype(np.uint8), "preprocessed floats"),
        (calib[:, :, :32], "must have shape"),
        (calib[0], "must have shape"),
        (calib[:0], "N = 0"),
        (np.where(np.arange(calib.size).reshape(calib.shape) == 5, np.nan, calib), "NaN"),
        ("not-an-array", "does not exist"),
    ]
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    cases.append((tmp_path / "garbage.npy", "not a NumPy"))
    for value, expected in cases:
        with pytest.raises(LTMPError, match=expected):
            read_calibration_data(value, shape)


def test_graphs_that_cannot_be_quantized_are_refused_and_nothing_is_written(setup, tmp_path):
    from ltmp_deploy.export.onnx_export import export_onnx

    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(LTMPError, match="already has QuantizeLinear"):
        quantize_int8(setup["quantized"]["fixed"].path, out, setup["calib"])
    with pytest.raises(LTMPError, match="must have shape"):
        quantize_int8(setup["graphs"]["fixed"], out, setup["calib"][:, :1])
    assert out.read_bytes() == b"previous"  # a failed run leaves the old file alone
    from ltmp_deploy.ltmp.patch import apply_patch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = apply_patch(
            VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5).eval()
        )
        fp16 = export_onnx(tiny, tmp_path / "fp16.onnx", fp16=True, validate=False).path
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(LTMPError, match="needs an fp32 graph"):
        quantize_int8(fp16, out, np.zeros((4, 3, 32, 32), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16.onnx", "out.onnx"]


def test_layer_selection_options(setup):
    model = onnx.load(str(setup["graphs"]["fixed"]))
    default, _ = select_layers(model)
    everything, kept = select_layers(model, keep_first_last=False, keep_float=["/blocks.3/mlp/fc2/MatMul"])
    assert set(everything) - set(default) == {"/patch_embed/proj/Conv", "/head/Gemm"}
    assert "/blocks.3/mlp/fc2/MatMul" not in everything and kept["/blocks.3/mlp/fc2/MatMul"] == "asked to stay float"
