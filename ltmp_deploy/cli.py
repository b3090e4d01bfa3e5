"""The ``ltmp-deploy`` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, timm, onnx) happen inside the subcommands, so ``--help`` is instant and a
field device without torch can still run the runtime commands.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ltmp_deploy import (
    __version__,
    cli_bench,  # light: its commands import their libraries when run
)
from ltmp_deploy.cli_field import cmd_inspect, cmd_predict, cmd_show
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.metadata import EXPORT_MODES
from ltmp_deploy.extras import explain_missing, require_full
from ltmp_deploy.runtime.inspection import format_values

# Commands that patch, train or export a PyTorch model: the full toolkit, not the field runtime.
FULL_COMMANDS = frozenset({"patch", "export", "train-base", "learn", "calibrate", "demo", "bench", "report"})


def cmd_patch(args: argparse.Namespace) -> int:
    from ltmp_deploy.ltmp.checkpoint import create_model, save_checkpoint

    _outputs_not_inputs([("-o", args.output)], [args.model, args.weights, args.reference_checkpoint])
    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = create_model(args.model, weights=args.weights, reference_checkpoint=args.reference_checkpoint, **kwargs)
    save_checkpoint(model, args.output)
    merge, prune = model.ltmp_thresholds()
    print(
        f"wrote {args.output}: {len(model.blocks)} LTMP blocks, merge thresholds {format_values(merge)}, "
        f"prune thresholds {format_values(prune)}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.files import ensure_writable_folder

    if args.triton_repo:
        ensure_writable_folder(args.triton_repo, "--triton-repo")  # before the export, not after it
    _outputs_not_inputs([("-o", args.output)], [args.checkpoint])
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
    print(
        f"wrote {result.path}: {meta['mode']} mode, opset {meta['opset']}, {meta['precision']}, "
        f"block FLOPs {macs['patched'] / macs['unpatched']:.3f} of unpatched ({macs['basis']})"
    )
    if result.validation is not None:
        print(result.validation.summary())
    if args.triton_repo:
        from ltmp_deploy.export.triton import write_triton_repo

        print(write_triton_repo(result.path, args.triton_repo, max_batch_size=args.triton_max_batch).summary())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ltmp_deploy.export.trt_check import check_model
    from ltmp_deploy.runtime.plan import check_preset_mode

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


def cmd_train_base(args: argparse.Namespace) -> int:
    from ltmp_deploy.embedded import DEFAULT_EPOCHS, DEFAULT_SEED, default_base_checkpoint, train_base

    if args.output is None:
        for option, value in (("--seed", args.seed), ("--epochs", args.epochs)):
            if value is not None:
                raise LTMPError(f"{option} needs -o OUT: the cache holds the model of the recipe's own {option[2:]}")
        path = default_base_checkpoint()
        print(f"embedded base model: {path}")
    else:
        path = train_base(
            args.output,
            epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs,
            seed=DEFAULT_SEED if args.seed is None else args.seed,
        )
        print(f"wrote {path}")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from ltmp_deploy import load
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
    from ltmp_deploy.data.datasets import dataset_for, held_out_split

    _outputs_not_inputs([("-o", args.output)], [args.model])
    model = load(args.model)
    cfg = LearnConfig(
        target=args.target,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_prune=args.lr_prune,
        lr_merge=args.lr_merge,
        lr_model=args.lr_model,
        lam=args.lam,
        tau=args.tau,
        prune_tau=args.prune_tau,
        merge_start=args.merge_start,
        prune_start=args.prune_start,
        merge_only=args.merge_only,
        check_images=args.check_images,
        finetune=args.finetune,
        seed=args.seed,
        workers=args.workers,
    )
    cfg.check()
    data = dataset_for(args.data, model, "train")
    if args.limit is not None:
        import torch.utils.data

        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    split = held_out_split(args.data, model)  # threshold mode is measured there after learning
    heldout = {} if split is None else {"heldout_name": split[0], "heldout": split[1]}
    history = learn_thresholds(model, data, args.output, cfg, resume=args.resume, **heldout)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    merge, prune = model.ltmp_thresholds()
    last = history[-1] if history else None
    if last is not None:
        print(
            f"learned thresholds for target {cfg.target}: FLOPs kept {last.flops_ratio:.3f} (training masks), train "
            f"accuracy {last.accuracy:.3f}"
        )
    print(f"merge thresholds {format_values(merge)}\nprune thresholds {format_values(prune)}\nwrote {args.output}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ltmp_deploy import load
    from ltmp_deploy.calibration.calibrate import calibrate, parse_statistic
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, sample_batch, takes_digits
    from ltmp_deploy.export.calibration_data import write_calibration_data
    from ltmp_deploy.files import ensure_writable, ensure_writable_folder
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    ensure_writable(args.output)
    if args.int8_calib:
        ensure_writable_folder(args.int8_calib, "--int8-calib")
    _outputs_not_inputs([("-o", args.output)], [args.checkpoint])
    model = load(args.checkpoint)
    statistic = parse_statistic(args.statistic)
    spec = EMBEDDED if args.data is None else args.data
    need_images = args.flops_target is None or args.int8_calib
    calibration = calibration_split(spec, model, "calibration") if need_images else None
    evaluation = None
    if args.evaluate and args.data is None and not takes_digits(model):
        print("not evaluated: the model does not take the embedded digits; give --data FOLDER to measure accuracy")
    elif args.evaluate:
        evaluation = calibration_split(spec, model, "evaluation")
    report = calibrate(
        model,
        calibration if args.flops_target is None else None,
        statistic=statistic,
        flops_target=args.flops_target,
        evaluation=evaluation,
    )
    save_checkpoint(model, args.output)
    print(report.summary())
    print(f"wrote {args.output} (mode fixed; its thresholds still serve threshold mode)")
    if args.int8_calib:
        images = sample_batch(calibration, min(args.int8_images, len(calibration)))
        for layout, path in write_calibration_data(images, args.int8_calib).items():
            print(f"INT8 calibration data ({layout}): {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ltmp_deploy.demo import run_demo
    from ltmp_deploy.files import ensure_writable_folder

    ensure_writable_folder(args.workdir, "--workdir")
    chosen = {"target": args.target, "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads}
    if args.quick:
        chosen.update(epochs=1, rounds=3, train_images=128)
    run_demo(args.workdir, **chosen)
    return 0


def _outputs_not_inputs(outputs: Sequence[tuple[str, str | None]], inputs: Sequence[str | None]) -> None:
    from ltmp_deploy.files import refuse_overwriting_inputs

    refuse_overwriting_inputs(outputs, inputs)


def cmd_validate(args: argparse.Namespace) -> int:
    """A checkpoint in play means PyTorch as the reference (the full toolkit); else ONNX Runtime."""
    from ltmp_deploy.api import validate

    _outputs_not_inputs([("--json", args.json)], [*args.files, args.against])
    options = {"batch": args.batch, "json_path": args.json, "backend": args.backend, "providers": args.provider}
    if args.images is not None:
        options["images"] = args.images
    report = validate(args.files, args.against, mode=args.mode, **options)
    print(report.summary())
    if args.json:
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def cmd_build(args: argparse.Namespace) -> int:
    from ltmp_deploy.runtime.build import build, quantized_path
    from ltmp_deploy.runtime.engine import sidecar_path
    from ltmp_deploy.runtime.plan import BuildOptions

    written = [("-o", args.output), ("-o", sidecar_path(args.output)), ("-o", quantized_path(args.output))]
    _outputs_not_inputs(written, [args.onnx, args.calibration])

    options = BuildOptions(
        preset=args.preset,
        precision=args.precision,
        trt=args.trt,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        dla_core=args.dla_core,
        workspace_mib=args.workspace,
        timing_cache=args.timing_cache,
        opt_level=args.opt_level,
        hardware_compat=args.hardware_compat,
        version_compatible=args.version_compatible,
        strongly_typed=True if args.strongly_typed else None,
    )
    result = build(
        args.onnx,
        args.output,
        options,
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


def _whole(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``, refused at parse time, before any work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {least}")
        return value

    return parse


positive_int = _whole(1)
non_negative_int = _whole(0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def fraction(text: str) -> float:
    """A fraction of FLOPs kept, in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a fraction of FLOPs kept lies in (0, 1]")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (the option and what is wrong), exit code 2, as every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # "argument --rounds: 0: must be ..." from the types above reads "--rounds 0: must be ...",
        # as the library's own messages do
        value = re.match(r"argument (?:\S+/)?(-\S+): (\S+): (.+)$", message)
        if value:
            message = f"{value[1]} {value[2]}: {value[3]}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _ExampleFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, but prints a command's example (its epilog) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


