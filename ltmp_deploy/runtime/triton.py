"""An NVIDIA Triton Inference Server model repository for an exported graph.

Two models side by side, so one server can serve the same network from either backend:

    DIR/<name>_onnx/config.pbtxt      platform "onnxruntime_onnx"
    DIR/<name>_onnx/1/model.onnx      the exported graph
    DIR/<name>_trt/config.pbtxt       platform "tensorrt_plan"
    DIR/<name>_trt/1/                 model.plan goes here, built on the serving GPU
                                      (scripts/jetson_build.sh or ``ltmp-deploy build``)

Both take ``images`` (C, H, W per request) and answer ``logits`` (num_classes). With a dynamic
batch axis the configs enable dynamic batching up to ``max_batch_size``; a graph exported with a
fixed batch gets ``max_batch_size: 0`` and full shapes (Triton's rule when a model batches
itself). The text follows Triton's ``ModelConfig`` protobuf (model_config.proto).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output, ensure_writable_folder, write_text_atomic
from ltmp_deploy.runtime.metadata import load_onnx, read_metadata
from ltmp_deploy.runtime.onnxgraph import dims, image_io

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 100

_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}


@dataclass
class TritonRepo:
    """What :func:`write_triton_repo` wrote."""

    root: Path
    onnx_model: Path  # DIR/<name>_onnx
    trt_model: Path  # DIR/<name>_trt
    max_batch_size: int

    @property
    def plan_path(self) -> Path:
        """Where the TensorRT engine must be placed for the ``_trt`` model to load."""
        return self.trt_model / "1" / "model.plan"

    def summary(self) -> str:
        batching = (
            f"dynamic batching up to {self.max_batch_size}"
            if self.max_batch_size
            else "fixed batch (no dynamic batching)"
        )
        return (
            f"wrote Triton repository {self.root}: {self.onnx_model.name} (onnxruntime_onnx), "
            f"{self.trt_model.name} (tensorrt_plan: build the engine to {self.plan_path}), {batching}"
        )


def write_triton_repo(
    onnx_path: str | os.PathLike,
    repo_dir: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> TritonRepo:
    """Write (or update) the two model folders for ``onnx_path`` under ``repo_dir``.

    ``name`` defaults to the ONNX file's stem. Other models in ``repo_dir`` are left alone, and
    an engine already placed at ``<name>_trt/1/model.plan`` is kept. Each file is written whole.
    """
    src = Path(onnx_path)
    graph = load_onnx(src)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise LTMPError(f"{src}: weights are in an external data file; a Triton repository needs a single model.onnx")
    model_name = _model_name(name if name is not None else src.stem)
    if max_batch_size < 1:
        raise LTMPError(f"--triton-max-batch {max_batch_size}: must be at least 1")
    if max_queue_delay_us < 0:
        raise LTMPError(f"max_queue_delay_us {max_queue_delay_us}: must be 0 or more")

    images, logits = _io(graph, src)
    fixed_batch = images[2][0]
    batch = 0 if fixed_batch is not None else max_batch_size
    meta = read_metadata(graph, str(src))
    root = ensure_writable_folder(repo_dir, "--triton-repo")
    onnx_dir, trt_dir = root / f"{model_name}_onnx", root / f"{model_name}_trt"
    for d in (onnx_dir / "1", trt_dir / "1"):
        d.mkdir(parents=True, exist_ok=True)

    with atomic_output(onnx_dir / "1" / "model.onnx", suffix=".onnx") as tmp:
        tmp.write_bytes(src.read_bytes())
    shared = (images, logits, batch, max_queue_delay_us, meta)
    write_text_atomic(onnx_dir / "config.pbtxt", model_config(f"{model_name}_onnx", "onnxruntime_onnx", *shared))
    write_text_atomic(
        trt_dir / "config.pbtxt", model_config(f"{model_name}_trt", "tensorrt_plan", *shared, onnx_name=src.name)
    )
    return TritonRepo(root, onnx_dir, trt_dir, batch)


def model_config(
    name: str,
    platform: str,
    images: tuple[str, str, tuple],
    logits: tuple[str, str, tuple],
    max_batch_size: int,
    max_queue_delay_us: int,
    meta: dict,
    onnx_name: str | None = None,
) -> str:
    """The text of one ``config.pbtxt`` (protobuf text format of Triton's ModelConfig)."""
    mode, precision = meta.get("mode", "unknown"), meta.get("precision", "fp32")
    lines = [f"# Written by ltmp-deploy from an LTMP graph ({mode} mode, {precision})."]
    if platform == "tensorrt_plan":
        cmd = f"ltmp-deploy build {onnx_name or 'MODEL.onnx'} --preset PRESET"
        if max_batch_size:
            cmd += f" --max-batch {max_batch_size}"
        lines += [
            "# Build the engine on the serving GPU, with the same TensorRT version as the server:",
            f"#   {cmd} -o {name}/1/model.plan",
        ]
    lines += [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    for kind, (tensor, dtype, shape) in (("input", images), ("output", logits)):
        dims = shape[1:] if max_batch_size else shape
        lines += [
            f"{kind} [",
            "  {",
            f'    name: "{tensor}"',
            f"    data_type: {dtype}",
            f"    dims: [ {', '.join(str(d) for d in dims)} ]",
            "  }",
            "]",
        ]
    if max_batch_size:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    if platform == "tensorrt_plan":
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def _io(graph: onnx.ModelProto, path: Path) -> tuple[tuple[str, str, tuple], tuple[str, str, tuple]]:
    """((name, Triton type, shape) of the image input, same for the logits); None marks a dynamic dim."""

    def describe(vi: onnx.ValueInfoProto) -> tuple[str, str, tuple]:
        tt = vi.type.tensor_type
        if tt.elem_type not in _TRITON_TYPES:
            raise LTMPError(
                f"{path}: {vi.name} has element type {onnx.TensorProto.DataType.Name(tt.elem_type)}, "
                "which this repository writer does not map to Triton"
            )
        return vi.name, _TRITON_TYPES[tt.elem_type], dims(vi)

    images, logits = (describe(vi) for vi in image_io(graph, str(path)))
    if len(logits[2]) != 2 or logits[2][1] is None:
        raise LTMPError(f"{path}: '{logits[0]}' must be (batch, num_classes); got {logits[2]}")
    return images, logits


def _model_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    if not clean:
        raise LTMPError(f"Triton model name {name!r}: needs letters or digits")
    return clean


__all__ = ["TritonRepo", "model_config", "write_triton_repo"]
