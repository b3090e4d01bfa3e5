"""The metadata an exported graph carries in ``metadata_props``: everything needed to run it.

Keys are plain names; values are JSON. Decoding needs no onnx (ONNX Runtime's
``custom_metadata_map`` and TensorRT sidecars hand over the same string map), so the runtime on a
field device reads it with the standard library alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.formats import FileKind, sniff
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-onnx/1"
# The modes an exported graph runs in (the model also has train, and off/oracle baselines).
EXPORT_MODES = ("fixed", "threshold")
INPUT_NAME = "images"  # (batch, C, H, W) float images, normalised as ``data_config`` says
OUTPUT_NAME = "logits"  # (batch, num_classes)


def decision_output_names(num_blocks: int) -> list[str]:
    """Names of the optional per-block decision outputs, in order."""
    names = []
    for i in range(num_blocks):
        names += [f"block{i}_kept", f"block{i}_merge_dst"]
    return names


def encode(meta: Mapping[str, Any]) -> dict[str, str]:
    out = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    out["schema"] = json.dumps(SCHEMA)
    return out


def decode(props: Mapping[str, str], where: str | None = None) -> dict[str, Any]:
    """The metadata from its string map; checked against the onnx-metadata schema when ``where``
    (the file, for the message) is given, as every reader that acts on it does."""
    meta = {}
    for k, v in props.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v  # a key someone else added by hand
    return meta if where is None else check(meta, "onnx-metadata", where)


def load_onnx(path: Any) -> Any:
    """An onnx ModelProto from ``path`` (weights in external files left unread), or a one-line
    LTMPError naming the file when it is missing, truncated, corrupt or not a graph."""
    import os

    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LTMPError(f"{path}: ONNX file does not exist")
    kind = sniff(path)
    if kind is not FileKind.ONNX:
        raise LTMPError(f"{path}: cannot read ONNX file, it is {kind.human}")
    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises several types on corrupt files)
        first = first_line(exc)
        raise LTMPError(f"{path}: cannot read ONNX file ({first})") from exc
    if not graph.graph.node and not graph.graph.input:
        raise LTMPError(f"{path}: cannot read ONNX file (no graph in it: not an ONNX model?)")
    check_external_data(graph, path)
    return graph


def check_graph_file(path: Any) -> None:
    """:func:`load_onnx`'s checks for a graph about to be opened by ONNX Runtime, without importing onnx
    for the usual graph: an external-data entry needs the key ``location``, whose bytes cannot be spelled
    otherwise in a protobuf, so a file without them keeps all its weights inside."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:
                return
    except (OSError, ValueError):
        pass  # missing or empty: load_onnx names the problem
    load_onnx(path)


def check_external_data(graph: Any, path: Any) -> None:
    """Refuse a graph whose weights live in files outside its own folder: a graph from a stranger
    must not make ONNX Runtime read ``/etc/...`` or ``../..`` (older releases, those of the field
    devices among them, do not check)."""
    import os

    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for tensor in _tensors(graph.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.isabs(location) or os.path.commonpath([folder, target]) != folder:
            raise LTMPError(
                f"{path}: tensor {tensor.name!r} keeps its weights at {location!r}, outside the graph's folder; "
                "refused (external data must lie beside the graph)"
            )


def _tensors(graph: Any) -> Any:
    """Every TensorProto of ``graph``: initializers and tensors in attributes, subgraphs included."""
    import onnx

    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def write_metadata(graph: Any, meta: Mapping[str, Any]) -> None:
    """Replace ``graph.metadata_props`` (an onnx ModelProto) with ``meta``, keys sorted."""
    import onnx

    del graph.metadata_props[:]
    for k, v in sorted(encode(meta).items()):
        graph.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def read_metadata(graph: Any, where: str | None = None) -> dict[str, Any]:
    """Metadata of an onnx ModelProto (checked when ``where`` names its file, see :func:`decode`)."""
    return decode({p.key: p.value for p in graph.metadata_props}, where)
