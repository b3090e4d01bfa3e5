"""The field commands of ``ltmp-deploy``: predict, show and inspect.

Thin layers over ``ltmp_deploy.runtime``: none of them imports torch unless it is handed a
checkpoint (``show`` draws a checkpoint's decisions with PyTorch), so they run on a device with
the field install only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError

DIGITS = "digits:"  # show's name for image N of the embedded digits test split
Picture = Any  # (picture the model saw, per-block PatchMaps, patch grid)


# -- predict ------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import ensure_writable, refuse_overwriting_inputs
    from ltmp_deploy.runtime.audit import AuditLog
    from ltmp_deploy.runtime.predict import image_files, predict_files
    from ltmp_deploy.runtime.session import Session

    skipped: list[str] = []
    images = image_files(args.images, skipped)
    if args.log_decisions:
        ensure_writable(args.log_decisions)
        refuse_overwriting_inputs([("--log-decisions", args.log_decisions)], [args.file, *images])
    with Session(args.file, providers=args.provider) as session:
        log = AuditLog(args.log_decisions, session) if args.log_decisions else None
        try:
            named = {Path(i) for i in args.images if not Path(i).is_dir()}  # their refusal ends the run
            options = {"k": args.k, "batch": args.batch, "log": log, "progress": not args.no_progress}
            rows = predict_files(session, images, **options, skipped=skipped, explicit=named)
            if args.json:
                _print_json(rows)
            else:
                _print_table(rows, images)
        except BaseException:
            if log is not None:
                log.discard()
            raise
        if log is not None:
            print(f"wrote {log.close()}: {log.count} lines", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} image(s) that cannot be read safely: {'; '.join(skipped[:3])}", file=sys.stderr)
    return 0


def _print_json(rows: Iterator[Any]) -> None:
    for p in rows:
        print(json.dumps({"image": p.image, "topk": p.topk}), flush=True)


def _print_table(rows: Iterator[Any], images: Sequence[Path]) -> None:
    width = min(60, max(len("image"), *(len(os.fspath(i)) for i in images)))
    header = None
    for p in rows:
        cells = [f"{e['label'] if e['label'] is not None else e['class']} {e['prob']:.3f}" for e in p.topk]
        if header is None:
            header = f"{'image':<{width}}  " + "  ".join(f"{'top-' + str(j + 1):<16}" for j in range(len(cells)))
            print(header.rstrip())
        print((f"{p.image:<{width}}  " + "  ".join(f"{c:<16}" for c in cells)).rstrip(), flush=True)


# -- show ---------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import refuse_overwriting_inputs

    kind = _show_kind(args.source)
    if kind != "checkpoint" and args.mode:
        raise LTMPError(f"--mode: applies to a checkpoint; {args.source} decided its mode when it was made")
    if kind == "log":
        if args.images:
            raise LTMPError(
                f"{args.source}: an audit log draws the images it logged; "
                f"choose them with --image, not {args.images[0]}"
            )
        if not args.image:
            raise LTMPError(f"{args.source}: choose the logged images to draw with --image NAME or --image INDEX")
        names, logged = args.image, []
        outs = _outputs(args.output, names)
        refuse_overwriting_inputs([("-o", o) for o in outs], [args.source])
        pictures = list(_from_log(args.source, args.image, logged))  # every picture drawn before any is written
        refuse_overwriting_inputs([("-o", o) for o in outs], logged)
    else:
        if args.image:
            raise LTMPError(_not_a_log(args.source))
        if not args.images:
            raise LTMPError(f"{args.source}: give at least one image to draw")
        names = args.images
        outs = _outputs(args.output, names)
        refuse_overwriting_inputs([("-o", o) for o in outs], [args.source, *names])
        pictures = list(
            _from_runtime(args.source, args.images)
            if kind == "runtime"
            else _from_checkpoint(args.source, args.images, args.mode)
        )
    for out in _write_all(outs, pictures):
        print(f"wrote {out}")
    return 0


def _write_all(outs: Sequence[Path], pictures: Sequence[Picture]) -> list[Path]:
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


def _show_kind(source: str) -> str:
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


def _outputs(output: str, names: Sequence[str]) -> list[Path]:
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


def _from_log(path: str, wanted: Sequence[str], logged: list[str]) -> Iterator[Picture]:
    """The pictures of the ``wanted`` entries of the log; ``logged`` gets each image file read."""
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
        logged.append(image)
        yield model_view(image, entry["input"]["data_config"]), maps, grid


def _from_runtime(path: str, images: Sequence[str]) -> Iterator[Picture]:
    from ltmp_deploy.runtime.audit import NO_DECISIONS
    from ltmp_deploy.runtime.preprocess import model_view
    from ltmp_deploy.runtime.session import Session
    from ltmp_deploy.runtime.sources import image_maps, patch_grid

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


def _from_checkpoint(spec: str, images: Sequence[str], mode: str | None) -> Iterator[Picture]:
    try:
        import torch
    except ImportError as err:
        raise LTMPError(
            f"{spec}: a checkpoint draws only with the full toolkit, not on a field install; draw from an audit "
            "log (predict --log-decisions) or an ONNX file exported with --decisions instead"
        ) from err

    from ltmp_deploy import load
    from ltmp_deploy.ltmp.data_config import model_data_config
    from ltmp_deploy.report.grids import checkpoint_maps
    from ltmp_deploy.runtime.preprocess import model_view, preprocess

    model = load(spec, mode=mode or None)
    cfg, grid = model_data_config(model), tuple(model.patch_embed.grid_size)
    for image in images:
        picture = _digit(image) if image.startswith(DIGITS) else image
        yield model_view(picture, cfg), checkpoint_maps(model, torch.from_numpy(preprocess(picture, cfg))[0]), grid


def _digit(name: str) -> Any:
    """Image N of the embedded digits test split, as its 8x8 grey picture."""
    from ltmp_deploy.data.digits import raw_images

    pictures, _ = raw_images("test")
    index = name[len(DIGITS) :]
    if not index.isdigit() or int(index) >= len(pictures):
        raise LTMPError(f"{name}: the digits test split has images {DIGITS}0 to {DIGITS}{len(pictures) - 1}")
    return pictures[int(index)]


# -- inspect ------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.inspection import inspect_file, summary

    info = inspect_file(args.file)
    print(json.dumps(info, indent=2) if args.json else summary(info))
    return 0


__all__ = ["cmd_inspect", "cmd_predict", "cmd_show"]
