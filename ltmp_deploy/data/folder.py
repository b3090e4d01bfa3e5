"""Users' data: an ImageFolder tree (one subfolder per class) preprocessed like the timm model wants.

Indexing only lists names, so it costs one directory scan however large the folder: files whose
names are not an image type Pillow knows (``notes.txt``) are left out there; nothing is opened
but the first image, so that a folder with no readable image at all fails at once (``predict``,
which opens every file it is given anyway, tells images by content instead). The index is
compact (one byte buffer of relative paths, an offset per file, where each class starts), so it
neither grows with Python objects per file nor is copied into every DataLoader worker.

A file that cannot be decoded when it is read is replaced by the next readable sample, so an
epoch never dies half-way and the dataset length never changes under a sampler; it is marked
(in memory the DataLoader workers share), never tried again, and counted. Whoever iterates the
dataset calls :func:`warn_skipped` at the end for one warning with the count.
"""

from __future__ import annotations

import array
import bisect
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm.data
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.images import open_image
from ltmp_deploy.ltmp.data_config import model_data_config


def transform_for_model(model: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform (resize, centre crop, normalise) from the model's pretrained config."""
    return timm.data.create_transform(**model_data_config(model), is_training=False)


def _image_suffixes() -> frozenset[str]:
    Image.init()
    return frozenset(Image.registered_extensions())


def _entries(folder: str) -> tuple[list[str], list[str]]:
    """(files, subfolders) of ``folder``, sorted, hidden ones (.DS_Store, .git) left out."""
    files, dirs = [], []
    with os.scandir(folder) as it:
        for entry in it:
            if not entry.name.startswith("."):
                (dirs if entry.is_dir() else files).append(entry.name)
    return sorted(files), sorted(dirs)


class _Index:
    """Relative paths in one byte buffer, one end offset per file: ~(path length + 8) bytes a file."""

    def __init__(self, suffixes: frozenset[str]) -> None:
        self.suffixes = suffixes
        self.buffer = bytearray()
        self.ends = array.array("q")
        self.ignored: list[str] = []  # files not named as images (a few notes or label files)

    def add_tree(self, root: str, rel: str) -> None:
        # Files of a folder before its subfolders, every level sorted: a fixed sample order.
        files, dirs = _entries(os.path.join(root, rel))
        for name in files:
            path = f"{rel}/{name}"
            if os.path.splitext(name)[1].lower() in self.suffixes:
                self.buffer += os.fsencode(path)
                self.ends.append(len(self.buffer))
            else:
                self.ignored.append(path)
        for name in dirs:
            self.add_tree(root, f"{rel}/{name}")

    def path(self, i: int) -> str:
        start = self.ends[i - 1] if i else 0
        return os.fsdecode(bytes(self.buffer[start : self.ends[i]]))


class _Samples(Sequence):
    """``(path, class_index)`` per sample, made when asked for."""

    def __init__(self, dataset: ImageFolderDataset) -> None:
        self._ds = dataset

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> tuple[Path, int]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._ds.root / self._ds._index.path(i), self._ds.label(i)


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/**``; classes are the sorted subfolder names.

    Items are ``(transform(rgb_image), class_index)``, or the PIL image itself when ``transform``
    is None. ``skipped`` counts the files left out so far (not named as images, or found
    unreadable when read); ``skipped_files`` lists them.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], object] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.exists():
            raise LTMPError(f"{self.root}: image folder does not exist")
        if not self.root.is_dir():
            raise LTMPError(f"{self.root}: not a folder (expected one subfolder per class)")
        _, self.classes = _entries(os.fspath(self.root))
        if not self.classes:
            raise LTMPError(f"{self.root}: no class subfolders (put each class's images in root/<class>/)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._index = _Index(_image_suffixes())
        starts = array.array("q")
        for name in self.classes:
            starts.append(len(self._index.ends))
            self._index.add_tree(os.fspath(self.root), name)
        self._starts = list(starts)
        # Marks of unreadable samples, in shared memory: DataLoader workers set them, the parent counts.
        self._bad = torch.zeros(len(self._index.ends), dtype=torch.uint8).share_memory_()
        self._check_one_readable()
        empty = [c for c, n in zip(self.classes, self._class_sizes()) if n == 0]
        if empty:
            warnings.warn(f"{self.root}: class folder(s) without image files: {', '.join(empty)}", stacklevel=2)

    def _check_one_readable(self) -> None:
        for i in range(len(self)):
            if self._open(i) is not None:
                return
        raise LTMPError(
            f"{self.root}: no readable images in {len(self.classes)} class folder(s)"
            + (f" ({self.skipped} unreadable files skipped)" if self.skipped else "")
        )

    @property
    def samples(self) -> Sequence[tuple[Path, int]]:
        return _Samples(self)

    @property
    def skipped_files(self) -> list[Path]:
        bad = [self.root / self._index.path(int(i)) for i in torch.nonzero(self._bad).flatten()]
        return bad + [self.root / p for p in self._index.ignored]

    @property
    def skipped(self) -> int:
        return int(self._bad.sum()) + len(self._index.ignored)

    @property
    def targets(self) -> list[int]:
        return [label for label, n in enumerate(self._class_sizes()) for _ in range(n)]

    def _class_sizes(self) -> list[int]:
        return [b - a for a, b in zip(self._starts, self._starts[1:] + [len(self)])]

    def label(self, index: int) -> int:
        return bisect.bisect_right(self._starts, index) - 1

    def __len__(self) -> int:
        return len(self._index.ends)

    def _open(self, index: int) -> Image.Image | None:
        """The RGB image of sample ``index``, or None (and the sample marked) when it cannot be decoded."""
        if self._bad[index]:
            return None
        try:  # the field runtime's opener: decoder errors, decompression bombs and odd modes all refused
            return open_image(self.root / self._index.path(index))
        except LTMPError:
            self._bad[index] = 1
            return None

    def _load(self, index: int) -> tuple[Image.Image, int]:
        # This sample, else the following ones: an unreadable file must not end the epoch.
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            image = self._open(i)
            if image is not None:
                return image, self.label(i)
        raise LTMPError(f"{self.root}: none of the indexed images can be decoded any more")

    def __getitem__(self, index: int) -> tuple[object, int]:
        image, label = self._load(index)
        return (self.transform(image) if self.transform is not None else image), label


def _folder(dataset: Any) -> ImageFolderDataset | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, ImageFolderDataset) else None


def unreadable_marks(dataset: Any) -> torch.Tensor | None:
    """The uint8 mark per sample of an image folder (or a Subset of one) that was found unreadable,
    in place: processes of a distributed run combine theirs (elementwise max) before
    :func:`warn_skipped`. None for other datasets."""
    folder = _folder(dataset)
    return folder._bad if folder is not None else None


def warn_skipped(dataset: Any) -> None:
    """One warning with the number of files ``dataset`` (an image folder or a Subset of one) has
    skipped so far, if any; other datasets skip nothing."""
    folder = _folder(dataset)
    n = folder.skipped if folder is not None else 0
    if folder is not None and n:
        shown = ", ".join(str(p) for p in folder.skipped_files[:3]) + (", ..." if n > 3 else "")
        warnings.warn(f"{folder.root}: skipped {n} file(s) that are not readable images ({shown})", stacklevel=2)


def check_classes(dataset: ImageFolderDataset, num_classes: int, path: str | os.PathLike) -> None:
    """Raise LTMPError when the folder's class count does not match the model head's outputs."""
    found = len(dataset.classes)
    if found != num_classes:
        names = ", ".join(dataset.classes[:5]) + (", ..." if found > 5 else "")
        raise LTMPError(
            f"{path}: {found} class folder(s) ({names}) but the model has {num_classes} classes; "
            f"one subfolder per model class is needed, in the model's label order when sorted"
        )
