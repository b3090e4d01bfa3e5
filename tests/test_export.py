"""ONNX export: both modes, ONNX Runtime against PyTorch, determinism, TensorRT targets, metadata."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import MODEL_KINDS, tiny_ltmp
from timm.models.vision_transformer import VisionTransformer

from ltmp_deploy.cli import main
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.export.reference import compare_with_torch
from ltmp_deploy.ltmp.checkpoint import save_checkpoint
from ltmp_deploy.ltmp.flops import schedule_for_flops
from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.runtime.metadata import decision_output_names, read_metadata
from ltmp_deploy.runtime.trt.parser_check import check_model

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


def deit_tiny_shaped(mode: str):
    """DeiT-tiny's width, heads and patch size; fewer blocks and a smaller image for speed."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=96, patch_size=16, embed_dim=192, depth=4, num_heads=3, num_classes=10).eval()
    with torch.no_grad():  # peaked attention: clear-cut, varied decisions
        for blk in model.blocks:
            blk.attn.qkv.weight[:384] *= 3.0
    model = apply_patch(model)
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.5, 0.45, 0.4, 0.35], [0.7 / n, 0.9 / n, 1.0 / n, 1.0 / n])
    if mode == "fixed":
        model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
    return model


def run_onnx(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images.numpy()})))


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_runtime_matches_pytorch_with_identical_decisions(tmp_path, mode, batch):
    model = deit_tiny_shaped(mode)
    path = tmp_path / "m.onnx"
    result = export_onnx(model, path, batch=batch, decisions=True)
    assert result.validation.ok and result.validation.decisions_identical
    graph = onnx.load(str(path)).graph
    assert [v.type.tensor_type.shape.dim[0].dim_value for v in [*graph.input, *graph.output]] == [batch] * (
        1 + len(graph.output)
    )
    assert result.metadata["input_shape"] == [batch, 3, 96, 96]
    images = torch.randn(batch, 3, 96, 96, generator=torch.Generator().manual_seed(batch + 10))  # unseen by the export
    got = run_onnx(path, images)
    with torch.no_grad():
        out = model.forward_ltmp(images)
    assert np.abs(got["logits"] - out.logits.numpy()).max() <= 1e-4
    names = decision_output_names(len(model.blocks))
    for i, d in enumerate(out.decisions):
        np.testing.assert_array_equal(got[names[2 * i]], d.kept.numpy())
        np.testing.assert_array_equal(got[names[2 * i + 1]], d.merge_dst.numpy())
    if mode == "threshold" and batch == 4:
        counts = out.decisions[-1].n_out
        assert counts.max() > counts.min(), "a ragged batch should exercise padding"


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_threshold_graph_runs_blocks_left_with_a_single_token(tmp_path, kind):
    """Every patch pruned in the first block: the later blocks see the prefix tokens alone (one token
    for most kinds), where no position can receive a merge, and the graph still matches PyTorch."""
    model = tiny_ltmp("threshold", kind)
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [10.0, 10.0, 10.0])
    path = export_onnx(model, tmp_path / "m.onnx", decisions=True).path
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    got = run_onnx(path, images)
    with torch.no_grad():
        out = model.forward_ltmp(images)
    assert out.decisions[1].length == max(model.num_prefix_tokens, 1)
    assert np.abs(got["logits"] - out.logits.numpy()).max() <= 1e-4
    names = decision_output_names(len(model.blocks))
    np.testing.assert_array_equal(got[names[3]], out.decisions[1].merge_dst.numpy())


def test_dynamic_batch_axis_runs_any_batch(tmp_path):
    model = deit_tiny_shaped("threshold")
    path = export_onnx(model, tmp_path / "m.onnx").path
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]
    for batch in (1, 3, 7):
        images = torch.randn(batch, 3, 96, 96)
        with torch.no_grad():
            expected = model(images).numpy()
        assert np.abs(run_onnx(path, images)["logits"] - expected).max() <= 1e-4


def test_same_checkpoint_exports_to_the_same_bytes(tmp_path):
    ckpt = save_checkpoint(deit_tiny_shaped("fixed"), tmp_path / "m.safetensors")
    a = export_onnx(ckpt, tmp_path / "a.onnx").path.read_bytes()
    b = export_onnx(ckpt, tmp_path / "b.onnx").path.read_bytes()
    assert a == b


def test_tensorrt_targets_of_each_mode(tmp_path):
    fixed = export_onnx(deit_tiny_shaped("fixed"), tmp_path / "f.onnx", validate=False).path
    for target in ("8.5", "8.6", "10.3", "10"):
        report = check_model(fixed, target)
        assert report.ok, report.summary()
    threshold = export_onnx(deit_tiny_shaped("threshold"), tmp_path / "t.onnx", validate=False).path
    for target in ("8.6", "10.3", "10", "11", "11.4"):
        report = check_model(threshold, target)
        assert report.ok, report.summary()
    report = check_model(threshold, "8.5")
    assert not report.ok and any("K must be a constant" in f.reason for f in report.findings)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "deit_tiny_shaped"])
