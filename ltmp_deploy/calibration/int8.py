"""INT8 calibration data, written in the layouts the maintained quantizers and Polygraphy read.

One batch of preprocessed images, three files (each written whole):

- ``calib.npy``: (N, 3, H, W) float32. NVIDIA ModelOpt's ONNX PTQ reads it with
  ``--calibration_data_path`` for a single-input model; ``ltmp_deploy.export.quantize`` feeds it to
  ONNX Runtime's ``quantize_static`` through a CalibrationDataReader.
- ``calib.npz``: the same array under the graph's input name (``images``), ModelOpt's layout for
  named inputs.
- ``calib_polygraphy.json``: a list of feed dicts in Polygraphy's JSON format, for
  ``polygraphy run --load-inputs`` and ``polygraphy convert --int8 --data-loader``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output
from ltmp_deploy.formats import FileKind, sniff

INPUT_NAME = "images"


def write_calibration_data(images: np.ndarray, folder: str | os.PathLike, batch_size: int = 8) -> dict[str, Path]:
    """Write ``images`` (N, 3, H, W) in every layout; return the paths by layout name."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise LTMPError(f"calibration images must be a non-empty (N, 3, H, W) array, got shape {images.shape}")
    if not np.isfinite(images).all():
        raise LTMPError("calibration images contain NaN or inf")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from polygraphy.json import save_json

    paths = {"npy": folder / "calib.npy", "npz": folder / "calib.npz", "polygraphy": folder / "calib_polygraphy.json"}
    with atomic_output(paths["npy"], suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images)
    with atomic_output(paths["npz"], suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{INPUT_NAME: images})
    feeds = [{INPUT_NAME: images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
    with atomic_output(paths["polygraphy"], suffix=".json") as tmp:
        save_json(feeds, str(tmp), description="LTMP INT8 calibration feeds")
    return paths


def read_calibration_data(path: str | os.PathLike) -> np.ndarray:
    """Images back from a ``.npy``, ``.npz`` (input ``images``) or Polygraphy JSON file, by content."""
    path = Path(path)
    if not path.is_file():
        raise LTMPError(f"{path}: no such calibration file")
    try:
        if sniff(path) is FileKind.JSON:
            from polygraphy.json import load_json

            return np.concatenate([feed[INPUT_NAME] for feed in load_json(str(path))])
        loaded = np.load(path, allow_pickle=False)  # .npy or .npz, told apart by numpy from the content
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return loaded[INPUT_NAME]
        return loaded
    except Exception as err:  # noqa: BLE001
        raise LTMPError(f"{path}: not a readable calibration file ({err})") from err
