"""Exported files: export (the toolkit), then check, validate and build, which run on the field
install too (validate against a checkpoint needs PyTorch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import refuse_overwriting_inputs
from ltmp_deploy.options import DeviceChoice, add_options, from_args, positive_int
from ltmp_deploy.runtime.metadata import EXPORT_MODES

# -- export ---------------------------------------------------------------------------------------


def add_export(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "export",
        run_export,
        "Export a toolkit checkpoint to ONNX (fixed or threshold mode) and validate it against PyTorch.",
        "ltmp-deploy export fixed.safetensors --mode fixed -o fixed.onnx",
        "ltmp-deploy export learned.safetensors --mode threshold --decisions -o threshold.onnx",
        toolkit=True,
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="toolkit checkpoint (.safetensors) from patch, learn or calibrate"
    )
    p.add_argument(
        "--mode",
        choices=EXPORT_MODES,
        help="fixed: static token counts (all TensorRT versions); threshold: per-image adaptive (TensorRT >= 8.6, "
        "ONNX Runtime). Default: the checkpoint's mode",
    )
    p.add_argument(
        "--opset",
        type=positive_int,
        help="ONNX opset (default 16 for fixed, which TensorRT 8.5 reads; 17 for threshold)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        help="a fixed batch size (default: a dynamic batch axis). Pinning lets the shape computations fold, which "
        "pays at small batches",
    )
    p.add_argument(
        "--fp16", action="store_true", help="an fp16 graph, for strongly typed TensorRT builds (TensorRT 11)"
    )
    p.add_argument(
        "--decisions",
        action="store_true",
        help="extra outputs with each block's kept and merged token "
        "indices: for audit logs and token pictures (predict --log-decisions, show) and parity debugging",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")
    p.add_argument(
        "--data",
        metavar="DATA",
        help="threshold mode: measure the FLOPs in the metadata on held-out images of 'digits' or an image folder "
        "(default: the folder the checkpoint learned on when it is still here, else the digits test split for a "
        "model that takes it, else random images, on which threshold mode may merge nothing; the metadata says "
        "which)",
    )
    p.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton Inference Server model repository here: NAME_onnx (onnxruntime) and NAME_trt "
        "(tensorrt_plan; build its engine on the server GPU)",
    )
    p.add_argument(
        "--triton-max-batch",
        type=positive_int,
        default=8,
        metavar="N",
        help="max_batch_size of the Triton models, with dynamic batching",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")


def run_export(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.files import ensure_writable_folder
    from ltmp_deploy.runtime.parity.compare import RANDOM_IMAGES, RANDOM_WARNING

    if args.triton_repo:
        ensure_writable_folder(args.triton_repo, "--triton-repo")  # before the export, not after it
    refuse_overwriting_inputs([("-o", args.output)], [args.checkpoint])
    result = export_onnx(
        args.checkpoint,
        args.output,
        mode=args.mode,
        opset=args.opset,
        batch=args.batch,
        fp16=args.fp16,
        decisions=args.decisions,
        validate=not args.no_validate,
        data=args.data,
    )
    meta = result.metadata
    macs = meta["block_macs"]
    measured = f", on {meta['flops_measured_on']}" if meta["mode"] == "threshold" else ""
    print(
        f"wrote {result.path}: {meta['mode']} mode, opset {meta['opset']}, {meta['precision']}, "
        f"block FLOPs {macs['patched'] / macs['unpatched']:.3f} of unpatched ({macs['basis']}{measured})"
    )
    if meta["mode"] == "threshold" and RANDOM_IMAGES in meta["flops_measured_on"]:
        print(f"note: {RANDOM_WARNING} on them: these FLOPs are not what real images cost (give --data FOLDER)")
    if result.validation is not None:
        print(result.validation.summary())
    if args.triton_repo:
        from ltmp_deploy.runtime.triton import write_triton_repo

        print(write_triton_repo(result.path, args.triton_repo, max_batch_size=args.triton_max_batch).summary())
    return 0


# -- check ----------------------------------------------------------------------------------------


def add_check(add: Callable[..., argparse.ArgumentParser]) -> None:
    from ltmp_deploy.runtime.trt.presets import PRESETS
    from ltmp_deploy.runtime.trt.targets import TRT_TARGETS

    p = add(
        "check",
        run_check,
        "Check an ONNX graph against what a TensorRT version's ONNX parser imports; exit 1 listing the offending "
        "nodes.",
        "ltmp-deploy check fixed.onnx --trt 8.5 --trt 10.3 --trt 10.13",
        "ltmp-deploy check fixed.onnx --preset xavier-nx",
    )
    p.add_argument("onnx", metavar="FILE.onnx")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="check for every TensorRT version of this build target (and the export modes it builds)",
    )
    p.add_argument(
        "--trt",
        action="append",
        choices=list(TRT_TARGETS),
        metavar="VERSION",
        help="; ".join(f"{k}: {v}" for k, v in TRT_TARGETS.items()) + "; repeat for several",
    )


def run_check(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.trt.parser_check import check_model
    from ltmp_deploy.runtime.trt.plan import check_preset_mode

    targets = list(args.trt or [])
    if args.preset is not None:
        targets += [t for t in check_preset_mode(args.onnx, args.preset) if t not in targets]
    if not targets:
        raise LTMPError("check: name a TensorRT version with --trt, or a build target with --preset")
    failed = 0
    for target in targets:
        report = check_model(args.onnx, target)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0


# -- validate -------------------------------------------------------------------------------------


def add_validate(add: Callable[..., argparse.ArgumentParser]) -> None:
    from ltmp_deploy.runtime.backends import BACKENDS
    from ltmp_deploy.runtime.parity.inputs import FOLDER_IMAGES, images_arg

    p = add(
        "validate",
        run_validate,
        "Prove a graph or engine answers like PyTorch: Polygraphy's Comparator over PyTorch, ONNX Runtime and "
        "TensorRT runners; exit 1 when it does not.",
        "ltmp-deploy validate fixed.onnx --against fixed.safetensors -o parity.json",
        "ltmp-deploy validate fixed.engine --against fixed.onnx --json",
        "ltmp-deploy validate threshold.onnx --against learned.safetensors --images photos/ --require-reductions",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".onnx graph(s) and/or .engine/.plan file(s); or one checkpoint alone, exported on the fly",
    )
    p.add_argument(
        "--against",
        metavar="CHECKPOINT",
        help="the reference: the toolkit checkpoint FILE came from (PyTorch), or for an engine its source .onnx "
        "(ONNX Runtime, no torch needed)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        type=images_arg,
        metavar="N|FOLDER|FILE",
        help="what to compare on: a count of sample images (default 16: against a checkpoint, held-out images of "
        "the folder it learned on when that is here, real digits for the embedded digits model, else seeded random "
        f"images, on which threshold mode may merge nothing), an image folder (at most {FOLDER_IMAGES} of its "
        "images, evenly drawn) or image files",
    )
    p.add_argument(
        "--require-reductions",
        action="store_true",
        help="CI gate: exit 1 when the images exercised no merge and no prune (the decisions compared never "
        "reduced a token)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        help="batch size for dynamic-batch files (default 4; fixed-batch files use theirs)",
    )
    p.add_argument(
        "--backend", choices=["auto", *BACKENDS], default="auto", help="runner for FILE (auto: from its type)"
    )
    p.add_argument(
        "--provider",
        action="append",
        metavar="NAME",
        help="ONNX Runtime execution provider for FILE (cpu, cuda, tensorrt); repeat in order of preference. Default "
        "cpu",
    )
    p.add_argument(
        "--mode",
        choices=EXPORT_MODES,
        help="with a checkpoint alone: the mode to export and compare (default: its own)",
    )
    add_options(p, DeviceChoice)  # the PyTorch reference's
    p.add_argument("--json", action="store_true", help="the full report as JSON on stdout instead of the summary")
    p.add_argument("-o", "--output", metavar="REPORT.json", help="also write the full report as JSON here")


def run_validate(args: argparse.Namespace) -> int:
    """A checkpoint in play means PyTorch as the reference (the full toolkit); else ONNX Runtime."""
    from ltmp_deploy.api import validate
    from ltmp_deploy.runtime.parity.inputs import images_option

    refuse_overwriting_inputs([("-o", args.output)], [*args.files, args.against])
    options = {"batch": args.batch, "json_path": args.output, "backend": args.backend, "providers": args.provider}
    if args.device is not None:
        options["device"] = args.device
    if args.images is not None:
        options["images"] = images_option(args.images)
    report = validate(args.files, args.against, mode=args.mode, require_reductions=args.require_reductions, **options)
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        print(report.summary())
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr if args.json else sys.stdout)
    if report.failures and all(c.ok for c in report.comparisons):
        print(f"validate: {report.failures[0]}", file=sys.stderr)  # the gate's one line, beside the summary
    return 0 if report.ok else 1


# -- build ----------------------------------------------------------------------------------------


def add_build(add: Callable[..., argparse.ArgumentParser]) -> None:
    from ltmp_deploy.runtime.int8.calibration_data import METHODS
    from ltmp_deploy.runtime.trt.build_options import BuildOptions

    p = add(
        "build",
        run_build,
        "Build a TensorRT engine (and ENGINE.json) for a target preset with Polygraphy's loaders; "
        "or print the equivalent trtexec command.",
        "ltmp-deploy build fixed.onnx --preset orin-nx --precision fp16 -o fixed.engine",
        "ltmp-deploy build fixed.onnx --preset thor --print-trtexec -o fixed.engine",
    )
    p.add_argument("onnx", metavar="OUT.onnx", help="graph from 'ltmp-deploy export'")
    add_options(p, BuildOptions)
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="int8 on a graph without Q/DQ nodes: preprocessed images (N, C, H, W) in .npy/.npz, or the "
        "Polygraphy JSON of 'calibrate --int8-calib'; the graph is quantized first to ENGINE_STEM.int8.onnx",
    )
    p.add_argument(
        "--calibration-method",
        choices=METHODS,
        default=METHODS[0],
        help=f"ONNX Runtime calibrator (threshold-mode graphs take {METHODS[0]} only)",
    )
    p.add_argument(
        "--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit (needs no TensorRT)"
    )
    p.add_argument(
        "--sidecar-only",
        metavar="TRT_VERSION",
        help="ENGINE was built by trtexec from the printed command, "
        "with this TensorRT version (10.3.0 or trtexec's v100300): write only ENGINE.json",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="ENGINE",
        help="engine to write (.plan or .engine); its sidecar goes to ENGINE.json",
    )


def run_build(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.trt.build import build, quantized_path
    from ltmp_deploy.runtime.trt.build_options import BuildOptions
    from ltmp_deploy.runtime.trt.engine import sidecar_path

    written = [("-o", args.output), ("-o", sidecar_path(args.output)), ("-o", quantized_path(args.output))]
    refuse_overwriting_inputs(written, [args.onnx, args.calibration])
    result = build(
        args.onnx,
        args.output,
        from_args(BuildOptions, args),
        calibration=args.calibration,
        calibration_method=args.calibration_method,
        print_trtexec=args.print_trtexec,
        built_by_trtexec=args.sidecar_only,
    )
    if result.quantized is not None:
        print(f"quantized to {result.quantized} (Q/DQ, {args.calibration_method} calibration)", file=sys.stderr)
    if args.print_trtexec:
        print(result.trtexec)
    else:
        print(f"wrote {result.engine} and {result.sidecar}" if args.sidecar_only is None else f"wrote {result.sidecar}")
    return 0
