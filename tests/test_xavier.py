"""The Xavier family (Xavier NX, AGX Xavier): JetPack 5.1 is their last JetPack, so TensorRT 8.5 is
their only target, fixed mode the only one its parser builds, and their first-generation DLA runs
fewer layers than Orin's. Planning needs no TensorRT; the builds themselves are test_build.py's."""

from __future__ import annotations

import json

import pytest
from runtime_models import exported

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.metadata import load_onnx
from ltmp_deploy.runtime.trt import presets
from ltmp_deploy.runtime.trt.plan import BuildOptions, check_preset_mode, plan_build
from ltmp_deploy.runtime.trt.trtexec import trtexec_command

XAVIER = ("xavier-nx", "agx-xavier")


def plan(mode: str, **options):
    return plan_build(exported(mode).onnx, BuildOptions(**options))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("name", XAVIER)
def test_xavier_presets_hold_tensorrt_8_5_fixed_mode_and_two_first_generation_dla_cores(name):
    p = presets.PRESETS[name]
    assert p.jetson and p.trt_versions == ("8.5",) and p.dla_trt_versions == ("8.5",) and p.dla_cores == 2
    assert p.modes == ("fixed",) and p.default_precision == "fp16"
    assert {"TopK", "Gather", "Softmax"} <= set(p.dla_gpu_ops)
    assert "Softmax" not in presets.PRESETS["agx-orin"].dla_gpu_ops  # Orin's DLA runs it
    assert "JetPack 5.1" in p.facts and "Python 3.8" in p.facts
    smallest_gib = {"xavier-nx": 8, "agx-xavier": 32}[name]
    assert p.workspace_mib <= smallest_gib * 1024 // 8


@pytest.mark.parametrize("name", XAVIER)
def test_a_fixed_graph_plans_for_tensorrt_8_5_in_fp16(name):
    p = plan("fixed", preset=name)
    assert (p.trt, p.precision, p.strongly_typed, p.flags, p.dla_core) == ("8.5", "fp16", False, ["fp16"], None)
    assert p.profile is not None and p.profile[2][0] == presets.PRESETS[name].batch[2]


def test_dla_on_xavier_says_which_ops_fall_back_to_the_gpu():
    p = plan("fixed", preset="xavier-nx", dla_core=1)
    assert p.dla_core == 1 and p.flags == ["fp16"] and p.shapes()["min"] == p.shapes()["max"]
    ops = {node.op_type for node in load_onnx(exported("fixed").onnx).graph.node}
    expected = [op for op in presets.XAVIER_DLA_GPU_OPS if op in ops]
    assert expected, "the fixed graph has ops DLA cannot run"
    (note,) = [n for n in p.notes if "GPU fallback" in n]
    assert f"has no layer for {', '.join(expected)}:" in note
    command = trtexec_command(p, "e.plan", onnx_path="m.onnx").split()
    assert "--useDLACore=1" in command and "--allowGPUFallback" in command and "--fp16" in command


@pytest.mark.parametrize(
    "mode,options,says",
    [
        ("threshold", {}, "builds fixed mode only"),
        ("fixed", {"trt": "10.3"}, "TensorRT 10.3 is not a target of this preset; it takes 8.5"),
        ("fixed", {"trt": "8.6"}, "not a target of this preset"),
        ("fixed", {"dla_core": 2}, "DLA cores 0..1"),
        ("fixed", {"precision": "bf16"}, "BF16 needs TensorRT 9.0 or newer"),
        ("fixed", {"opt_level": 3}, "--opt-level needs TensorRT 8.6 or newer"),
        ("fixed", {"strongly_typed": True}, "strongly typed networks need TensorRT 10"),
        ("fixed", {"hardware_compat": True}, "not supported for Jetson"),
    ],
)
def test_what_xavier_cannot_build_is_refused_in_one_line(mode, options, says):
    for name in XAVIER:
        with pytest.raises(LTMPError) as err:
            plan(mode, preset=name, **options)
        assert says in one_line(err)


def test_installed_tensorrt_other_than_8_5_is_refused_for_xavier():
    with pytest.raises(LTMPError) as err:
        plan_build(exported("fixed").onnx, BuildOptions(preset="agx-xavier"), installed="10.3.0.30")
    assert "TensorRT 10.3 is not a target of this preset" in one_line(err)


