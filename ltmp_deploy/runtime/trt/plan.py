"""Planning a TensorRT build, without TensorRT: the options checked against the preset, the
graph and the target TensorRT version.

    plan = plan_build("model.onnx", BuildOptions(preset="agx-orin", precision="fp16"))

The preset gives the target TensorRT version, a workspace that fits the module's memory, DLA
cores and batch profiles; the requested precision is matched with what the graph carries (an
fp16 export, Q/DQ nodes for INT8) and with what the TensorRT version can do, and the graph is
checked against that version's ONNX parser (:mod:`ltmp_deploy.runtime.trt.parser_check`). Combinations
that cannot work are refused with the reason.

Precision, by TensorRT version:

- 8.5 / 8.6 (JetPack 5.1 / 6.0): weakly typed, builder flags ``fp16`` / ``int8`` (the latter
  for a Q/DQ graph); no BF16 (TensorRT 9.0+), no strongly typed networks.
- 10.x (JetPack 6.1/6.2 ship 10.3, JetPack 7.0/7.1 10.13, JetPack 7.2 10.16): strongly typed
  when the graph carries the precision (fp16 export, Q/DQ graph), else the builder flags;
  ``strongly_typed`` overrides.
- 11.x (11.4.1: JetPack 7.2.2+ on AGX Orin and Thor): always strongly typed, no precision flags:
  the graph must carry the precision, and a Jetson preset's fp16 default gives way to the graph's.

DLA (``dla_core``) takes fp16 or int8, one static shape, fixed mode, and a TensorRT that runs the
module's DLA (``Preset.dla_trt_versions``: 8.5 to 10.3, and 11.4 on AGX Orin only, where the graph
must be fp16 or Q/DQ int8).

The ONNX file is read and hashed once (:func:`inspect_graph`); the plan carries the loaded graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import onnx

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import ensure_writable, sha256
from ltmp_deploy.runtime.int8.quantize import has_qdq
from ltmp_deploy.runtime.metadata import read_metadata
from ltmp_deploy.runtime.onnxgraph import dims, image_io, load
from ltmp_deploy.runtime.parity.tolerances import PRECISIONS
from ltmp_deploy.runtime.trt.build_options import MAX_OPT_LEVEL, BuildOptions
from ltmp_deploy.runtime.trt.parser_check import check_model
from ltmp_deploy.runtime.trt.presets import DLA_ONLY_ON, JETPACK, PRESETS, TRT_VERSIONS, Preset
from ltmp_deploy.runtime.trt.targets import at_least, strongly_typed_only, trt_key


@dataclass
class GraphInfo:
    """What the builder needs to know about the ONNX graph, read once by :func:`inspect_graph`."""

    path: Path
    sha256: str
    metadata: dict[str, Any]
    input_shape: tuple[int | None, ...]  # (batch or None, C, H, W)
    precision: str  # what the graph carries: fp32 | fp16 | bf16 | int8 (Q/DQ)
    model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)

    @property
    def mode(self) -> str | None:
        return self.metadata.get("mode")


@dataclass
class BuildPlan:
    """A checked build: everything the builder, trtexec and the sidecar need."""

    graph: GraphInfo
    preset: Preset
    trt: str
    precision: str
    strongly_typed: bool
    flags: list[str]  # weakly typed builder precision flags: fp16 / int8 / bf16
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # None: static input
    workspace_mib: int | None
    dla_core: int | None
    opt_level: int | None
    hardware_compat: bool
    version_compatible: bool
    timing_cache: str | None
    notes: list[str] = field(default_factory=list)

    def shapes(self) -> dict[str, list[int]]:
        """min/opt/max input shapes (all equal for a static input)."""
        if self.profile is None:
            static = [int(d) for d in self.graph.input_shape]  # type: ignore[arg-type]
            return {"min": static, "opt": static, "max": static}
        return {k: list(s) for k, s in zip(("min", "opt", "max"), self.profile)}


GraphLike = Union[GraphInfo, str, os.PathLike]


def inspect_graph(onnx_path: str | os.PathLike, model: onnx.ModelProto | None = None) -> GraphInfo:
    """Metadata, input shape, precision and hash of an exported graph (onnx only, no TensorRT).

    ``model``: the graph at ``onnx_path`` already loaded (a quantizer's output), so it is not read again.
    """
    path = Path(onnx_path)
    model = load(path) if model is None else model
    images, _ = image_io(model, str(path))
    shape, dtype = dims(images), images.type.tensor_type.elem_type
    types, t = [i.data_type for i in model.graph.initializer] + [dtype], onnx.TensorProto
    if has_qdq(model):
        precision = "int8"
    elif t.BFLOAT16 in types:
        precision = "bf16"
    elif dtype == t.FLOAT16 or types.count(t.FLOAT16) > types.count(t.FLOAT):
        precision = "fp16"
    else:
        precision = "fp32"
    return GraphInfo(path, sha256(path), read_metadata(model, str(path)), shape, precision, model)


def plan_build(
    graph: GraphLike, options: BuildOptions, *, installed: str | None = None, assume_int8: bool = False
) -> BuildPlan:
    """Check ``options`` against the preset, the graph and the TensorRT version; raise LTMPError.

    ``graph``: a :class:`GraphInfo` or the path of an exported graph. ``installed``: the
    TensorRT version on this machine (None when there is none: the preset's default target is
    used unless ``options.trt`` names one). ``assume_int8``: plan as if the graph already had
    its Q/DQ nodes (checks before quantizing).
    """
    graph = graph if isinstance(graph, GraphInfo) else inspect_graph(graph)
    if assume_int8 and graph.precision == "fp32":
        graph = replace(graph, precision="int8")
    preset = _preset(options.preset)
    trt = _target(preset, options.trt, installed, options.dla_core)
    where = f"{graph.path} (--preset {preset.name}, TensorRT {trt})"
    notes: list[str] = []
    _check_mode(where, graph, preset, trt)

    precision = options.precision if options.precision is not None else _default_precision(graph, preset, trt, notes)
    if precision not in PRECISIONS:
        raise LTMPError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    _check_precision(where, graph, precision, trt)

    dla = options.dla_core
    if dla is not None:
        _check_dla(where, preset, graph, precision, dla, trt)
        notes += _dla_fallback(graph, preset)
    profile = _profile(where, preset, graph, options, dla)
    strongly_typed = _typing(where, graph, precision, trt, options.strongly_typed, dla)
    flags = [] if strongly_typed or precision == "fp32" else [precision]
    if dla is not None and precision == "int8" and not strongly_typed:
        flags.append("fp16")  # DLA runs the layers without Q/DQ in fp16 (or falls back to the GPU)
    if dla is not None and precision == "int8" and strongly_typed:
        notes.append("strongly typed on DLA: the layers the graph keeps in fp32 (no Q/DQ) run on the GPU")
    if precision == "int8" and not strongly_typed and at_least(trt, "10.3") and not at_least(trt, "11"):
        notes.append("INT8 through the builder flag is deprecated in TensorRT 10.x; strongly typed builds avoid it")
    workspace = _check_options(where, preset, options, trt)
    _check_parser(graph, trt, preset)
    return BuildPlan(
        graph,
        preset,
        trt,
        precision,
        strongly_typed,
        flags,
        profile,
        workspace,
        dla,
        options.opt_level,
        options.hardware_compat,
        options.version_compatible,
        options.timing_cache,
        notes,
    )


def check_preset_mode(graph: GraphLike, preset_name: str) -> tuple[str, ...]:
    """The TensorRT versions of a preset, once the graph's export mode is one the preset builds."""
    preset = _preset(preset_name)
    graph = graph if isinstance(graph, GraphInfo) else inspect_graph(graph)
    _check_mode(f"{graph.path} (--preset {preset.name})", graph, preset, preset.trt_versions[0])
    return preset.trt_versions


def _check_mode(where: str, graph: GraphInfo, preset: Preset, trt: str) -> None:
    if graph.mode is not None and graph.mode not in preset.modes:
        raise LTMPError(
            f"{where}: a {graph.mode}-mode graph, and {preset.description} builds {'/'.join(preset.modes)} mode only "
            f"(TensorRT {trt}'s ONNX parser refuses threshold mode's run-time TopK K): export with --mode fixed"
        )


def _check_options(where: str, preset: Preset, options: BuildOptions, trt: str) -> int | None:
    """The builder options that do not touch precision; returns the workspace cap in MiB."""
    workspace = options.workspace_mib if options.workspace_mib is not None else preset.workspace_mib
    if workspace is not None and workspace < 1:
        raise LTMPError(f"--workspace {workspace}: must be at least 1 MiB")
    if options.opt_level is not None:
        if not 0 <= options.opt_level <= MAX_OPT_LEVEL:
            raise LTMPError(
                f"--opt-level {options.opt_level}: TensorRT's builder optimization levels are 0 to {MAX_OPT_LEVEL}"
            )
        if not at_least(trt, "8.6"):
            raise LTMPError(f"{where}: --opt-level needs TensorRT 8.6 or newer")
    if options.hardware_compat:
        if preset.jetson:
            raise LTMPError(
                f"{where}: --hardware-compat is not supported for Jetson (JetPack) engines; "
                "build on each device type instead"
            )
        if not at_least(trt, "8.6"):
            raise LTMPError(f"{where}: --hardware-compat needs TensorRT 8.6 or newer")
    if options.version_compatible and not at_least(trt, "8.6"):
        raise LTMPError(f"{where}: --version-compatible needs TensorRT 8.6 or newer")
    if options.timing_cache is not None:
        ensure_writable(options.timing_cache)
    return workspace


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise LTMPError(f"--preset {name}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _target(preset: Preset, asked: str | None, installed: str | None, dla: int | None) -> str:
    if asked is not None and asked not in TRT_VERSIONS:
        raise LTMPError(f"--trt {asked}: choose one of {', '.join(TRT_VERSIONS)}")
    if installed is not None:
        have = trt_key(installed)
        if asked is not None and asked != have:
            raise LTMPError(
                f"--trt {asked}: this machine has TensorRT {installed}; an engine is built by the "
                f"installed TensorRT, so build where TensorRT {asked} is installed or drop --trt"
            )
        asked = have
    target = asked or preset.trt_versions[0]
    if target not in preset.trt_versions:
        if dla is not None and target in DLA_ONLY_ON and preset.dla_cores:
            raise LTMPError(f"--preset {preset.name} --dla-core {dla}: {_no_dla(preset, target)}")
        extra = f" ({JETPACK})" if preset.jetson else ""
        raise LTMPError(
            f"--preset {preset.name}: TensorRT {target} is not a target of this preset; "
            f"it takes {', '.join(preset.trt_versions)}{extra}"
        )
    return target


def _default_precision(graph: GraphInfo, preset: Preset, trt: str, notes: list[str]) -> str:
    """The graph's precision, or the preset's for an fp32 graph where builder flags exist."""
    if graph.precision != "fp32":
        return graph.precision
    wanted = preset.default_precision or "fp32"
    if strongly_typed_only(trt) and wanted != "fp32":
        notes.append(
            f"TensorRT {trt} takes the precision from the graph: this fp32 graph builds in fp32; "
            f"export with --fp16 for {wanted}"
        )
        return "fp32"
    return wanted


def _check_precision(where: str, graph: GraphInfo, precision: str, trt: str) -> None:
    carried = graph.precision
    if carried == "int8" and precision != "int8":
        raise LTMPError(f"{where}: the graph has Q/DQ nodes (explicit INT8); build it with --precision int8")
    if precision == "int8" and carried != "int8":
        raise LTMPError(
            f"{where}: --precision int8 needs Q/DQ nodes in the graph: pass --calibration FILE.npy "
            "(the build quantizes first) or run ltmp_deploy.runtime.int8.quantize.quantize_int8"
        )
    if carried in ("fp16", "bf16") and precision != carried:
        raise LTMPError(
            f"{where}: the graph is {carried}; build it with --precision {carried}, "
            f"or export a float32 graph for --precision {precision}"
        )
    if precision == "bf16" and not at_least(trt, "10.3"):  # 9.x is no target
        raise LTMPError(f"{where}: BF16 needs TensorRT 9.0 or newer; use --precision fp16")
    if strongly_typed_only(trt) and precision in ("fp16", "bf16") and carried != precision:
        fix = "export with --fp16" if precision == "fp16" else "convert the graph to bf16 (NVIDIA ModelOpt AutoCast)"
        raise LTMPError(
            f"{where}: TensorRT {trt} has no {precision.upper()} builder flag (networks are strongly typed): "
            f"{fix} and build that graph"
        )


def _check_dla(where: str, preset: Preset, graph: GraphInfo, precision: str, dla: int, trt: str) -> None:
    if preset.dla_cores == 0:
        raise LTMPError(f"{where}: --dla-core {dla}: {preset.description} has no DLA")
    if not 0 <= dla < preset.dla_cores:
        raise LTMPError(f"{where}: --dla-core {dla}: {preset.description} has DLA cores 0..{preset.dla_cores - 1}")
    if trt not in preset.dla_trt_versions:
        raise LTMPError(f"{where}: --dla-core {dla}: {_no_dla(preset, trt)}")
    if precision not in ("fp16", "int8") and strongly_typed_only(trt):
        raise LTMPError(
            f"{where}: --dla-core {dla}: DLA runs FP16 or INT8 only and TensorRT {trt} takes the precision from "
            f"the graph, which is {graph.precision}: export with --fp16, or add --precision int8 --calibration FILE"
        )
    if precision not in ("fp16", "int8"):
        raise LTMPError(f"{where}: DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla-core")
    if graph.mode == "threshold":
        raise LTMPError(
            f"{where}: a threshold-mode graph has data-dependent token counts and DLA takes static shapes "
            "only: export fixed mode for DLA, or build without --dla-core"
        )


def _dla_fallback(graph: GraphInfo, preset: Preset) -> list[str]:
    """Which of the graph's ops this module's DLA has no layer for: they run on the GPU, silently."""
    ops = {node.op_type for node in graph.model.graph.node} if graph.model is not None else set()
    on_gpu = [op for op in preset.dla_gpu_ops if op in ops]
    if not on_gpu:
        return []
    return [
        f"DLA on {preset.description} has no layer for {', '.join(on_gpu)}: those run on the GPU (GPU fallback); "
        "the sidecar and `ltmp-deploy inspect ENGINE` list where each layer ran"
    ]


def _no_dla(preset: Preset, trt: str) -> str:
    """Why TensorRT ``trt`` does not run this module's DLA, and what does."""
    why = DLA_ONLY_ON.get(trt, "")
    if why:
        why += f", not on {preset.description}"
    else:
        why = (
            f"TensorRT {trt} does not run DLA on Jetson (TensorRT 10.7 was the last 10.x release with DLA, "
            "and 11.x has it again from 11.4.1)"
        )
    return f"{why}; build for the GPU, or for DLA with TensorRT {', '.join(preset.dla_trt_versions)}"


def _profile(where: str, preset: Preset, graph: GraphInfo, options: BuildOptions, dla: int | None):  # noqa: ANN202
    asked = (options.min_batch, options.opt_batch, options.max_batch)
    for flag, value in zip(("--min-batch", "--opt-batch", "--max-batch"), asked):
        if value is not None and value < 1:
            raise LTMPError(f"{flag} {value}: must be at least 1")
    fixed = graph.input_shape[0]
    if fixed is not None:
        if any(v is not None and v != fixed for v in asked):
            raise LTMPError(
                f"{where}: the graph has a fixed batch of {fixed}; drop the batch options or export with a "
                "dynamic batch axis (no --batch)"
            )
        return None
    mn, opt, mx = asked
    if dla is not None:
        size = opt or mx or mn or 1
        mn, opt, mx = mn or size, opt or size, mx or size
        if not mn == opt == mx:
            raise LTMPError(
                f"{where}: DLA takes static shapes only: give one batch size "
                f"(--min-batch = --opt-batch = --max-batch), not {mn}/{opt}/{mx}"
            )
    else:
        mn = mn or min(preset.batch[0], opt or preset.batch[0], mx or preset.batch[0])
        mx = mx or max(preset.batch[2], opt or 0, mn)
        opt = opt or min(max(preset.batch[1], mn), mx)
    if not mn <= opt <= mx:
        raise LTMPError(f"batch profile {mn}/{opt}/{mx}: needs --min-batch <= --opt-batch <= --max-batch")
    chw = tuple(int(d) for d in graph.input_shape[1:])  # type: ignore[arg-type]
    return (mn, *chw), (opt, *chw), (mx, *chw)


def _typing(where: str, graph: GraphInfo, precision: str, trt: str, asked: bool | None, dla: int | None) -> bool:
    if strongly_typed_only(trt):
        if asked is False:
            raise LTMPError(f"{where}: TensorRT {trt} builds strongly typed networks only")
        return True
    if not at_least(trt, "10.3"):
        if asked:
            raise LTMPError(f"{where}: strongly typed networks need TensorRT 10 (JetPack 6.1+) or newer")
        return False
    if asked is not None:
        if asked and precision != graph.precision:
            raise LTMPError(
                f"{where}: a strongly typed build takes its precision from the graph, which is "
                f"{graph.precision}, not {precision}"
            )
        return asked
    return dla is None and precision != "fp32" and precision == graph.precision


def _check_parser(graph: GraphInfo, trt: str, preset: Preset) -> None:
    report = check_model(graph.model if graph.model is not None else graph.path, trt)
    if report.ok:
        return
    why = ""
    if graph.mode == "threshold" and not at_least(trt, "8.6"):
        why = (
            " (a threshold-mode graph needs TensorRT 8.6 or newer: its TopK K is computed at run time; "
            "export fixed mode for this target)"
        )
    raise LTMPError(
        f"{graph.path}: the TensorRT {trt} parser (--preset {preset.name}) would reject this graph{why}: "
        f"{report.one_line()}; `ltmp-deploy check {graph.path} --trt {trt}` lists every node"
    )