if TYPE_CHECKING:  # annotations only: Python 3.8 (JetPack 5.1) cannot subscript collections.abc.Callable
    Adder = Callable[..., argparse.ArgumentParser]


def _example(*lines: str) -> str:
    return "example:\n" + "".join(f"  {line}\n" for line in lines)


def _parser_patch(add: Adder) -> None:
    p = add(
        "patch", cmd_patch, "Write a toolkit checkpoint: a timm ViT with LTMP, from a model name and optional weights."
    )
    p.epilog = _example(
        "ltmp-deploy patch deit_small_patch16_224 --weights deit_small.safetensors -o patched.safetensors"
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="timm model name (e.g. deit_small_patch16_224) or a JSON file with timm_class and config",
    )
    p.add_argument("--weights", metavar="FILE", help="timm weights (.safetensors or .pth); nothing is downloaded")
    p.add_argument(
        "--reference-checkpoint",
        metavar="FILE",
        help="a checkpoint from the authors' LTMP code: weights plus blocks.{i}.merge_masker/prune_masker thresholds",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        help="classifier size, when the weights have a different head than the timm default",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint to write (.safetensors)")


def _parser_export(add: Adder) -> None:
    p = add(
        "export",
        cmd_export,
        "Export a toolkit checkpoint to ONNX (fixed or threshold mode) and validate it against PyTorch.",
    )
    p.epilog = _example(
        "ltmp-deploy export fixed.safetensors --mode fixed -o fixed.onnx",
        "ltmp-deploy export learned.safetensors --mode threshold --decisions -o threshold.onnx",
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
        "(default: the digits test split for a model that takes it, else random images, as the metadata says)",
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
        help="max_batch_size of the Triton models, with dynamic batching (default 8)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")


def _parser_check(add: Adder) -> None:
    p = add(
        "check",
        cmd_check,
        "Check an ONNX graph against what a TensorRT version's ONNX parser imports; exit 1 listing the offending "
        "nodes.",
    )
    p.epilog = _example(
        "ltmp-deploy check fixed.onnx --trt 8.5 --trt 10.3 --trt 10.13",
        "ltmp-deploy check fixed.onnx --preset xavier-nx",
    )
    p.add_argument("onnx", metavar="FILE.onnx")
    from ltmp_deploy.export.trt_targets import TRT_TARGETS
    from ltmp_deploy.runtime.presets import PRESETS

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


def _parser_demo(add: Adder) -> None:
    from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_ROUNDS, DEMO_TARGET, DEMO_THREADS

    p = add(
        "demo",
        cmd_demo,
        "Run the whole job end to end on the embedded default (digits ViT): learn, calibrate, export, validate, "
        "check, benchmark.",
    )
    p.epilog = _example("ltmp-deploy demo --workdir ltmp-demo")
    p.add_argument(
        "--workdir", default="ltmp-demo", help="folder for every artefact and report.json (default ./ltmp-demo)"
    )
    p.add_argument(
        "--target", type=fraction, default=DEMO_TARGET, help="fraction of block FLOPs to keep (default %(default)s)"
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=DEMO_EPOCHS,
        help="threshold-learning epochs on the digits train split (default %(default)s)",
    )
    p.add_argument(
        "--rounds", type=positive_int, default=DEMO_ROUNDS, help="timed rounds per variant (default %(default)s)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every step: one learning epoch on 128 train images, 3 timed rounds",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=DEMO_THREADS,
        help="CPU threads for the latency step (default %(default)s: steady on a shared machine; more to see the "
        "graphs split over cores)",
    )


def _parser_show(add: Adder) -> None:
    p = add(
        "show",
        cmd_show,
        "Draw what the model threw away, per image a grid over the blocks: pruned patches greyed, merged patches "
        "outlined in their group's colour; from a checkpoint, an ONNX file or engine exported with --decisions, "
        "or an audit log.",
        "ltmp-deploy show model.onnx cat.jpg -o cat.png\n"
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
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="the PNG to write; a folder for several images (one PNG each)",
    )


def _parser_predict(add: Adder) -> None:
    p = add(
        "predict",
        cmd_predict,
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
    p.add_argument("-k", type=positive_int, default=5, help="classes per image, best first (default 5)")
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


def _parser_inspect(add: Adder) -> None:
    p = add(
        "inspect",
        cmd_inspect,
        "Say what a checkpoint, an ONNX file or an engine holds: model, mode, schedule, thresholds, FLOPs kept, "
        "precision, opset, inputs and outputs; an engine's TensorRT version and GPU.",
        "ltmp-deploy inspect model.plan --json",
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help="a toolkit checkpoint (.safetensors), an ONNX file, or an engine with its ENGINE.json",
    )
    p.add_argument("--json", action="store_true", help="everything as one JSON object")


def _parser_bench(add: Adder) -> None:
    p = add(
        "bench",
        cli_bench.cmd_bench,
        "Time unpatched, oracle, LTMP fixed and threshold, and ToMe at equal FLOPs over batch sizes on PyTorch, "
        "ONNX Runtime and CUDA/TensorRT where present; write JSON, CSV, Markdown and plots.",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "example (random-weight DeiT-Tiny, ONNX Runtime and PyTorch on the CPU, one thread):\n"
        "  ltmp-deploy bench deit_tiny_patch16_224 --backends onnxruntime-cpu torch-cpu --threads 1 "
        "-o bench-deit-tiny"
    )
    _bench_variant_args(p)
    _bench_timing_args(p)
    _bench_output_args(p)


def _bench_variant_args(p: argparse.ArgumentParser) -> None:
    """bench: which model and which variants of it are timed."""
    p.add_argument(
        "checkpoint",
        nargs="?",
        metavar="CHECKPOINT",
        help="toolkit checkpoint (.safetensors), or a timm model name / description JSON patched fresh "
        "(random weights unless --weights); default: the embedded base model",
    )
    p.add_argument("--weights", metavar="FILE", help="timm weights for a model name")
    p.add_argument(
        "--targets",
        type=fraction,
        nargs="*",
        default=[0.9, 0.75, 0.5],
        metavar="F",
        help="fractions of block FLOPs for LTMP fixed, its oracle and ToMe (default 0.9 0.75 0.5)",
    )
    p.add_argument(
        "--threshold-target",
        type=fraction,
        default=0.5,
        metavar="F",
        help="threshold mode's thresholds are bisected to keep this fraction of block FLOPs on sample "
        "images (default 0.5)",
    )
    p.add_argument("--no-threshold", action="store_true", help="leave threshold mode out")
    p.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="also time the checkpoint's own schedule (ltmp-fixed@calibrated, its oracle, ToMe at its "
        "FLOPs) and its own thresholds (ltmp-threshold@learned) instead of bisected ones",
    )


def _bench_timing_args(p: argparse.ArgumentParser) -> None:
    """bench: how the variants are run and timed."""
    p.add_argument(
        "--batch", type=positive_int, nargs="+", default=[1, 8, 32], metavar="N", help="batch sizes (default 1 8 32)"
    )
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        default=["torch-cpu", "onnxruntime-cpu", "torch-cuda", "onnxruntime-cuda", "tensorrt"],
        help="any of torch-cpu onnxruntime-cpu torch-cuda onnxruntime-cuda tensorrt (default all; those "
        "missing here are skipped with the reason)",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=20,
        help="timed rounds: every variant once per round, interleaved (default 20)",
    )
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per variant first (default 2)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for PyTorch and ONNX Runtime (default: every core this process may use)",
    )
    p.add_argument(
        "--opset",
        type=positive_int,
        default=17,
        help="ONNX opset of every exported graph (default 17, which threshold mode needs)",
    )
    p.add_argument(
        "--merge-threshold",
        type=float,
        default=0.8,
        help="threshold mode's merge threshold when its thresholds are bisected",
    )