def test_check_with_a_xavier_preset_checks_tensorrt_8_5_and_refuses_threshold_mode(capsys, tmp_path):
    assert check_preset_mode(exported("fixed").onnx, "xavier-nx") == ("8.5",)
    assert main(["check", str(exported("fixed").onnx), "--preset", "xavier-nx"]) == 0
    assert "8.5" in capsys.readouterr().out
    threshold = str(exported("threshold").onnx)
    assert main(["check", threshold, "--preset", "agx-xavier"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "builds fixed mode only" in err and "--mode fixed" in err
    engine = tmp_path / "e.plan"
    assert main(["build", threshold, "--preset", "xavier-nx", "--print-trtexec", "-o", str(engine)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "builds fixed mode only" in err
    assert not engine.exists() and list(tmp_path.iterdir()) == []
    assert main(["check", threshold]) == 2  # neither --trt nor --preset
    assert "--trt" in capsys.readouterr().err


# -- where the layers ran (DLA's GPU fallback is silent) --------------------------------------


def _dla_cores() -> int:
    """DLA cores TensorRT sees here; 0 where TensorRT is not installed or the GPU has none."""
    from ltmp_deploy.runtime.trt.engine import tensorrt_version

    if tensorrt_version() is None:
        return 0
    import tensorrt as trt

    return trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores


def test_inspect_lists_the_layers_the_build_put_on_dla_and_on_the_gpu(tmp_path, capsys):
    """The sidecar is the toolkit's own file: what inspect prints from its layer_devices."""
    from ltmp_deploy.runtime.trt import build as b

    graph = exported("fixed", batch=1).onnx
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine bytes")  # a stand-in: inspect reads only the sidecar, never the engine
    p = plan_build(graph, BuildOptions(preset="xavier-nx", dla_core=0), installed="8.5.2.2")
    side = b.compose_sidecar(p, engine, tensorrt_version="8.5.2.2", gpu="Xavier")
    side["layer_devices"] = {"dla": ["{ForeignNode[/blocks.0/Add...]}"], "gpu": ["/blocks.0/TopK", "/Gather_3"]}
    b.sidecar_path(engine).write_text(json.dumps(side))
    assert main(["inspect", str(engine)]) == 0
    text = capsys.readouterr().out
    assert "DLA core:" in text and "layers on DLA:    1: {ForeignNode[/blocks.0/Add...]}" in text
    assert "layers on GPU:    2: /blocks.0/TopK, /Gather_3" in text
    assert main(["inspect", str(engine), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layer_devices"] == side["layer_devices"]


def test_layers_from_the_inspector_json_by_layer_type():
    from ltmp_deploy.runtime.trt.build import devices_from_inspector

    detailed = {"Layers": [{"Name": "{ForeignNode[a...b]}", "LayerType": "DLA"}, {"Name": "t", "LayerType": "TopK"}]}
    assert devices_from_inspector(json.dumps(detailed)) == {"dla": ["{ForeignNode[a...b]}"], "gpu": ["t"]}
    assert "names only" in devices_from_inspector(json.dumps({"Layers": ["a", "b"]}))["unknown"]


@pytest.mark.skipif(
    _dla_cores() == 0, reason="needs TensorRT and a GPU with DLA cores (a Jetson Xavier or Orin): none here"
)
def test_a_dla_build_records_which_layers_ran_on_dla_and_which_fell_back(tmp_path, capsys):
    from ltmp_deploy.runtime.trt.build import build_engine
    from ltmp_deploy.runtime.trt.engine import read_sidecar, tensorrt_version

    trt = tensorrt_version()
    preset = "xavier-nx" if trt.startswith("8.5") else "agx-orin"
    engine = build_engine(exported("fixed", batch=1).onnx, tmp_path / "dla.plan", preset, "fp16", dla_core=0)
    devices = read_sidecar(engine)["layer_devices"]
    assert devices.get("dla") and devices.get("gpu"), devices  # the ViT's TopK and Gather stay on the GPU
    assert main(["inspect", str(engine)]) == 0
    text = capsys.readouterr().out
    assert "layers on DLA:" in text and "layers on GPU:" in text
