"""One way to name data on the command line: ``digits`` (the embedded set) or an image folder.

An image folder may hold ``train/``, ``val/`` and ``test/`` subfolders (ImageNet style); without
them the whole tree serves every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ltmp_deploy.errors import LTMPError

EMBEDDED = "digits"
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test", "val", "validation")}


def dataset_for(spec: str, model: object, split: str) -> Dataset:
    """The ``split`` of ``spec`` preprocessed for ``model`` (its timm data config)."""
    if spec == EMBEDDED:
        from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES, DigitsDataset

        size = tuple(model.patch_embed.img_size)
        if size != (IMAGE_SIZE, IMAGE_SIZE) or model.num_classes != NUM_CLASSES:
            raise LTMPError(
                f"--data digits: the embedded set is {IMAGE_SIZE}x{IMAGE_SIZE} with {NUM_CLASSES} classes, "
                f"the model takes {size[0]}x{size[1]} with {model.num_classes}; point --data at an image folder"
            )
        return DigitsDataset(split)
    from ltmp_deploy.data.folder import ImageFolderDataset, check_classes, transform_for_model

    root = Path(spec)
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            root = root / name
            break
    dataset = ImageFolderDataset(root, transform_for_model(model))
    check_classes(dataset, model.num_classes, root)
    return dataset


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