def _bench_output_args(p: argparse.ArgumentParser) -> None:
    """bench: where the graphs and the results go."""
    p.add_argument(
        "--workdir", metavar="DIR", help="keep the exported graphs (and engines) here (default: a temporary folder)"
    )
    p.add_argument("--note", metavar="TEXT", help="a line for the results' header, e.g. how busy the machine was")
    p.add_argument(
        "--results-md",
        metavar="FILE",
        help="also write the Markdown results page here, linking to the files in -o (e.g. benchmarks/RESULTS.md)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        default="ltmp-bench",
        metavar="DIR",
        help="bench.json, bench.csv, bench_samples.csv, bench.md and the plots (default ./ltmp-bench)",
    )


def _parser_estimate(add: Adder) -> None:
    p = add(
        "estimate",
        cli_bench.cmd_estimate,
        "Turn a bench result into images/s, cost per million images and the saving against the unpatched "
        "model, per variant, backend and batch size.",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "example:\n  ltmp-deploy estimate ltmp-bench/bench.json --price-per-hour 2.50 --images-per-day 5000000"
    p.add_argument("bench", metavar="BENCH.json", help="bench.json from `ltmp-deploy bench`")
    p.add_argument(
        "--price-per-hour",
        type=positive_float,
        required=True,
        metavar="P",
        help="what one machine of the benchmarked kind costs per hour (costs come out in its unit)",
    )
    p.add_argument(
        "--images-per-day",
        type=positive_float,
        metavar="N",
        help="also the machine-hours, cost and saving per day for this many images",
    )
    p.add_argument(
        "--json", metavar="OUT", help="write the estimate as JSON here ('-': to stdout instead of the table)"
    )


def _parser_report(add: Adder) -> None:
    p = add(
        "report",
        cli_bench.cmd_report,
        "Write report.md and a self-contained report.html from bench and accuracy results: headline, accuracy "
        "and latency against FLOPs, tokens per block, token grids.",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "example:\n  ltmp-deploy report --bench ltmp-bench/bench.json --accuracy accuracy.json "
        "--grid digit0.png digit1.png -o report"
    )
    p.add_argument("--bench", metavar="BENCH.json", help="bench.json from `ltmp-deploy bench`")
    p.add_argument(
        "--accuracy",
        metavar="ACCURACY.json",
        help="an accuracy result (schema ltmp-deploy-accuracy/1: per-variant accuracy and FLOPs, tokens per block)",
    )
    p.add_argument(
        "--grid", nargs="+", metavar="PNG", help="token-visualization grids to show (e.g. from `ltmp-deploy show`)"
    )
    p.add_argument(
        "--headline",
        metavar="VARIANT",
        help="the variant the headline is about, e.g. ltmp-fixed@0.5 (default: the accuracy result's, "
        "else the LTMP fixed-mode variant keeping the fewest FLOPs)",
    )
    p.add_argument(
        "--backend",
        metavar="NAME",
        help="the backend whose latency the headline quotes (default onnxruntime-cpu when measured)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        default="ltmp-report",
        metavar="DIR",
        help="folder for report.md, report.html and the figures (default ./ltmp-report)",
    )


def _parser_train_base(add: Adder) -> None:
    p = add(
        "train-base",
        cmd_train_base,
        "Train the embedded default ViT on scikit-learn's digits (cached; a few minutes on CPU).",
    )
    p.epilog = _example("ltmp-deploy train-base -o base.safetensors --seed 1")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write here instead of the cache ($LTMP_DEPLOY_CACHE or ~/.cache/ltmp-deploy)",
    )
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: the recipe's)")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="training seed, with -o (default: the recipe's, whose model the cache holds)",
    )