def test_every_fixed_mode_export_is_clean_for_every_tensorrt_target(tmp_path, model):
    from conftest import one_torch_thread, tiny_ltmp

    from ltmp_deploy.runtime.trt.parser_check import TRT_TARGETS

    with one_torch_thread():
        fixed = tiny_ltmp("fixed") if model == "tiny" else deit_tiny_shaped("fixed")
        graphs = {
            "dynamic batch": export_onnx(fixed, tmp_path / "d.onnx", validate=False).path,
            "batch 2": export_onnx(fixed, tmp_path / "b.onnx", batch=2, validate=False).path,
            "fp16": export_onnx(fixed, tmp_path / "h.onnx", fp16=True, validate=False).path,
        }
    for kind, path in graphs.items():
        for target in TRT_TARGETS:
            report = check_model(path, target)
            assert report.ok, f"{model}, {kind}: " + report.summary()


def test_metadata_round_trip(tmp_path):
    model = deit_tiny_shaped("fixed")
    path = export_onnx(model, tmp_path / "m.onnx", validate=False).path
    meta = read_metadata(onnx.load(str(path)))
    assert meta["mode"] == "fixed" and meta["opset"] == 16 and meta["precision"] == "fp32"
    assert meta["schedule"] == model.ltmp.schedule.pairs()
    assert meta["thresholds"]["merge"] == pytest.approx(model.ltmp_thresholds()[0])
    assert meta["data_config"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["data_config"]["input_size"] == [3, 96, 96]
    assert meta["input_shape"] == ["batch", 3, 96, 96]
    assert 0.45 < meta["block_macs"]["patched"] / meta["block_macs"]["unpatched"] < 0.55
    # ONNX Runtime hands the runtime the same map, no onnx package needed.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from ltmp_deploy.runtime.metadata import decode

    assert decode(session.get_modelmeta().custom_metadata_map) == meta


def test_fp16_graph_agrees_on_top1(tmp_path):
    result = export_onnx(deit_tiny_shaped("fixed"), tmp_path / "h.onnx", fp16=True)
    assert result.validation.ok and result.validation.top1_agreement >= 0.995
    graph = onnx.load(str(result.path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_validation_names_the_first_divergent_block(tmp_path):
    model = deit_tiny_shaped("threshold")
    path = export_onnx(model, tmp_path / "m.onnx", decisions=True, validate=False).path
    with torch.no_grad():
        model.blocks[2].prune_masker.threshold.fill_(0.02)  # PyTorch side now prunes differently
    report = compare_with_torch(onnx.load(str(path)), model, torch.randn(4, 3, 96, 96), fp16=False)
    assert not report.ok and report.first_divergent_block == 2
    assert "FAIL" in report.summary() and "block 2" in report.summary()


def test_bad_inputs_give_clear_errors_and_no_file(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["export", str(garbage), "-o", str(out)]) == 2
    assert "garbage.safetensors" in capsys.readouterr().err and not out.exists()

    ckpt = save_checkpoint(deit_tiny_shaped("threshold"), tmp_path / "c.safetensors")
    assert main(["export", str(ckpt), "--opset", "11", "-o", str(out)]) == 2
    assert "--opset 11" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(ckpt), "--mode", "fixed", "-o", str(out)]) == 2
    assert "needs a schedule" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "missing" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.glob("*.onnx*")) == [] and list(tmp_path.glob(".m.onnx*")) == []


def test_cli_check_exit_codes(tmp_path, capsys):
    threshold = export_onnx(deit_tiny_shaped("threshold"), tmp_path / "t.onnx", validate=False).path
    assert main(["check", str(threshold), "--trt", "8.6"]) == 0
    assert main(["check", str(threshold), "--trt", "8.5"]) == 1
    assert "TopK" in capsys.readouterr().out


def test_export_without_onnx_runtime_says_so_before_any_work(tmp_path):
    """ONNX Runtime absent (an import of it fails, as on an install without it): one line, the
    pip command or --no-validate, and no graph written."""
    import subprocess
    import sys
    from pathlib import Path

    from runtime_models import checkpoint

    out = tmp_path / "m.onnx"
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from ltmp_deploy.cli import main\n"
        f"sys.exit(main(['export', {str(checkpoint('threshold'))!r}, '-o', {str(out)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120
    )
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err, err
    assert "needs onnxruntime" in err and "pip install onnxruntime" in err and "--no-validate" in err, err
    assert not out.exists()


def test_threshold_flops_are_measured_on_real_held_out_images_and_labelled(tmp_path, capsys):
    """Without data the metadata says its FLOPs come from random images; with --data they come from
    the held-out images of the folder, and inspect shows which."""
    from PIL import Image
    from runtime_models import checkpoint

    from ltmp_deploy.data.datasets import HELD_OUT_FRACTION

    ckpt = checkpoint("threshold")
    noise = export_onnx(ckpt, tmp_path / "noise.onnx", validate=False).metadata
    assert "random images: no data given" in noise["flops_measured_on"]
    for c in range(5):  # one tree of 5 classes x 6 images: a tenth calibrates, the rest is held out
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            picture = np.random.default_rng(10 * c + i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(picture).save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    out = tmp_path / "real.onnx"
    assert main(["export", str(ckpt), "--no-validate", "--data", str(tmp_path / "data"), "-o", str(out)]) == 0
    held_out = 30 - round(30 * HELD_OUT_FRACTION)
    meta = read_metadata(onnx.load(str(out)))
    assert meta["flops_measured_on"] == f"{held_out} images of {tmp_path / 'data'} (held-out images)"
    assert meta["block_macs"]["basis"] == f"mean over {held_out} images"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert f"measured on:      {held_out} images of" in capsys.readouterr().out
    fixed = export_onnx(checkpoint("fixed"), tmp_path / "fixed.onnx", validate=False).metadata
    assert fixed["flops_measured_on"] == "the schedule (no images)"
