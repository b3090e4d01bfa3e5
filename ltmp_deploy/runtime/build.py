"""TensorRT engines for Jetson Orin and datacenter GPUs, built with Polygraphy's loaders.

    engine = build_engine("model.onnx", "model.plan", preset="agx-orin", precision="fp16")

A build is planned first (:func:`plan_build`, no TensorRT needed): the preset gives the target
TensorRT version, a workspace that fits the module's memory, DLA cores and batch profiles; the
requested precision is matched with what the graph carries (an fp16 export, Q/DQ nodes for
INT8) and with what the TensorRT version can do, and the graph is checked against that
version's ONNX parser (:mod:`ltmp_deploy.export.trt_check`). Combinations that cannot work are
refused with the reason. The same plan gives the equivalent ``trtexec`` command line
(:func:`trtexec_command`, for people who build on the device itself) and the JSON sidecar
(:func:`compose_sidecar`) written next to the engine as ``ENGINE.json``, together with it.

Precision, by TensorRT version:

- 8.5 / 8.6 (JetPack 5.1 / 6.0): weakly typed, builder flags ``fp16`` / ``int8`` (the latter
  for a Q/DQ graph); no BF16 (TensorRT 9.0+), no strongly typed networks.
- 10.x (JetPack 6.1/6.2 ships 10.3): strongly typed when the graph carries the precision (fp16
  export, Q/DQ graph), else the builder flags; ``strongly_typed`` overrides.
- 11.x: always strongly typed, no precision flags: the graph must carry the precision.

TensorRT and Polygraphy's TensorRT backend are imported inside the functions that build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output, ensure_writable

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TRT_VERSIONS = ("8.5", "8.6", "10.3", "10", "11")  # the keys of trt_check.TRT_TARGETS
SIDECAR_SCHEMA = "ltmp-deploy-engine/1"
INPUT_NAME = "images"
MAX_OPT_LEVEL = 5
NO_TENSORRT = (
    "TensorRT is not installed here (import tensorrt failed{why}): build on the target device, "
    "print the equivalent trtexec command with `ltmp-deploy build ... --print-trtexec`, "
    "or run scripts/jetson_build.sh on the Jetson"
)
JETPACK = "JetPack 5.1.x ships TensorRT 8.5, JetPack 6.0 ships 8.6, JetPack 6.1/6.2 ship 10.3"


@dataclass(frozen=True)
class Preset:
    """A build target: TensorRT versions it runs, memory, DLA, and default batch profile."""

    name: str
    description: str
    trt_versions: tuple[str, ...]  # the first is the default when TensorRT is not installed
    workspace_mib: Optional[int]  # builder scratch memory cap; None: TensorRT's default (all of it)
    dla_cores: int
    default_precision: Optional[str]  # None: whatever the graph carries
    batch: tuple[int, int, int]  # default min/opt/max for a dynamic batch axis
    jetson: bool
    facts: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "orin-nano", "Jetson Orin Nano (4 GB / 8 GB)", ("10.3", "8.6", "8.5"), 1024, 0, "fp16", (1, 1, 4), True,
            "4 or 8 GB LPDDR5 shared by CPU and GPU; workspace 1 GiB = a quarter of the 4 GB module; "
            "no DLA (the Orin Nano modules have none). " + JETPACK,
        ),
        Preset(
            "orin-nx", "Jetson Orin NX (8 GB / 16 GB)", ("10.3", "8.6", "8.5"), 2048, 2, "fp16", (1, 1, 8), True,
            "8 or 16 GB LPDDR5 shared by CPU and GPU; workspace 2 GiB = a quarter of the 8 GB module; "
            "DLA: 2 cores on the 16 GB module, 1 on the 8 GB module (core 1 exists only on the 16 GB). " + JETPACK,
        ),
        Preset(
            "agx-orin", "Jetson AGX Orin (32 GB / 64 GB)", ("10.3", "8.6", "8.5"), 4096, 2, "fp16", (1, 4, 16), True,
            "32 or 64 GB LPDDR5 shared by CPU and GPU; workspace 4 GiB = an eighth of the 32 GB module; "
            "2 DLA cores. " + JETPACK,
        ),
        Preset(
            "datacenter", "datacenter GPU (Ampere or newer for --hardware-compat)", ("10", "11", "10.3", "8.6"), None, 0,
            None, (1, 8, 64), False,
            "dedicated GPU memory: TensorRT's default workspace (all of it); precision defaults to the graph's; "
            "builder optimization level, timing cache, hardware compatibility (ampere+) and version-compatible "
            "engines as options (TensorRT 8.6+)",
        ),
    )
}


@dataclass
class BuildOptions:
    """What the user asks for; :func:`plan_build` checks it and fills in the preset's defaults."""

    preset: str = "datacenter"
    precision: Optional[str] = None  # fp32 | fp16 | bf16 | int8; None: the preset's default
    trt: Optional[str] = None  # target TensorRT version (a TRT_VERSIONS key); None: installed / preset default
    min_batch: Optional[int] = None
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    dla_core: Optional[int] = None
    workspace_mib: Optional[int] = None
    timing_cache: Optional[str] = None
    opt_level: Optional[int] = None
    hardware_compat: bool = False
    version_compatible: bool = False
    strongly_typed: Optional[bool] = None  # None: chosen from the TensorRT version and the graph


