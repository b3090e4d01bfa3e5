"""One way to name data on the command line: ``digits`` (the embedded set) or an image folder.

An image folder may hold ``train/``, ``val/`` and ``test/`` subfolders (ImageNet style); without
them the whole tree serves every split.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import Dataset

from ltmp_deploy.errors import LTMPError

EMBEDDED = "digits"
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test", "val", "validation")}
# calibrate's share of a tree it also evaluates on (see calibration_split); seeded, so reruns agree.
HELD_OUT_FRACTION = 0.1
HELD_OUT_MAX = 10_000
HELD_OUT_SEED = 0


def dataset_for(spec: str, model: object, split: str, limit: int | None = None) -> Dataset:
    """The ``split`` of ``spec`` preprocessed for ``model`` (its timm data config); its first
    ``limit`` images only when given (smoke tests)."""
    if spec == EMBEDDED:
        data = _digits(model, split)
    else:
        root = Path(spec)
        for name in SPLIT_FOLDERS[split]:
            if (root / name).is_dir():
                root = root / name
                break
        data = _folder(root, model)
    return data if limit is None else torch.utils.data.Subset(data, range(min(limit, len(data))))


def held_out_split(spec: str, model: object) -> tuple[str, Dataset] | None:
    """The split learning does not train on, for its closing check: the digits' val split, or the
    ``val/`` (``validation/``) folder beside a folder's ``train/``; None when there is none."""
    if spec == EMBEDDED:
        return "val", _digits(model, "val")
    root = Path(spec)
    if not (root / "train").is_dir():
        return None  # the whole tree is the training data
    for name in SPLIT_FOLDERS["val"]:
        if (root / name).is_dir():
            return name, _folder(root / name, model)
    return None


def record_source(model: object, spec: str, split: str) -> None:
    """Remember on ``model`` (and so in its checkpoint) the image folder ``spec`` it learned from and
    the ``split`` read, so that export, validate and bench given no data can measure on real images;
    the digits need no record (a model that takes them is measured on them)."""
    ltmp = getattr(model, "ltmp", None)
    if ltmp is not None:
        ltmp.learned_on = None if spec == EMBEDDED else {"folder": str(Path(spec).resolve()), "split": split}


def recorded_folder(model: object) -> tuple[str | None, str | None]:
    """(the folder ``model`` learned on, if it is still here; a note when it recorded one that is not)."""
    record = getattr(getattr(model, "ltmp", None), "learned_on", None)
    if not record:
        return None, None
    folder = record.get("folder")
    if isinstance(folder, str) and Path(folder).is_dir():
        return folder, None
    return None, f"the checkpoint learned on {folder}, which is not here any more"


def held_out_source(model: object, data: str | None) -> tuple[str | None, bool, str | None]:
    """The data whose held-out images stand for ``model``'s inputs: ``data`` when given, else the
    folder the checkpoint learned on while it is here, else the digits for a model that takes them.
    Returns (that data or None, whether it is the recorded folder, a note when the record's folder is
    gone); export, validation and bench all choose their real images by it."""
    if data is not None:
        return data, False, None
    folder, missing = recorded_folder(model)
    if folder is not None:
        return folder, True, None
    return (EMBEDDED if takes_digits(model) else None), False, missing


def takes_digits(model: object) -> bool:
    """Whether ``model`` takes the embedded digits: their size and their 10 classes."""
    from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES

    return tuple(model.patch_embed.img_size) == (IMAGE_SIZE, IMAGE_SIZE) and model.num_classes == NUM_CLASSES


def calibration_split(spec: str, model: object, part: str) -> Dataset:
    """The ``part`` ("calibration" or "evaluation") of ``spec`` for ``calibrate``: the two never
    share an image, so the accuracy reported is not measured on the images the schedule came from.

    The digits: val and test. A folder with ``val/`` and ``test/``: those. With one held-out folder
    (``val/`` or ``test/``) beside ``train/``: calibration on a seeded held-out part of ``train/``,
    evaluation on the held-out folder. A single tree (no split folders, ``train/`` alone, or a
    held-out folder alone): a seeded held-out part calibrates, the rest evaluates.
    """
    if part not in ("calibration", "evaluation"):
        raise ValueError(f"part {part!r}: expected 'calibration' or 'evaluation'")
    if spec == EMBEDDED:
        return _digits(model, "val" if part == "calibration" else "test")
    root = Path(spec)
    train = root / "train" if (root / "train").is_dir() else None
    held = [root / n for n in ("val", "validation", "test") if (root / n).is_dir()]
    if len(held) > 1:
        return _folder(held[0] if part == "calibration" else held[-1], model)
    if held and train is not None:
        return _folder(held[0], model) if part == "evaluation" else _held_out(_folder(train, model), True)
    tree = held[0] if held else train or root
    return _held_out(_folder(tree, model), part == "calibration")


def _held_out(dataset: Dataset, calibration: bool) -> Dataset:
    """A seeded part of ``dataset`` (HELD_OUT_FRACTION of it, at most HELD_OUT_MAX images) for
    calibration, or the rest of it."""
    n = len(dataset)
    count = min(HELD_OUT_MAX, max(1, round(n * HELD_OUT_FRACTION)))
    if n < 2:
        raise LTMPError(f"{getattr(dataset, 'root', 'the data')}: calibration and evaluation need 2 images or more")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    chosen = order[:count] if calibration else order[count:]
    return torch.utils.data.Subset(dataset, sorted(int(i) for i in chosen))


def _digits(model: object, split: str) -> Dataset:
    from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES, DigitsDataset

    if not takes_digits(model):
        size = tuple(model.patch_embed.img_size)
        raise LTMPError(
            f"--data digits: the embedded set is {IMAGE_SIZE}x{IMAGE_SIZE} with {NUM_CLASSES} classes, "
            f"the model takes {size[0]}x{size[1]} with {model.num_classes}; point --data at an image folder"
        )
    return DigitsDataset(split)


def _folder(root: Path, model: object) -> Dataset:
    from ltmp_deploy.data.folder import ImageFolderDataset, check_classes, transform_for_model

    dataset = ImageFolderDataset(root, transform_for_model(model))
    check_classes(dataset, model.num_classes, root)
    _adopt_class_names(model, dataset.classes, root)
    return dataset


def _adopt_class_names(model: object, classes: list[str], root: Path) -> None:
    """A model learned or calibrated on a folder takes its class names, unless it has its own;
    other names for the same classes are likely a different class order, so they are pointed out."""
    ltmp = getattr(model, "ltmp", None)
    if ltmp is None:
        return
    if ltmp.labels is None:
        ltmp.labels = list(classes)
    elif list(ltmp.labels) != list(classes):
        differ = next(i for i, (a, b) in enumerate(zip(ltmp.labels, classes)) if a != b)
        warnings.warn(
            f"{root}: class {differ} is {classes[differ]!r} here and {ltmp.labels[differ]!r} in the model; "
            "the model keeps its names (check that the class order is the same)",
            stacklevel=3,
        )


def sample_batch(dataset: Dataset, count: int, seed: int = 0) -> np.ndarray:
    """``count`` preprocessed images of ``dataset`` as one (N, C, H, W) float32 array, drawn at random
    (seeded) rather than from its start: image folders list one class after another, and INT8
    calibration on the first N images would see a single class."""
    if count < 1:
        raise LTMPError(f"--int8-images {count}: at least 1")
    if len(dataset) == 0:
        raise LTMPError("the calibration data holds no images")
    from ltmp_deploy.data.folder import warn_skipped

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    images = np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in order])
    warn_skipped(dataset)
    return images
