"""The ``trtexec`` line for a build plan, and the engine's JSON sidecar.

People who build on the device itself run the line :func:`trtexec_command` prints, then
:func:`record_trtexec_build` writes the sidecar for that engine. ``ENGINE.json`` (next to
``ENGINE``: :func:`ltmp_deploy.runtime.trt.engine.sidecar_path`) holds how the engine was built and
the graph's metadata; the runtime checks it before loading the engine. No TensorRT needed.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import write_text_atomic
from ltmp_deploy.runtime.metadata import INPUT_NAME
from ltmp_deploy.runtime.trt.engine import current_gpu, sidecar_path
from ltmp_deploy.runtime.trt.plan import BuildOptions, BuildPlan, plan_build
from ltmp_deploy.runtime.trt.targets import normalize_trt_version, strongly_typed_only

SIDECAR_SCHEMA = "ltmp-deploy-engine/1"


def trtexec_command(plan: BuildPlan, engine: str | os.PathLike, onnx_path: str | os.PathLike | None = None) -> str:
    """The ``trtexec`` line that builds what ``plan`` describes, for people building on the device."""
    args = ["trtexec", f"--onnx={os.fspath(onnx_path or plan.graph.path)}", f"--saveEngine={os.fspath(engine)}"]
    if plan.profile is not None:  # trtexec refuses shape options for a static input
        for kind, shape in zip(("min", "opt", "max"), plan.profile):
            args.append(f"--{kind}Shapes={INPUT_NAME}:{'x'.join(str(d) for d in shape)}")
    if plan.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{plan.workspace_mib}")
    args += [f"--{flag}" for flag in plan.flags]
    if plan.strongly_typed and not strongly_typed_only(plan.trt):  # always on from 11: no flag needed
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


def compose_sidecar(
    plan: BuildPlan,
    engine: str | os.PathLike,
    *,
    tensorrt_version: str,
    gpu: str | None,
    built_by: str = "polygraphy",
) -> dict[str, Any]:
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


def record_trtexec_build(
    onnx_path: str | os.PathLike, engine: str | os.PathLike, options: BuildOptions, tensorrt_version: str
) -> Path:
    """Write the sidecar of an engine that trtexec built from :func:`trtexec_command`'s line.

    ``tensorrt_version``: what trtexec reported ("10.3.0" or its banner "v100300").
    """
    engine = Path(engine)
    if not engine.is_file() or engine.stat().st_size == 0:
        raise LTMPError(f"{engine}: no engine there to describe (run the trtexec command first)")
    version = normalize_trt_version(tensorrt_version)
    plan = plan_build(onnx_path, options, installed=version)
    doc = compose_sidecar(plan, engine, tensorrt_version=version, gpu=current_gpu(), built_by="trtexec")
    side = sidecar_path(engine)
    write_text_atomic(side, sidecar_text(doc))
    return side


def sidecar_text(doc: dict[str, Any]) -> str:
    """The sidecar's JSON text, as written."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


__all__ = ["SIDECAR_SCHEMA", "compose_sidecar", "record_trtexec_build", "sidecar_text", "trtexec_command"]
