"""Build targets, as one table of data: Jetson modules and datacenter GPUs.

A preset names the TensorRT versions its devices run (keys of
:data:`ltmp_deploy.runtime.trt.targets.TRT_TARGETS`; the first is the default when TensorRT is
not installed), a builder workspace that fits the module's memory, its DLA cores and a default
batch profile; ``facts`` says where each number comes from. Importing this costs nothing (no
onnx, no TensorRT), so the CLI lists presets from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ltmp_deploy.runtime.trt.targets import TRT_TARGETS

TRT_VERSIONS = tuple(TRT_TARGETS)
JETPACK = (
    "JetPack 5.1.x ships TensorRT 8.5, JetPack 6.0 ships 8.6, JetPack 6.1/6.2 ship 10.3, "
    "JetPack 7.0/7.1 (Jetson Thor) ship 10.13, JetPack 7.2 (Orin and Thor) ships 10.16; "
    "TensorRT 11.4.1 (its Linux SBSA build) supports JetPack 7.2.2 or later on Jetson AGX Orin and Thor"
)
# The TensorRT versions whose Jetson builds place layers on DLA. TensorRT 10.7 was the last 10.x
# release with DLA, 10.16 (JetPack 7.2) does not support Orin's DLA, and 11.0 to 11.3 have none
# (their release notes); 11.4.1 restores it, strongly typed, on the one module its notes name.
_JETPACK_DLA = ("8.5", "8.6", "10.3")  # JetPack 5.1 to 6.2
DLA_TRT_VERSIONS = (*_JETPACK_DLA, "11.4")
#: Why a TensorRT version with DLA does not run it on every module that has DLA cores.
DLA_ONLY_ON = {
    "11.4": "TensorRT 11.4.1's release notes restore DLA on Jetson AGX Orin only (JetPack 7.2.2 or later)",
}
# ONNX ops of the exported graphs that DLA has no layer for (not in TensorRT's DLA supported layers):
# with --dla-core they fall back to the GPU, silently; the build sidecar lists where each layer ran.
DLA_GPU_OPS = ("TopK", "Gather", "GatherElements", "ScatterElements")
# Xavier's DLA (the first generation) also runs Softmax on the GPU: TensorRT's DLA layer list
# supports it on Orin only.
XAVIER_DLA_GPU_OPS = (*DLA_GPU_OPS, "Softmax")


@dataclass(frozen=True)
class Preset:
    """A build target: TensorRT versions it runs, memory, DLA, and default batch profile."""

    name: str
    description: str
    trt_versions: tuple[str, ...]  # the first is the default when TensorRT is not installed
    workspace_mib: int | None  # builder scratch memory cap; None: TensorRT's default (all of it)
    dla_cores: int
    dla_trt_versions: tuple[str, ...]  # the TensorRT versions that run this module's DLA
    default_precision: str | None  # None: whatever the graph carries
    batch: tuple[int, int, int]  # default min/opt/max for a dynamic batch axis
    jetson: bool
    facts: str
    modes: tuple[str, ...] = ("fixed", "threshold")  # export modes its TensorRT versions can build
    dla_gpu_ops: tuple[str, ...] = DLA_GPU_OPS  # ops its DLA cannot run (GPU fallback), when it has DLA


_ORIN = ("10.3", "8.6", "8.5", "10")  # JetPack 6.1/6.2, 6.0, 5.1, 7.2
# JetPack 5.1.x is the last JetPack for the Xavier family (JetPack 6 and newer support Orin and Thor
# only), so its TensorRT 8.5 is the only target; its ONNX parser takes a constant TopK K only, which
# fixed mode has and threshold mode computes at run time.
_XAVIER = (
    "TensorRT 8.5 only (JetPack 5.1.x, the last JetPack for Xavier; Python 3.8); fixed mode only: "
    "TensorRT 8.5's ONNX parser refuses threshold mode's run-time TopK K; 2 DLA cores (first-generation "
    "DLA: TopK, Gather and Softmax fall back to the GPU); Volta GPU (no BF16, no FP8)"
)
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "orin-nano",
            "Jetson Orin Nano (4 GB / 8 GB)",
            _ORIN,
            1024,
            0,
            (),
            "fp16",
            (1, 1, 4),
            True,
            "4 or 8 GB LPDDR5 shared by CPU and GPU; workspace 1 GiB = a quarter of the 4 GB module; "
            "no DLA (the Orin Nano modules have none); no TensorRT 11.4 target: TensorRT 11.4.1's release notes "
            "name Jetson AGX Orin and Thor only. " + JETPACK,
        ),
        Preset(
            "orin-nx",
            "Jetson Orin NX (8 GB / 16 GB)",
            _ORIN,
            2048,
            2,
            _JETPACK_DLA,
            "fp16",
            (1, 1, 8),
            True,
            "8 or 16 GB LPDDR5 shared by CPU and GPU; workspace 2 GiB = a quarter of the 8 GB module; "
            "DLA: 2 cores on the 16 GB module, 1 on the 8 GB module (core 1 exists only on the 16 GB), "
            "with TensorRT 8.5 to 10.3 (JetPack 5.1 to 6.2); no TensorRT 11.4 target, for the GPU or DLA: "
            "TensorRT 11.4.1's release notes name Jetson AGX Orin and Thor only. " + JETPACK,
        ),
        Preset(
            "agx-orin",
            "Jetson AGX Orin (32 GB / 64 GB)",
            (*_ORIN, "11.4"),
            4096,
            2,
            DLA_TRT_VERSIONS,
            "fp16",
            (1, 4, 16),
            True,
            "32 or 64 GB LPDDR5 shared by CPU and GPU; workspace 4 GiB = an eighth of the 32 GB module; "
            "2 DLA cores, with TensorRT 8.5 to 10.3 (JetPack 5.1 to 6.2) and 11.4.1 (JetPack 7.2.2 or later, "
            "strongly typed: precision from the graph). " + JETPACK,
        ),
        Preset(
            "xavier-nx",
            "Jetson Xavier NX (8 GB / 16 GB)",
            ("8.5",),
            1024,
            2,
            ("8.5",),
            "fp16",
            (1, 1, 4),
            True,
            "8 or 16 GB LPDDR4x shared by CPU and GPU; workspace 1 GiB = an eighth of the 8 GB module; " + _XAVIER,
            ("fixed",),
            XAVIER_DLA_GPU_OPS,
        ),
        Preset(
            "agx-xavier",
            "Jetson AGX Xavier (32 GB / 64 GB)",
            ("8.5",),
            4096,
            2,
            ("8.5",),
            "fp16",
            (1, 4, 16),
            True,
            "32 or 64 GB LPDDR4x shared by CPU and GPU (the 32 GB module and AGX Xavier Industrial; "
            "the 64 GB module); workspace 4 GiB = an eighth of the 32 GB module; " + _XAVIER,
            ("fixed",),
            XAVIER_DLA_GPU_OPS,
        ),
        Preset(
            "thor",
            "Jetson AGX Thor",
            ("10.13", "10", "11.4"),
            8192,
            0,
            (),
            "fp16",
            (1, 4, 16),
            True,
            "128 GB LPDDR5X shared by CPU and GPU on the T5000 module; workspace 8 GiB = a sixteenth of it; "
            "no DLA (Thor has none). " + JETPACK,
        ),
        Preset(
            "datacenter",
            "datacenter GPU (Ampere or newer for --hardware-compat)",
            ("10", "11", "11.4", "10.3", "8.6"),
            None,
            0,
            (),
            None,
            (1, 8, 64),
            False,
            "dedicated GPU memory: TensorRT's default workspace (all of it); precision defaults to the graph's; "
            "builder optimization level, timing cache, hardware compatibility (ampere+) and version-compatible "
            "engines as options (TensorRT 8.6+)",
        ),
    )
}


def presets_table() -> list[dict[str, Any]]:
    """The presets as plain data (for docs and ``--help``)."""
    return [asdict(p) for p in PRESETS.values()]


__all__ = [
    "DLA_GPU_OPS",
    "DLA_ONLY_ON",
    "DLA_TRT_VERSIONS",
    "JETPACK",
    "PRESETS",
    "TRT_VERSIONS",
    "XAVIER_DLA_GPU_OPS",
    "Preset",
    "presets_table",
]
