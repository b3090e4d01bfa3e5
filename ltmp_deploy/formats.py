"""What a file is, from its first bytes: never from its name.

A checkpoint renamed ``.pt``, an ONNX graph saved as ``.bin`` or a model written to ``model.ltmp``
opens the same as under its usual name, and a file that is none of what a command takes gets one
line saying what it is. Standard library only: the field runtime sniffs files without torch,
onnx or safetensors installed.

What decides each kind:

- safetensors: an 8-byte little-endian header length, then that many bytes of JSON (an object);
  a toolkit checkpoint is one whose ``__metadata__`` holds the key ``ltmp_deploy``;
- torch: a zip archive with a ``data.pkl`` member (``torch.save`` since 1.6), or a pickle
  (``0x80`` and protocol 2..5: the legacy format);
- ONNX: a protobuf ``ModelProto`` that opens with its ``ir_version`` (field 1, a varint; protobuf
  writers emit fields in number order) followed by more ``ModelProto`` fields of the right types;
- TensorRT engine: the plan magic ``ftrt`` at offset 0 (what NVIDIA's Torch-TensorRT tests to
  tell raw engine bytes from an encoded blob; :func:`ltmp_deploy.runtime.backends.resolve_backend`
  also takes a file of no known kind with an ``ltmp-deploy build`` sidecar as an engine);
- JSON text (a model description or an engine sidecar), a Git LFS pointer left in place of the
  file, an empty file; anything else is unknown.
"""

from __future__ import annotations

import enum
import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from ltmp_deploy.errors import LTMPError, first_line

CHECKPOINT_METADATA_KEY = "ltmp_deploy"
CHECKPOINT_FORMAT = "ltmp-deploy-checkpoint"  # the "format" entry of that metadata
# Toolkit checkpoints keep each block's two thresholds under the authors' names.
THRESHOLD_SUFFIXES = (".merge_masker.threshold", ".prune_masker.threshold")
# The safetensors format caps its header at 100 MB; a length beyond it, or beyond the file, is
# damage, and nothing is read past the first bytes.
SAFETENSORS_HEADER_LIMIT = 100_000_000
ENGINE_MAGIC = b"ftrt"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
HEAD_BYTES = 4096
# ModelProto fields: number -> protobuf wire type (0 varint, 2 length-delimited).
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_MAX_IR_VERSION = 64  # IR versions count up from 1, one every few onnx releases


class FileKind(enum.Enum):
    """A kind of file; the value is its name in messages."""

    TOOLKIT_CHECKPOINT = "a toolkit checkpoint (.safetensors with ltmp-deploy metadata)"
    SAFETENSORS = "a safetensors state dict without ltmp-deploy metadata"
    DAMAGED_SAFETENSORS = "a truncated or corrupt safetensors file"
    TORCH_ZIP = "a torch checkpoint (zip)"
    TORCH_PICKLE = "a torch pickle"
    ONNX = "an ONNX model"
    ENGINE = "a TensorRT engine"
    JSON = "a JSON document"
    LFS_POINTER = "a Git LFS pointer in place of the file (run `git lfs pull`)"
    EMPTY = "an empty file"
    UNKNOWN = "an unknown file type"

    @property
    def human(self) -> str:
        return self.value


SAFETENSORS_KINDS = (FileKind.TOOLKIT_CHECKPOINT, FileKind.SAFETENSORS)
STATE_DICT_KINDS = (*SAFETENSORS_KINDS, FileKind.TORCH_ZIP, FileKind.TORCH_PICKLE)


def sniff(path: str | os.PathLike) -> FileKind:
    """The kind of the file at ``path``, read from its first bytes (LTMPError if it is no file)."""
    return _sniff(Path(path))[0]


