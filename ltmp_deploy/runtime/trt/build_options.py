"""What ``ltmp-deploy build`` is asked for, as one dataclass whose fields carry their command-line
options (:mod:`ltmp_deploy.options`); :func:`ltmp_deploy.runtime.trt.plan.plan_build` checks it. Kept
apart from the planning, which reads graphs with onnx: the CLI builds its parser from this module
on every run, and predict and show need no onnx."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltmp_deploy.options import non_negative_int, option, positive_int
from ltmp_deploy.runtime.parity.tolerances import PRECISIONS
from ltmp_deploy.runtime.trt.presets import PRESETS, TRT_VERSIONS

MAX_OPT_LEVEL = 5


@dataclass
class BuildOptions:
    """What the user asks for; :func:`plan_build` checks it and fills in the preset's defaults. Each
    field carries its ``ltmp-deploy build`` option (:mod:`ltmp_deploy.options`)."""

    preset: str = field(
        default="datacenter",
        metadata=option(
            "--preset",
            required=True,
            choices=list(PRESETS),
            help="target: Jetson module (TensorRT of its JetPack, workspace for its memory, DLA) or datacenter GPU",
        ),
    )
    precision: str | None = field(
        default=None,
        metadata=option(
            "--precision",
            choices=PRECISIONS,
            help="default: the graph's own (fp16 export, Q/DQ for int8); an fp32 graph gets the fp16 flag on "
            "Jetson presets where TensorRT has one (not 11.x: strongly typed)",
        ),
    )
    trt: str | None = field(
        default=None,
        metadata=option(
            "--trt",
            choices=TRT_VERSIONS,
            help="target TensorRT version (default: the installed one, else the preset's first)",
        ),
    )
    min_batch: int | None = field(
        default=None,
        metadata=option(
            "--min-batch",
            type=positive_int,
            metavar="N",
            help="optimization profile of a dynamic batch axis (default from the preset)",
        ),
    )
    opt_batch: int | None = field(
        default=None,
        metadata=option(
            "--opt-batch", type=positive_int, metavar="N", help="the batch TensorRT tunes for (default from the preset)"
        ),
    )
    max_batch: int | None = field(
        default=None,
        metadata=option(
            "--max-batch",
            type=positive_int,
            metavar="N",
            help="the largest batch of the profile (default from the preset)",
        ),
    )
    dla_core: int | None = field(
        default=None,
        metadata=option(
            "--dla-core",
            type=non_negative_int,
            metavar="N",
            help="run on DLA core N with GPU fallback (xavier-nx, agx-xavier with JetPack 5.1; orin-nx, agx-orin "
            "with JetPack 5.1-6.2; agx-orin with TensorRT 11.4 on JetPack 7.2.2+, from an fp16 or Q/DQ graph; "
            "fp16/int8, fixed mode, one batch size)",
        ),
    )
    workspace_mib: int | None = field(
        default=None,
        metadata=option(
            "--workspace",
            type=positive_int,
            metavar="MIB",
            help="builder workspace cap in MiB (default from the preset)",
        ),
    )
    timing_cache: str | None = field(
        default=None,
        metadata=option(
            "--timing-cache", metavar="FILE", help="load and update this tactic timing cache (faster rebuilds)"
        ),
    )
    opt_level: int | None = field(
        default=None,
        metadata=option(
            "--opt-level",
            type=non_negative_int,
            metavar="N",
            help=f"builder optimization level 0-{MAX_OPT_LEVEL} (TensorRT >= 8.6; default 3)",
        ),
    )
    hardware_compat: bool = field(
        default=False,
        metadata=option(
            "--hardware-compat",
            action="store_true",
            help="datacenter: an engine that runs on any Ampere or newer GPU (ampere+)",
        ),
    )
    version_compatible: bool = field(
        default=False,
        metadata=option(
            "--version-compatible",
            action="store_true",
            help="an engine later TensorRT versions can run (TensorRT >= 8.6)",
        ),
    )
    strongly_typed: bool | None = field(  # None: chosen from the TensorRT version and the graph
        default=None,
        metadata=option(
            "--strongly-typed",
            action="store_true",
            help="TensorRT 10.x: strongly typed network (precision from the graph); always on for 11 and 11.4",
        ),
    )


__all__ = ["MAX_OPT_LEVEL", "BuildOptions"]