@dataclass
class GraphInfo:
    """What the builder needs to know about the ONNX graph."""

    path: Path
    sha256: str
    metadata: dict[str, Any]
    input_shape: tuple[Optional[int], ...]  # (batch or None, C, H, W)
    precision: str  # what the graph carries: fp32 | fp16 | bf16 | int8 (Q/DQ)

    @property
    def mode(self) -> Optional[str]:
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
    profile: Optional[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # None: static input
    workspace_mib: Optional[int]
    dla_core: Optional[int]
    opt_level: Optional[int]
    hardware_compat: bool
    version_compatible: bool
    timing_cache: Optional[str]
    notes: list[str] = field(default_factory=list)

    def shapes(self) -> dict[str, list[int]]:
        """min/opt/max input shapes (all equal for a static input)."""
        if self.profile is None:
            static = [int(d) for d in self.graph.input_shape]  # type: ignore[arg-type]
            return {"min": static, "opt": static, "max": static}
        return {k: list(s) for k, s in zip(("min", "opt", "max"), self.profile)}


# -- planning (no TensorRT) ---------------------------------------------------------------------


def trt_key(version: str) -> str:
    """The TRT_VERSIONS key of an installed TensorRT version string ("10.3.0.30" -> "10.3")."""
    parts = normalize_trt_version(version).split(".")
    major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    if major == 8 and minor in (5, 6):
        return f"8.{minor}"
    if major == 10:
        return "10.3" if minor == 3 else "10"
    if major == 11:
        return "11"
    raise LTMPError(f"TensorRT {version} is not a target of this toolkit (targets: 8.5, 8.6, 10.3, 10.x, 11.x)")


def normalize_trt_version(version: str) -> str:
    """"8.5.2.2", "v8502" / "v100300" (trtexec's banner) or "10.3.0.30-1+cuda12.5" (dpkg) -> dotted."""
    text = re.split(r"[-+~]", str(version).strip(), maxsplit=1)[0]
    banner = re.fullmatch(r"v?(\d{4,6})", text)
    if banner:  # trtexec prints major*1000+minor*100+patch for 8.x, major*10000+minor*100+patch for 10+
        n = int(banner.group(1))
        major = n // 10000 if n >= 10000 else n // 1000
        rest = n - major * (10000 if n >= 10000 else 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    if not re.fullmatch(r"\d+(\.\d+){1,3}", text):
        raise LTMPError(f"TensorRT version {version!r}: expected something like 10.3.0 (or trtexec's v100300)")
    return text


def inspect_graph(onnx_path: str | os.PathLike) -> GraphInfo:
    """Metadata, input shape, precision and hash of an exported graph (onnx only, no TensorRT)."""
    import onnx

    from ltmp_deploy.export.metadata import load_onnx, read_metadata
    from ltmp_deploy.export.quantize import has_qdq

    path = Path(onnx_path)
    model = load_onnx(path)
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    if INPUT_NAME not in inputs:
        raise LTMPError(f"{path}: expected an input named '{INPUT_NAME}' (an ltmp-deploy export), found {list(inputs)}")
    tt = inputs[INPUT_NAME].type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    if len(shape) != 4 or None in shape[1:]:
        raise LTMPError(f"{path}: '{INPUT_NAME}' must be (batch, C, H, W) with static C, H, W; got {shape}")
    types = [t.data_type for t in model.graph.initializer] + [tt.elem_type]
    if has_qdq(model):
        precision = "int8"
    elif onnx.TensorProto.BFLOAT16 in types:
        precision = "bf16"
    elif tt.elem_type == onnx.TensorProto.FLOAT16 or types.count(onnx.TensorProto.FLOAT16) > types.count(onnx.TensorProto.FLOAT):
        precision = "fp16"
    else:
        precision = "fp32"
    return GraphInfo(path, _sha256(path), read_metadata(model), shape, precision)


def plan_build(onnx_path: str | os.PathLike, options: BuildOptions, *, installed: Optional[str] = None,
               assume_int8: bool = False) -> BuildPlan:
    """Check ``options`` against the preset, the graph and the TensorRT version; raise LTMPError.

    ``installed``: the TensorRT version on this machine (None when there is none: the preset's
    default target is used unless ``options.trt`` names one). ``assume_int8``: plan as if the
    graph already had its Q/DQ nodes (checks before quantizing).
    """
    graph = inspect_graph(onnx_path)
    if assume_int8 and graph.precision == "fp32":
        graph = replace(graph, precision="int8")
    preset = _preset(options.preset)
    trt = _target(preset, options.trt, installed)
    where = f"{graph.path} (--preset {preset.name}, TensorRT {trt})"
    notes: list[str] = []

    precision = options.precision
    if precision is None:
        precision = graph.precision if graph.precision != "fp32" else (preset.default_precision or "fp32")
    if precision not in PRECISIONS:
        raise LTMPError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    _check_precision(where, graph, precision, trt)

    dla = options.dla_core
    if dla is not None:
        _check_dla(where, preset, graph, precision, dla)
    profile = _profile(where, preset, graph, options, dla)
    strongly_typed = _typing(where, graph, precision, trt, options.strongly_typed, dla)
    flags = [] if strongly_typed or precision == "fp32" else [precision]
    if dla is not None and precision == "int8" and not strongly_typed:
        flags.append("fp16")  # DLA runs the layers without Q/DQ in fp16 (or falls back to the GPU)
    if precision == "int8" and not strongly_typed and trt in ("10.3", "10"):
        notes.append("INT8 through the builder flag is deprecated in TensorRT 10.x; strongly typed builds avoid it")

    workspace = options.workspace_mib if options.workspace_mib is not None else preset.workspace_mib
    if workspace is not None and workspace < 1:
        raise LTMPError(f"--workspace {workspace}: must be at least 1 MiB")
    if options.opt_level is not None:
        if not 0 <= options.opt_level <= MAX_OPT_LEVEL:
            raise LTMPError(f"--opt-level {options.opt_level}: TensorRT's builder optimization levels are 0 to {MAX_OPT_LEVEL}")
        if trt == "8.5":
            raise LTMPError(f"{where}: --opt-level needs TensorRT 8.6 or newer")
    if options.hardware_compat:
        if preset.jetson:
            raise LTMPError(f"{where}: --hardware-compat is not supported for Jetson (JetPack) engines; "
                            "build on each device type instead")
        if trt == "8.5":
            raise LTMPError(f"{where}: --hardware-compat needs TensorRT 8.6 or newer")
    if options.version_compatible and trt == "8.5":
        raise LTMPError(f"{where}: --version-compatible needs TensorRT 8.6 or newer")
    if options.timing_cache is not None:
        ensure_writable(options.timing_cache)

    _check_parser(graph, trt, preset)
    return BuildPlan(graph, preset, trt, precision, strongly_typed, flags, profile, workspace, dla,
                     options.opt_level, options.hardware_compat, options.version_compatible, options.timing_cache, notes)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise LTMPError(f"--preset {name}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _target(preset: Preset, asked: Optional[str], installed: Optional[str]) -> str:
    if asked is not None and asked not in TRT_VERSIONS:
        raise LTMPError(f"--trt {asked}: choose one of {', '.join(TRT_VERSIONS)}")
    if installed is not None:
        have = trt_key(installed)
        if asked is not None and asked != have:
            raise LTMPError(f"--trt {asked}: this machine has TensorRT {installed}; an engine is built by the "
                            f"installed TensorRT, so build where TensorRT {asked} is installed or drop --trt")
        asked = have
    target = asked or preset.trt_versions[0]
    if target not in preset.trt_versions:
        extra = f" ({JETPACK})" if preset.jetson else ""
        raise LTMPError(f"--preset {preset.name}: TensorRT {target} is not a target of this preset; "
                        f"it takes {', '.join(preset.trt_versions)}{extra}")
    return target


def _check_precision(where: str, graph: GraphInfo, precision: str, trt: str) -> None:
    carried = graph.precision
    if carried == "int8" and precision != "int8":
        raise LTMPError(f"{where}: the graph has Q/DQ nodes (explicit INT8); build it with --precision int8")
    if precision == "int8" and carried != "int8":
        raise LTMPError(f"{where}: --precision int8 needs Q/DQ nodes in the graph: pass --calibration FILE.npy "
                        "(the build quantizes first) or run ltmp_deploy.export.quantize.quantize_int8")
    if carried in ("fp16", "bf16") and precision != carried:
        raise LTMPError(f"{where}: the graph is {carried}; build it with --precision {carried}, "
                        f"or export a float32 graph for --precision {precision}")
    if precision == "bf16" and trt in ("8.5", "8.6"):
        raise LTMPError(f"{where}: BF16 needs TensorRT 9.0 or newer; use --precision fp16")
    if trt == "11" and precision in ("fp16", "bf16") and carried != precision:
        fix = "export with --fp16" if precision == "fp16" else "convert the graph to bf16 (NVIDIA ModelOpt AutoCast)"
        raise LTMPError(f"{where}: TensorRT 11 has no {precision.upper()} builder flag (networks are strongly typed): "
                        f"{fix} and build that graph")


def _check_dla(where: str, preset: Preset, graph: GraphInfo, precision: str, dla: int) -> None:
    if preset.dla_cores == 0:
        raise LTMPError(f"{where}: --dla-core {dla}: {preset.description} has no DLA")
    if not 0 <= dla < preset.dla_cores:
        raise LTMPError(f"{where}: --dla-core {dla}: {preset.description} has DLA cores 0..{preset.dla_cores - 1}")
    if precision not in ("fp16", "int8"):
        raise LTMPError(f"{where}: DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla-core")
    if graph.mode == "threshold":
        raise LTMPError(f"{where}: a threshold-mode graph has data-dependent token counts and DLA takes static shapes "
                        "only: export fixed mode for DLA, or build without --dla-core")


def _profile(where: str, preset: Preset, graph: GraphInfo, options: BuildOptions, dla: Optional[int]):  # noqa: ANN202
    asked = (options.min_batch, options.opt_batch, options.max_batch)
    for flag, value in zip(("--min-batch", "--opt-batch", "--max-batch"), asked):
        if value is not None and value < 1:
            raise LTMPError(f"{flag} {value}: must be at least 1")
    fixed = graph.input_shape[0]
    if fixed is not None:
        if any(v is not None and v != fixed for v in asked):
            raise LTMPError(f"{where}: the graph has a fixed batch of {fixed}; drop the batch options or export with a "
                            "dynamic batch axis (no --batch)")
        return None
    mn, opt, mx = asked
    if dla is not None:
        size = opt or mx or mn or 1
        mn, opt, mx = mn or size, opt or size, mx or size
        if not mn == opt == mx:
            raise LTMPError(f"{where}: DLA takes static shapes only: give one batch size "
                            f"(--min-batch = --opt-batch = --max-batch), not {mn}/{opt}/{mx}")
    else:
        mn = mn or min(preset.batch[0], opt or preset.batch[0], mx or preset.batch[0])
        mx = mx or max(preset.batch[2], opt or 0, mn)
        opt = opt or min(max(preset.batch[1], mn), mx)
    if not mn <= opt <= mx:
        raise LTMPError(f"batch profile {mn}/{opt}/{mx}: needs --min-batch <= --opt-batch <= --max-batch")
    chw = tuple(int(d) for d in graph.input_shape[1:])  # type: ignore[arg-type]
    return (mn, *chw), (opt, *chw), (mx, *chw)


def _typing(where: str, graph: GraphInfo, precision: str, trt: str, asked: Optional[bool], dla: Optional[int]) -> bool:
    if trt == "11":
        if asked is False:
            raise LTMPError(f"{where}: TensorRT 11 builds strongly typed networks only")
        return True
    if trt in ("8.5", "8.6"):
        if asked:
            raise LTMPError(f"{where}: strongly typed networks need TensorRT 10 (JetPack 6.1+) or newer")
        return False
    if asked is not None:
        if asked and precision != graph.precision:
            raise LTMPError(f"{where}: a strongly typed build takes its precision from the graph, which is "
                            f"{graph.precision}, not {precision}")
        return asked
    return dla is None and precision != "fp32" and precision == graph.precision


def _check_parser(graph: GraphInfo, trt: str, preset: Preset) -> None:
    from ltmp_deploy.export.trt_check import check_model

    report = check_model(graph.path, trt)
    if report.ok:
        return
    why = ""
    if graph.mode == "threshold" and trt == "8.5":
        why = (" (a threshold-mode graph needs TensorRT 8.6 or newer: its TopK K is computed at run time; "
               "export fixed mode for this target)")
    raise LTMPError(f"{graph.path}: the TensorRT {trt} parser (--preset {preset.name}) would reject this graph{why}:\n"
                    + report.summary())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- trtexec and the sidecar (no TensorRT) ------------------------------------------------------


def trtexec_command(plan: BuildPlan, engine: str | os.PathLike, onnx_path: Optional[str | os.PathLike] = None) -> str:
    """The ``trtexec`` line that builds what ``plan`` describes, for people building on the device."""
    args = ["trtexec", f"--onnx={os.fspath(onnx_path or plan.graph.path)}", f"--saveEngine={os.fspath(engine)}"]
    if plan.profile is not None:  # trtexec refuses shape options for a static input
        for kind, shape in zip(("min", "opt", "max"), plan.profile):
            args.append(f"--{kind}Shapes={INPUT_NAME}:{'x'.join(str(d) for d in shape)}")
    if plan.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{plan.workspace_mib}")
    args += [f"--{flag}" for flag in plan.flags]
    if plan.strongly_typed and plan.trt != "11":  # always on in 11, where the flag is not needed
        args.append("--stronglyTyped")
    args.append("--noTF32")  # Polygraphy's builds leave TF32 off too (fp32 parity)
    if plan.dla_core is not None:
        args += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    if plan.opt_level is not None:
        args.append(f"--builderOptimizationLevel={plan.opt_level}")
    if plan.hardware_compat:
        args.append("--hardwareCompatibilityLevel=ampere+")
    if plan.version_compatible:
        args.append("--versionCompatible")
    if plan.timing_cache is not None:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``ENGINE.json`` next to ``ENGINE`` (what the runtime reads before loading an engine)."""
    return Path(f"{os.fspath(engine)}.json")


def compose_sidecar(plan: BuildPlan, engine: str | os.PathLike, *, tensorrt_version: str, gpu: Optional[str],
                    built_by: str = "polygraphy") -> dict[str, Any]:
    """The sidecar's content: how the engine was built and the graph's metadata."""
    meta = plan.graph.metadata
    return {
        "schema": SIDECAR_SCHEMA,
        "engine": Path(engine).name,
        "tensorrt_version": tensorrt_version,
        "tensorrt_target": plan.trt,
        "gpu": {"name": gpu} if gpu else None,
        "preset": plan.preset.name,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "profiles": [{"input": INPUT_NAME, **plan.shapes()}],
        "workspace_mib": plan.workspace_mib,
        "dla_core": plan.dla_core,
        "allow_gpu_fallback": plan.dla_core is not None,
        "builder_optimization_level": plan.opt_level,
        "hardware_compatibility": "ampere+" if plan.hardware_compat else None,
        "version_compatible": plan.version_compatible,
        "timing_cache": plan.timing_cache,
        "mode": meta.get("mode"),
        "schedule": meta.get("schedule"),
        "onnx": plan.graph.path.name,
        "onnx_sha256": plan.graph.sha256,
        "metadata": meta,
        "trtexec": trtexec_command(plan, engine),
        "built_by": built_by,
        "toolkit_version": __version__,
    }


def record_trtexec_build(onnx_path: str | os.PathLike, engine: str | os.PathLike, options: BuildOptions,
                         tensorrt_version: str) -> Path:
    """Write the sidecar of an engine that trtexec built from :func:`trtexec_command`'s line.

    ``tensorrt_version``: what trtexec reported ("10.3.0" or its banner "v100300").
    """
    engine = Path(engine)
    if not engine.is_file() or engine.stat().st_size == 0:
        raise LTMPError(f"{engine}: no engine there to describe (run the trtexec command first)")
    version = normalize_trt_version(tensorrt_version)
    plan = plan_build(onnx_path, options, installed=version)
    doc = compose_sidecar(plan, engine, tensorrt_version=version, gpu=_current_gpu(), built_by="trtexec")
    side = sidecar_path(engine)
    with atomic_output(side, suffix=".json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return side


# -- building (TensorRT) ------------------------------------------------------------------------


def tensorrt_version() -> Optional[str]:
    """The installed TensorRT version, or None when ``import tensorrt`` fails."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - ImportError, or OSError from missing libnvinfer
        return None
    return str(tensorrt.__version__)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or an LTMPError saying how to build without it."""
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from missing libnvinfer
        raise LTMPError(NO_TENSORRT.format(why=f": {type(exc).__name__}")) from exc
    return tensorrt


def quantized_path(engine: str | os.PathLike) -> Path:
    """Where a build that quantizes first writes its Q/DQ graph: ``ENGINE_STEM.int8.onnx``."""
    engine = Path(engine)
    return engine.with_name(engine.stem + ".int8.onnx")


def needs_quantization(onnx_path: str | os.PathLike, options: BuildOptions) -> bool:
    """True when ``options`` ask for INT8 and the graph has no Q/DQ nodes yet."""
    return options.precision == "int8" and inspect_graph(onnx_path).precision != "int8"


def check_calibration(onnx_path: str | os.PathLike, calibration: Any) -> None:
    """Refuse a missing or unusable calibration set before any long work (INT8 on a float graph)."""
    from ltmp_deploy.export.quantize import load_calibration

    if calibration is None:
        raise LTMPError(f"{onnx_path}: --precision int8 on a graph without Q/DQ nodes needs --calibration FILE.npy "
                        "(preprocessed images, N x C x H x W)")
    load_calibration(calibration, inspect_graph(onnx_path).input_shape)


def prepare_int8(onnx_path: str | os.PathLike, engine: str | os.PathLike, calibration: Any,
                 method: str = "minmax") -> Path:
    """Quantize ``onnx_path`` next to ``engine`` (see :func:`quantized_path`); return the Q/DQ graph."""
    from ltmp_deploy.export.quantize import quantize_int8

    check_calibration(onnx_path, calibration)
    return quantize_int8(onnx_path, quantized_path(engine), calibration, method=method).path


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    preset: str = "datacenter",
    precision: Optional[str] = None,
    *,
    calibration: Any = None,
    calibration_method: str = "minmax",
    **options: Any,
) -> Path:
    """Build ``out`` (and ``out.json``) from ``onnx_path``; return the engine's path.

    ``options``: the other :class:`BuildOptions` fields (``min_batch``, ``opt_batch``,
    ``max_batch``, ``dla_core``, ``timing_cache``, ``opt_level``, ``hardware_compat``,
    ``version_compatible``, ``workspace_mib``, ``trt``, ``strongly_typed``). For INT8 on a graph
    without Q/DQ nodes, ``calibration`` (an array or .npy/.npz path) quantizes it first.
    Raises LTMPError for refused combinations and when TensorRT is not installed.
    """
    opts = BuildOptions(preset=preset, precision=precision, **options)
    ensure_writable(out)
    quantize = needs_quantization(onnx_path, opts)
    installed = tensorrt_version()
    plan_build(onnx_path, opts, installed=installed, assume_int8=quantize)  # refuse early, before any work
    if quantize:
        check_calibration(onnx_path, calibration)
    trt = require_tensorrt()
    if quantize:
        onnx_path = prepare_int8(onnx_path, out, calibration, calibration_method)
    plan = plan_build(onnx_path, opts, installed=trt.__version__)
    engine_bytes = _build(plan, trt)
    doc = compose_sidecar(plan, out, tensorrt_version=str(trt.__version__), gpu=_current_gpu())
    with atomic_output(sidecar_path(out), suffix=".json") as side_tmp, atomic_output(out) as engine_tmp:
        with engine_tmp.open("wb") as f:
            f.write(engine_bytes)
        side_tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)


def _build(plan: BuildPlan, trt: Any) -> Any:
    """Serialized engine bytes from Polygraphy's loaders (nothing runs until the last call)."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig, Profile
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
        kwargs.update(use_dla=True, allow_gpu_fallback=True)
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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LTMPError(f"{plan.graph.path}: TensorRT {trt.__version__} could not build the engine ({first})") from exc
    if not engine:
        raise LTMPError(f"{plan.graph.path}: TensorRT {trt.__version__} returned no engine")
    return engine


def _current_gpu() -> Optional[str]:
    """The CUDA device name, read the way the runtime reads it when it checks an engine."""
    try:
        from ltmp_deploy.runtime.engine import current_gpu
    except ImportError:
        return None
    return current_gpu()


def presets_table() -> list[dict[str, Any]]:
    """The presets as plain data (for docs and ``--help``)."""
    return [asdict(p) for p in PRESETS.values()]


__all__ = [
    "PRECISIONS", "PRESETS", "TRT_VERSIONS", "BuildOptions", "BuildPlan", "GraphInfo", "Preset", "build_engine",
    "check_calibration",
    "compose_sidecar", "inspect_graph", "needs_quantization", "plan_build", "prepare_int8", "presets_table",
    "quantized_path", "record_trtexec_build", "require_tensorrt", "sidecar_path", "tensorrt_version", "trt_key",
    "trtexec_command",
]
