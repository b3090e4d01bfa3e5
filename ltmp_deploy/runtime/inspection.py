"""What a model file holds: a checkpoint, an ONNX graph or a TensorRT engine, without running it.

    info = inspect_file("model.onnx")   # a JSON-able dict
    print(summary(info))

Checkpoints are read from their safetensors header alone (an 8-byte little-endian length, then
that many bytes of JSON), so neither torch nor safetensors is needed; graphs through onnx without
their external weights; engines from their ``ENGINE.json`` sidecar, so TensorRT is not needed.
Every kind reports the same model fields (architecture, mode, schedule, thresholds, FLOPs kept)
from the metadata the toolkit wrote, and its own: tensors for a checkpoint, opset and inputs and
outputs for a graph, TensorRT version, GPU and profiles for an engine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ltmp_deploy.files import sha256
from ltmp_deploy.formats import (
    THRESHOLD_SUFFIXES,
    FileKind,
    checkpoint_metadata,
    expect,
    safetensors_header,
)
from ltmp_deploy.runtime.trt.engine import model_file_kind, read_sidecar, sidecar_path


def file_kind(path: str | os.PathLike) -> str:
    """ "checkpoint", "onnx" or "engine", from the file's content."""
    path = Path(path)
    kind = model_file_kind(path)
    if kind not in (FileKind.TOOLKIT_CHECKPOINT, FileKind.SAFETENSORS, FileKind.ONNX, FileKind.ENGINE):
        expect(path, FileKind.TOOLKIT_CHECKPOINT, FileKind.ONNX, FileKind.ENGINE)  # raises, naming what it is
    return {FileKind.ONNX: "onnx", FileKind.ENGINE: "engine"}.get(kind, "checkpoint")


def _model(meta: Mapping[str, Any]) -> dict[str, Any]:
    arch = meta.get("architecture") or {}
    macs = meta.get("block_macs") or {}
    ratio = macs["patched"] / macs["unpatched"] if macs.get("unpatched") else None
    return {
        "model": arch.get("timm_model") or arch.get("timm_class"),
        "architecture": arch or None,
        "num_classes": meta.get("num_classes"),
        "input_size": (meta.get("data_config") or {}).get("input_size"),
        "preprocessing": meta.get("data_config"),
        "labels": meta.get("labels"),
        "mode": meta.get("mode"),
        "schedule": meta.get("schedule"),
        "thresholds": meta.get("thresholds"),
        "flops_kept": ratio,
        "flops_basis": macs.get("basis"),
        "flops_measured_on": meta.get("flops_measured_on"),
        "toolkit_version": meta.get("toolkit_version"),
    }


def _checkpoint(path: Path) -> dict[str, Any]:
    header = safetensors_header(path)
    meta = checkpoint_metadata(path)
    tensors = {k: t for k, t in header.items() if k != "__metadata__"}
    weights = [t for k, t in tensors.items() if not k.endswith(THRESHOLD_SUFFIXES)]
    return {
        **_model(meta),
        "num_blocks": sum(k.endswith(THRESHOLD_SUFFIXES[0]) for k in tensors),
        "tensors": len(tensors),
        "parameters": sum(math.prod(t["shape"]) for t in weights),
        "dtypes": sorted({t["dtype"] for t in weights}),
    }


def _values(values: Any) -> list[dict[str, Any]]:
    import onnx

    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims})
    return out


def _graph(path: Path) -> dict[str, Any]:
    from ltmp_deploy.runtime.metadata import load_onnx
    from ltmp_deploy.runtime.trt.build import inspect_graph

    info = inspect_graph(path)  # the builder's reading: metadata, hash and the precision the graph carries
    graph = load_onnx(path)
    inits = {t.name for t in graph.graph.initializer}
    outputs = _values(graph.graph.output)
    return {
        **_model(info.metadata),
        "sha256": info.sha256,
        "num_blocks": info.metadata.get("num_blocks"),
        "precision": info.precision,
        "opset": next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": graph.ir_version,
        "producer": f"{graph.producer_name} {graph.producer_version}".strip() or None,
        "nodes": len(graph.graph.node),
        "inputs": _values(i for i in graph.graph.input if i.name not in inits),
        "outputs": outputs,
        "decision_outputs": any(o["name"].endswith("_kept") for o in outputs),
    }


def _engine(path: Path) -> dict[str, Any]:
    side = read_sidecar(path)
    if not side:
        return {
            "sidecar": None,
            "note": f"no sidecar {sidecar_path(path).name}: an engine built by hand, nothing known",
        }
    meta = side.get("metadata") or {}
    gpu = side.get("gpu")
    return {
        **_model(meta),
        "num_blocks": meta.get("num_blocks"),
        "precision": side.get("precision"),
        "opset": meta.get("opset"),
        "tensorrt_version": side.get("tensorrt_version"),
        "tensorrt_target": side.get("tensorrt_target"),
        "gpu": gpu.get("name") if isinstance(gpu, dict) else gpu,
        "preset": side.get("preset"),
        "strongly_typed": side.get("strongly_typed"),
        "profiles": side.get("profiles"),
        "dla_core": side.get("dla_core"),
        "layer_devices": side.get("layer_devices"),
        "hardware_compatibility": side.get("hardware_compatibility"),
        "version_compatible": side.get("version_compatible"),
        "built_by": side.get("built_by"),
        "onnx": side.get("onnx"),
        "onnx_sha256": side.get("onnx_sha256"),
        "sidecar": sidecar_path(path).name,
    }