def _parser_learn(add: Adder) -> None:
    p = add(
        "learn",
        cmd_learn,
        "Learn the merge and prune thresholds towards a FLOPs budget (LTMP's budget loss). Runs under torchrun for "
        "several processes.",
    )
    p.epilog = _example(
        "ltmp-deploy learn patched.safetensors --data /data/imagenet --target 0.5 -o learned.safetensors",
        "torchrun --nproc_per_node 8 -m ltmp_deploy.cli learn patched.safetensors --data /data/imagenet --target 0.5 "
        "-o learned.safetensors",
    )
    p.add_argument("model", metavar="CHECKPOINT", help="toolkit checkpoint from 'patch' (or a previous 'learn')")
    p.add_argument(
        "--data", default="digits", help="'digits' (embedded) or an image folder (with train/ or one folder per class)"
    )
    p.add_argument(
        "--target", type=fraction, required=True, help="fraction of the unpatched block FLOPs to keep, in (0, 1]"
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=1,
        help="default 1 (the paper's recipe on ImageNet; small sets need more)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr-merge", type=positive_float, default=5e-3, help="default %(default)s")
    p.add_argument("--lr-prune", type=positive_float, default=1e-5, help="default %(default)s (the authors': 5e-6)")
    p.add_argument(
        "--lr-model", type=positive_float, default=1e-5, help="with --finetune: the learning rate of every other weight"
    )
    p.add_argument(
        "--lambda", dest="lam", type=non_negative_float, default=10.0, help="weight of the FLOPs budget term"
    )
    p.add_argument("--tau", type=positive_float, default=0.1, help="temperature of the soft masks (default 0.1)")
    p.add_argument("--prune-tau", type=positive_float, help="of the prune mask (default tau/tokens; authors': tau)")
    p.add_argument("--merge-start", type=non_negative_float, help="default: keeping (1 + target) / 2 (authors': 0.9)")
    p.add_argument("--prune-start", type=non_negative_float, help="default: where pruning starts (authors': 0)")
    p.add_argument("--merge-only", action="store_true", help="hold the prune thresholds at 0: merging alone")
    p.add_argument("--check-images", type=non_negative_int, default=5000, help="held-out images checked after (0: all)")
    p.add_argument("--finetune", action="store_true", help="train every weight, not only the thresholds")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=non_negative_int, default=0, help="data loader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last finished epoch")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N training images (smoke tests)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint written after every epoch")


