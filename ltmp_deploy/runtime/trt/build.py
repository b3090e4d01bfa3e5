"""TensorRT engines for Jetson and datacenter GPUs, built with Polygraphy's loaders.

    engine = build_engine("model.onnx", "model.plan", preset="agx-orin", precision="fp16")

:func:`build` is the whole ``ltmp-deploy build`` command: it reads the graph once, plans the
build (:mod:`ltmp_deploy.runtime.trt.plan`: refused combinations fail before any work), quantizes a
float graph first when INT8 is asked (:func:`ltmp_deploy.runtime.int8.quantize.quantize_int8`, into
``ENGINE_STEM.int8.onnx``), then builds ``ENGINE`` and writes ``ENGINE.json`` with it, or only
prints the equivalent ``trtexec`` line (:mod:`ltmp_deploy.runtime.trt.trtexec`). Presets are in
:mod:`ltmp_deploy.runtime.trt.presets`.

TensorRT and Polygraphy's TensorRT backend are imported inside the functions that build.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.runtime.int8.calibration_data import CalibrationLike, read_calibration_data
from ltmp_deploy.runtime.int8.quantize import quantize_int8
from ltmp_deploy.runtime.metadata import INPUT_NAME
from ltmp_deploy.runtime.trt.engine import current_gpu, import_tensorrt, sidecar_path, tensorrt_version
from ltmp_deploy.runtime.trt.plan import BuildOptions, BuildPlan, GraphInfo, inspect_graph, plan_build
from ltmp_deploy.runtime.trt.trtexec import compose_sidecar, record_trtexec_build, sidecar_text, trtexec_command

NO_TENSORRT_ADVICE = (
    "build on the target device, print the equivalent trtexec command with `ltmp-deploy build ... --print-trtexec`, "
    "or run scripts/jetson_build.sh on the Jetson"
)


@dataclass
class BuildResult:
    """What :func:`build` did."""

    engine: Path | None = None  # None when only the trtexec line was asked for
    sidecar: Path | None = None
    trtexec: str | None = None  # the equivalent trtexec line (None for a sidecar of trtexec's engine)
    quantized: Path | None = None  # the Q/DQ graph written first, for INT8 on a float graph


def quantized_path(engine: str | os.PathLike) -> Path:
    """Where a build that quantizes first writes its Q/DQ graph: ``ENGINE_STEM.int8.onnx``."""
    engine = Path(engine)
    return engine.with_name(engine.stem + ".int8.onnx")


def build(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    options: BuildOptions,
    *,
    calibration: CalibrationLike | None = None,
    calibration_method: str = "minmax",
    print_trtexec: bool = False,
    built_by_trtexec: str | None = None,
) -> BuildResult:
    """``ltmp-deploy build``: build ``out`` and ``out.json`` from ``onnx_path`` for ``options``.

    ``calibration`` (an array, or a .npy/.npz/Polygraphy JSON file of preprocessed images)
    quantizes a graph without Q/DQ nodes first when ``options.precision`` is int8.
    ``print_trtexec``: plan (and quantize) only, for the trtexec line; needs no TensorRT.
    ``built_by_trtexec``: ``out`` was built by trtexec from that line with this TensorRT
    version: only write its sidecar. Raises LTMPError for refused combinations and when
    TensorRT is needed but not installed.
    """
    if built_by_trtexec is not None:
        side = record_trtexec_build(onnx_path, out, options, built_by_trtexec)
        return BuildResult(engine=Path(out), sidecar=side)
    ensure_writable(out)
    graph = inspect_graph(onnx_path)
    quantize = options.precision == "int8" and graph.precision != "int8"
    installed = None if print_trtexec else tensorrt_version()
    plan = plan_build(graph, options, installed=installed, assume_int8=quantize)  # refuse early, before any work
    images = _calibration_images(graph, calibration) if quantize else None
    trt = None if print_trtexec else import_tensorrt(graph.path, NO_TENSORRT_ADVICE)
    quantized = None
    if quantize:
        result = quantize_int8(graph.path, quantized_path(out), images, method=calibration_method, model=graph.model)
        quantized = result.path
        plan = plan_build(inspect_graph(result.path, result.model), options, installed=installed)
    if trt is None:
        return BuildResult(trtexec=trtexec_command(plan, out), quantized=quantized)
    engine_bytes = _build(plan, trt)
    doc = compose_sidecar(plan, out, tensorrt_version=str(trt.__version__), gpu=current_gpu())
    if plan.dla_core is not None:  # DLA's GPU fallback is silent: say where each layer ended up
        doc["layer_devices"] = layer_devices(engine_bytes, trt, plan.dla_core)
    with atomic_output(sidecar_path(out), suffix=".json") as side_tmp, atomic_output(out) as engine_tmp:
        with engine_tmp.open("wb") as f:
            f.write(engine_bytes)
        side_tmp.write_text(sidecar_text(doc), encoding="utf-8")
    return BuildResult(Path(out), sidecar_path(out), doc["trtexec"], quantized)


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    preset: str = "datacenter",
    precision: str | None = None,
    *,
    calibration: CalibrationLike | None = None,
    calibration_method: str = "minmax",
    **options: Any,
) -> Path:
    """Build ``out`` (and ``out.json``) from ``onnx_path``; return the engine's path.

    ``options``: the other :class:`BuildOptions` fields (``min_batch``, ``opt_batch``,
    ``max_batch``, ``dla_core``, ``timing_cache``, ``opt_level``, ``hardware_compat``,
    ``version_compatible``, ``workspace_mib``, ``trt``, ``strongly_typed``). For INT8 on a graph
    without Q/DQ nodes, ``calibration`` quantizes it first (see :func:`build`).
    Raises LTMPError for refused combinations and when TensorRT is not installed.
    """
    opts = BuildOptions(preset=preset, precision=precision, **options)
    return build(onnx_path, out, opts, calibration=calibration, calibration_method=calibration_method).engine


def _calibration_images(graph: GraphInfo, calibration: CalibrationLike | None) -> Any:
    """The calibration set, read and checked before any long work (INT8 on a float graph)."""
    if calibration is None:
        raise LTMPError(
            f"{graph.path}: --precision int8 on a graph without Q/DQ nodes needs --calibration FILE "
            "(preprocessed images, N x C x H x W: .npy, .npz or Polygraphy JSON)"
        )
    return read_calibration_data(calibration, graph.input_shape)


def _build(plan: BuildPlan, trt: Any) -> Any:
    """Serialized engine bytes from Polygraphy's loaders (nothing runs until the last call)."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
    )
    from polygraphy.exception import PolygraphyException

    network = NetworkFromOnnxPath(str(plan.graph.path), strongly_typed=plan.strongly_typed or None)
    profiles = None
    if plan.profile is not None:
        mn, opt, mx = plan.profile
        profiles = [Profile().add(INPUT_NAME, min=mn, opt=opt, max=mx)]
    kwargs: dict[str, Any] = dict(
        profiles=profiles,
        fp16="fp16" in plan.flags or None,
        int8="int8" in plan.flags or None,
        bf16="bf16" in plan.flags or None,
        builder_optimization_level=plan.opt_level,
        version_compatible=plan.version_compatible or None,
        load_timing_cache=plan.timing_cache,
    )
    if plan.workspace_mib is not None:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: plan.workspace_mib << 20}
    if plan.hardware_compat:
        kwargs["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if plan.dla_core is not None:
        # DETAILED: the engine inspector then names each layer's type, DLA included (layer_devices)
        kwargs.update(use_dla=True, allow_gpu_fallback=True, profiling_verbosity=trt.ProfilingVerbosity.DETAILED)
    config: Any = CreateConfig(**{k: v for k, v in kwargs.items() if v is not None})
    if plan.dla_core is not None:
        core = plan.dla_core

        def pick_dla_core(builder: Any, _network: Any, cfg: Any) -> None:  # Polygraphy always picks core 0
            if core >= builder.num_DLA_cores:
                raise LTMPError(f"--dla-core {core}: this device has {builder.num_DLA_cores} DLA core(s)")
            cfg.DLA_core = core

        config = PostprocessConfig(config, pick_dla_core)
    build = EngineBytesFromNetwork(network, config=config, save_timing_cache=plan.timing_cache)
    try:
        engine = build()
    except LTMPError:
        raise
    except (PolygraphyException, RuntimeError, TypeError, ValueError) as exc:
        first = first_line(exc)
        raise LTMPError(f"{plan.graph.path}: TensorRT {trt.__version__} could not build the engine ({first})") from exc
    if not engine:
        raise LTMPError(f"{plan.graph.path}: TensorRT {trt.__version__} returned no engine")
    return engine


def layer_devices(engine_bytes: Any, trt: Any, dla_core: int) -> dict[str, Any]:
    """Which layers of a built engine run on DLA and which on the GPU, from TensorRT's engine
    inspector (TensorRT 8.2 and newer): ``{"dla": [names], "gpu": [names]}``, or ``{"unknown": why}``.

    TensorRT fuses the layers DLA takes into DLA layers (named ``{ForeignNode[first...last]}``);
    everything else, the fallback included, is a GPU layer.
    """
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None or not hasattr(engine, "create_engine_inspector"):
        return {"unknown": f"TensorRT {trt.__version__} has no engine inspector (8.2 and newer have)"}
    text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return devices_from_inspector(text)


def devices_from_inspector(text: str) -> dict[str, Any]:
    """:func:`layer_devices` from the inspector's JSON (``{"Layers": [...]}``)."""
    found: dict[str, Any] = {"dla": [], "gpu": []}
    for layer in json.loads(text).get("Layers", []):
        if not isinstance(layer, dict):  # names only: the engine was built without detailed verbosity
            return {"unknown": "the engine inspector gave layer names only (profiling verbosity not detailed)"}
        found["dla" if layer.get("LayerType") == "DLA" else "gpu"].append(str(layer.get("Name", "")))
    return found


__all__ = ["BuildResult", "build", "build_engine", "devices_from_inspector", "layer_devices", "quantized_path"]
