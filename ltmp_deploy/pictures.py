"""Token pictures: what a model threw away, per image a grid over the blocks, drawn from a
checkpoint (PyTorch), from an ONNX file or engine exported with ``--decisions``, or from an audit
log (both without torch). The one entry point: ``show`` calls :func:`draw_decisions`, the trial
report :func:`token_grid`. The maps come from ``ltmp.token_maps`` (PyTorch) or
``runtime.patch_maps`` (an exported graph, a log); ``runtime.visualize`` draws them.

    draw_decisions("model.onnx", "cat.png", images=["cat.jpg"])
    draw_decisions("audit.jsonl", "pictures/", logged=["cat.jpg", "7"])

Every picture is drawn before any is written, and then all are written or none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import refuse_overwriting_inputs

DIGITS = "digits:"  # the name of image N of the embedded digits test split
Picture = Any  # (picture the model saw, per-block PatchMaps, patch grid)


def draw_decisions(
    source: str,
    output: str | os.PathLike,
    images: Sequence[str] = (),
    *,
    logged: Sequence[str] = (),
    mode: str | None = None,
    device: str | None = None,
) -> list[Path]:
    """Draw ``images`` through the model ``source``, or the ``logged`` images of the audit log
    ``source`` (a logged path, a file name or a line index); return the PNGs written. ``output``:
    the PNG for one image, a folder (one PNG each) for several. ``mode``: a checkpoint's mode;
    ``device``: where a checkpoint runs (default: CUDA when available, else the CPU)."""
    kind = source_kind(source)
    if kind != "checkpoint" and mode:
        raise LTMPError(f"--mode: applies to a checkpoint; {source} decided its mode when it was made")
    if kind != "checkpoint" and device:
        raise LTMPError(f"--device: applies to a checkpoint, which PyTorch runs; {source} is not one")
    if kind == "log":
        if images:
            raise LTMPError(
                f"{source}: an audit log draws the images it logged; choose them with --image, not {images[0]}"
            )
        if not logged:
            raise LTMPError(f"{source}: choose the logged images to draw with --image NAME or --image INDEX")
        outs = picture_paths(output, logged)
        refuse_overwriting_inputs([("-o", o) for o in outs], [source])
        read: list[str] = []
        pictures = list(log_pictures(source, logged, read))  # every picture drawn before any is written
        refuse_overwriting_inputs([("-o", o) for o in outs], read)
    else:
        if logged:
            raise LTMPError(_not_a_log(source))
        if not images:
            raise LTMPError(f"{source}: give at least one image to draw")
        outs = picture_paths(output, images)
        refuse_overwriting_inputs([("-o", o) for o in outs], [source, *images])
        drawn = (
            graph_pictures(source, images) if kind == "runtime" else checkpoint_pictures(source, images, mode, device)
        )
        pictures = list(drawn)
    return write_pictures(outs, pictures)


def source_kind(source: str) -> str:
    """What ``source`` is, from its content: "log", "runtime" (an exported graph or engine) or "checkpoint"."""
    from ltmp_deploy.formats import FileKind
    from ltmp_deploy.runtime.audit import is_audit_log
    from ltmp_deploy.runtime.trt.engine import model_file_kind

    path = Path(source)
    if not path.is_file():
        return "checkpoint"  # a model name, or a missing file the checkpoint loader names
    kind = model_file_kind(path)
    if kind in (FileKind.ONNX, FileKind.ENGINE):
        return "runtime"
    if kind is FileKind.JSON and is_audit_log(path):
        return "log"
    return "checkpoint"


def _not_a_log(source: str) -> str:
    from ltmp_deploy.formats import sniff

    advice = "--image picks images of an audit log; give image files after a model instead"
    if not Path(source).exists():
        return f"{source}: no such file (--image picks images of an audit log)"
    if not Path(source).is_file():
        return f"--image: {advice}"
    return f"{source}: not an audit log ({sniff(source).human}): {advice}"


def picture_paths(output: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """``output`` itself for one image; for several, a file per image in the folder ``output``
    (made when the pictures are written). Checked here, before any drawing."""
    from ltmp_deploy.files import ensure_writable, ensure_writable_folder

    target = Path(output)
    if len(names) == 1 and not target.is_dir():
        return [ensure_writable(target)]
    if target.exists() and not target.is_dir():
        raise LTMPError(f"-o {output}: {len(names)} images need a folder to write into, and this is a file")
    ensure_writable_folder(target, "-o")
    outs, seen = [], set()
    for name in names:
        stem = Path(name.replace(":", "-")).stem or "image"
        out, n = target / f"{stem}.png", 1
        while out in seen:
            n += 1
            out = target / f"{stem}-{n}.png"
        seen.add(out)
        outs.append(out)
    return outs


def write_pictures(outs: Sequence[Path], pictures: Sequence[Picture]) -> list[Path]:
    """Draw every picture, then write them all or none: each goes to a temporary file first, and
    the files are renamed into place only when every one was written."""
    from ltmp_deploy.files import atomic_output
    from ltmp_deploy.runtime.visualize import draw

    drawn = [draw(picture, maps, grid) for picture, maps, grid in pictures]
    folder = outs[0].parent
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for out, image in zip(outs, drawn):
                image.save(stack.enter_context(atomic_output(out, suffix=".png")), format="PNG")
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return list(outs)


def log_pictures(path: str, wanted: Sequence[str], read: list[str]) -> Iterator[Picture]:
    """The pictures of the ``wanted`` entries of the log; ``read`` gets each image file read."""
    from ltmp_deploy.files import sha256
    from ltmp_deploy.runtime.audit import entry_maps, select
    from ltmp_deploy.runtime.preprocess import model_view

    for entry in select(path, wanted):
        image = entry.get("image")
        where = f"{path}: image {image!r}"
        if not image or not os.path.isfile(image):
            raise LTMPError(f"{where}: not found here (run show from the folder predict ran in)")
        if entry.get("image_sha256") and sha256(image) != entry["image_sha256"]:
            raise LTMPError(
                f"{where}: the file changed since it was logged (its sha256 differs); the log no longer describes it"
            )
        grid, maps = entry_maps(entry, where)
        read.append(image)
        yield model_view(image, entry["input"]["data_config"]), maps, grid


def graph_pictures(path: str, images: Sequence[str]) -> Iterator[Picture]:
    """The pictures of ``images`` through an ONNX file or engine exported with ``--decisions``."""
    from ltmp_deploy.runtime.audit import NO_DECISIONS
    from ltmp_deploy.runtime.patch_maps import image_maps, patch_grid
    from ltmp_deploy.runtime.preprocess import model_view
    from ltmp_deploy.runtime.session import Session

    with Session(path) as session:
        if not session.has_decisions:
            raise LTMPError(f"{path}: {NO_DECISIONS.replace('to log', 'to draw')}")
        meta = session.metadata
        grid = patch_grid(meta, path)
        for image in images:
            if image.startswith(DIGITS):
                raise LTMPError(
                    f"{image}: the embedded digits need the toolkit; save the digit as a PNG to draw it from {path}"
                )
            result = session.predict([image], k=1)
            maps = image_maps(result.decisions, 0, int(meta["num_prefix_tokens"]), grid[0] * grid[1])
            yield model_view(image, meta["data_config"]), maps, grid


def checkpoint_pictures(
    spec: str, images: Sequence[str], mode: str | None, device: str | None = None
) -> Iterator[Picture]:
    """The pictures of ``images`` (files, or ``digits:N``) through a toolkit checkpoint, with PyTorch."""
    try:
        import torch
    except ImportError as err:
        raise LTMPError(
            f"{spec}: a checkpoint draws only with the full toolkit, not on a field install; draw from an audit "
            "log (predict --log-decisions) or an ONNX file exported with --decisions instead"
        ) from err

    from ltmp_deploy import load
    from ltmp_deploy.ltmp.data_config import model_data_config
    from ltmp_deploy.ltmp.device import resolve_device
    from ltmp_deploy.runtime.preprocess import model_view, preprocess

    where = resolve_device(device)  # before the checkpoint is read
    model = load(spec, mode=mode or None).to(where)
    cfg = model_data_config(model)
    for image in images:
        picture = _digit(image) if image.startswith(DIGITS) else image
        tensor = torch.from_numpy(preprocess(picture, cfg))[0].to(where)
        yield model_picture(model, tensor, model_view(picture, cfg))


def model_picture(model: Any, image: Any, display: Any) -> Picture:
    """A PyTorch model's picture of ``image`` (one preprocessed (C, H, W) tensor) over ``display``
    ((H, W, 3) uint8, the picture as the model saw it)."""
    from ltmp_deploy.ltmp.token_maps import token_maps

    return display, token_maps(model, image), tuple(model.patch_embed.grid_size)


def token_grid(model: Any, image: Any, display: Any, out: str | os.PathLike) -> Path:
    """Draw a PyTorch model's decisions on ``image`` over ``display`` into the PNG ``out`` (the trial
    report's token grids)."""
    return write_pictures([Path(out)], [model_picture(model, image, display)])[0]


def _digit(name: str) -> Any:
    """Image N of the embedded digits test split, as its 8x8 grey picture."""
    from ltmp_deploy.data.digits import raw_images

    pictures, _ = raw_images("test")
    index = name[len(DIGITS) :]
    if not index.isdigit() or int(index) >= len(pictures):
        raise LTMPError(f"{name}: the digits test split has images {DIGITS}0 to {DIGITS}{len(pictures) - 1}")
    return pictures[int(index)]


__all__ = ["draw_decisions", "token_grid"]
