"""Audit logs: one JSON line per image with the answer and every block's token decisions.

    with Session("model.onnx") as s, AuditLog("audit.jsonl", s) as log:
        for chunk in batches(paths, 8):
            log.write(chunk, s.predict(chunk, k=5))

Each line stands alone (schema, image file and hash, model file and hash, preprocessing, top-k,
per block the kept count, the pruned patches and the merged groups), so a log can be grepped,
split or drawn from line by line; docs/audit-log.md describes the schema. A log is written whole
or not at all: lines go to a temporary file beside it, renamed onto it when the log is closed
without an error, so a run that stops half-way leaves no log rather than a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output, refuse_overwriting_inputs, sha256
from ltmp_deploy.runtime.patch_maps import PatchMap, image_maps, patch_grid
from ltmp_deploy.runtime.preprocess import ImageLike
from ltmp_deploy.runtime.session import Result, Session
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-audit/1"
LABELS_KEY = "labels"  # metadata key: one class name per class, in class order
NO_DECISIONS = "has no decision outputs to log; export it with `ltmp-deploy export --decisions`"


def class_labels(meta: Mapping[str, Any]) -> list[str] | None:
    """Class names from a file's metadata, when it carries one per class."""
    labels = meta.get(LABELS_KEY)
    named = isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
    return labels if named and meta.get("num_classes") in (None, len(labels)) else None


def topk_entries(indices: np.ndarray, probs: np.ndarray, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """One image's top-k as [{"class", "label", "prob"}], best first (label None without labels)."""
    return [
        {"class": int(c), "label": labels[int(c)] if labels else None, "prob": round(float(p), 6)}
        for c, p in zip(indices, probs)
    ]


def image_name(image: ImageLike) -> str | None:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


class AuditLog:
    """Write an audit log of what ``session`` (a file exported with ``--decisions``) decided.

    Use it as a context manager, or call :meth:`close` when done and :meth:`discard` on failure;
    a log neither closed nor discarded is discarded when it is garbage collected.
    """

    def __init__(self, path: str | os.PathLike, session: Session) -> None:
        if not session.has_decisions:
            raise LTMPError(f"{session.path}: {NO_DECISIONS}")
        refuse_overwriting_inputs([("", path)], [session.path])
        meta = session.metadata
        self.path = Path(path)
        self.grid = patch_grid(meta, session.path)
        self.num_prefix = int(meta.get("num_prefix_tokens", 1))
        self.labels = class_labels(meta)
        cfg = meta.get("data_config") or {}
        self._model = {"file": os.fspath(session.path), "sha256": sha256(session.path), "backend": session.backend}
        self._input = {
            "size": [int(v) for v in cfg.get("input_size", [0, 0, 0])[1:]],
            "grid": list(self.grid),
            "num_prefix_tokens": self.num_prefix,
            "data_config": cfg,
        }
        self.count = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_output(self.path, suffix=".jsonl"))
        self._file = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))

    def write(self, images: Sequence[ImageLike], result: Result) -> None:
        """One line per image of ``result`` (what ``Session.predict(images)`` returned)."""
        if result.decisions is None:
            raise LTMPError(f"{self._model['file']}: {NO_DECISIONS}")
        if len(images) != len(result.logits):
            raise LTMPError(f"{self.path}: {len(images)} images for {len(result.logits)} results")
        for i, image in enumerate(images):
            self._file.write(json.dumps(self.line(image, result, i), separators=(",", ":")) + "\n")
            self.count += 1

    def line(self, image: ImageLike, result: Result, i: int) -> dict[str, Any]:
        """The log entry of image ``i`` of ``result``."""
        name = image_name(image)
        maps = image_maps(result.decisions, i, self.num_prefix, self.grid[0] * self.grid[1])
        return {
            "schema": SCHEMA,
            "image": name,
            "image_sha256": sha256(name) if name is not None else None,
            "model": self._model,
            "input": self._input,
            "topk": topk_entries(result.topk_indices[i], result.topk_probs[i], self.labels),
            "blocks": [m.to_json() for m in maps],
        }

    def close(self) -> Path:
        """Finish the log: it appears at ``path`` now, whole."""
        self._stack.close()
        return self.path

    def discard(self) -> None:
        """Drop everything written; nothing appears at ``path``."""
        self._stack.__exit__(LTMPError, LTMPError("discarded"), None)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stack.__exit__(exc_type, exc, tb)


# -- reading ----------------------------------------------------------------------------------


def read_log(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line index, entry) for every line of an audit log, one line in memory at a time."""
    path = Path(path)
    if not path.is_file():
        raise LTMPError(f"{path}: no such audit log")
    with path.open("rb") as f:  # each line decoded by json.loads: a bad byte is that line's error
        for i, text in enumerate(f):
            try:
                entry = json.loads(text)
            except ValueError as err:
                raise LTMPError(f"{path}: line {i + 1} is not JSON ({err}); not an audit log?") from err
            if not isinstance(entry, dict) or entry.get("schema") != SCHEMA:
                found = entry.get("schema") if isinstance(entry, dict) else type(entry).__name__
                raise LTMPError(f"{path}: line {i + 1} has schema {found!r}, expected {SCHEMA!r}")
            yield i, check(entry, "audit-log", f"{path}: line {i + 1}")


def is_audit_log(path: str | os.PathLike) -> bool:
    """Whether the first line of ``path`` is an audit log entry, read as JSON (any spelling)."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("schema") == SCHEMA


def select(path: str | os.PathLike, wanted: Sequence[str]) -> list[dict[str, Any]]:
    """The entries ``wanted`` names, in that order: a line index (0 is the first line), an image
    path as logged, or a file name that only one logged image has."""
    found: dict[str, list[dict[str, Any]]] = {w: [] for w in wanted}
    for i, entry in read_log(path):
        image = entry.get("image") or ""
        for w in wanted:
            if (w.isdigit() and i == int(w)) or (not w.isdigit() and w in (image, os.path.basename(image))):
                found[w].append(entry)
    for w in wanted:
        if not found[w]:
            what = f"no line {w}" if w.isdigit() else f"no image {w!r}"
            raise LTMPError(
                f"{path}: {what} in this log (give an image path as logged, its file name, or a line index)"
            )
        if len(found[w]) > 1:
            raise LTMPError(f"{path}: {len(found[w])} images are named {w!r}; give the path as logged or a line index")
    return [found[w][0] for w in wanted]


def entry_maps(entry: Mapping[str, Any], where: str) -> tuple[tuple[int, int], list[PatchMap]]:
    """The patch grid and per-block patch maps of one log entry."""
    try:
        grid = tuple(int(g) for g in entry["input"]["grid"])
        maps = [PatchMap.from_json(b, grid[0] * grid[1]) for b in entry["blocks"]]
    except (KeyError, TypeError, ValueError) as err:
        raise LTMPError(f"{where}: an audit entry without a readable grid and blocks ({err})") from err
    except LTMPError as err:
        raise LTMPError(f"{where}: {err}") from err
    return (grid[0], grid[1]), maps


__all__ = ["SCHEMA", "AuditLog", "class_labels", "entry_maps", "is_audit_log", "read_log", "select", "topk_entries"]