def _parser_calibrate(add: Adder) -> None:
    p = add(
        "calibrate",
        cmd_calibrate,
        "Derive a fixed-mode schedule from threshold-mode counts on data (or from a FLOPs target), and INT8 "
        "calibration data.",
    )
    p.epilog = _example(
        "ltmp-deploy calibrate learned.safetensors --data /data/imagenet --int8-calib calib/ -o fixed.safetensors",
        "ltmp-deploy calibrate learned.safetensors --flops-target 0.5 --no-evaluate -o fixed.safetensors",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="threshold-trained toolkit checkpoint")
    p.add_argument(
        "--data",
        help="'digits' (embedded; the default for a model that takes them) or an image folder. Calibration and "
        "evaluation never share an image: val/ and test/; with one of them beside train/, a seeded tenth of "
        "train/ calibrates; a single tree is split the same way",
    )
    p.add_argument(
        "--statistic",
        default="mean",
        help="'mean' of the per-image counts, or a quantile such as q0.9 (keeps more tokens)",
    )
    p.add_argument(
        "--flops-target",
        type=fraction,
        help="derive the schedule from this fraction of FLOPs kept instead (no data needed)",
    )
    p.add_argument(
        "--no-evaluate", dest="evaluate", action="store_false", help="skip measuring accuracy on the test split"
    )
    p.add_argument(
        "--int8-calib", metavar="DIR", help="also write INT8 calibration data (npy, npz, Polygraphy JSON) here"
    )
    p.add_argument("--int8-images", type=positive_int, default=64, help="images in the INT8 calibration batch")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint with the schedule (mode fixed)")


