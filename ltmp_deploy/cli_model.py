"""The model's commands (the full toolkit): patch, train-base, learn, calibrate and demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ltmp_deploy.calibration.learn_config import LearnConfig
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import refuse_overwriting_inputs
from ltmp_deploy.options import (
    DeviceChoice,
    add_options,
    finite_float,
    fraction,
    from_args,
    non_negative_int,
    positive_float,
    positive_int,
)

# -- patch ----------------------------------------------------------------------------------------


def add_patch(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "patch",
        run_patch,
        "Write a toolkit checkpoint: a timm ViT with LTMP, from a model name and optional weights.",
        "ltmp-deploy patch deit_small_patch16_224 --weights deit_small.safetensors -o patched.safetensors",
        toolkit=True,
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
    p.add_argument("--img-size", type=positive_int, help="input size in pixels (default: the model's)")
    p.add_argument("--mean", type=finite_float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean")
    p.add_argument("--std", type=positive_float, nargs=3, metavar=("R", "G", "B"), help="normalisation std")
    p.add_argument("--crop-pct", type=positive_float, help="resize to size / crop-pct, then crop (1 = no crop)")
    p.add_argument("--crop-mode", choices=("center", "squash", "border"), help="how the crop is taken")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="resize interpolation")
    p.add_argument("--labels", metavar="FILE", help="class names: one per line, or a JSON list, in class order")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint to write (.safetensors)")


def run_patch(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import ensure_writable
    from ltmp_deploy.ltmp.checkpoint import create_model, save_checkpoint
    from ltmp_deploy.ltmp.data_config import PREPROCESSING
    from ltmp_deploy.ltmp.labels import read_labels

    ensure_writable(args.output)  # before the model is built and the random-weights warning printed
    inputs = [args.model, args.weights, args.reference_checkpoint, args.labels]
    refuse_overwriting_inputs([("-o", args.output)], inputs)
    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v is not None}
    shown = {k: getattr(args, k) for k in PREPROCESSING if getattr(args, k) is not None}
    model = create_model(
        args.model, weights=args.weights, reference_checkpoint=args.reference_checkpoint, preprocessing=shown, **kwargs
    )
    if args.labels is not None:
        model.ltmp.labels = read_labels(args.labels, int(model.num_classes))
    if args.weights is None and args.reference_checkpoint is None:
        print(f"warning: no --weights: {args.output} holds random weights (fine to try the toolkit)", file=sys.stderr)
    save_checkpoint(model, args.output)
    print(f"wrote {args.output}: {len(model.blocks)} LTMP blocks, {_thresholds(model, ', ')}")
    return 0


def _thresholds(model: object, separator: str) -> str:
    from ltmp_deploy.runtime.inspection import format_values

    merge, prune = model.ltmp_thresholds()  # type: ignore[attr-defined]
    return f"merge thresholds {format_values(merge)}{separator}prune thresholds {format_values(prune)}"


# -- train-base -----------------------------------------------------------------------------------


def add_train_base(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "train-base",
        run_train_base,
        "Train the embedded default ViT on scikit-learn's digits (cached; a few minutes on CPU).",
        "ltmp-deploy train-base -o base.safetensors --seed 1",
        toolkit=True,
    )
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


def run_train_base(args: argparse.Namespace) -> int:
    from ltmp_deploy.embedded import DEFAULT_EPOCHS, DEFAULT_SEED, default_base_checkpoint, train_base

    if args.output is None:
        for option, value in (("--seed", args.seed), ("--epochs", args.epochs)):
            if value is not None:
                raise LTMPError(f"{option} needs -o OUT: the cache holds the model of the recipe's own {option[2:]}")
        print(f"embedded base model: {default_base_checkpoint()}")
        return 0
    epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
    print(f"wrote {train_base(args.output, epochs=epochs, seed=DEFAULT_SEED if args.seed is None else args.seed)}")
    return 0


# -- learn ----------------------------------------------------------------------------------------


def add_learn(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "learn",
        run_learn,
        "Learn the merge and prune thresholds towards a FLOPs budget (LTMP's budget loss). Runs under torchrun for "
        "several processes.",
        "ltmp-deploy learn patched.safetensors --data /data/imagenet --target 0.5 -o learned.safetensors",
        "torchrun --nproc_per_node 8 -m ltmp_deploy.cli learn patched.safetensors --data /data/imagenet --target 0.5 "
        "-o learned.safetensors",
        toolkit=True,
    )
    p.add_argument("model", metavar="CHECKPOINT", help="toolkit checkpoint from 'patch' (or a previous 'learn')")
    p.add_argument(
        "--data", default="digits", help="'digits' (embedded) or an image folder (with train/ or one folder per class)"
    )
    add_options(p, LearnConfig)
    add_options(p, DeviceChoice)
    p.add_argument("--resume", action="store_true", help="continue from OUT's last finished epoch")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N training images (smoke tests)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint written after every epoch")


def run_learn(args: argparse.Namespace) -> int:
    from ltmp_deploy import load
    from ltmp_deploy.calibration.learn import learn_thresholds
    from ltmp_deploy.data.datasets import dataset_for, held_out_split, record_source
    from ltmp_deploy.ltmp.device import resolve_device

    refuse_overwriting_inputs([("-o", args.output)], [args.model])
    device = resolve_device(args.device)  # a device not here stops before any file is read
    model = load(args.model)
    cfg = from_args(LearnConfig, args)
    cfg.check()
    data = dataset_for(args.data, model, "train", limit=args.limit)
    record_source(model, args.data, "train")
    split = held_out_split(args.data, model)  # threshold mode is measured there after learning
    heldout = {} if split is None else {"heldout_name": split[0], "heldout": split[1]}
    history = learn_thresholds(model, data, args.output, cfg, resume=args.resume, device=device, **heldout)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    if history:
        last = history[-1]
        print(
            f"learned thresholds for target {cfg.target}: FLOPs kept {last.flops_ratio:.3f} (training masks), train "
            f"accuracy {last.accuracy:.3f}"
        )
    print(_thresholds(model, "\n"))
    print(f"wrote {args.output}")
    return 0


# -- calibrate ------------------------------------------------------------------------------------


def add_calibrate(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "calibrate",
        run_calibrate,
        "Derive a fixed-mode schedule from threshold-mode counts on data (or from a FLOPs target), and INT8 "
        "calibration data.",
        "ltmp-deploy calibrate learned.safetensors --data /data/imagenet --int8-calib calib/ -o fixed.safetensors",
        "ltmp-deploy calibrate learned.safetensors --flops-target 0.5 --no-evaluate -o fixed.safetensors",
        toolkit=True,
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
    p.add_argument(
        "--cost",
        metavar="COST.json",
        help="a cost model from `ltmp-deploy cost`: choose the schedule for its latency on that backend (fewer "
        "reducing blocks, larger steps) at the FLOPs of the counted one, as accurate on the calibration images",
    )
    p.add_argument(
        "--cost-batch", type=positive_int, default=1, help="the batch size the --cost schedule is chosen for"
    )
    add_options(p, DeviceChoice)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint with the schedule (mode fixed)")


def run_calibrate(args: argparse.Namespace) -> int:
    from ltmp_deploy import calibrate, load
    from ltmp_deploy.calibration.calibrate import parse_statistic
    from ltmp_deploy.data.datasets import EMBEDDED, calibration_split, record_source, sample_batch, takes_digits
    from ltmp_deploy.files import ensure_writable, ensure_writable_folder
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint
    from ltmp_deploy.ltmp.device import resolve_device
    from ltmp_deploy.runtime.int8.calibration_data import write_calibration_data

    device = resolve_device(args.device)
    ensure_writable(args.output)
    if args.int8_calib:
        ensure_writable_folder(args.int8_calib, "--int8-calib")
    refuse_overwriting_inputs([("-o", args.output)], [args.checkpoint])
    cost = None
    if args.cost is not None:
        from ltmp_deploy.runtime.cost_model import read_cost_model

        if args.flops_target is not None:
            raise LTMPError("--cost chooses among schedules counted on data: leave --flops-target out")
        cost = read_cost_model(args.cost)  # refused before any image is read
        if args.cost_batch not in cost.batches:
            raise LTMPError(f"{args.cost}: measured at batch sizes {cost.batches}, not --cost-batch {args.cost_batch}")
    model = load(args.checkpoint)
    if cost is not None:
        from ltmp_deploy.calibration.latency import check_cost_fits

        try:
            check_cost_fits(model, cost)
        except LTMPError as err:
            raise LTMPError(f"{args.cost}: {err}") from None
    parse_statistic(args.statistic)  # refused before any image is read
    data = EMBEDDED if args.data is None else args.data
    need_images = args.flops_target is None or args.int8_calib  # read before the checkpoint is written
    calibration = calibration_split(data, model, "calibration") if need_images else None
    if args.flops_target is None:
        record_source(model, data, "calibration")  # the schedule came from these images
    evaluate = args.evaluate
    if evaluate and args.data is None and not takes_digits(model):
        print("not evaluated: the model does not take the embedded digits; give --data FOLDER to measure accuracy")
        evaluate = False
    report = calibrate(
        model,
        calibration if args.flops_target is None else None,
        flops_target=args.flops_target,
        statistic=args.statistic,
        evaluate_on=data if evaluate else None,
        cost=cost,
        cost_batch=args.cost_batch,
        device=device,
    )
    save_checkpoint(model, args.output)
    print(report.summary())
    print(f"wrote {args.output} (mode fixed; its thresholds still serve threshold mode)")
    if args.int8_calib:
        images = sample_batch(calibration, min(args.int8_images, len(calibration)))
        for layout, path in write_calibration_data(images, args.int8_calib).items():
            print(f"INT8 calibration data ({layout}): {path}")
    return 0


# -- demo -----------------------------------------------------------------------------------------


def add_demo(add: Callable[..., argparse.ArgumentParser]) -> None:
    from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_ROUNDS, DEMO_TARGET, DEMO_THREADS

    p = add(
        "demo",
        run_demo,
        "Run the whole job end to end on the embedded default (digits ViT): learn, calibrate, export, validate, "
        "check, benchmark.",
        "ltmp-deploy demo --workdir ltmp-demo",
        toolkit=True,
    )
    p.add_argument("--workdir", default="ltmp-demo", help="folder for every artefact and report.json")
    p.add_argument("--target", type=fraction, default=DEMO_TARGET, help="fraction of block FLOPs to keep")
    p.add_argument(
        "--epochs", type=positive_int, default=DEMO_EPOCHS, help="threshold-learning epochs on the digits train split"
    )
    p.add_argument("--rounds", type=positive_int, default=DEMO_ROUNDS, help="timed rounds per variant")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every step: one learning epoch on 128 train images, 3 timed rounds",
    )
    p.add_argument(
        "--flops-only",
        action="store_true",
        help="calibrate for FLOPs alone, without timing this CPU's cost model for a latency-aware schedule",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=DEMO_THREADS,
        help="CPU threads for the latency step (few are steady on a shared machine; more show the graphs split "
        "over cores)",
    )


def run_demo(args: argparse.Namespace) -> int:
    from ltmp_deploy.demo import run_demo
    from ltmp_deploy.files import ensure_writable_folder

    ensure_writable_folder(args.workdir, "--workdir")
    chosen = {"target": args.target, "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads}
    chosen["flops_only"] = args.flops_only
    if args.quick:
        chosen.update(epochs=1, rounds=3, train_images=128)
    run_demo(args.workdir, **chosen)
    return 0