def expect(path: str | os.PathLike, *kinds: FileKind, what: str | None = None) -> FileKind:
    """The kind of ``path`` when it is one of ``kinds``; otherwise a one-line LTMPError saying
    what the file is and what was expected (``what``, default the kinds' names)."""
    path = Path(path)
    kind, detail = _sniff(path)
    if kind in kinds:
        return kind
    found = f"{kind.human} ({detail})" if detail else kind.human
    if kind is FileKind.DAMAGED_SAFETENSORS and set(kinds) & set(SAFETENSORS_KINDS):
        raise LTMPError(f"{path}: {found}")
    names = [k.human for k in kinds]
    either = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise LTMPError(f"{path}: {found}, expected {what or either}")


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (empty when it has none)."""
    meta = safetensors_header(path).get("__metadata__")
    return dict(meta) if isinstance(meta, dict) else {}


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ltmp-deploy metadata of a toolkit checkpoint, checked entry by entry (whatever reads it
    next can trust its shape); one line naming the file and the entry when it is damaged."""
    path = Path(path)
    raw = safetensors_metadata(path).get(CHECKPOINT_METADATA_KEY)
    if raw is None:
        raise LTMPError(f"{path}: a safetensors file without ltmp-deploy metadata: weights, not a toolkit checkpoint")
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise LTMPError(f"{path}: its ltmp-deploy metadata is not readable JSON ({err})") from err
    if not isinstance(meta, dict):
        raise LTMPError(f"{path}: its ltmp-deploy metadata is not a JSON object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise LTMPError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    from ltmp_deploy.schemas import problem

    found = problem(meta, "checkpoint-metadata")
    if found is None:
        return meta
    field = re.match(r"\$\.(\w+)(\S*): (.*)$", found)
    if field and field[3] == "missing" and not field[2]:
        raise LTMPError(f"{path}: its ltmp-deploy metadata lacks {field[1]!r}; {_REWRITE}")
    if field:
        found = f"entry {field[1]!r}{field[2]}: {field[3]}"
    raise LTMPError(f"{path}: its ltmp-deploy metadata {found}; {_REWRITE}")


_REWRITE = "the checkpoint is damaged or was edited: write it again with ltmp-deploy patch, learn or calibrate"


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's length."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= SAFETENSORS_HEADER_LIMIT:
            raise LTMPError(f"{path}: not a safetensors file (no header length in its first 8 bytes)")
        if length > size - 8:
            raise LTMPError(
                f"{path}: truncated: its header alone should take {length} bytes, "
                f"the file holds {size - 8} after the length"
            )
        try:
            header = json.loads(f.read(length))
        except ValueError as err:
            raise LTMPError(f"{path}: not a safetensors file, or a corrupt one (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise LTMPError(f"{path}: corrupt safetensors header (not a JSON object)")
    end, held = _tensor_bytes(path, header), size - 8 - length
    if end > held:
        raise LTMPError(f"{path}: truncated: its header describes {end} bytes of tensors, the file holds {held}")
    if end < held:  # the format indexes every byte: a header length off by a few shifts every tensor
        raise LTMPError(f"{path}: corrupt safetensors file: its header describes {end} bytes of tensors, not {held}")
    return header


def _tensor_bytes(path: Path, header: dict[str, Any]) -> int:
    """Where the last tensor ends, from each entry's ``data_offsets`` (a one-line LTMPError when an
    entry is not a tensor description)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise LTMPError(f"{path}: corrupt safetensors header (tensor {name[:60]!r} has no data_offsets)")
        end = max(end, offsets[1])
    return end


def _sniff(path: Path) -> tuple[FileKind, str]:
    """The kind and, for a damaged or unknown file, what gave it away."""
    if path.is_dir():
        raise LTMPError(f"{path}: is a folder, expected a file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            if not head:
                return FileKind.EMPTY, ""
            if head.startswith(ENGINE_MAGIC):  # as a safetensors length it would be far over the limit
                return FileKind.ENGINE, ""
            header, damage = _safetensors_header(f, size, head)
    except FileNotFoundError:
        raise LTMPError(f"{path}: no such file") from None
    except OSError as err:
        raise LTMPError(f"{path}: cannot read ({err.strerror or err})") from err
    if damage:
        return FileKind.DAMAGED_SAFETENSORS, damage
    if header is not None:
        meta = header.get("__metadata__")
        toolkit = isinstance(meta, dict) and CHECKPOINT_METADATA_KEY in meta
        return (FileKind.TOOLKIT_CHECKPOINT if toolkit else FileKind.SAFETENSORS), ""
    if head.startswith(b"PK\x03\x04"):
        if _has_data_pkl(path, head):
            return FileKind.TORCH_ZIP, ""
        return FileKind.UNKNOWN, "a zip archive without data.pkl"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return FileKind.TORCH_PICKLE, ""
    if _is_onnx(head, size):
        return FileKind.ONNX, ""
    if head.startswith(LFS_POINTER):
        return FileKind.LFS_POINTER, ""
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return FileKind.JSON, ""
    return FileKind.UNKNOWN, f"starts with {head[:16]!r}"


def _safetensors_header(f: BinaryIO, size: int, head: bytes = b"") -> tuple[dict | None, str]:
    """(header, "") for a safetensors file, (None, why) for a damaged one, (None, "") for another
    kind: only a file whose JSON header visibly begins after the length counts as safetensors."""
    if not head:
        f.seek(0)
        head = f.read(HEAD_BYTES)
    if len(head) < 9 or head[8:9] != b"{":
        return None, ""
    (length,) = struct.unpack("<Q", head[:8])
    if length > SAFETENSORS_HEADER_LIMIT:
        return None, f"its header length reads {length} bytes, more than the format allows"
    if 8 + length > size:
        return None, f"its header needs {length} bytes, the file has {size - 8} after the length"
    f.seek(8)
    raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return None, f"its header is not valid JSON: {first_line(err)}"
    if not isinstance(header, dict):
        return None, "its header is not a JSON object"
    return header, ""


def _has_data_pkl(path: Path, head: bytes) -> bool:
    """A zip holding ``data.pkl`` or ``NAME/data.pkl``; a truncated archive, whose directory
    at the end is gone, is judged by its first member (torch writes data.pkl first)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        if len(head) < 30:
            return False
        name_len = struct.unpack("<H", head[26:28])[0]
        names = [head[30 : 30 + name_len].decode("utf-8", "replace")]
    return any(n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1) for n in names)


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


def _is_onnx(head: bytes, size: int) -> bool:
    """``ir_version`` first, then at least one more ModelProto field, every field read well-formed.

    The walk stops at the graph (field 7): its length may run past ``head``, and a truncated file
    is still an ONNX model, for the loader to refuse with its own reason.
    """
    if head[:1] != b"\x08":
        return False
    ir_version, pos = _varint(head, 1)
    if ir_version is None or not 1 <= ir_version <= _ONNX_MAX_IR_VERSION:
        return False
    fields = 1
    while pos < len(head):
        tag, pos = _varint(head, pos)
        value, pos = _varint(head, pos) if tag is not None else (None, pos)
        if value is None:  # a varint cut by the end of what was read, or malformed
            return fields >= 2 and pos >= len(head)
        number, wire = tag >> 3, tag & 7
        if _ONNX_MODEL_FIELDS.get(number) != wire:
            return False
        fields += 1
        if number == 7:
            break
        if wire == 2:
            if pos + value > size:
                return False
            pos += value
    return fields >= 2
