"""``ltmp-deploy validate`` and the check after export: one comparator (Polygraphy's Comparator
over the PyTorch runner, ONNX Runtime and, where installed, TensorRT) and one set of gates;
passes clean graphs in both modes, fails tampered ones, gates CI."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import onnx
import pytest
from conftest import tiny_ltmp
from onnx import numpy_helper
from runtime_models import checkpoint, exported, one_torch_thread

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.checkpoint_parity import validate_checkpoint
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.export.reference import compare_with_torch, sample_images
from ltmp_deploy.export.runner import LTMPTorchRunner
from ltmp_deploy.runtime.metadata import read_metadata as onnx_metadata
from ltmp_deploy.runtime.parity.tolerances import FP16_LOGIT_TOL, FP32_LOGIT_TOL
from ltmp_deploy.runtime.parity.validate import open_target, validate

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

NO_TENSORRT = "TensorRT is not installed here (pip's tensorrt is a stub that downloads from NVIDIA)"


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def tamper(src, dst, node_name, scale):
    """Scale the weight initializer feeding ``node_name`` (a late block's MatMul) by ``scale``."""
    graph = onnx.load(str(src))
    node = next(n for n in graph.graph.node if n.name == node_name)
    inits = {i.name: i for i in graph.graph.initializer}
    name = next(i for i in node.input if i in inits)
    weight = numpy_helper.to_array(inits[name]).copy()
    weight *= scale
    inits[name].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), name))
    onnx.save(graph, str(dst))
    return dst


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_clean_graph_passes_with_a_json_report(tmp_path, capsys, mode):
    files = exported(mode)
    report_path = tmp_path / "report.json"
    code = main(["validate", str(files.onnx), "--against", str(files.checkpoint), "-o", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("PASS:") and "token decisions identical in all 3 blocks" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["mode"] == mode and report["precision"] == "fp32"
    assert report["reference_backend"] == "torch" and report["images"] == 16
    assert report["tolerances"] == {"logit_abs": FP32_LOGIT_TOL}
    (c,) = report["comparisons"]
    assert c["ok"] and c["backend"] == "onnxruntime" and c["max_abs_diff"] <= FP32_LOGIT_TOL
    assert (
        c["top1_agreement"] == 1.0 and c["decision_agreement"] == [1.0, 1.0, 1.0] and c["first_divergent_block"] is None
    )
    assert report["versions"]["polygraphy"] and report["versions"]["onnxruntime"]


def test_json_prints_the_report_that_output_writes(tmp_path, capsys):
    """--json: the full report on stdout instead of the summary; -o writes the same document."""
    files = exported("fixed")
    report_path = tmp_path / "report.json"
    argv = ["validate", str(files.onnx), "--against", str(files.onnx), "--images", "4", "--json"]
    assert main([*argv, "-o", str(report_path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(report_path.read_text())
    assert json.loads(out)["ok"] is True and err.strip() == f"wrote {report_path}"


def test_graphs_of_two_modes_in_one_run_are_refused_in_one_line(capsys):
    fixed, threshold = exported("fixed"), exported("threshold")
    code = main(["validate", str(fixed.onnx), str(threshold.onnx), "--against", str(fixed.checkpoint)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "(fixed mode)" in err and "(threshold mode)" in err, err


def test_tampered_mlp_weights_fail_on_the_logits(tmp_path, capsys):
    files = exported("fixed")
    bad = tamper(files.onnx, tmp_path / "tampered.onnx", "/blocks.2/mlp/fc2/MatMul", 1.01)
    report_path = tmp_path / "report.json"
    code = main(["validate", str(bad), "--against", str(files.checkpoint), "-o", str(report_path)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.startswith("FAIL:") and "failed: max |logit diff|" in out
    report = json.loads(report_path.read_text())
    (c,) = report["comparisons"]
    assert report["ok"] is False and c["max_abs_diff"] > FP32_LOGIT_TOL
    assert c["decision_agreement"] == [1.0, 1.0, 1.0]  # the MLP comes after the block's decisions


def test_tampered_attention_names_the_first_divergent_block(tmp_path):
    files = exported("threshold")
    bad = tamper(files.onnx, tmp_path / "tampered.onnx", "/blocks.2/qkv/MatMul", 0.5)
    report = validate_checkpoint(files.checkpoint, bad)
    (c,) = report.comparisons
    assert not report.ok
    assert c.decision_agreement[:2] == [1.0, 1.0] and c.decision_agreement[2] < 1.0
    assert c.first_divergent_block == 2
    assert "first divergence in block 2" in report.summary()
    assert any("token decisions differ from block 2" in f for f in c.failures)


def test_a_checkpoint_alone_is_exported_and_compared(capsys):
    files = exported("threshold")  # a threshold checkpoint, compared in its own mode
    code = main(["validate", str(files.checkpoint), "--images", "6", "--batch", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "threshold mode" in out and "6 images in batches of 3" in out and "exported to a temporary ONNX graph" in out


def test_against_is_required_for_a_graph(capsys):
    code = main(["validate", str(exported("fixed").onnx)])
    err = capsys.readouterr().err
    assert code == 2 and "--against is required" in err and len(err.strip().splitlines()) == 1


def test_graph_against_its_own_onnx_reference_needs_no_torch_runner():
    files = exported("fixed")
    report = validate([files.onnx], against=files.onnx, images=5)
    assert report.ok and report.reference_backend == "onnxruntime" and report.images == 8  # whole batches of 4
    assert report.comparisons[0].max_abs_diff == 0.0


def test_fixed_batch_graph_is_fed_its_own_batch():
    files = exported("threshold", batch=2)
    report = validate_checkpoint(files.checkpoint, files.onnx, images=5)
    assert report.ok, report.summary()
    assert report.batch_size == 2 and report.images == 6
    with pytest.raises(LTMPError, match="takes batches of 2"):
        validate_checkpoint(files.checkpoint, files.onnx, batch=3)


def test_fp16_graph_is_judged_by_top1_and_the_fp16_tolerance():
    files = exported("fixed", decisions=False, fp16=True)
    report = validate_checkpoint(files.checkpoint, files.onnx)
    assert report.ok, report.summary()
    assert report.precision == "fp16" and report.tolerances == {"logit_abs": FP16_LOGIT_TOL, "top1": 0.995}
    (c,) = report.comparisons
    assert c.top1_agreement == 1.0 and c.decision_agreement is None
    assert "not compared" in report.summary()


@pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning"
)  # Polygraphy's relative error on 0-valued indices
def test_torch_runner_joins_polygraphys_contract():
    """The runner answers with the graph's own output names, and Polygraphy's own comparison
    (not ours) finds it equal to ONNX Runtime."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    try:  # Polygraphy >= 0.53; CompareFunc.simple before
        from polygraphy.comparator import SimpleCompareFunc as simple
    except ImportError:
        from polygraphy.comparator import CompareFunc

        simple = CompareFunc.simple
    from polygraphy.logger import G_LOGGER

    files = exported("threshold")
    graph_outputs = [o.name for o in onnx.load(str(files.onnx)).graph.output]
    runner = LTMPTorchRunner(files.checkpoint, decisions=True)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        with runner:
            meta = runner.get_input_metadata(use_numpy_dtypes=False)
            assert list(meta) == ["images"] and tuple(meta["images"].shape) == (None, 3, 32, 32)
            out = runner.infer(OrderedDict(images=np.zeros((2, 3, 32, 32), np.float32)))
            assert list(out) == graph_outputs
        assert runner.model is None  # deactivated: weights released
        feeds = [
            {"images": np.random.default_rng(i).standard_normal((3, 3, 32, 32)).astype(np.float32)} for i in range(2)
        ]
        results = Comparator.run([runner, OnnxrtRunner(SessionFromOnnx(str(files.onnx)))], data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=simple(atol=FP32_LOGIT_TOL, rtol=0.0))
    assert bool(accuracy)


def shift_logits(graph, offset):
    """A copy of ``graph`` with ``offset`` added to every logit: top-1 and decisions untouched."""
    shifted = onnx.ModelProto()
    shifted.CopyFrom(graph)
    elem = next(o for o in shifted.graph.output if o.name == "logits").type.tensor_type.elem_type
    for node in shifted.graph.node:
        node.output[:] = ["logits_unshifted" if o == "logits" else o for o in node.output]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    shifted.graph.initializer.append(numpy_helper.from_array(np.array(offset, dtype=dtype), "logit_offset"))
    shifted.graph.node.append(onnx.helper.make_node("Add", ["logits_unshifted", "logit_offset"], ["logits"]))
    return shifted


def test_check_after_export_holds_fp16_logits_to_the_fp16_tolerance():
    """Top-1 agreement alone does not pass an fp16 graph: its logits must stay within FP16_LOGIT_TOL."""
    files = exported("fixed", decisions=False, fp16=True)
    graph = onnx.load(str(files.onnx))
    model = tiny_ltmp("fixed")  # what the checkpoint holds
    images, _ = sample_images(onnx_metadata(graph), 8)
    within = compare_with_torch(shift_logits(graph, FP16_LOGIT_TOL / 4), model, images)
    assert within.ok and within.precision == "fp16", within.summary()
    beyond = compare_with_torch(shift_logits(graph, 2 * FP16_LOGIT_TOL), model, images)
    (c,) = beyond.comparisons
    assert not beyond.ok and c.top1_agreement == 1.0 and c.max_abs_diff > FP16_LOGIT_TOL
    assert c.failures == [f"max |logit diff| {c.max_abs_diff:.3g} > {FP16_LOGIT_TOL:g}"]


def test_check_after_export_and_validate_give_the_same_report(tmp_path):
    ckpt = checkpoint("threshold")
    result = export_onnx(ckpt, tmp_path / "t.onnx", decisions=True)
    after_export = result.validation
    later = validate_checkpoint(ckpt, result.path, images=after_export.images, batch=after_export.batch_size)

    json_path = tmp_path / "cli.json"
    code = main(
        [
            "validate",
            str(result.path),
            "--against",
            str(ckpt),
            "--images",
            "8",
            "--batch",
            "8",
            "-o",
            str(json_path),
        ]
    )
    from_cli = json.loads(json_path.read_text())

    def verdict(doc):
        doc = json.loads(json.dumps(doc))
        del doc["reference"]  # the runner's name: the model in memory, then the checkpoint file
        return doc

    assert after_export.ok and after_export.images == 8 and after_export.data == "seeded random images"
    assert verdict(after_export.to_dict()) == verdict(later.to_dict()) == verdict(from_cli) and code == 0


def test_validation_without_torch_takes_your_own_pictures_and_refuses_a_checkpoint():
    files = exported("fixed")
    pictures = [np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8) for i in range(3)]
    report = validate([files.onnx], against=files.onnx, images=pictures, batch=2)
    assert report.ok and report.data == "your images" and report.images == 4  # the last batch filled up
    with pytest.raises(LTMPError, match="a checkpoint is the PyTorch reference"):
        validate(files.onnx, against=files.checkpoint)


def test_engine_is_validated_with_tensorrts_runner(tmp_path):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    files = exported("fixed")
    profile = Profile().add("images", (1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))
    engine = tmp_path / "m.engine"
    engine.write_bytes(
        bytes(EngineBytesFromNetwork(NetworkFromOnnxPath(str(files.onnx)), CreateConfig(profiles=[profile]))())
    )
    report = validate_checkpoint(files.checkpoint, [files.onnx, engine], open_file=open_target)
    assert [c.backend for c in report.comparisons] == ["onnxruntime", "tensorrt"]
    assert report.ok, report.summary()
