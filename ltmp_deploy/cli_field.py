"""The field commands: predict, show and inspect.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ltmp_deploy.options import DeviceChoice, add_options, positive_int
from ltmp_deploy.runtime.metadata import EXPORT_MODES

# -- predict --------------------------------------------------------------------------------------


def add_predict(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "predict",
        run_predict,
        "Classify image files and folders with an ONNX file or an engine (no torch needed): top-k per image, "
        "with an optional audit log of every block's token decisions.",
        "ltmp-deploy predict model.onnx photos/ -k 3 --log-decisions audit.jsonl",
    )
    p.add_argument("file", metavar="FILE", help="an ONNX file or a TensorRT engine (.engine/.plan with ENGINE.json)")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="image files, or folders searched recursively for images (recognised by content)",
    )
    p.add_argument("-k", type=positive_int, default=5, help="classes per image, best first")
    p.add_argument(
        "--batch", type=positive_int, metavar="N", help="images per run (default: a pinned batch's size, else 8)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout instead of a table")
    p.add_argument(
        "--log-decisions",
        metavar="AUDIT.jsonl",
        help="one JSON line per image with every block's kept "
        "count, pruned patches and merged groups (needs an export with --decisions); the file appears "
        "whole when the run ends, and not at all if it fails",
    )
    p.add_argument(
        "--provider",
        action="append",
        metavar="NAME",
        help="ONNX Runtime execution provider, repeated in order of preference (default: the best installed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run_predict(args: argparse.Namespace) -> int:
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
        # the log is discarded when the run fails, and appears whole when it ends
        with AuditLog(args.log_decisions, session) if args.log_decisions else contextlib.nullcontext() as log:
            named = {Path(i) for i in args.images if not Path(i).is_dir()}  # their refusal ends the run
            options = {"k": args.k, "batch": args.batch, "log": log, "progress": not args.no_progress}
            rows = predict_files(session, images, **options, skipped=skipped, explicit=named)
            if args.json:
                _print_json(rows)
            else:
                _print_table(rows, images)
        if log is not None:
            print(f"wrote {log.path}: {log.count} lines", file=sys.stderr)
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


# -- show -----------------------------------------------------------------------------------------


def add_show(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "show",
        run_show,
        "Draw what the model threw away, per image a grid over the blocks: pruned patches greyed, merged patches "
        "outlined in their group's colour; from a checkpoint, an ONNX file or engine exported with --decisions, "
        "or an audit log.",
        "ltmp-deploy show model.onnx cat.jpg -o cat.png",
        "ltmp-deploy show audit.jsonl --image cat.jpg --image 7 -o pictures/",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a toolkit checkpoint (PyTorch), an ONNX file or engine exported "
        "with --decisions (no torch needed), or an audit log from predict --log-decisions",
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="with a model: image files, or digits:N for image N of the embedded test split (checkpoints only)",
    )
    p.add_argument(
        "--image",
        action="append",
        metavar="NAME",
        help="with an audit log: a logged image (its path as "
        "logged, its file name, or a line index from 0); repeat for several",
    )
    p.add_argument("--mode", choices=EXPORT_MODES, help="a checkpoint's mode (default: the checkpoint's own)")
    add_options(p, DeviceChoice)  # a checkpoint's
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="the PNG to write; a folder for several images (one PNG each)",
    )


def run_show(args: argparse.Namespace) -> int:
    from ltmp_deploy.pictures import draw_decisions

    drawn = draw_decisions(
        args.source, args.output, args.images, logged=args.image or (), mode=args.mode, device=args.device
    )
    for out in drawn:
        print(f"wrote {out}")
    return 0


# -- inspect --------------------------------------------------------------------------------------


def add_inspect(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "inspect",
        run_inspect,
        "Say what a checkpoint, an ONNX file or an engine holds: model, mode, schedule, thresholds, FLOPs kept, "
        "precision, opset, inputs and outputs; an engine's TensorRT version and GPU.",
        "ltmp-deploy inspect model.plan --json",
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help="a toolkit checkpoint (.safetensors), an ONNX file, or an engine with its ENGINE.json",
    )
    p.add_argument("--json", action="store_true", help="everything as one JSON object on stdout instead of the summary")


def run_inspect(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.inspection import inspect_file, summary

    info = inspect_file(args.file)
    print(json.dumps(info, indent=2) if args.json else summary(info))
    return 0
