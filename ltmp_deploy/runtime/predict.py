"""Predicting image files: folders walked, images sniffed, batches streamed, answers as they come.

    with Session("model.onnx") as s:
        for p in predict_files(s, image_files(["photos/"]), k=3):
            print(p.image, p.topk)

However many images there are, only one batch is read, run and logged at a time, so memory stays
flat over a long run. Which files are images is decided by Pillow from their content, not their
names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.images import NOT_AN_IMAGE, image_problem, open_image
from ltmp_deploy.runtime.audit import AuditLog, class_labels, image_name, topk_entries
from ltmp_deploy.runtime.preprocess import ImageLike
from ltmp_deploy.runtime.session import Session

DEFAULT_BATCH = 8  # for files that take any batch size
T = TypeVar("T")


def is_image(path: str | os.PathLike) -> bool:
    """Whether Pillow recognises the file as an image within its limits (from its header; nothing is decoded)."""
    return image_problem(path) is None


def image_files(items: Sequence[str | os.PathLike], skipped: list[str] | None = None) -> list[Path]:
    """Image files from files (each must be an image) and folders (walked recursively in sorted
    order, keeping the images and skipping hidden entries and other files). A folder's files that
    Pillow recognises but refuses (damaged headers, decompression bombs) are skipped; ``skipped``
    gets the reason for each."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += _walk(path, skipped if skipped is not None else [])
        elif path.is_file():
            problem = image_problem(path)
            if problem is not None:
                raise LTMPError(problem)
            found.append(path)
        else:
            raise LTMPError(f"{path}: no such file or folder")
    if not found:
        raise LTMPError(f"{', '.join(os.fspath(i) for i in items) or 'IMAGES'}: no images found")
    return found


def _walk(folder: Path, skipped: list[str]) -> list[Path]:
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            problem = image_problem(Path(root, name))
            if problem is None:
                images.append(Path(root, name))
            elif not problem.endswith(NOT_AN_IMAGE):  # other files in a folder of images are no news
                skipped.append(problem)
    return images


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), drawn lazily from ``items``."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def batch_size(session: Session, asked: int | None = None) -> int:
    """The batch to run: the file's pinned batch, or ``asked`` (default 8) within its range."""
    low, high = session.batch_range
    if low == high:
        if asked not in (None, low):
            raise LTMPError(f"--batch {asked}: {session.path} takes batches of exactly {low}; leave --batch out")
        return low
    if asked is None:
        return max(low, min(DEFAULT_BATCH, high or DEFAULT_BATCH))
    if asked < low or (high is not None and asked > high):
        allowed = f"{low} to {high}" if high is not None else f"{low} or more"
        raise LTMPError(f"--batch {asked}: {session.path} takes batches of {allowed}")
    return asked


@dataclass
class Prediction:
    image: str | None  # the file, as given
    topk: list[dict[str, Any]]  # [{"class", "label", "prob"}], best first


def predict_files(
    session: Session,
    images: Iterable[ImageLike],
    k: int = 5,
    batch: int | None = None,
    log: AuditLog | None = None,
    progress: bool = False,
    skipped: list[str] | None = None,
    explicit: Collection[ImageLike] = (),
) -> Iterator[Prediction]:
    """Run ``images`` through ``session`` a batch at a time, writing each batch to ``log`` if given;
    ``progress``: a progress bar on stderr. With ``skipped``, image files that cannot be decoded
    (truncated, corrupt, over the decompression-bomb limit) are left out and their reasons added
    to it, instead of ending the run; but for the files in ``explicit`` (named one by one, not found
    in a folder), which end it with their one line."""
    if k < 1:
        raise LTMPError(f"-k {k}: must be at least 1")
    step = batch_size(session, batch)
    labels = class_labels(session.metadata)
    total = len(images) if isinstance(images, Sequence) else None
    with tqdm(total=total, unit="image", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for chunk in batches(images, step):
            kept, pictures = (chunk, chunk) if skipped is None else _decodable(chunk, skipped, explicit)
            if kept:
                result = session.predict(pictures, k=k)
                if log is not None:
                    log.write(kept, result)
                for i, image in enumerate(kept):
                    top = topk_entries(result.topk_indices[i], result.topk_probs[i], labels)
                    yield Prediction(image_name(image), top)
            bar.update(len(chunk))


def _decodable(
    chunk: list[ImageLike], skipped: list[str], explicit: Collection[ImageLike]
) -> tuple[list[ImageLike], list[ImageLike]]:
    """The files of ``chunk`` that decode, and their decoded pictures (each file read once)."""
    kept, pictures = [], []
    for item in chunk:
        if not isinstance(item, (str, os.PathLike)):
            kept.append(item)
            pictures.append(item)
            continue
        try:
            pictures.append(open_image(item))
        except LTMPError as err:
            if item in explicit:
                raise
            skipped.append(str(err))
            continue
        kept.append(item)
    return kept, pictures


__all__ = ["DEFAULT_BATCH", "Prediction", "batch_size", "batches", "image_files", "is_image", "predict_files"]
