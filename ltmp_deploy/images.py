"""Opening images from the field: untrusted files, every refusal one LTMPError naming the file.

Every path that reads an image (preprocessing, predict's folder walk, show, image folders for
training and calibration) goes through :func:`open_image` or :func:`image_problem`. Pillow's
decompression-bomb warning is an error here (a device decoding a 30000 x 30000 PNG runs out of
memory long before it answers), and decoder errors and modes Pillow cannot turn into RGB become
the same one line. Pillow and the standard library only: the field runtime runs it on Python 3.8.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError

from ltmp_deploy.errors import LTMPError

NOT_AN_IMAGE = "not an image Pillow can read"
# What Pillow raises for a file it recognised but cannot decode: truncated data, a bad chunk, a
# mode with no RGB conversion, a size past the limit.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _bomb(name: str, image: Any) -> str | None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        return (
            f"{name}: {image.width}x{image.height} pixels, over Pillow's decompression-bomb limit of {limit}; "
            "refusing to decode it (raise PIL.Image.MAX_IMAGE_PIXELS if the image is trusted)"
        )
    return None


def _refusal(name: str, err: BaseException) -> LTMPError:
    if isinstance(err, UnidentifiedImageError):
        return LTMPError(f"{name}: {NOT_AN_IMAGE}")
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return LTMPError(f"{name}: over Pillow's decompression-bomb limit ({' '.join(str(err).split())[:160]})")
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return LTMPError(f"{name}: corrupt, truncated or unsupported image ({reason})")


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """``image`` decoded as RGB (timm's readers convert too), or a one-line LTMPError naming ``name``."""
    found = _bomb(name, image)
    if found:
        raise LTMPError(found)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return image.convert("RGB")
    except DECODE_ERRORS as err:
        raise _refusal(name, err) from err


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path`` decoded as RGB; a one-line LTMPError naming it when it is missing,
    not an image, corrupt, of a mode with no RGB conversion or over the decompression-bomb limit."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise LTMPError(f"{name}: image file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                return to_rgb(image, name)
    except LTMPError:
        raise
    except (UnidentifiedImageError, *DECODE_ERRORS) as err:
        raise _refusal(name, err) from err


def image_problem(path: str | os.PathLike) -> str | None:
    """None when Pillow recognises ``path`` as an image within the limits (from its header; nothing
    is decoded), else the one-line reason (which starts with the file)."""
    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                return _bomb(name, image)
    except (UnidentifiedImageError, *DECODE_ERRORS) as err:
        return str(_refusal(name, err))


__all__ = ["NOT_AN_IMAGE", "image_problem", "open_image", "to_rgb"]
