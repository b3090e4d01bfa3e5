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
