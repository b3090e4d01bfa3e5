"""The ``ltmp-deploy`` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, timm, onnx) happen inside the subcommands, so ``--help`` is instant and a
field device without torch can still run the runtime commands.
"""

from __future__ import annotations

import argparse
import os
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
    if args.triton_repo:
        from ltmp_deploy.export.triton import write_triton_repo

        print(write_triton_repo(result.path, args.triton_repo, max_batch_size=args.triton_max_batch).summary())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.trt_check import check_model

    failed = 0
    for target in args.trt:
        report = check_model(args.onnx, target)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0


def cmd_train_base(args: argparse.Namespace) -> int:
    from ltmp_deploy.embedded import DEFAULT_EPOCHS, DEFAULT_SEED, default_base_checkpoint, train_base

    if args.output is None:
        if args.seed is not None:
            raise LTMPError("--seed needs -o OUT: the cache holds the model of the recipe's own seed")
        path = default_base_checkpoint()
        print(f"embedded base model: {path}")
    else:
        path = train_base(args.output, epochs=args.epochs or DEFAULT_EPOCHS, seed=DEFAULT_SEED if args.seed is None else args.seed)
        print(f"wrote {path}")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
    from ltmp_deploy.data.sources import dataset_for

    model = _load_model(args.model)
    cfg = LearnConfig(
        target=args.target, epochs=args.epochs, batch_size=args.batch_size, lr_prune=args.lr_prune,
        lr_merge=args.lr_merge, lr_model=args.lr_model, lam=args.lam, tau=args.tau,
        finetune=args.finetune, seed=args.seed, workers=args.workers,
    )
    cfg.check()
    data = dataset_for(args.data, model, "train")
    if args.limit is not None:
        import torch.utils.data

        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    history = learn_thresholds(model, data, args.output, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    merge, prune = model.ltmp_thresholds()
    last = history[-1] if history else None
    if last is not None:
        print(f"learned thresholds for target {cfg.target}: FLOPs kept {last.flops_ratio:.3f} (training masks), train accuracy {last.accuracy:.3f}")
    print(f"merge thresholds {_fmt(merge)}\nprune thresholds {_fmt(prune)}\nwrote {args.output}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ltmp_deploy.calibration.int8 import write_calibration_data
    from ltmp_deploy.calibration.schedule import calibrate, parse_statistic
    from ltmp_deploy.data.sources import dataset_for
    from ltmp_deploy.files import ensure_writable
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    ensure_writable(args.output)
    model = _load_model(args.checkpoint)
    statistic = parse_statistic(args.statistic)
    calibration = dataset_for(args.data, model, "val") if args.flops_target is None or args.int8_calib else None
    evaluation = dataset_for(args.data, model, "test") if args.evaluate else None
    report = calibrate(model, calibration if args.flops_target is None else None, statistic=statistic,
                       flops_target=args.flops_target, evaluation=evaluation)
    save_checkpoint(model, args.output)
    print(report.summary())
    print(f"wrote {args.output} (mode fixed; its thresholds still serve threshold mode)")
    if args.int8_calib:
        import numpy as np

        images = np.stack([calibration[i][0].numpy() for i in range(min(args.int8_images, len(calibration)))])
        for layout, path in write_calibration_data(images, args.int8_calib).items():
            print(f"INT8 calibration data ({layout}): {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_TARGET, run_demo

    target = DEMO_TARGET if args.target is None else args.target
    run_demo(args.workdir, target=target, epochs=args.epochs or DEMO_EPOCHS, rounds=args.rounds, threads=args.threads)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from ltmp_deploy.errors import LTMPError
    from ltmp_deploy.ltmp.visualize import render

    model = _load_model(args.checkpoint)
    if args.mode:
        model.ltmp_set_mode(args.mode)
    if args.image.startswith("digits:"):
        from ltmp_deploy.data.digits import DigitsDataset, digits_arrays

        index = int(args.image.split(":", 1)[1])
        image = DigitsDataset("test")[index][0]
        raw = digits_arrays("test", normalize=False)[0][index]
        display = (np.transpose(raw, (1, 2, 0)) * 255).clip(0, 255).astype(np.uint8)
    else:
        from PIL import Image

        from ltmp_deploy.data.folder import transform_for_model

        try:
            with Image.open(args.image) as im:
                picture = im.convert("RGB")
        except OSError as err:
            raise LTMPError(f"{args.image}: not a readable image ({err})") from err
        image = transform_for_model(model)(picture)
        size = tuple(model.patch_embed.img_size)
        display = np.asarray(picture.resize(size[::-1]))
    print(f"wrote {render(model, image, display, args.output)}")
    return 0


def _load_model(spec: str):  # noqa: ANN202
    """A toolkit checkpoint, or a timm model name / description JSON patched fresh."""
    from ltmp_deploy.ltmp.checkpoint import create_model, load_checkpoint

    if spec.endswith(".safetensors"):
        return load_checkpoint(spec)
    return create_model(spec)


def cmd_validate(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.validate import validate

    report = validate(
        args.files, args.against, images=args.images, batch=args.batch, backend=args.backend,
        providers=args.provider, mode=args.mode, json_path=args.json,
    )
    print(report.summary())
    if args.json:
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def cmd_build(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime import build as b

    options = b.BuildOptions(
        preset=args.preset, precision=args.precision, trt=args.trt, min_batch=args.min_batch, opt_batch=args.opt_batch,
        max_batch=args.max_batch, dla_core=args.dla_core, workspace_mib=args.workspace, timing_cache=args.timing_cache,
        opt_level=args.opt_level, hardware_compat=args.hardware_compat, version_compatible=args.version_compatible,
        strongly_typed=True if args.strongly_typed else None,
    )
    if args.sidecar_only:
        print(f"wrote {b.record_trtexec_build(args.onnx, args.output, options, args.sidecar_only)}")
        return 0
    quantize = b.needs_quantization(args.onnx, options)
    installed = None if args.print_trtexec else b.tensorrt_version()
    b.plan_build(args.onnx, options, installed=installed, assume_int8=quantize)  # refuse bad combinations first
    if quantize:
        b.check_calibration(args.onnx, args.calibration)
    if not args.print_trtexec:
        b.require_tensorrt()
    onnx_path = args.onnx
    if quantize:
        onnx_path = b.prepare_int8(args.onnx, args.output, args.calibration, args.calibration_method)
        print(f"quantized to {onnx_path} (Q/DQ, {args.calibration_method} calibration)", file=sys.stderr)
    if args.print_trtexec:
        print(b.trtexec_command(b.plan_build(onnx_path, options), args.output))
        return 0
    engine = b.build_engine(onnx_path, args.output, **vars(options))
    print(f"wrote {engine} and {b.sidecar_path(engine)}")
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

    p = add("export", cmd_export, "Export a toolkit checkpoint to ONNX (fixed or threshold mode) and validate it against PyTorch.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="toolkit checkpoint (.safetensors) from patch, learn or calibrate")
    p.add_argument("--mode", choices=["fixed", "threshold"], help="fixed: static token counts (all TensorRT versions); threshold: per-image adaptive (TensorRT >= 8.6, ONNX Runtime). Default: the checkpoint's mode")
    p.add_argument("--opset", type=int, help="ONNX opset (default 16 for fixed, which TensorRT 8.5 reads; 17 for threshold)")
    p.add_argument("--batch", type=int, help="a fixed batch size (default: a dynamic batch axis). Pinning lets the shape computations fold: at batch 1 on ONNX Runtime CPU, DeiT-S fixed mode ran 0-8%% faster than with the dynamic axis")
    p.add_argument("--fp16", action="store_true", help="an fp16 graph, for strongly typed TensorRT builds (TensorRT 11)")
    p.add_argument("--decisions", action="store_true", help="extra outputs with each block's kept and merged token indices, for debugging parity")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")
    p.add_argument("--triton-repo", metavar="DIR", help="also write a Triton Inference Server model repository here: NAME_onnx (onnxruntime) and NAME_trt (tensorrt_plan; build its engine on the server GPU)")
    p.add_argument("--triton-max-batch", type=int, default=8, metavar="N", help="max_batch_size of the Triton models, with dynamic batching (default 8)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")

    p = add("check", cmd_check, "Check an ONNX graph against what a TensorRT version's ONNX parser imports; exit 1 listing the offending nodes.")
    p.add_argument("onnx", metavar="FILE.onnx")
    p.add_argument("--trt", action="append", required=True, metavar="VERSION", help="8.5 (JetPack 5.1), 8.6, 10.3 (JetPack 6), 10, 11; repeat for several")

    p = add("demo", cmd_demo, "Run the whole job end to end on the embedded default (digits ViT): learn, calibrate, export, validate, check, benchmark.")
    p.add_argument("--workdir", default="ltmp-demo", help="folder for every artefact and report.json (default ./ltmp-demo)")
    p.add_argument("--target", type=float, help="fraction of block FLOPs to keep (default: the demo's)")
    p.add_argument("--epochs", type=int, help="threshold-learning epochs on the digits train split (default: the demo's recipe)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds per variant")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for the latency step (default: one per physical core)")

    p = add("show", cmd_show, "Draw what the model threw away: per block, the pruned (dark red) and merged (coloured groups) patches over the image.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="toolkit checkpoint")
    p.add_argument("image", metavar="IMAGE", help="an image file, or digits:N for image N of the embedded test split")
    p.add_argument("--mode", choices=["threshold", "fixed"], help="default: the checkpoint's mode")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")

    p = add("train-base", cmd_train_base, "Train the embedded default ViT on scikit-learn's digits (cached; a few minutes on CPU).")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of the cache ($LTMP_DEPLOY_CACHE or ~/.cache/ltmp-deploy)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, help="training seed, with -o (default: the recipe's, whose model the cache holds)")

    p = add("learn", cmd_learn, "Learn the merge and prune thresholds towards a FLOPs budget (LTMP's budget loss). Runs under torchrun for several processes.")
    p.add_argument("model", metavar="CHECKPOINT", help="toolkit checkpoint from 'patch' (or a previous 'learn')")
    p.add_argument("--data", default="digits", help="'digits' (embedded) or an image folder (with train/ or one folder per class)")
    p.add_argument("--target", type=float, required=True, help="fraction of the unpatched block FLOPs to keep, in (0, 1]")
    p.add_argument("--epochs", type=int, default=1, help="default 1 (the paper's recipe on ImageNet; small sets need more)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr-merge", type=float, default=5e-3)
    p.add_argument("--lr-prune", type=float, default=5e-6)
    p.add_argument("--lr-model", type=float, default=1e-5, help="with --finetune: the learning rate of every other weight")
    p.add_argument("--lambda", dest="lam", type=float, default=10.0, help="weight of the FLOPs budget term")
    p.add_argument("--tau", type=float, default=0.1, help="temperature of the soft masks")
    p.add_argument("--finetune", action="store_true", help="train every weight, not only the thresholds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last finished epoch")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N training images (smoke tests)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint written after every epoch")

    p = add("calibrate", cmd_calibrate, "Derive a fixed-mode schedule from threshold-mode counts on data (or from a FLOPs target), and INT8 calibration data.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="threshold-trained toolkit checkpoint")
    p.add_argument("--data", default="digits", help="'digits' (embedded) or an image folder; calibration uses its val split")
    p.add_argument("--statistic", default="mean", help="'mean' of the per-image counts, or a quantile such as q0.9 (keeps more tokens)")
    p.add_argument("--flops-target", type=float, help="derive the schedule from this fraction of FLOPs kept instead (no data needed)")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip measuring accuracy on the test split")
    p.add_argument("--int8-calib", metavar="DIR", help="also write INT8 calibration data (npy, npz, Polygraphy JSON) here")
    p.add_argument("--int8-images", type=int, default=64, help="images in the INT8 calibration batch")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint with the schedule (mode fixed)")
    p = add("validate", cmd_validate, "Prove a graph or engine answers like PyTorch: Polygraphy's Comparator over PyTorch, ONNX Runtime and TensorRT runners; exit 1 when it does not.")
    p.add_argument("files", nargs="+", metavar="FILE", help=".onnx graph(s) and/or .engine/.plan file(s); or one checkpoint alone, exported on the fly")
    p.add_argument("--against", metavar="CHECKPOINT", help="the reference: the toolkit checkpoint FILE came from (PyTorch), or for an engine its source .onnx (ONNX Runtime, no torch needed)")
    p.add_argument("--json", metavar="REPORT", help="write the full report as JSON here")
    p.add_argument("--images", type=int, default=16, help="sample images (default 16; the embedded digits model gets real digits)")
    p.add_argument("--batch", type=int, help="batch size for dynamic-batch files (default 4; fixed-batch files use theirs)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt", "torch"], default="auto", help="runner for FILE (default: from its type)")
    p.add_argument("--provider", action="append", metavar="NAME", help="ONNX Runtime execution provider for FILE (cpu, cuda, tensorrt); repeat in order of preference. Default cpu")
    p.add_argument("--mode", choices=["fixed", "threshold"], help="with a checkpoint alone: the mode to export and compare (default: its own)")

    p = add("build", cmd_build, "Build a TensorRT engine (and ENGINE.json) for a target preset with Polygraphy's loaders; or print the equivalent trtexec command.")
    p.add_argument("onnx", metavar="OUT.onnx", help="graph from 'ltmp-deploy export'")
    p.add_argument("--preset", required=True, choices=["orin-nano", "orin-nx", "agx-orin", "datacenter"], help="target: Jetson module (TensorRT of its JetPack, workspace for its memory, DLA) or datacenter GPU")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], help="default: fp16 on Jetson presets, else the graph's own (fp16 export, Q/DQ for int8)")
    p.add_argument("--calibration", metavar="FILE.npy", help="int8 on a graph without Q/DQ nodes: preprocessed images (N, C, H, W) in .npy/.npz; the graph is quantized first to ENGINE_STEM.int8.onnx")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax", help="ONNX Runtime calibrator (default minmax; threshold-mode graphs take minmax only)")
    p.add_argument("--trt", choices=["8.5", "8.6", "10.3", "10", "11"], help="target TensorRT version (default: the installed one, else the preset's first: JetPack 6.1/6.2's 10.3, datacenter 10)")
    p.add_argument("--min-batch", type=int, metavar="N", help="optimization profile of a dynamic batch axis (default from the preset)")
    p.add_argument("--opt-batch", type=int, metavar="N")
    p.add_argument("--max-batch", type=int, metavar="N")
    p.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N with GPU fallback (orin-nx, agx-orin; fp16/int8, fixed mode, one batch size)")
    p.add_argument("--workspace", type=int, metavar="MIB", help="builder workspace cap in MiB (default from the preset)")
    p.add_argument("--timing-cache", metavar="FILE", help="load and update this tactic timing cache (faster rebuilds)")
    p.add_argument("--opt-level", type=int, metavar="N", help="builder optimization level 0-5 (TensorRT >= 8.6; default 3)")
    p.add_argument("--hardware-compat", action="store_true", help="datacenter: an engine that runs on any Ampere or newer GPU (ampere+)")
    p.add_argument("--version-compatible", action="store_true", help="an engine later TensorRT versions can run (TensorRT >= 8.6)")
    p.add_argument("--strongly-typed", action="store_true", help="TensorRT 10.x: strongly typed network (precision from the graph); always on for 11")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit (needs no TensorRT)")
    p.add_argument("--sidecar-only", metavar="TRT_VERSION", help="ENGINE was built by trtexec from the printed command, with this TensorRT version (10.3.0 or trtexec's v100300): write only ENGINE.json")
    p.add_argument("-o", "--output", required=True, metavar="ENGINE", help="engine to write (.plan or .engine); its sidecar goes to ENGINE.json")
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
