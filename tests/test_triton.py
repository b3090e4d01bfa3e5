"""Triton model repository: each config.pbtxt parsed with Triton's own ModelConfig protobuf."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_vit
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.triton import write_triton_repo

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def toy_graph(path, batch=None, dtype=TensorProto.FLOAT, image="images", output="logits", classes=7):
    """images (N, 3, 8, 8) -> GlobalAveragePool -> Flatten -> Gemm -> logits (N, classes)."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(np.ones((3, classes), np_type), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", [image], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], [output]),
    ]
    n = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info(image, dtype, [n, 3, 8, 8])],
        [helper.make_tensor_value_info(output, dtype, [n, classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def exported_repo(tmp_path_factory):
    """``ltmp-deploy export CKPT --triton-repo DIR``: the real command on a tiny LTMP checkpoint."""
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint
    from ltmp_deploy.ltmp.patch import apply_patch

    folder = tmp_path_factory.mktemp("triton")
    model = apply_patch(tiny_vit())
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
    ckpt = save_checkpoint(model, folder / "tiny.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(
            [
                "export",
                str(ckpt),
                "--mode",
                "threshold",
                "--no-validate",
                "--triton-repo",
                str(folder / "repo"),
                "--triton-max-batch",
                "16",
                "-o",
                str(folder / "vit-tiny.onnx"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return folder


def test_export_writes_both_models_and_triton_parses_their_configs(exported_repo):
    repo = exported_repo / "repo"
    assert sorted(p.name for p in repo.iterdir()) == ["vit-tiny_onnx", "vit-tiny_trt"]
    assert (repo / "vit-tiny_onnx/1/model.onnx").read_bytes() == (exported_repo / "vit-tiny.onnx").read_bytes()
    assert (repo / "vit-tiny_trt/1").is_dir() and not (repo / "vit-tiny_trt/1/model.plan").exists()

    for suffix, platform in (("onnx", "onnxruntime_onnx"), ("trt", "tensorrt_plan")):
        cfg = parse(repo / f"vit-tiny_{suffix}" / "config.pbtxt")
        assert cfg.name == f"vit-tiny_{suffix}" and cfg.platform == platform
        assert cfg.max_batch_size == 16
        assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 100
        (inp,), (out,) = cfg.input, cfg.output
        assert (inp.name, inp.data_type, list(inp.dims)) == ("images", mc.TYPE_FP32, [3, 32, 32])
        assert (out.name, out.data_type, list(out.dims)) == ("logits", mc.TYPE_FP32, [5])
    trt = parse(repo / "vit-tiny_trt/config.pbtxt")
    assert [(g.kind, g.count) for g in trt.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    text = (repo / "vit-tiny_trt/config.pbtxt").read_text()
    assert "ltmp-deploy build vit-tiny.onnx --preset PRESET --max-batch 16 -o vit-tiny_trt/1/model.plan" in text


def test_fixed_batch_graph_gets_full_shapes_and_no_dynamic_batching(tmp_path):
    repo = write_triton_repo(toy_graph(tmp_path / "toy.onnx", batch=4), tmp_path / "repo", name="toy")
    assert repo.max_batch_size == 0 and "fixed batch" in repo.summary()
    for model in (repo.onnx_model, repo.trt_model):
        cfg = parse(model / "config.pbtxt")
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert list(cfg.input[0].dims) == [4, 3, 8, 8] and list(cfg.output[0].dims) == [4, 7]


def test_fp16_graph_declares_fp16_tensors(tmp_path):
    repo = write_triton_repo(toy_graph(tmp_path / "half.onnx", dtype=TensorProto.FLOAT16), tmp_path / "repo")
    cfg = parse(repo.onnx_model / "config.pbtxt")
    assert cfg.name == "half_onnx" and cfg.max_batch_size == 8
    assert cfg.input[0].data_type == mc.TYPE_FP16 and cfg.output[0].data_type == mc.TYPE_FP16


def test_rewrite_keeps_a_built_plan_and_other_models(tmp_path):
    graph = toy_graph(tmp_path / "toy.onnx")
    repo = write_triton_repo(graph, tmp_path / "repo")
    repo.plan_path.write_bytes(b"engine built on the server")
    (tmp_path / "repo" / "other_model").mkdir()
    again = write_triton_repo(graph, tmp_path / "repo", max_batch_size=32)
    assert again.plan_path.read_bytes() == b"engine built on the server"
    assert (tmp_path / "repo" / "other_model").is_dir()
    assert parse(again.trt_model / "config.pbtxt").max_batch_size == 32
    assert not [p for p in (tmp_path / "repo").rglob(".*")]  # no temporary files left behind


def test_names_are_sanitized_for_triton(tmp_path):
    repo = write_triton_repo(toy_graph(tmp_path / "m.onnx"), tmp_path / "repo", name="my model/v2")
    assert (
        repo.onnx_model.name == "my_model_v2_onnx"
        and parse(repo.onnx_model / "config.pbtxt").name == "my_model_v2_onnx"
    )


def test_what_cannot_be_served_is_refused(tmp_path):
    with pytest.raises(LTMPError, match="does not exist"):
        write_triton_repo(tmp_path / "missing.onnx", tmp_path / "repo")
    with pytest.raises(LTMPError, match="expected input 'images' and output 'logits'"):
        write_triton_repo(toy_graph(tmp_path / "x.onnx", image="input"), tmp_path / "repo")
    with pytest.raises(LTMPError, match="must be at least 1"):
        write_triton_repo(toy_graph(tmp_path / "y.onnx"), tmp_path / "repo", max_batch_size=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LTMPError, match="not a folder"):
        write_triton_repo(toy_graph(tmp_path / "z.onnx"), tmp_path / "file")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    with pytest.raises(LTMPError, match="cannot read ONNX"):
        write_triton_repo(bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def _unwritable_folder(tmp_path):
    """A folder this process cannot write into: read-only by its mode, or for root (who ignores
    modes) one on a filesystem that takes no new files."""
    import os
    from pathlib import Path

    folder = tmp_path / "read-only"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return folder
    sysfs = Path("/sys")
    try:
        (sysfs / "ltmp-deploy-probe").touch()
    except OSError:
        return sysfs
    pytest.skip("running as root, and no read-only folder to try")


def test_an_unwritable_repository_is_refused_before_the_export(tmp_path, capsys):
    from runtime_models import checkpoint

    ckpt = checkpoint("threshold")
    out = tmp_path / "m.onnx"
    (tmp_path / "file").write_text("x")
    for repo in (tmp_path / "file", tmp_path / "file" / "repo", _unwritable_folder(tmp_path) / "repo"):
        assert main(["export", str(ckpt), "--no-validate", "--triton-repo", str(repo), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--triton-repo {repo}" in err, err
        assert not out.exists(), "refused before the export, not after it"
    with pytest.raises(LTMPError, match="--triton-repo"):
        write_triton_repo(toy_graph(tmp_path / "t.onnx"), _unwritable_folder(tmp_path / "again"))