def _parser_validate(add: Adder) -> None:
    p = add(
        "validate",
        cmd_validate,
        "Prove a graph or engine answers like PyTorch: Polygraphy's Comparator over PyTorch, ONNX Runtime and "
        "TensorRT runners; exit 1 when it does not.",
    )
    p.epilog = _example(
        "ltmp-deploy validate fixed.onnx --against fixed.safetensors --json parity.json",
        "ltmp-deploy validate fixed.engine --against fixed.onnx",
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
    p.add_argument("--json", metavar="REPORT", help="write the full report as JSON here")
    p.add_argument(
        "--images",
        type=positive_int,
        help="sample images (default 16; against a checkpoint, the embedded digits model gets real digits)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        help="batch size for dynamic-batch files (default 4; fixed-batch files use theirs)",
    )
    from ltmp_deploy.runtime.backends import BACKENDS

    p.add_argument(
        "--backend", choices=["auto", *BACKENDS], default="auto", help="runner for FILE (default: from its type)"
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


def _parser_build(add: Adder) -> None:
    from ltmp_deploy.export.calibration_data import METHODS
    from ltmp_deploy.export.tolerances import PRECISIONS
    from ltmp_deploy.runtime.presets import PRESETS, TRT_VERSIONS

    p = add(
        "build",
        cmd_build,
        "Build a TensorRT engine (and ENGINE.json) for a target preset with Polygraphy's loaders; "
        "or print the equivalent trtexec command.",
    )
    p.epilog = _example(
        "ltmp-deploy build fixed.onnx --preset orin-nx --precision fp16 -o fixed.engine",
        "ltmp-deploy build fixed.onnx --preset thor --print-trtexec -o fixed.engine",
    )
    p.add_argument("onnx", metavar="OUT.onnx", help="graph from 'ltmp-deploy export'")
    p.add_argument(
        "--preset",
        required=True,
        choices=list(PRESETS),
        help="target: Jetson module (TensorRT of its JetPack, workspace for its memory, DLA) or datacenter GPU",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="default: the graph's own (fp16 export, Q/DQ for int8); an fp32 graph gets the fp16 flag on "
        "Jetson presets where TensorRT has one (not 11.x: strongly typed)",
    )
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
        help=f"ONNX Runtime calibrator (default {METHODS[0]}; threshold-mode graphs take {METHODS[0]} only)",
    )
    p.add_argument(
        "--trt",
        choices=TRT_VERSIONS,
        help="target TensorRT version (default: the installed one, else the preset's first)",
    )
    _build_engine_args(p)
    _build_output_args(p)


def _build_engine_args(p: argparse.ArgumentParser) -> None:
    """build: the optimization profile, the device and the builder settings."""
    p.add_argument(
        "--min-batch",
        type=positive_int,
        metavar="N",
        help="optimization profile of a dynamic batch axis (default from the preset)",
    )
    p.add_argument("--opt-batch", type=positive_int, metavar="N")
    p.add_argument("--max-batch", type=positive_int, metavar="N")
    p.add_argument(
        "--dla-core",
        type=non_negative_int,
        metavar="N",
        help="run on DLA core N with GPU fallback "
        "(xavier-nx, agx-xavier with JetPack 5.1; orin-nx, agx-orin with JetPack 5.1-6.2; agx-orin with TensorRT "
        "11.4 on JetPack 7.2.2+, from an fp16 "
        "or Q/DQ graph; fp16/int8, fixed mode, one batch size)",
    )
    p.add_argument(
        "--workspace", type=positive_int, metavar="MIB", help="builder workspace cap in MiB (default from the preset)"
    )
    p.add_argument("--timing-cache", metavar="FILE", help="load and update this tactic timing cache (faster rebuilds)")
    p.add_argument(
        "--opt-level",
        type=non_negative_int,
        metavar="N",
        help="builder optimization level 0-5 (TensorRT >= 8.6; default 3)",
    )
    p.add_argument(
        "--hardware-compat",
        action="store_true",
        help="datacenter: an engine that runs on any Ampere or newer GPU (ampere+)",
    )
    p.add_argument(
        "--version-compatible", action="store_true", help="an engine later TensorRT versions can run (TensorRT >= 8.6)"
    )
    p.add_argument(
        "--strongly-typed",
        action="store_true",
        help="TensorRT 10.x: strongly typed network (precision from the graph); always on for 11 and 11.4",
    )


def _build_output_args(p: argparse.ArgumentParser) -> None:
    """build: what is written (an engine, a trtexec line, or a sidecar alone)."""
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


PARSERS = (
    _parser_patch,
    _parser_export,
    _parser_check,
    _parser_demo,
    _parser_show,
    _parser_predict,
    _parser_inspect,
    _parser_bench,
    _parser_estimate,
    _parser_report,
    _parser_train_base,
    _parser_learn,
    _parser_calibrate,
    _parser_validate,
    _parser_build,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltmp-deploy",
        description="Learned-threshold token merging and pruning (LTMP) for Vision Transformers: "
        "patch a timm ViT, learn its thresholds, calibrate, export to ONNX, build TensorRT engines, validate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, example: str | None = None
    ) -> argparse.ArgumentParser:
        epilog = _example(*example.splitlines()) if example else None
        p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=_ExampleFormatter)
        p.set_defaults(func=func)
        return p

    for register in PARSERS:
        register(add)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: Python's default handling ends it without running
    ``finally`` blocks, and those remove the temporary files of half-written outputs."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise _Terminated


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage mistake: an exit code, as for every other outcome
        return done.code if isinstance(done.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _sigterm_cleans_up():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command in FULL_COMMANDS:
            require_full(f"ltmp-deploy {args.command}")
        return args.func(args)
    except ModuleNotFoundError as err:
        explained = explain_missing(err)
        if explained is None:
            raise
        print(f"ltmp-deploy {args.command}: error: {explained}", file=sys.stderr)
        return 2
    except LTMPError as err:
        print(f"ltmp-deploy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as err:
        terminated = isinstance(err, _Terminated)
        print(f"ltmp-deploy {args.command}: interrupted{' by SIGTERM' if terminated else ''}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
