"""timm's eval preprocessing in NumPy and Pillow only (the runtime side: no torch, no timm).

A Jetson in the field has numpy and Pillow but not torch, yet must feed engines exactly what
the model saw in PyTorch. This re-implements ``timm.data.create_transform(**cfg,
is_training=False)`` step by step, with the same integer arithmetic for sizes and offsets
(torchvision truncates the long side, ``round`` is Python's half-to-even) and the same Pillow
resize call torchvision makes for PIL images, so results are bit-identical, not just close.
Keep it Python 3.8 compatible (JetPack 5.1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.images import open_image, to_rgb
from ltmp_deploy.schemas import check, plain

ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray]

# timm's interpolation names -> Pillow filters (what torchvision's pil_modes_mapping picks).
_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
}
DEFAULT_CROP_PCT = 0.875  # timm's default when crop_pct is None


def _open(item: ImageLike, index: int) -> Image.Image:
    """Any accepted input as an RGB PIL image (timm's dataset readers also convert to RGB)."""
    if isinstance(item, Image.Image):
        return to_rgb(item, f"image {index}")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise LTMPError(
                f"image {index}: expected a uint8 HxW or HxWxC (C = 1, 3 or 4) array, "
                f"got {item.dtype} with shape {item.shape}"
            )
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        return to_rgb(Image.fromarray(np.ascontiguousarray(item)), f"image {index}")
    if isinstance(item, (str, os.PathLike)):
        return open_image(item)
    raise LTMPError(f"image {index}: expected a PIL image, a file path or a uint8 array, got {type(item).__name__}")


def _resize(img: Image.Image, size_hw: tuple[int, int], resample: int) -> Image.Image:
    # torchvision returns the image untouched when the size already matches.
    if (img.height, img.width) == size_hw:
        return img
    return img.resize((size_hw[1], size_hw[0]), resample)


def _shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    # torchvision's _compute_resized_output_size for Resize(int): the long side is truncated.
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _keep_ratio_size(h: int, w: int, target: tuple[int, int], longest: float) -> tuple[int, int]:
    # timm's ResizeKeepRatio.get_params without the random parts.
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)


def _center_crop_or_pad(arr: np.ndarray, size: tuple[int, int], fill: Sequence[int]) -> np.ndarray:
    """torchvision's center_crop / timm's center_crop_or_pad on an HxWx3 uint8 array."""
    crop_h, crop_w = size
    h, w = arr.shape[:2]
    if crop_w > w or crop_h > h:
        pad_top = (crop_h - h) // 2 if crop_h > h else 0
        pad_bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        pad_left = (crop_w - w) // 2 if crop_w > w else 0
        pad_right = (crop_w - w + 1) // 2 if crop_w > w else 0
        padded = np.empty((h + pad_top + pad_bottom, w + pad_left + pad_right, 3), dtype=np.uint8)
        padded[...] = np.asarray(fill, dtype=np.uint8)
        padded[pad_top : pad_top + h, pad_left : pad_left + w] = arr
        arr = padded
        h, w = arr.shape[:2]
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return arr[top : top + crop_h, left : left + crop_w]


def _one(img: Image.Image, cfg: Mapping[str, Any]) -> np.ndarray:
    _, out_h, out_w = (int(v) for v in cfg["input_size"])
    crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    crop_mode = cfg.get("crop_mode") or "center"
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in _FILTERS:
        raise LTMPError(f"preprocess config: unknown interpolation {interpolation!r}; one of {sorted(_FILTERS)}")
    resample = _FILTERS[interpolation]
    scale = (math.floor(out_h / crop_pct), math.floor(out_w / crop_pct))
    fill: Sequence[int] = (0, 0, 0)

    if crop_mode == "squash":
        img = _resize(img, scale, resample)
    elif crop_mode == "border":
        img = _resize(img, _keep_ratio_size(img.height, img.width, scale, 1.0), resample)
        fill = [round(255 * v) for v in cfg["mean"]]
    elif crop_mode == "center":
        if scale[0] == scale[1]:
            img = _resize(img, _shorter_side_size(img.height, img.width, scale[0]), resample)
        else:
            img = _resize(img, _keep_ratio_size(img.height, img.width, scale, 0.0), resample)
    else:
        raise LTMPError(f"preprocess config: unknown crop_mode {crop_mode!r}; one of center, squash, border")
    arr = _center_crop_or_pad(np.asarray(img, dtype=np.uint8), (out_h, out_w), fill)
    return arr.transpose(2, 0, 1)


def model_view(image: ImageLike, cfg: Mapping[str, Any]) -> np.ndarray:
    """The picture the model sees, resized and cropped as :func:`preprocess` does but not
    normalised: (H, W, 3) uint8, what token pictures are drawn over."""
    check(plain(dict(cfg)) if isinstance(cfg, Mapping) else cfg, "data-config", "preprocess config")
    return np.ascontiguousarray(_one(_open(image, 0), cfg).transpose(1, 2, 0))


def preprocess(images: ImageLike | Sequence[ImageLike], cfg: Mapping[str, Any]) -> np.ndarray:
    """Images -> float32 (N, 3, H, W), as timm's eval transform for ``cfg`` would produce them.

    ``cfg`` is what ``timm.data.resolve_data_config`` returns (input_size, interpolation,
    crop_pct, crop_mode, mean, std). ``images`` is one image or a sequence of them: PIL images,
    file paths, or uint8 HxW / HxWxC arrays; a 4-D uint8 array is a batch of HxWxC images.
    """
    if isinstance(images, (Image.Image, str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    check(plain(dict(cfg)) if isinstance(cfg, Mapping) else cfg, "data-config", "preprocess config")
    pixels = np.stack([_one(_open(item, i), cfg) for i, item in enumerate(images)]) if len(images) else None
    if pixels is None:
        _, h, w = (int(v) for v in cfg["input_size"])
        return np.zeros((0, 3, h, w), dtype=np.float32)
    mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(cfg["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    # Same float32 operations, in the same order, as ToTensor (x / 255) then Normalize.
    return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