def inspect_file(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``path`` says about itself, as a JSON-able dict (keys: see :func:`summary`)."""
    path = Path(path)
    kind = file_kind(path)
    body = {"checkpoint": _checkpoint, "onnx": _graph, "engine": _engine}[kind](path)
    return {
        "file": os.fspath(path),
        "kind": kind,
        "bytes": path.stat().st_size,
        "sha256": body.pop("sha256", None) or sha256(path),
        **body,
    }


def format_values(values: Sequence[float] | None) -> str:
    """Thresholds and the like for people: ``[0.9, 0.85]``, or ``-`` when there are none."""
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if values is not None else "-"


def _tensors(values: list[dict[str, Any]]) -> str:
    return ", ".join(f"{v['name']} {v['dtype']}[{', '.join(str(d) for d in v['shape'])}]" for v in values)


def _names(names: Any) -> str | None:
    if not isinstance(names, list):
        return None
    return f"{len(names)}: {', '.join(map(str, names))}" if names else "none"


def _preprocessing(cfg: Any) -> str | None:
    """A data config for people: resize and crop, interpolation, mean and std."""
    if not isinstance(cfg, Mapping):
        return None
    crop = cfg.get("crop_pct")
    resize = f"crop {crop:g} ({cfg.get('crop_mode') or 'center'})" if isinstance(crop, (int, float)) else "no crop"
    parts = [resize, cfg.get("interpolation"), f"mean {_triple(cfg.get('mean'))}", f"std {_triple(cfg.get('std'))}"]
    return ", ".join(str(p) for p in parts if p)


def _triple(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if isinstance(values, list) else "-"


def summary(info: Mapping[str, Any]) -> str:
    """``inspect_file``'s answer for people: one fact per line, those the file has."""
    kinds = {"checkpoint": "toolkit checkpoint", "onnx": "ONNX graph", "engine": "TensorRT engine"}
    lines = [f"{info['file']}: {kinds[info['kind']]}, {info['bytes']:,} bytes, sha256 {info['sha256']}"]

    def add(label: str, value: Any) -> None:
        if value not in (None, "", []):
            lines.append(f"  {label + ':':<18}{value}")

    size = "x".join(str(d) for d in info.get("input_size") or [])
    add("model", " ".join(str(p) for p in (info.get("model"), f"({size})" if size else None) if p))
    labels = info.get("labels")
    named = f" ({', '.join(map(str, labels[:8]))}{', ...' if len(labels) > 8 else ''})" if labels else ""
    add("classes", info.get("num_classes") and f"{info['num_classes']}{named}")
    add("preprocessing", _preprocessing(info.get("preprocessing")))
    add("blocks", info.get("num_blocks"))
    add("mode", info.get("mode"))
    if info.get("schedule"):
        add("schedule (r, k)", " ".join(f"{r},{k}" for r, k in info["schedule"]))
    thresholds = info.get("thresholds") or {}
    add("merge thresholds", thresholds.get("merge") and format_values(thresholds["merge"]))
    add("prune thresholds", thresholds.get("prune") and format_values(thresholds["prune"]))
    if info.get("flops_kept") is not None:
        add("block FLOPs kept", f"{info['flops_kept']:.3f} of unpatched ({info.get('flops_basis')})")
        add("measured on", info.get("flops_measured_on"))
    add(
        "parameters",
        info.get("parameters") and f"{info['parameters']:,} in {info['tensors']} tensors ({', '.join(info['dtypes'])})",
    )
    add("precision", info.get("precision"))
    add("opset", info.get("opset"))
    add("inputs", info.get("inputs") and _tensors(info["inputs"]))
    add("outputs", info.get("outputs") and _tensors(info["outputs"]))
    if info["kind"] == "onnx":
        add(
            "decision outputs",
            "yes" if info["decision_outputs"] else "no (export with --decisions to log or draw decisions)",
        )
    add(
        "TensorRT",
        info.get("tensorrt_version") and f"{info['tensorrt_version']} (target {info.get('tensorrt_target')})",
    )
    add("GPU", info.get("gpu"))
    add("preset", info.get("preset"))
    for p in info.get("profiles") or []:
        add(f"profile {p.get('input')}", ", ".join(f"{k} {v}" for k, v in p.items() if k != "input"))
    add("DLA core", info.get("dla_core"))
    devices = info.get("layer_devices") or {}
    if isinstance(devices, dict):  # from the build's engine inspector: DLA's GPU fallback is silent
        add("layers on DLA", _names(devices.get("dla")))
        add("layers on GPU", _names(devices.get("gpu")))
        add("layer devices", devices.get("unknown"))
    add("built from", info.get("onnx") and f"{info['onnx']} (sha256 {info.get('onnx_sha256')})")
    add("built by", info.get("built_by"))
    add("note", info.get("note"))
    add("toolkit", info.get("toolkit_version"))
    return "\n".join(lines)


__all__ = ["file_kind", "inspect_file", "safetensors_header", "summary"]
