"""The ``ltmp-deploy`` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, timm, onnx) happen inside the subcommands, so ``--help`` is instant and a
field device without torch can still run the runtime commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError


def cmd_patch(args: argparse.Namespace) -> int:
    from ltmp_deploy.ltmp.checkpoint import create_model, save_checkpoint

    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = create_model(args.model, weights=args.weights, reference_checkpoint=args.reference_checkpoint, **kwargs)
    save_checkpoint(model, args.output)
    merge, prune = model.ltmp_thresholds()
    print(f"wrote {args.output}: {len(model.blocks)} LTMP blocks, merge thresholds {_fmt(merge)}, prune thresholds {_fmt(prune)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.onnx_export import export_onnx

    result = export_onnx(
        args.checkpoint, args.output, mode=args.mode, opset=args.opset, batch=args.batch,
        fp16=args.fp16, decisions=args.decisions, validate=not args.no_validate,
    )
    meta = result.metadata
    macs = meta["block_macs"]
    print(f"wrote {result.path}: {meta['mode']} mode, opset {meta['opset']}, {meta['precision']}, "
          f"block FLOPs {macs['patched'] / macs['unpatched']:.3f} of unpatched ({macs['basis']})")
    if result.validation is not None:
        print(result.validation.summary())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.trt_check import check_model

    failed = 0
    for target in args.trt:
        report = check_model(args.onnx, target)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltmp-deploy",
        description="Learned-threshold token merging and pruning (LTMP) for Vision Transformers: "
        "patch a timm ViT, learn its thresholds, calibrate, export to ONNX, build TensorRT engines, validate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("patch", cmd_patch, "Write a toolkit checkpoint: a timm ViT with LTMP, from a model name and optional weights.")
    p.add_argument("model", metavar="MODEL", help="timm model name (e.g. deit_small_patch16_224) or a JSON file with timm_class and config")
    p.add_argument("--weights", metavar="FILE", help="timm weights (.safetensors or .pth); nothing is downloaded")
    p.add_argument("--reference-checkpoint", metavar="FILE", help="a checkpoint from the authors' LTMP code: weights plus blocks.{i}.merge_masker/prune_masker thresholds")
    p.add_argument("--num-classes", type=int, help="classifier size, when the weights have a different head than the timm default")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint to write (.safetensors)")

    p = add("export", cmd_export, "Export a toolkit checkpoint to ONNX (fixed or threshold mode) and validate it against PyTorch.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="toolkit checkpoint (.safetensors) from patch, learn or calibrate")
    p.add_argument("--mode", choices=["fixed", "threshold"], help="fixed: static token counts (all TensorRT versions); threshold: per-image adaptive (TensorRT >= 8.6, ONNX Runtime). Default: the checkpoint's mode")
    p.add_argument("--opset", type=int, help="ONNX opset (default 16 for fixed, which TensorRT 8.5 reads; 17 for threshold)")
    p.add_argument("--batch", type=int, help="a fixed batch size (default: a dynamic batch axis)")
    p.add_argument("--fp16", action="store_true", help="an fp16 graph, for strongly typed TensorRT builds (TensorRT 11)")
    p.add_argument("--decisions", action="store_true", help="extra outputs with each block's kept and merged token indices, for debugging parity")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")

    p = add("check", cmd_check, "Check an ONNX graph against what a TensorRT version's ONNX parser imports; exit 1 listing the offending nodes.")
    p.add_argument("onnx", metavar="FILE.onnx")
    p.add_argument("--trt", action="append", required=True, metavar="VERSION", help="8.5 (JetPack 5.1), 8.6, 10.3 (JetPack 6), 10, 11; repeat for several")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LTMPError as err:
        print(f"ltmp-deploy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltmp-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
