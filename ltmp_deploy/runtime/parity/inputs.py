"""What a validation runs on: seeded random images, the embedded digits, an image folder or files.

On seeded random images threshold mode may merge and prune nothing, and then "token decisions
identical" proves nothing about merging or pruning; so every report says what its images were
(:class:`Inputs`), and ``--images`` takes a folder or files as readily as a count. Folders are
walked by the same reader ``predict`` uses (sorted, hidden entries and non-images skipped), so
this runs on the field install: NumPy and Pillow, no torch.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.options import positive_int

# Input kinds, as the report names them.
RANDOM = "random"
DIGITS = "embedded digits"
FOLDER = "folder"
FILES = "files"
PICTURES = "pictures"  # images handed to the library (arrays, PIL images)
INPUT_KINDS = (RANDOM, DIGITS, FOLDER, FILES, PICTURES)

FOLDER_IMAGES = 64  # a folder gives at most this many images, evenly drawn over its sorted listing
SPLIT_FOLDERS = ("test", "val", "validation")  # a recorded training folder's held-out images, first found

ImagesSpec = Union[int, str, os.PathLike, list, tuple]  # a count, a folder, files or pictures


@dataclass
class Inputs:
    """The images of one validation: ``pictures`` to preprocess, or None for ``count`` sample images."""

    kind: str
    description: str  # the report's ``data``
    count: int
    pictures: list[Any] | None = None
    source: str | None = None  # the folder, for kind "folder"
    notes: list[str] = field(default_factory=list)


def _is_count(text: str) -> bool:
    return text.strip().lstrip("-").isdigit() and not os.path.exists(text)


def images_arg(text: str) -> str:
    """argparse's type of each ``--images`` value: a count is refused at parse time when below 1."""
    if _is_count(text):
        positive_int(text)
    return text


def images_option(values: Sequence[str]) -> int | list[str]:
    """``--images N``, ``--images FOLDER`` or ``--images FILE [FILE ...]`` as parsed: a count or paths.
    A lone number is a count unless a file or folder of that name is here."""
    if len(values) == 1 and _is_count(values[0]):
        return int(values[0])
    return list(values)


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, evenly spaced: a folder lists one class after another, and its
    first ``count`` files would all be one class."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def read_inputs(images: ImagesSpec, limit: int = FOLDER_IMAGES) -> Inputs:
    """``images`` as :class:`Inputs`: a count (kind random until a sampler says otherwise), a folder
    (at most ``limit`` images, evenly drawn), image files, or pictures (paths, PIL images, arrays)."""
    if isinstance(images, bool):
        raise LTMPError(f"--images {images}: give a count, a folder or image files")
    if isinstance(images, numbers.Integral):
        return Inputs(RANDOM, "", int(images))
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise LTMPError("--images: no image given")
    paths = [i for i in items if isinstance(i, (str, os.PathLike))]
    if len(paths) < len(items):
        return Inputs(PICTURES, "your images", len(items), items)
    from ltmp_deploy.runtime.predict import image_files

    skipped: list[str] = []
    found = image_files(paths, skipped)
    notes = [f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}"] if skipped else []
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return folder_inputs(Path(paths[0]), found, limit, notes)
    return Inputs(FILES, f"{len(found)} image file{'s' if len(found) != 1 else ''}", len(found), found, notes=notes)


def folder_inputs(folder: Path, found: list[Path], limit: int, notes: list[str], why: str = "") -> Inputs:
    """The images ``found`` in ``folder``, at most ``limit`` of them evenly drawn."""
    chosen = spread(found, limit)
    drawn = f", evenly drawn from its {len(found)}" if len(chosen) < len(found) else ""
    return Inputs(
        FOLDER, f"{len(chosen)} images of {folder}{why}{drawn}", len(chosen), chosen, str(folder), list(notes)
    )


def recorded_inputs(meta: dict[str, Any], limit: int) -> Inputs | None:
    """Held-out images of the folder a checkpoint learned on (its ``learned_on`` metadata): its
    ``test/`` (or ``val/``) subfolder when it has one, else the whole tree; None when it recorded
    none. A folder that is not here any more is a note, not an error: Inputs of kind random say so."""
    record = meta.get("learned_on")
    if not isinstance(record, dict) or not isinstance(record.get("folder"), str):
        return None
    folder = Path(record["folder"])
    if not folder.is_dir():
        note = f"the checkpoint learned on {folder}, which is not here any more: measured on the sample images"
        return Inputs(RANDOM, "", limit, notes=[note])
    held = next((folder / n for n in SPLIT_FOLDERS if (folder / n).is_dir()), folder)
    from ltmp_deploy.runtime.predict import image_files

    try:
        found = image_files([held])
    except LTMPError as err:
        note = f"the checkpoint learned on {folder}: {err}; measured on the sample images"
        return Inputs(RANDOM, "", limit, notes=[note])
    return folder_inputs(held, found, limit, [], " (where the checkpoint learned)")


__all__ = [
    "DIGITS",
    "FILES",
    "FOLDER",
    "FOLDER_IMAGES",
    "INPUT_KINDS",
    "PICTURES",
    "RANDOM",
    "Inputs",
    "folder_inputs",
    "images_arg",
    "images_option",
    "read_inputs",
    "recorded_inputs",
    "spread",
]
