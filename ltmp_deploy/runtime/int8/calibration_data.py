"""INT8 calibration images: written in the layouts the maintained quantizers and Polygraphy read,
and read back from any of them by one reader.

``ltmp-deploy calibrate --int8-calib DIR`` writes one batch of preprocessed images three times
(each file whole):

- ``calib.npy``: (N, C, H, W) float32. NVIDIA ModelOpt's ONNX PTQ reads it with
  ``--calibration_data_path`` for a single-input model.
- ``calib.npz``: the same array under the graph's input name (``images``), ModelOpt's layout for
  named inputs.
- ``calib_polygraphy.json``: a list of feed dicts in Polygraphy's JSON format, for
  ``polygraphy run --load-inputs`` and ``polygraphy convert --int8 --data-loader``.

:func:`read_calibration_data` takes any of the three (or an array) and is what
``ltmp-deploy build --calibration`` and :func:`ltmp_deploy.runtime.int8.quantize.quantize_int8` use.
Torch-free: numpy, and Polygraphy for its JSON format.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable_folder
from ltmp_deploy.runtime.metadata import INPUT_NAME

CalibrationLike = Union[np.ndarray, str, os.PathLike]
FILES = {"npy": "calib.npy", "npz": "calib.npz", "polygraphy": "calib_polygraphy.json"}
METHODS = ("minmax", "entropy", "percentile")  # ONNX Runtime's calibrators, as quantize_int8 names them
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK"


def write_calibration_data(images: np.ndarray, folder: str | os.PathLike, batch_size: int = 8) -> dict[str, Path]:
    """Write ``images`` (N, C, H, W) in every layout under ``folder``; return the paths by layout name."""
    images = _checked(images, where="calibration images")
    folder = ensure_writable_folder(folder, "--int8-calib")
    folder.mkdir(parents=True, exist_ok=True)
    from polygraphy.json import save_json

    paths = {layout: folder / name for layout, name in FILES.items()}
    feeds = [{INPUT_NAME: images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
    with contextlib.ExitStack() as stack:  # the three layouts all appear, or none does
        with open(stack.enter_context(atomic_output(paths["npy"], suffix=".npy")), "wb") as f:
            np.save(f, images)
        with open(stack.enter_context(atomic_output(paths["npz"], suffix=".npz")), "wb") as f:
            np.savez(f, **{INPUT_NAME: images})
        save_json(
            feeds,
            str(stack.enter_context(atomic_output(paths["polygraphy"], suffix=".json"))),
            description="LTMP INT8 calibration feeds",
        )
    return paths


def read_calibration_data(
    calibration: CalibrationLike, input_shape: Sequence[int | None] | None = None, where: str = "calibration"
) -> np.ndarray:
    """Calibration images as float32 (N, C, H, W), from an array or a ``.npy``, ``.npz`` (array
    ``images``, or its only array) or Polygraphy JSON file; checked against ``input_shape`` (the
    graph's input, None for a dynamic dimension) when given. Images must already be preprocessed
    the way the model expects (normalised floats). Raises a one-line LTMPError.
    """
    if isinstance(calibration, (str, os.PathLike)):
        where = os.fspath(calibration)
        array = _read_file(Path(calibration))
    elif isinstance(calibration, np.ndarray):
        array = calibration
    else:
        raise LTMPError(f"{where}: expected a NumPy array or a .npy/.npz/.json path, got {type(calibration).__name__}")
    return _checked(array, input_shape, where)


def _checked(
    array: np.ndarray, input_shape: Sequence[int | None] | None = None, where: str = "calibration"
) -> np.ndarray:
    """``array`` as contiguous float32 (N, C, H, W), or a one-line LTMPError saying what is wrong."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise LTMPError(
            f"{where}: calibration images must be preprocessed floats (normalised like the model's "
            f"data_config), got dtype {array.dtype}"
        )
    expected = tuple(input_shape[1:]) if input_shape is not None else (None, None, None)
    if array.ndim != 4 or any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise LTMPError(f"{where}: calibration images must have shape (N, {want}), got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise LTMPError(f"{where}: no calibration images (N = 0)")
    if not np.isfinite(array).all():
        raise LTMPError(f"{where}: calibration images contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise LTMPError(f"{path}: calibration file does not exist")
    with path.open("rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGIC):
        return _read_numpy(path)
    if path.suffix.lower() == ".json" or head.lstrip()[:1] in (b"[", b"{"):
        return _read_feeds(path)
    raise LTMPError(f"{path}: not a NumPy .npy/.npz file nor Polygraphy JSON feeds")


def _read_numpy(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            keys = list(loaded.files)
            if INPUT_NAME in keys or len(keys) == 1:
                return loaded[INPUT_NAME if INPUT_NAME in keys else keys[0]]
    except Exception as exc:  # noqa: BLE001  (a damaged header or archive raises zipfile, tokenize, zlib errors)
        first = first_line(exc, 200)
        raise LTMPError(f"{path}: not a NumPy .npy/.npz file, or a truncated or corrupt one ({first})") from exc
    raise LTMPError(f"{path}: .npz holds {keys}; name the calibration array '{INPUT_NAME}'")


def _read_feeds(path: Path) -> np.ndarray:
    """Polygraphy's feed list: each feed a dict {input name: batch}."""
    from polygraphy.json import load_json

    try:
        feeds = load_json(str(path))
    except Exception as exc:  # noqa: BLE001 - JSON and Polygraphy's decoder raise several types
        first = first_line(exc)
        raise LTMPError(f"{path}: not readable Polygraphy JSON ({first})") from exc
    if not isinstance(feeds, list) or not feeds or not all(isinstance(f, dict) for f in feeds):
        raise LTMPError(f"{path}: expected a list of feed dicts (Polygraphy's --save-inputs format)")
    batches = []
    for feed in feeds:
        if INPUT_NAME not in feed and len(feed) != 1:
            raise LTMPError(f"{path}: a feed holds {list(feed)}; name the calibration input '{INPUT_NAME}'")
        batches.append(np.asarray(feed.get(INPUT_NAME, next(iter(feed.values())))))
    if len({b.shape[1:] for b in batches}) != 1:
        raise LTMPError(f"{path}: the feeds' images differ in shape: {sorted({b.shape for b in batches})}")
    return np.concatenate(batches)


__all__ = ["FILES", "METHODS", "CalibrationLike", "read_calibration_data", "write_calibration_data"]
