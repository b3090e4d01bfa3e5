"""The embedded default dataset: scikit-learn's handwritten digits, as 56x56 RGB images.

scikit-learn ships the 1797 8x8 digit images inside its wheel, so nothing is downloaded. Each
image is turned into an 8-bit grey picture and upscaled to 56x56 with Pillow's bilinear filter,
which is exactly what timm's eval transform does to an 8x8 image under the digits model's data
config (crop_pct 1.0). So a digit saved as a PNG and fed through ``timm.data.create_transform``
or ``ltmp_deploy.runtime.preprocess`` gives the same tensor as this dataset, bit for bit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# The embedded model carries its preprocessing; the digits are prepared to match it.
from ltmp_deploy.ltmp.embedded_vit import DIGITS_MEAN, DIGITS_STD, IMAGE_SIZE, NUM_CLASSES  # noqa: F401

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SEED = 20240607
# Fractions of every class that go to val and test; the rest (70 %) is train.
VAL_FRACTION = 0.10
TEST_FRACTION = 0.20


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 8x8 pictures (0..255) and their int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The raw values are counts 0..16; scale to 8-bit grey like a saved picture would hold.
    pictures = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return pictures, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Fixed, stratified, disjoint index sets into the 1797 digits for train/val/test.

    Written out by hand with the legacy ``RandomState`` (whose stream numpy promises never to
    change) rather than through sklearn's splitters, so the split cannot drift with a library
    upgrade: a changed split would silently invalidate the cached base model's test accuracy.
    """
    _, labels = _load()
    rng = np.random.RandomState(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(members) * TEST_FRACTION))
        n_val = int(round(len(members) * VAL_FRACTION))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    out = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    for arr in out.values():
        arr.setflags(write=False)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS}")


def raw_images(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The split's original pictures: uint8 (N, 8, 8) grey, and int64 labels (N,)."""
    _check_split(split)
    pictures, labels = _load()
    idx = split_indices()[split]
    return pictures[idx], labels[idx]


def _upscale(picture: np.ndarray) -> np.ndarray:
    big = Image.fromarray(picture, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(big)


@lru_cache(maxsize=len(SPLITS))
def _unnormalised(split: str) -> np.ndarray:
    pictures, _ = raw_images(split)  # type: ignore[arg-type]
    grey = np.stack([_upscale(p) for p in pictures]).astype(np.float32) / np.float32(255.0)
    rgb = np.repeat(grey[:, None], 3, axis=1)  # (N, 3, IMAGE_SIZE, IMAGE_SIZE), three identical channels
    rgb.setflags(write=False)
    return rgb


def digits_arrays(split: Split, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The split as float32 (N, 3, IMAGE_SIZE, IMAGE_SIZE) images and int64 (N,) labels.

    ``normalize=False`` gives the [0, 1] pixels; otherwise they are normalised with
    :data:`DIGITS_MEAN` / :data:`DIGITS_STD` exactly like timm's ``Normalize`` (float32).
    """
    _check_split(split)
    images = _unnormalised(split)
    _, labels = raw_images(split)
    if normalize:
        mean = np.asarray(DIGITS_MEAN, dtype=np.float32)[:, None, None]
        std = np.asarray(DIGITS_STD, dtype=np.float32)[:, None, None]
        images = (images - mean) / std
    else:
        images = images.copy()
    return images, labels


def compute_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel of the train split's [0, 1] pixels (how the constants were made)."""
    images = _unnormalised("train").astype(np.float64)
    mean = images.mean(axis=(0, 2, 3))
    std = images.std(axis=(0, 2, 3))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


class DigitsDataset(Dataset):
    """A digits split as a torch Dataset of (normalised float32 3 x IMAGE_SIZE x IMAGE_SIZE tensor, int label)."""

    def __init__(self, split: Split = "train") -> None:
        images, labels = digits_arrays(split, normalize=True)
        self.split = split
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.classes = [str(c) for c in range(NUM_CLASSES)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
