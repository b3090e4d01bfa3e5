"""Users' data: an ImageFolder tree (one subfolder per class) preprocessed like the timm model wants.

Files are checked when the folder is indexed, not when a batch is drawn: every file is opened
and ``verify()``-ed once (header and, for PNG, chunk checksums; no full decode, so indexing stays
cheap), and anything Pillow cannot read is skipped, counted in ``skipped`` and reported in one
warning. A file that passes that check but still fails to decode later (a truncated JPEG, say)
is replaced by the next readable sample, with a warning, so an epoch never dies half-way and the
dataset length never changes under a sampler.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import timm.data
import torch
from PIL import Image
from torch.utils.data import Dataset

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.data_config import model_data_config


def transform_for_model(model: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform (resize, centre crop, normalise) from the model's pretrained config."""
    return timm.data.create_transform(**model_data_config(model), is_training=False)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, OSError...)
        return False


def _visible(entries: list[str]) -> list[str]:
    # Hidden files and folders (.DS_Store, .ipynb_checkpoints, .git) are not data.
    return sorted(e for e in entries if not e.startswith("."))


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/**``; classes are the sorted subfolder names.

    Items are ``(transform(rgb_image), class_index)``, or the PIL image itself when ``transform``
    is None. ``skipped`` counts files that were not readable images; ``skipped_files`` lists them.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], object] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.exists():
            raise LTMPError(f"{self.root}: image folder does not exist")
        if not self.root.is_dir():
            raise LTMPError(f"{self.root}: not a folder (expected one subfolder per class)")
        self.classes = [e for e in _visible(os.listdir(self.root)) if (self.root / e).is_dir()]
        if not self.classes:
            raise LTMPError(f"{self.root}: no class subfolders (put each class's images in root/<class>/)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        self.samples: list[tuple[Path, int]] = []
        self.skipped_files: list[Path] = []
        for name in self.classes:
            for folder, dirs, files in os.walk(self.root / name, followlinks=True):
                dirs[:] = _visible(dirs)  # sorted in place: walk order, hence sample order, is fixed
                for file in _visible(files):
                    path = Path(folder) / file
                    if _readable(path):
                        self.samples.append((path, self.class_to_idx[name]))
                    else:
                        self.skipped_files.append(path)
        if not self.samples:
            raise LTMPError(
                f"{self.root}: no readable images in {len(self.classes)} class folder(s)"
                + (f" ({self.skipped} unreadable files skipped)" if self.skipped else "")
            )
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped_files[:3])
            more = ", ..." if self.skipped > 3 else ""
            warnings.warn(
                f"{self.root}: skipped {self.skipped} file(s) that are not readable images ({shown}{more})",
                stacklevel=2,
            )
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            warnings.warn(f"{self.root}: class folder(s) without readable images: {', '.join(empty)}", stacklevel=2)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Image.Image, int]:
        # Try this sample, then the following ones: a late decode failure must not end the epoch.
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                with Image.open(path) as im:
                    return im.convert("RGB"), label
            except Exception as exc:
                warnings.warn(f"{path}: cannot decode ({exc}); using the next image instead", stacklevel=3)
        raise LTMPError(f"{self.root}: none of the indexed images can be decoded any more")

    def __getitem__(self, index: int) -> tuple[object, int]:
        image, label = self._load(index)
        return (self.transform(image) if self.transform is not None else image), label


def check_classes(dataset: ImageFolderDataset, num_classes: int, path: str | os.PathLike) -> None:
    """Raise LTMPError when the folder's class count does not match the model head's outputs."""
    found = len(dataset.classes)
    if found != num_classes:
        names = ", ".join(dataset.classes[:5]) + (", ..." if found > 5 else "")
        raise LTMPError(
            f"{path}: {found} class folder(s) ({names}) but the model has {num_classes} classes; "
            f"one subfolder per model class is needed, in the model's label order when sorted"
        )
