"""TensorRT builder: presets, option checks, trtexec lines, sidecar, CLI and scripts.

Everything here runs without TensorRT except the real build-and-run test, which skips where
``import tensorrt`` fails (no mocks of TensorRT anywhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import one_torch_thread, tiny_ltmp

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.trt import presets
from ltmp_deploy.runtime.trt.build import build_engine
from ltmp_deploy.runtime.trt.engine import read_sidecar, tensorrt_version
from ltmp_deploy.runtime.trt.parser_check import check_model
from ltmp_deploy.runtime.trt.plan import BuildOptions, plan_build
from ltmp_deploy.runtime.trt.targets import TRT_TARGETS, normalize_trt_version, strongly_typed_only, trt_key
from ltmp_deploy.runtime.trt.trtexec import compose_sidecar, record_trtexec_build, trtexec_command

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NO_TRT_REASON = "TensorRT is not installed here (pip's tensorrt is a stub that downloads from NVIDIA)"
HAVE_TRT = tensorrt_version() is not None


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """fixed (dynamic batch), threshold, fixed with batch 2, fp16 fixed, and a Q/DQ fixed graph."""
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.runtime.int8.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("graphs")
    with one_torch_thread():  # much faster than two threads contending on 2 cores
        fixed, threshold = tiny_ltmp("fixed"), tiny_ltmp("threshold")
        out = {
            "fixed": export_onnx(fixed, folder / "fixed.onnx").path,
            "threshold": export_onnx(threshold, folder / "threshold.onnx").path,
            "fixed_b2": export_onnx(fixed, folder / "fixed_b2.onnx", batch=2, validate=False).path,
            "fp16": export_onnx(fixed, folder / "fp16.onnx", fp16=True, validate=False).path,
        }
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.save(folder / "calib.npy", calib)
    out["int8"] = quantize_int8(out["fixed"], folder / "int8.onnx", calib).path
    out["calib"] = folder / "calib.npy"
    return out


def plan(graph, **kw):
    return plan_build(graph, BuildOptions(**kw))


def line(graph, engine="m.plan", **kw):
    return trtexec_command(plan(graph, **kw), engine, onnx_path="m.onnx")


# -- presets ---------------------------------------------------------------------------------


def test_presets_hold_the_facts_of_each_target():
    p = presets.PRESETS
    assert set(p) == {"orin-nano", "orin-nx", "agx-orin", "thor", "datacenter", "xavier-nx", "agx-xavier"}
    for name in ("orin-nano", "orin-nx", "agx-orin", "thor"):
        assert p[name].jetson and p[name].default_precision == "fp16"
    for name in ("orin-nano", "orin-nx"):
        assert p[name].trt_versions == ("10.3", "8.6", "8.5", "10")  # JetPack 6.1/6.2, 6.0, 5.1, 7.2 (10.16)
    # TensorRT 11.4.1 (JetPack 7.2.2+) names AGX Orin and Thor only; the JetPack defaults stay first
    assert p["agx-orin"].trt_versions == ("10.3", "8.6", "8.5", "10", "11.4")
    assert p["thor"].trt_versions == ("10.13", "10", "11.4")  # JetPack 7.0/7.1, 7.2 (10.16), 7.2.2+ (11.4.1)
    assert "11.4" in p["datacenter"].trt_versions
    assert p["agx-orin"].dla_trt_versions == ("8.5", "8.6", "10.3", "11.4")
    assert p["orin-nx"].dla_trt_versions == ("8.5", "8.6", "10.3")  # 11.4.1's DLA: AGX Orin only
    assert not any(p[name].dla_trt_versions for name in ("orin-nano", "thor", "datacenter"))
    assert "release notes name Jetson AGX Orin and Thor only" in p["orin-nx"].facts
    assert all("JetPack 7.2.2" in p[name].facts for name in ("orin-nano", "orin-nx", "agx-orin", "thor"))
    # DLA: none on Orin Nano and Thor, two on NX 16 GB and AGX Orin
    assert (p["orin-nano"].dla_cores, p["orin-nx"].dla_cores, p["agx-orin"].dla_cores) == (0, 2, 2)
    assert p["thor"].dla_cores == 0
    # the workspace fits the smallest module of each family (4, 8, 32 GB shared memory)
    assert p["orin-nano"].workspace_mib <= 4096 // 4
    assert p["orin-nx"].workspace_mib <= 8192 // 4
    assert p["agx-orin"].workspace_mib <= 32768 // 4
    assert p["datacenter"].trt_versions[0] == "10" and "11" in p["datacenter"].trt_versions
    assert p["datacenter"].workspace_mib is None and p["datacenter"].default_precision is None
    assert all(set(x.trt_versions) <= set(presets.TRT_VERSIONS) for x in p.values())
    assert [row["name"] for row in presets.presets_table()] == list(p)


@pytest.mark.parametrize(
    "version,key",
    [
        ("8.5.2.2", "8.5"),
        ("8.6.1", "8.6"),
        ("10.3.0.30", "10.3"),
        ("10.8.0", "10"),
        ("11.1.0", "11"),
        ("11.3.0", "11"),
        ("11.4.1", "11.4"),
        ("11.4.0.11", "11.4"),
        ("11.6.0", "11.4"),
        ("v110401", "11.4"),
        ("v8502", "8.5"),
        ("v100300", "10.3"),
        ("v110100", "11"),
    ],
)
def test_installed_versions_map_to_targets(version, key):
    assert trt_key(version) == key


def test_trtexec_banner_versions_and_unsupported_versions():
    assert normalize_trt_version("v100300") == "10.3.0"
    assert normalize_trt_version("v8502") == "8.5.2"
    assert normalize_trt_version("10.3.0.30-1+cuda12.5") == "10.3.0.30"  # dpkg's spelling on JetPack
    for bad in ("9.2.0", "7.1.3", "8.4.1"):
        with pytest.raises(LTMPError, match="not a target"):
            trt_key(bad)
    with pytest.raises(LTMPError, match="expected something like"):
        normalize_trt_version("ten")


def test_jetpack_7_versions_map_to_their_targets():
    assert trt_key("10.13.3.9") == "10.13"  # JetPack 7.0/7.1 (Thor)
    assert trt_key("10.16.2.10") == "10" and trt_key("v101600") == "10"  # JetPack 7.2


def test_thor_builds_fp16_on_the_gpu_for_jetpack_7(graphs):
    p = plan(graphs["fixed"], preset="thor")
    assert (p.trt, p.precision, p.workspace_mib) == ("10.13", "fp16", 8192)
    assert plan_build(graphs["fixed"], BuildOptions(preset="thor"), installed="10.16.2.10").trt == "10"
    assert plan(graphs["threshold"], preset="thor").trt == "10.13"  # threshold mode too: 10.13 takes a runtime K
    with pytest.raises(LTMPError, match="Jetson AGX Thor has no DLA"):
        plan(graphs["fixed"], preset="thor", dla_core=0)
    with pytest.raises(LTMPError, match="not a target of this preset"):
        plan(graphs["fixed"], preset="thor", trt="10.3")


@pytest.mark.parametrize("preset", ["orin-nx", "agx-orin"])
def test_orin_dla_with_the_tensorrt_of_jetpack_5_and_6(graphs, preset):
    for trt in ("8.5", "8.6", "10.3"):
        assert plan(graphs["fixed"], preset=preset, trt=trt, dla_core=0).dla_core == 0
    assert plan(graphs["fixed"], preset=preset, trt="10").trt == "10"  # JetPack 7.2's 10.16 builds for the GPU
    with pytest.raises(LTMPError, match="TensorRT 10 does not run DLA on Jetson"):
        plan(graphs["fixed"], preset=preset, trt="10", dla_core=0)


def test_agx_orin_dla_with_tensorrt_11_4_is_strongly_typed_from_an_fp16_graph(graphs):
    p = plan(graphs["fp16"], preset="agx-orin", trt="11.4", dla_core=1)
    assert (p.trt, p.precision, p.strongly_typed, p.flags, p.dla_core) == ("11.4", "fp16", True, [], 1)
    cmd = trtexec_command(p, "e.plan", onnx_path="m.onnx").split()
    assert {"--useDLACore=1", "--allowGPUFallback", "--noTF32"} <= set(cmd)
    assert not {"--fp16", "--int8", "--bf16", "--stronglyTyped"} & set(cmd)  # strongly typed is the only way in 11
    int8 = plan(graphs["int8"], preset="agx-orin", trt="11.4", dla_core=0)
    assert (int8.precision, int8.strongly_typed, int8.flags) == ("int8", True, [])
    assert any("run on the GPU" in n for n in int8.notes)
    installed = plan_build(graphs["fp16"], BuildOptions(preset="agx-orin", dla_core=0), installed="11.4.1.5")
    assert installed.trt == "11.4" and installed.dla_core == 0


def test_tensorrt_11_4_dla_refusals_are_one_line(graphs):
    with pytest.raises(LTMPError) as err:  # 11.4 DLA takes the precision from the graph
        plan(graphs["fixed"], preset="agx-orin", trt="11.4", dla_core=0)
    msg = str(err.value)
    assert "\n" not in msg and "takes the precision from the graph, which is fp32" in msg and "--fp16" in msg
    with pytest.raises(LTMPError) as err:  # NVIDIA's 11.4.1 notes name Jetson AGX Orin for DLA, not Orin NX
        plan(graphs["fp16"], preset="orin-nx", trt="11.4", dla_core=0)
    msg = str(err.value)
    assert "\n" not in msg and "TensorRT 11.4.1's release notes restore DLA on Jetson AGX Orin only" in msg
    assert "not on Jetson Orin NX" in msg and "8.5, 8.6, 10.3" in msg
    with pytest.raises(LTMPError) as err:
        plan(graphs["fp16"], preset="thor", trt="11.4", dla_core=0)
    assert str(err.value).endswith("Jetson AGX Thor has no DLA")
    with pytest.raises(LTMPError) as err:  # JetPack 7.2's 10.16: the way to DLA names 11.4 too
        plan(graphs["fp16"], preset="agx-orin", trt="10", dla_core=0)
    assert "11.x has it again from 11.4.1); build for the GPU, or for DLA with TensorRT 8.5" in str(err.value)
    assert str(err.value).endswith("10.3, 11.4")


def test_jetson_gpu_builds_with_tensorrt_11_4_take_the_graphs_precision(graphs):
    fp16 = plan(graphs["fp16"], preset="thor", trt="11.4")
    assert (fp16.precision, fp16.strongly_typed, fp16.flags, fp16.notes) == ("fp16", True, [], [])
    fp32 = plan(graphs["fixed"], preset="agx-orin", trt="11.4")  # no fp16 flag to give the preset's default
    assert (fp32.precision, fp32.strongly_typed, fp32.flags) == ("fp32", True, [])
    assert any("export with --fp16" in n for n in fp32.notes)
    assert plan(graphs["threshold"], preset="thor", trt="11.4").trt == "11.4"
    assert plan(graphs["fixed"], preset="agx-orin").trt == "10.3"  # the JetPack 6 default stays first
    assert plan(graphs["fixed"], preset="thor").trt == "10.13"


def test_every_fixed_mode_graph_checks_clean_for_every_target(graphs):
    for kind in ("fixed", "fixed_b2", "fp16", "int8"):
        for target in TRT_TARGETS:
            report = check_model(graphs[kind], target)
            assert report.ok, f"{kind}: " + report.summary()


# -- plans and trtexec lines -----------------------------------------------------------------


@pytest.mark.parametrize(
    "preset,workspace,shapes",
    [
        ("orin-nano", 1024, (1, 1, 4)),
        ("orin-nx", 2048, (1, 1, 8)),
        ("agx-orin", 4096, (1, 4, 16)),
    ],
)
def test_jetson_presets_default_to_fp16_flags_with_their_workspace_and_profile(graphs, preset, workspace, shapes):
    cmd = line(graphs["fixed"], preset=preset)
    mn, opt, mx = shapes
    assert cmd == (
        f"trtexec --onnx=m.onnx --saveEngine=m.plan --minShapes=images:{mn}x3x32x32 "
        f"--optShapes=images:{opt}x3x32x32 --maxShapes=images:{mx}x3x32x32 "
        f"--memPoolSize=workspace:{workspace} --fp16 --noTF32"
    )


@pytest.mark.parametrize(
    "graph,kw,flags,absent",
    [
        ("fixed", dict(precision="fp32"), [], ["--fp16", "--int8", "--stronglyTyped"]),
        ("fixed", dict(precision="fp16"), ["--fp16"], ["--stronglyTyped"]),
        ("fixed", dict(precision="bf16"), ["--bf16"], ["--fp16"]),
        ("fp16", dict(), ["--stronglyTyped"], ["--fp16"]),  # the graph carries fp16: strongly typed on 10.x
        ("fp16", dict(strongly_typed=False), ["--fp16"], ["--stronglyTyped"]),
        ("int8", dict(), ["--stronglyTyped"], ["--int8"]),  # Q/DQ graph: precision int8 from the graph
        ("int8", dict(trt="8.6"), ["--int8"], ["--stronglyTyped"]),
        ("fp16", dict(trt="11"), [], ["--fp16", "--stronglyTyped"]),  # always strongly typed, no flags on 11
        ("int8", dict(trt="11"), [], ["--int8", "--stronglyTyped"]),
        ("fixed", dict(trt="11"), [], ["--fp16"]),
        ("fp16", dict(trt="11.4"), [], ["--fp16", "--stronglyTyped"]),
        ("int8", dict(trt="11.4"), [], ["--int8", "--stronglyTyped"]),
    ],
)
def test_datacenter_precision_becomes_flags_or_strong_typing(graphs, graph, kw, flags, absent):
    cmd = line(graphs[graph], preset="datacenter", **kw).split()
    for flag in flags:
        assert flag in cmd
    for flag in absent:
        assert flag not in cmd
    assert "--noTF32" in cmd and not any(a.startswith("--memPoolSize") for a in cmd)
    assert "--optShapes=images:8x3x32x32" in cmd and "--maxShapes=images:64x3x32x32" in cmd


@pytest.mark.parametrize("preset", ["orin-nano", "orin-nx", "agx-orin"])
@pytest.mark.parametrize("trt", ["8.5", "8.6", "10.3"])
def test_jetson_int8_builds_from_the_qdq_graph_on_every_jetpack(graphs, preset, trt):
    p = plan(graphs["int8"], preset=preset, trt=trt)
    assert p.precision == "int8"
    cmd = trtexec_command(p, "e.plan").split()
    if trt == "10.3":
        assert "--stronglyTyped" in cmd and "--int8" not in cmd
    else:
        assert "--int8" in cmd and "--stronglyTyped" not in cmd


def test_dla_core_with_gpu_fallback_and_one_batch_size(graphs):
    cmd = line(graphs["fixed"], preset="agx-orin", dla_core=1, opt_batch=2).split()
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd and "--fp16" in cmd
    assert {"--minShapes=images:2x3x32x32", "--optShapes=images:2x3x32x32", "--maxShapes=images:2x3x32x32"} <= set(cmd)
    int8 = line(graphs["int8"], preset="orin-nx", dla_core=0).split()
    assert {"--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback"} <= set(int8)  # weakly typed on DLA
    assert "--stronglyTyped" not in int8


def test_datacenter_options_and_custom_profile(graphs, tmp_path):
    cache = tmp_path / "timing.cache"
    cmd = line(
        graphs["threshold"],
        preset="datacenter",
        opt_level=5,
        hardware_compat=True,
        version_compatible=True,
        timing_cache=str(cache),
        min_batch=2,
        opt_batch=3,
        max_batch=5,
        workspace_mib=512,
    ).split()
    assert {
        "--builderOptimizationLevel=5",
        "--hardwareCompatibilityLevel=ampere+",
        "--versionCompatible",
        f"--timingCacheFile={cache}",
        "--minShapes=images:2x3x32x32",
        "--optShapes=images:3x3x32x32",
        "--maxShapes=images:5x3x32x32",
        "--memPoolSize=workspace:512",
    } <= set(cmd)


def test_a_fixed_batch_graph_gets_no_shape_options(graphs):
    p = plan(graphs["fixed_b2"], preset="orin-nx")
    assert p.profile is None and p.shapes() == {k: [2, 3, 32, 32] for k in ("min", "opt", "max")}
    assert "Shapes" not in trtexec_command(p, "e.plan")
    with pytest.raises(LTMPError, match="fixed batch of 2"):
        plan(graphs["fixed_b2"], preset="orin-nx", max_batch=4)


def test_threshold_graphs_build_for_86_and_newer(graphs):
    for preset, trt in (
        ("orin-nx", "8.6"),
        ("orin-nx", "10.3"),
        ("datacenter", "10"),
        ("datacenter", "11"),
        ("agx-orin", "11.4"),
        ("thor", "11.4"),
    ):
        assert plan(graphs["threshold"], preset=preset, trt=trt).trt == trt


def test_threshold_graph_for_tensorrt_85_is_refused_listing_the_nodes(graphs):
    with pytest.raises(LTMPError) as err:
        plan(graphs["threshold"], preset="orin-nano", trt="8.5")
    msg = str(err.value)
    assert "threshold-mode graph needs TensorRT 8.6" in msg and "fixed mode" in msg
    assert "\n" not in msg
    assert re.search(r"K must be a constant[^;]*\(3 TopK nodes, first /blocks\.0/TopK(_\d+)?\)", msg)  # numbered names
    assert plan(graphs["fixed"], preset="orin-nano", trt="8.5").trt == "8.5"  # fixed mode is fine


@pytest.mark.parametrize(
    "graph,kw,expected",
    [
        ("fixed", dict(preset="orin-nano", dla_core=0), "has no DLA"),
        ("fixed", dict(preset="agx-orin", dla_core=2), "DLA cores 0..1"),
        ("fixed", dict(preset="agx-orin", dla_core=0, precision="fp32"), "DLA runs FP16 or INT8 only"),
        ("threshold", dict(preset="agx-orin", dla_core=0), "DLA takes static shapes"),
        ("fixed", dict(preset="orin-nx", dla_core=0, min_batch=1, max_batch=4), "DLA takes static shapes only"),
        ("fixed", dict(preset="datacenter", trt="8.6", precision="bf16"), "BF16 needs TensorRT 9.0"),
        ("fixed", dict(preset="orin-nx", trt="8.5", precision="bf16"), "BF16 needs TensorRT 9.0"),
        ("fixed", dict(preset="datacenter", trt="11", precision="fp16"), "export with --fp16"),
        ("fixed", dict(preset="datacenter", trt="11", precision="bf16"), "ModelOpt"),
        ("fixed", dict(preset="datacenter", trt="11", strongly_typed=False), "strongly typed networks only"),
        ("fixed", dict(preset="agx-orin", trt="11.4", precision="fp16"), "export with --fp16"),
        ("fp16", dict(preset="thor", trt="11.4", strongly_typed=False), "strongly typed networks only"),
        ("fixed", dict(preset="orin-nano", trt="11.4"), "not a target of this preset"),
        ("fixed", dict(preset="orin-nx", trt="11.4"), "not a target of this preset"),
        ("fixed", dict(preset="orin-nx", trt="8.6", strongly_typed=True), "need TensorRT 10"),
        (
            "fixed",
            dict(preset="datacenter", precision="fp16", strongly_typed=True),
            "takes its precision from the graph",
        ),
        ("fixed", dict(preset="datacenter", precision="int8"), "--calibration"),
        ("int8", dict(preset="datacenter", precision="fp16"), "Q/DQ nodes"),
        ("fp16", dict(preset="datacenter", precision="fp32"), "the graph is fp16"),
        ("fixed", dict(preset="orin-nx", hardware_compat=True), "not supported for Jetson"),
        ("fixed", dict(preset="orin-nx", trt="8.5", opt_level=3), "8.6 or newer"),
        ("fixed", dict(preset="orin-nx", trt="8.5", version_compatible=True), "8.6 or newer"),
        ("fixed", dict(preset="datacenter", opt_level=6), "0 to 5"),
        ("fixed", dict(preset="orin-nano", trt="11"), "not a target of this preset"),
        ("fixed", dict(preset="tesla"), "choose one of"),
        ("fixed", dict(preset="datacenter", precision="fp8"), "choose one of"),
        ("fixed", dict(preset="datacenter", min_batch=4, max_batch=2), "--min-batch <= --opt-batch <= --max-batch"),
        ("fixed", dict(preset="datacenter", opt_batch=0), "must be at least 1"),
        ("fixed", dict(preset="datacenter", workspace_mib=0), "at least 1 MiB"),
        ("fixed", dict(preset="datacenter", timing_cache="/no/such/folder/cache"), "does not exist"),
    ],
)
def test_combinations_that_cannot_work_are_refused(graphs, graph, kw, expected):
    with pytest.raises(LTMPError, match=expected.replace("(", r"\(").replace("+", r"\+")):
        plan(graphs[graph], **kw)


def test_the_installed_tensorrt_decides_the_target(graphs):
    assert plan_build(graphs["fixed"], BuildOptions(preset="orin-nx"), installed="8.6.2.3").trt == "8.6"
    with pytest.raises(LTMPError, match="this machine has TensorRT 10.3.0.30"):
        plan_build(graphs["fixed"], BuildOptions(preset="orin-nx", trt="8.5"), installed="10.3.0.30")
    with pytest.raises(LTMPError, match="not a target of this preset"):
        plan_build(graphs["fixed"], BuildOptions(preset="agx-orin"), installed="11.1.0")


def test_unreadable_or_foreign_graphs_are_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(LTMPError, match="bad.onnx"):
        plan(bad, preset="datacenter")
    with pytest.raises(LTMPError, match="does not exist"):
        plan(tmp_path / "missing.onnx", preset="datacenter")


# -- sidecar ---------------------------------------------------------------------------------


def test_sidecar_carries_version_gpu_profile_schedule_hash_metadata_and_trtexec(graphs, tmp_path):
    import hashlib

    import onnx

    from ltmp_deploy.runtime.metadata import read_metadata

    p = plan(graphs["fixed"], preset="agx-orin", precision="fp16", opt_batch=2, max_batch=8)
    engine = tmp_path / "m.plan"
    doc = compose_sidecar(p, engine, tensorrt_version="10.3.0.30", gpu="Orin")
    meta = read_metadata(onnx.load(str(graphs["fixed"])))
    assert doc["tensorrt_version"] == "10.3.0.30" and doc["tensorrt_target"] == "10.3"
    assert doc["gpu"] == {"name": "Orin"} and doc["preset"] == "agx-orin" and doc["precision"] == "fp16"
    assert doc["profiles"] == [{"input": "images", "min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [8, 3, 32, 32]}]
    assert doc["mode"] == "fixed" and doc["schedule"] == meta["schedule"] and doc["metadata"] == meta
    assert doc["onnx_sha256"] == hashlib.sha256(graphs["fixed"].read_bytes()).hexdigest()
    assert doc["trtexec"] == trtexec_command(p, engine) and doc["trtexec"].startswith("trtexec --onnx=")
    assert doc["workspace_mib"] == 4096 and doc["builder_flags"] == ["fp16"] and doc["strongly_typed"] is False
    assert doc["hardware_compatibility"] is None and doc["version_compatible"] is False
    json.dumps(doc)  # plain JSON


def test_sidecar_for_a_trtexec_build_is_written_whole(graphs, tmp_path):
    engine = tmp_path / "m.plan"
    with pytest.raises(LTMPError, match="no engine there"):
        record_trtexec_build(graphs["fixed"], engine, BuildOptions(preset="orin-nx"), "v100300")
    engine.write_bytes(b"engine bytes from trtexec")  # a stand-in file: only the sidecar is under test
    side = record_trtexec_build(graphs["fixed"], engine, BuildOptions(preset="orin-nx"), "v100300")
    assert side == tmp_path / "m.plan.json"
    doc = json.loads(side.read_text())
    assert doc["tensorrt_version"] == "10.3.0" and doc["built_by"] == "trtexec" and doc["preset"] == "orin-nx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan", "m.plan.json"]  # no temporary files left
    with pytest.raises(LTMPError, match="this machine has TensorRT 8.6.2"):  # the version trtexec reported rules
        record_trtexec_build(graphs["fixed"], engine, BuildOptions(preset="orin-nx", trt="10.3"), "8.6.2")
    side.unlink()
    rc = main(["build", str(graphs["fixed"]), "--preset", "orin-nx", "--sidecar-only", "10.3.0.30", "-o", str(engine)])
    assert rc == 0 and json.loads(side.read_text())["tensorrt_version"] == "10.3.0.30"


def test_sidecar_is_where_the_runtime_looks_for_it(graphs, tmp_path):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine bytes from trtexec")  # a stand-in file: only the sidecar is under test
    side = record_trtexec_build(graphs["fixed"], engine, BuildOptions(preset="orin-nx"), "10.3.0")
    assert read_sidecar(engine) == json.loads(side.read_text()) and read_sidecar(engine)["preset"] == "orin-nx"


# -- CLI -------------------------------------------------------------------------------------


def test_cli_prints_the_trtexec_line_without_tensorrt(graphs, tmp_path, capsys):
    rc = main(["build", str(graphs["fixed"]), "--preset", "orin-nx", "--print-trtexec", "-o", str(tmp_path / "e.plan")])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out.startswith("trtexec --onnx=") and "--fp16" in out and "--saveEngine=" in out
    assert not (tmp_path / "e.plan").exists()


def test_cli_int8_quantizes_first_then_prints_the_line_for_the_qdq_graph(graphs, tmp_path, capsys):
    engine = tmp_path / "e.plan"
    rc = main(
        [
            "build",
            str(graphs["fixed"]),
            "--preset",
            "orin-nano",
            "--precision",
            "int8",
            "--calibration",
            str(graphs["calib"]),
            "--print-trtexec",
            "-o",
            str(engine),
        ]
    )
    captured = capsys.readouterr()
    qdq = tmp_path / "e.int8.onnx"
    assert rc == 0 and qdq.is_file() and f"--onnx={qdq}" in captured.out and "--stronglyTyped" in captured.out
    assert "quantized to" in captured.err


def test_cli_int8_reads_the_polygraphy_json_that_calibrate_writes(graphs, tmp_path, capsys):
    from ltmp_deploy.runtime.int8.calibration_data import write_calibration_data

    images = np.random.default_rng(2).standard_normal((12, 3, 32, 32)).astype(np.float32)
    feeds = write_calibration_data(images, tmp_path / "calib", batch_size=4)["polygraphy"]
    rc = main(
        [
            "build",
            str(graphs["fixed"]),
            "--preset",
            "agx-orin",
            "--precision",
            "int8",
            "--calibration",
            str(feeds),
            "--print-trtexec",
            "-o",
            str(tmp_path / "e.plan"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and f"--onnx={tmp_path / 'e.int8.onnx'}" in out
    import onnx

    from ltmp_deploy.runtime.metadata import read_metadata

    assert read_metadata(onnx.load(str(tmp_path / "e.int8.onnx")))["quantization"]["calibration_images"] == 12


def test_cli_refusals_are_one_line_with_exit_code_2(graphs, tmp_path, capsys):
    rc = main(
        ["build", str(graphs["threshold"]), "--preset", "agx-orin", "--dla-core", "0", "-o", str(tmp_path / "e.plan")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ltmp-deploy build: error: ") and "DLA takes static shapes" in err
    assert len(err.strip().splitlines()) == 1
    rc = main(
        ["build", str(graphs["fixed"]), "--preset", "datacenter", "--precision", "int8", "-o", str(tmp_path / "e.plan")]
    )
    assert rc == 2 and "--calibration" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the build runs instead")
def test_cli_build_without_tensorrt_says_so_and_points_at_the_alternatives(graphs, tmp_path, capsys):
    rc = main(["build", str(graphs["fixed"]), "--preset", "datacenter", "-o", str(tmp_path / "e.plan")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "TensorRT is not installed here" in err and "--print-trtexec" in err and "scripts/jetson_build.sh" in err
    assert not list(tmp_path.iterdir())


# -- the real thing, where TensorRT exists ---------------------------------------------------


@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT_REASON)
@pytest.mark.parametrize(
    "graph,precision", [("fixed", "fp32"), ("threshold", "fp32"), ("fixed", "fp16"), ("int8", "int8")]
)
def test_build_and_run_matches_onnx_runtime(graphs, tmp_path, graph, precision):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    installed = trt_key(tensorrt_version())
    if installed in ("8.5",) and graph == "threshold":
        pytest.skip("threshold mode needs TensorRT 8.6+")
    if strongly_typed_only(installed) and precision == "fp16":
        pytest.skip("TensorRT 11 takes fp16 from an fp16 graph")
    engine = build_engine(
        graphs[graph],
        tmp_path / "m.plan",
        preset="datacenter",
        precision=precision,
        min_batch=1,
        opt_batch=4,
        max_batch=8,
    )
    doc = json.loads((tmp_path / "m.plan.json").read_text())
    assert doc["tensorrt_version"] == tensorrt_version() and doc["precision"] == precision
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(graphs[graph]), providers=["CPUExecutionProvider"]).run(
        None, {"images": images}
    )[0]
    with TrtRunner(EngineFromBytes(engine.read_bytes())) as runner:
        got = runner.infer({"images": images})["logits"]
    if precision == "fp32":
        assert np.abs(got - expected).max() <= 1e-3
    else:
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75


# -- scripts ---------------------------------------------------------------------------------


def run_script(name, *args, env=None):
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.parametrize("name", ["jetson_build.sh", "ci_parity_gate.sh"])
def test_scripts_are_strict_bash_with_help(name):
    text = (ROOT / "scripts" / name).read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert os.access(ROOT / "scripts" / name, os.X_OK)
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)]).returncode == 0
    result = run_script(name, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: scripts/" + name)
    assert run_script(name).returncode == 2  # no argument: usage, exit 2
    assert run_script(name, "--bogus", "x").returncode == 2


@pytest.mark.skipif(
    HAVE_TRT or shutil.which("trtexec") is not None or os.path.exists("/usr/src/tensorrt/bin/trtexec"),
    reason="TensorRT or trtexec is installed here: the script would build",
)
def test_jetson_script_says_what_is_missing_off_device(graphs):
    result = run_script("jetson_build.sh", graphs["fixed"], "--preset", "orin-nx")
    assert result.returncode == 2 and "neither TensorRT's Python bindings" in result.stderr


def test_ci_gate_validates_each_mode_and_fails_when_one_fails(tmp_path):
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    assert run_script("ci_parity_gate.sh", tmp_path / "missing.safetensors").returncode == 2
    ckpt = save_checkpoint(tiny_ltmp("fixed"), tmp_path / "m.safetensors")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    gate = tmp_path / "gate"
    result = run_script("ci_parity_gate.sh", ckpt, "--modes", "fixed bogus", "--images", 4, "--out", gate, env=env)
    assert result.returncode == 1 and "FAILED: bogus (export)" in result.stderr, result.stderr
    assert "fixed (" not in result.stderr  # the fixed graph exported and matched PyTorch
    assert (gate / "fixed.onnx").is_file() and json.loads((gate / "fixed.json").read_text())["ok"] is True
